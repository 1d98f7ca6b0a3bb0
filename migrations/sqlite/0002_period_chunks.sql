-- Periods packed into chunks (DESIGN §6): a row per schedule, UTC day of
-- the period starts and version group, holding that day's periods of the
-- group as varint columns in start order (src/periods/codec.rs).
-- `first_version..version` are the versions whose periods the row holds
-- (one version, or several once compacted); block indices in the payload
-- are relative to `block_base`. Rows are never updated: appends add rows,
-- compaction replaces whole groups in one transaction.
--
-- The server moves the rows of the old `periods` table into chunks at
-- start (src/periods/legacy.rs) and then drops that table.
CREATE TABLE period_chunks (
    schedule_id   BIGINT NOT NULL,
    chunk_start   BIGINT NOT NULL,
    first_version BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    block_base    BIGINT NOT NULL,
    period_count  BIGINT NOT NULL,
    max_end       BIGINT NOT NULL,
    payload       BLOB NOT NULL,
    -- Window reads range over chunk_start; loads and compaction filter
    -- on version within one schedule's few hundred rows.
    PRIMARY KEY (schedule_id, chunk_start, version)
);
