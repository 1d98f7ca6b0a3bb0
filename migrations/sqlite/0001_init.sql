-- Raw schedule data only: no bins are computed or stored at upload.
-- Times are BIGINT Unix seconds; timestamps are BIGINT Unix milliseconds
-- (the same types in both dialects keep the row mapping shared).
-- No foreign keys on blocks/periods: their per-row checks would slow ingest,
-- and delete_schedule removes the dependants itself in one transaction.

CREATE TABLE schedules (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT NOT NULL,
    checksum              TEXT NOT NULL,
    blocks_digest         TEXT NOT NULL,
    range_start           BIGINT,
    range_end             BIGINT,
    range_fixed           INTEGER NOT NULL,
    version               BIGINT NOT NULL,
    created_at_ms         BIGINT NOT NULL,
    block_count           BIGINT NOT NULL DEFAULT 0,
    period_count          BIGINT NOT NULL DEFAULT 0,
    empty_periods_dropped BIGINT NOT NULL DEFAULT 0,
    priority_min          REAL,
    priority_max          REAL,
    max_period_seconds    BIGINT NOT NULL DEFAULT 0,
    latest_job_id         BIGINT,
    summary               TEXT
);
CREATE INDEX schedules_checksum ON schedules (checksum);

CREATE TABLE blocks (
    schedule_id  BIGINT NOT NULL,
    block_idx    INTEGER NOT NULL,
    identity     TEXT NOT NULL,
    priority     REAL NOT NULL,
    scheduled    INTEGER NOT NULL,
    period_count INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, block_idx),
    UNIQUE (schedule_id, identity)
);

CREATE TABLE periods (
    schedule_id BIGINT NOT NULL,
    block_idx   INTEGER NOT NULL,
    start_unix  BIGINT NOT NULL,
    end_unix    BIGINT NOT NULL
);
-- Window reads: start_unix in (from - longest period, to), answered from
-- the index alone (covering) in start order.
CREATE INDEX periods_window ON periods (schedule_id, start_unix, end_unix, block_idx);

-- Invalidation log: what each append changed.
CREATE TABLE schedule_changes (
    schedule_id BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    span_start  BIGINT NOT NULL,
    span_end    BIGINT NOT NULL,
    all_bins    INTEGER NOT NULL
);
CREATE INDEX schedule_changes_by_version ON schedule_changes (schedule_id, version);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL,
    schedule_id      BIGINT NOT NULL,
    schedule_version BIGINT NOT NULL,
    state            TEXT NOT NULL,
    progress         REAL NOT NULL DEFAULT 0,
    message          TEXT,
    error            TEXT,
    created_at_ms    BIGINT NOT NULL,
    started_at_ms    BIGINT,
    finished_at_ms   BIGINT
);
CREATE INDEX jobs_by_state ON jobs (state);

-- Tier 2 of the bin cache: extents of computed bins per key.
CREATE TABLE bin_extents (
    schedule_id   BIGINT NOT NULL,
    key_hash      BIGINT NOT NULL,
    cache_key     TEXT NOT NULL,
    version       BIGINT NOT NULL,
    first_bin     BIGINT NOT NULL,
    end_bin       BIGINT NOT NULL,
    payload       BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX bin_extents_coverage ON bin_extents (schedule_id, key_hash, first_bin);
