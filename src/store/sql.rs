//! What both dialects share: one [`Store`] implementation over a
//! [`Dialect`], which supplies only what differs (pools, snapshots, bulk
//! writes, locks). Every statement here is plain SQL that Postgres and
//! SQLite both accept, with `$n` placeholders.

use super::*;
use crate::model::{BlockMeta, PackedChunk, CHUNK_SPAN};
use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};

/// Columns of [`ScheduleRow`].
pub(super) const SCHEDULE_COLUMNS: &str =
    "id, name, checksum, blocks_digest, range_start, range_end, \
    range_fixed, version, created_at_ms, block_count, period_count, empty_periods_dropped, \
    priority_min, priority_max, max_period_seconds, latest_job_id, summary";

/// The read of a schedule's row by id (the head read).
pub(super) fn schedule_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"))
}

/// Columns of [`JobRow`].
const JOB_COLUMNS: &str = "id, kind, schedule_id, schedule_version, state, progress, message, \
    error, created_at_ms, started_at_ms, finished_at_ms";

/// Chunk rows are written in statements of about this much payload: large
/// enough to amortise a round trip, small enough not to copy a whole
/// upload into one statement's parameters.
const FEED_BATCH_BYTES: usize = 1 << 20;

/// Columns of a chunk row, in [`ChunkRecord`] order.
const CHUNK_COLUMNS: &str =
    "first_version, version, block_base, chunk_start, period_count, max_end, payload";

/// What a dialect supplies.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    type DB: Database;
    /// `postgres` or `sqlite`.
    const NAME: &'static str;
    /// Appended to the read of the schedule row that an append or a
    /// compaction holds for the rest of its transaction.
    const LOCK_ROW: &'static str;
    /// A statement (binding a key text) that serialises transactions
    /// taking the same key — uploads of the same content, replicas
    /// re-creating jobs — where the dialect needs one.
    const CHECKSUM_LOCK: Option<&'static str>;
    /// A query returning a row when the legacy `periods` table exists.
    const LEGACY_EXISTS: &'static str;
    /// Run after the legacy table is dropped, outside a transaction.
    const AFTER_LEGACY_DROP: Option<&'static str>;

    /// Pool for reads.
    fn reader(&self) -> &Pool<Self::DB>;
    /// Pool for writes.
    fn writer(&self) -> &Pool<Self::DB>;
    /// The dialect's migrations.
    fn migrator(&self) -> &'static sqlx::migrate::Migrator;
    /// Pool connections as (idle, active).
    fn pool_connections(&self) -> (u32, u32);
    /// The schedule row by primary key over a connection kept for this one
    /// query, where the dialect has one (`None`: use the reader pool).
    async fn head_row(&self, _id: i64) -> Option<Result<Option<ScheduleRow>, sqlx::Error>> {
        None
    }
    /// Announces, inside a write's transaction, that schedule `id` moves to
    /// `version` (`None`: deleted), where replicas may hold head leases.
    async fn announce(
        &self,
        _conn: &mut <Self::DB as Database>::Connection,
        _id: i64,
        _version: Option<i64>,
    ) -> Result<Notice, sqlx::Error> {
        Ok(Notice::none())
    }
    /// Waits until the replicas holding head leases applied `a` (see
    /// [`Store::confirm`]).
    async fn confirm_leases(&self, _a: watch::Announcement) -> StoreResult<()> {
        Ok(())
    }
    /// See [`Store::known_heads`].
    fn known_heads(&self) -> Option<Arc<KnownHeads>> {
        None
    }
    /// See [`Store::confirm_stats`].
    fn confirm_stats(&self) -> Option<ConfirmStats> {
        None
    }
    /// See [`Store::release`].
    async fn release(&self) {}
    /// A read-only transaction that sees one snapshot of the database.
    async fn begin_snapshot(&self) -> Result<Transaction<'static, Self::DB>, sqlx::Error>;
    /// Writes block rows `first..` of a schedule.
    async fn write_blocks(
        conn: &mut <Self::DB as Database>::Connection,
        schedule_id: i64,
        first: i64,
        blocks: &[BlockMeta],
    ) -> Result<(), sqlx::Error>;
    /// Writes the chunk rows of one version group.
    async fn write_chunks(
        conn: &mut <Self::DB as Database>::Connection,
        schedule_id: i64,
        group: VersionGroup,
        block_base: i64,
        chunks: &[PackedChunk],
    ) -> Result<(), sqlx::Error>;
    /// One of `identities` that schedule `id` already has, if any.
    async fn existing_identity(
        conn: &mut <Self::DB as Database>::Connection,
        id: i64,
        identities: &[&str],
    ) -> Result<Option<String>, sqlx::Error>;
}

/// A chunk row as selected ([`CHUNK_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct ChunkRecord {
    first_version: i64,
    version: i64,
    block_base: i64,
    chunk_start: i64,
    period_count: i64,
    max_end: i64,
    payload: Vec<u8>,
}

impl From<ChunkRecord> for ChunkRow {
    fn from(r: ChunkRecord) -> ChunkRow {
        ChunkRow {
            group: VersionGroup {
                first: r.first_version,
                last: r.version,
            },
            block_base: r.block_base,
            chunk: PackedChunk {
                chunk_start: r.chunk_start,
                period_count: r.period_count,
                max_end: r.max_end,
                payload: r.payload,
            },
        }
    }
}

/// A block row as selected.
#[derive(sqlx::FromRow)]
struct BlockRecord {
    identity: String,
    priority: f64,
    scheduled: bool,
    period_count: i64,
}

/// The store over dialect `D`.
pub struct SqlStore<D> {
    pub(crate) dialect: D,
}

// Rust does not imply bounds like these from a trait, so the two impl
// blocks below repeat the one list of what the shared statements need of a
// dialect's database (its executors, argument and column types, rows).

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'c> &'c Pool<D::DB>: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: IntoArguments<'q, D::DB>,
    for<'q> i64: Encode<'q, D::DB> + Decode<'q, D::DB> + Type<D::DB>,
    for<'q> Option<i64>: Encode<'q, D::DB>,
    for<'q> f64: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> Option<f64>: Encode<'q, D::DB>,
    for<'q> bool: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> &'q str: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> &'q [u8]: Encode<'q, D::DB> + Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
    for<'r> ScheduleRow: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> JobRow: FromRow<'r, <D::DB as Database>::Row>,
{
    async fn schedule_in(
        conn: &mut <D::DB as Database>::Connection,
        id: i64,
        suffix: &str,
    ) -> StoreResult<Option<ScheduleRow>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1{suffix}");
        Ok(sqlx::query_as::<D::DB, ScheduleRow>(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?)
    }

    async fn insert_job(
        conn: &mut <D::DB as Database>::Connection,
        schedule_id: i64,
        version: i64,
    ) -> StoreResult<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO jobs (kind, schedule_id, schedule_version, state, created_at_ms) \
             VALUES ('summary', $1, $2, 'queued', $3) RETURNING id",
        )
        .bind(schedule_id)
        .bind(version)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
        Ok(id)
    }

    async fn insert_change(
        conn: &mut <D::DB as Database>::Connection,
        id: i64,
        version: i64,
        (start, end): (i64, i64),
        all: bool,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO schedule_changes (schedule_id, version, span_start, span_end, all_bins) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(version)
        .bind(start)
        .bind(end)
        .bind(all)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Writes the chunks of `feed` as they arrive, in statements of about
    /// [`FEED_BATCH_BYTES`] of payload, and checks that they hold all
    /// `periods`: a feed that ends early (its producer died) must not
    /// commit a schedule short of periods.
    async fn write_feed(
        conn: &mut <D::DB as Database>::Connection,
        id: i64,
        group: VersionGroup,
        block_base: i64,
        feed: &mut ChunkFeed,
        periods: u64,
    ) -> StoreResult<()> {
        let mut batch = Vec::new();
        let (mut bytes, mut written) = (0, 0u64);
        loop {
            let next = feed.recv().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(StoreError::Feed)?;
                bytes += chunk.payload.len();
                written += chunk.period_count as u64;
                batch.push(chunk);
            }
            if (done || bytes >= FEED_BATCH_BYTES) && !batch.is_empty() {
                D::write_chunks(&mut *conn, id, group, block_base, &batch).await?;
                batch.clear();
                bytes = 0;
            }
            if done {
                if written != periods {
                    return Err(StoreError::Feed(format!(
                        "the packed chunks hold {written} of the body's {periods} periods"
                    )));
                }
                return Ok(());
            }
        }
    }

    /// Rows of the group `g` of schedule `id`.
    async fn group_rows(
        conn: &mut <D::DB as Database>::Connection,
        id: i64,
        g: VersionGroup,
    ) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM period_chunks WHERE schedule_id = $1 AND first_version = $2 \
             AND version = $3",
        )
        .bind(id)
        .bind(g.first)
        .bind(g.last)
        .fetch_one(&mut *conn)
        .await?;
        Ok(n)
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'c> &'c Pool<D::DB>: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: IntoArguments<'q, D::DB>,
    for<'q> i64: Encode<'q, D::DB> + Decode<'q, D::DB> + Type<D::DB>,
    for<'q> Option<i64>: Encode<'q, D::DB>,
    for<'q> f64: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> Option<f64>: Encode<'q, D::DB>,
    for<'q> bool: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> &'q str: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> &'q [u8]: Encode<'q, D::DB> + Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
    for<'r> ScheduleRow: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> JobRow: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> ChangeRow: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> ExtentRow: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> ChunkRecord: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> BlockRecord: FromRow<'r, <D::DB as Database>::Row>,
    for<'r> (i64, i64, i64, i64, i64): FromRow<'r, <D::DB as Database>::Row>,
    for<'r> (i64, i64, i64): FromRow<'r, <D::DB as Database>::Row>,
    for<'r> (i64, i64): FromRow<'r, <D::DB as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <D::DB as Database>::Row>,
{
    fn backend(&self) -> &'static str {
        D::NAME
    }

    async fn ready(&self) -> StoreResult<()> {
        let (applied,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(self.dialect.reader())
                .await?;
        if (applied as usize) < self.dialect.migrator().iter().count() {
            return Err(StoreError::Corrupt("migrations are not all applied".into()));
        }
        Ok(())
    }

    fn pool_connections(&self) -> (u32, u32) {
        self.dialect.pool_connections()
    }

    fn known_heads(&self) -> Option<Arc<KnownHeads>> {
        self.dialect.known_heads()
    }

    async fn confirm(&self, notice: Notice) -> StoreResult<()> {
        match notice.settle_locally() {
            Some(a) => self.dialect.confirm_leases(a).await,
            None => Ok(()),
        }
    }

    fn confirm_stats(&self) -> Option<ConfirmStats> {
        self.dialect.confirm_stats()
    }

    async fn release(&self) {
        self.dialect.release().await
    }

    async fn find_by_checksum(&self, checksum: &str) -> StoreResult<Option<ScheduleRow>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = $1 ORDER BY id LIMIT 1"
        );
        Ok(sqlx::query_as::<D::DB, ScheduleRow>(&sql)
            .bind(checksum)
            .fetch_optional(self.dialect.reader())
            .await?)
    }

    async fn insert_schedule(&self, mut new: NewSchedule) -> StoreResult<Inserted> {
        let mut tx = self.dialect.writer().begin().await?;
        if let Some(lock) = D::CHECKSUM_LOCK {
            sqlx::query(lock)
                .bind(new.checksum.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let dup_sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = $1 ORDER BY id LIMIT 1"
        );
        let dup = sqlx::query_as::<D::DB, ScheduleRow>(&dup_sql)
            .bind(new.checksum.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(existing) = dup {
            tx.rollback().await?;
            return Ok(Inserted::Duplicate(existing));
        }
        let s = &new.stats;
        let digest = s.digest.to_hex();
        let (range_start, range_end) = match new.header.schedule_period {
            Some((a, b)) => (Some(a), Some(b)),
            None => (s.min_start, s.max_end),
        };
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO schedules (name, checksum, blocks_digest, range_start, range_end, \
             range_fixed, version, created_at_ms, block_count, period_count, \
             empty_periods_dropped, priority_min, priority_max, max_period_seconds) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(new.header.name.as_str())
        .bind(new.checksum.as_str())
        .bind(digest.as_str())
        .bind(range_start)
        .bind(range_end)
        .bind(new.header.schedule_period.is_some())
        .bind(now_ms())
        .bind(s.blocks as i64)
        .bind(s.periods as i64)
        .bind(s.empty_periods_dropped as i64)
        .bind(s.priority_min)
        .bind(s.priority_max)
        .bind(s.max_period_seconds)
        .fetch_one(&mut *tx)
        .await?;
        D::write_blocks(&mut tx, id, 0, &new.blocks).await?;
        let group = VersionGroup { first: 1, last: 1 };
        Self::write_feed(&mut tx, id, group, 0, &mut new.chunks, new.stats.periods).await?;
        let job_id = Self::insert_job(&mut tx, id, 1).await?;
        let sql = format!(
            "UPDATE schedules SET latest_job_id = $2 WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}"
        );
        let schedule = sqlx::query_as::<D::DB, ScheduleRow>(&sql)
            .bind(id)
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Inserted::Created { schedule, job_id })
    }

    async fn append_blocks(&self, id: i64, mut new: NewBlocks) -> StoreResult<Appended> {
        let mut tx = self.dialect.writer().begin().await?;
        let old = Self::schedule_in(&mut tx, id, D::LOCK_ROW)
            .await?
            .ok_or(StoreError::NotFound)?;
        let identities: Vec<&str> = new.blocks.iter().map(|b| b.identity.as_str()).collect();
        if let Some(clash) = D::existing_identity(&mut tx, id, &identities).await? {
            return Err(StoreError::IdentityExists(clash));
        }
        let u = append_update(&old, &new.stats).ok_or_else(|| {
            StoreError::Corrupt(format!("schedule {id} has an unreadable blocks digest"))
        })?;
        let (max_blocks, max_periods) = new.max_totals;
        for (what, total, limit) in [
            ("blocks", u.block_count, max_blocks),
            ("periods", u.period_count, max_periods),
        ] {
            if total as u64 > limit {
                return Err(StoreError::TooMany { what, limit });
            }
        }
        D::write_blocks(&mut tx, id, old.block_count, &new.blocks).await?;
        let group = VersionGroup {
            first: u.version,
            last: u.version,
        };
        let periods = new.stats.periods;
        Self::write_feed(
            &mut tx,
            id,
            group,
            old.block_count,
            &mut new.chunks,
            periods,
        )
        .await?;
        for &span in &new.changed_spans {
            Self::insert_change(&mut tx, id, u.version, span, false).await?;
        }
        if u.all_bins_changed {
            Self::insert_change(&mut tx, id, u.version, (0, 0), true).await?;
        }
        let job_id = Self::insert_job(&mut tx, id, u.version).await?;
        let sql = format!(
            "UPDATE schedules SET version = $2, checksum = $3, blocks_digest = $4, \
             range_start = $5, range_end = $6, block_count = $7, period_count = $8, \
             empty_periods_dropped = $9, priority_min = $10, priority_max = $11, \
             max_period_seconds = $12, latest_job_id = $13, summary = NULL WHERE id = $1 \
             RETURNING {SCHEDULE_COLUMNS}"
        );
        let schedule = sqlx::query_as::<D::DB, ScheduleRow>(&sql)
            .bind(id)
            .bind(u.version)
            .bind(u.checksum.as_str())
            .bind(u.blocks_digest.as_str())
            .bind(u.range_start)
            .bind(u.range_end)
            .bind(u.block_count)
            .bind(u.period_count)
            .bind(u.empty_periods_dropped)
            .bind(u.priority_min)
            .bind(u.priority_max)
            .bind(u.max_period_seconds)
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?;
        let notice = self.dialect.announce(&mut tx, id, Some(u.version)).await?;
        tx.commit().await?;
        Ok(Appended {
            schedule,
            job_id,
            notice,
        })
    }

    async fn schedule(&self, id: i64) -> StoreResult<Option<ScheduleRow>> {
        if let Some(row) = self.dialect.head_row(id).await {
            return Ok(row?);
        }
        Ok(sqlx::query_as::<D::DB, ScheduleRow>(schedule_by_id())
            .bind(id)
            .fetch_optional(self.dialect.reader())
            .await?)
    }

    async fn list_schedules(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> StoreResult<Vec<ScheduleRow>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id < $1 ORDER BY id DESC LIMIT $2"
        );
        Ok(sqlx::query_as::<D::DB, ScheduleRow>(&sql)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(self.dialect.reader())
            .await?)
    }

    async fn delete_schedule(&self, id: i64) -> StoreResult<bool> {
        let mut tx = self.dialect.writer().begin().await?;
        let found: Option<(i64,)> =
            sqlx::query_as("DELETE FROM schedules WHERE id = $1 RETURNING id")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        for table in ["blocks", "period_chunks", "schedule_changes", "bin_extents"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE schedule_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let notice = match found {
            Some(_) => self.dialect.announce(&mut tx, id, None).await?,
            None => Notice::none(),
        };
        tx.commit().await?;
        self.confirm(notice).await?;
        Ok(found.is_some())
    }

    async fn blocks_from(&self, id: i64, first: i64) -> StoreResult<Vec<BlockMeta>> {
        let rows: Vec<BlockRecord> = sqlx::query_as(
            "SELECT identity, priority, scheduled, period_count FROM blocks \
             WHERE schedule_id = $1 AND block_idx >= $2 ORDER BY block_idx",
        )
        .bind(id)
        .bind(first)
        .fetch_all(self.dialect.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| BlockMeta {
                identity: r.identity,
                priority: r.priority,
                scheduled: r.scheduled,
                period_count: r.period_count,
            })
            .collect())
    }

    async fn period_chunks(
        &self,
        id: i64,
        select: ChunkSelect,
    ) -> StoreResult<Option<ChunkSnapshot>> {
        let mut tx = self.dialect.begin_snapshot().await?;
        let Some(head) = Self::schedule_in(&mut tx, id, "").await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let base = format!("SELECT {CHUNK_COLUMNS} FROM period_chunks WHERE schedule_id = $1");
        let order = "ORDER BY version, chunk_start";
        let rows: Vec<ChunkRecord> = match select {
            ChunkSelect::All => {
                sqlx::query_as(&format!("{base} {order}"))
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?
            }
            ChunkSelect::After(v) => {
                sqlx::query_as(&format!("{base} AND version > $2 {order}"))
                    .bind(id)
                    .bind(v)
                    .fetch_all(&mut *tx)
                    .await?
            }
            ChunkSelect::Window { from, to } => {
                // A chunk can hold a period meeting the window only if it
                // starts before `to`, ends after `from` (its max end), and
                // its span reaches within the longest period of `from`.
                let lowest = from
                    .saturating_sub(head.max_period_seconds)
                    .saturating_sub(CHUNK_SPAN);
                sqlx::query_as(&format!(
                    "{base} AND chunk_start > $2 AND chunk_start < $3 AND max_end > $4 {order}"
                ))
                .bind(id)
                .bind(lowest)
                .bind(to)
                .bind(from)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        Ok(Some(ChunkSnapshot {
            head,
            rows: rows.into_iter().map(ChunkRow::from).collect(),
        }))
    }

    async fn chunk_groups(&self, id: i64) -> StoreResult<Vec<GroupInfo>> {
        let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT first_version, version, MIN(block_base), COUNT(*), \
             CAST(SUM(period_count) AS BIGINT) FROM period_chunks WHERE schedule_id = $1 \
             GROUP BY first_version, version ORDER BY version",
        )
        .bind(id)
        .fetch_all(self.dialect.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(first, last, block_base, rows, periods)| GroupInfo {
                group: VersionGroup { first, last },
                block_base,
                rows,
                periods,
            })
            .collect())
    }

    async fn group_chunks(&self, id: i64, versions: VersionGroup) -> StoreResult<Vec<ChunkRow>> {
        let rows: Vec<ChunkRecord> = sqlx::query_as(&format!(
            "SELECT {CHUNK_COLUMNS} FROM period_chunks WHERE schedule_id = $1 \
             AND first_version >= $2 AND version <= $3 ORDER BY chunk_start, version"
        ))
        .bind(id)
        .bind(versions.first)
        .bind(versions.last)
        .fetch_all(self.dialect.reader())
        .await?;
        Ok(rows.into_iter().map(ChunkRow::from).collect())
    }

    async fn replace_groups(
        &self,
        id: i64,
        old: &[GroupInfo],
        merged: VersionGroup,
        block_base: i64,
        chunks: &[PackedChunk],
    ) -> StoreResult<bool> {
        let mut tx = self.dialect.writer().begin().await?;
        if Self::schedule_in(&mut tx, id, D::LOCK_ROW).await?.is_none() {
            return Ok(false);
        }
        for g in old {
            if Self::group_rows(&mut tx, id, g.group).await? != g.rows {
                return Ok(false);
            }
        }
        for g in old {
            sqlx::query(
                "DELETE FROM period_chunks WHERE schedule_id = $1 AND first_version = $2 \
                 AND version = $3",
            )
            .bind(id)
            .bind(g.group.first)
            .bind(g.group.last)
            .execute(&mut *tx)
            .await?;
        }
        D::write_chunks(&mut tx, id, merged, block_base, chunks).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn changes_after(&self, id: i64, version: i64) -> StoreResult<Vec<ChangeRow>> {
        Ok(sqlx::query_as(
            "SELECT version, span_start, span_end, all_bins FROM schedule_changes \
             WHERE schedule_id = $1 AND version > $2 ORDER BY version",
        )
        .bind(id)
        .bind(version)
        .fetch_all(self.dialect.reader())
        .await?)
    }

    async fn read_extents(
        &self,
        id: i64,
        key_hash: i64,
        first: i64,
        end: i64,
    ) -> StoreResult<Vec<ExtentRow>> {
        Ok(sqlx::query_as(
            "SELECT schedule_id, key_hash, cache_key, version, first_bin, end_bin, payload \
             FROM bin_extents WHERE schedule_id = $1 AND key_hash = $2 AND first_bin < $4 \
             AND end_bin > $3 ORDER BY first_bin",
        )
        .bind(id)
        .bind(key_hash)
        .bind(first)
        .bind(end)
        .fetch_all(self.dialect.reader())
        .await?)
    }

    async fn write_extent(&self, x: &ExtentRow) -> StoreResult<()> {
        // Replace the runs this extent contains, unless they are newer.
        let mut tx = self.dialect.writer().begin().await?;
        sqlx::query(
            "DELETE FROM bin_extents WHERE schedule_id = $1 AND key_hash = $2 AND cache_key = $3 \
             AND first_bin >= $4 AND end_bin <= $5 AND version <= $6",
        )
        .bind(x.schedule_id)
        .bind(x.key_hash)
        .bind(x.key.as_str())
        .bind(x.first_bin)
        .bind(x.end_bin)
        .bind(x.version)
        .execute(&mut *tx)
        .await?;
        // Skip the write when the schedule was deleted meanwhile.
        sqlx::query(
            "INSERT INTO bin_extents (schedule_id, key_hash, cache_key, version, first_bin, \
             end_bin, payload, created_at_ms) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE EXISTS (SELECT 1 FROM schedules WHERE id = $1)",
        )
        .bind(x.schedule_id)
        .bind(x.key_hash)
        .bind(x.key.as_str())
        .bind(x.version)
        .bind(x.first_bin)
        .bind(x.end_bin)
        .bind(x.payload.as_slice())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job(&self, id: i64) -> StoreResult<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        Ok(sqlx::query_as::<D::DB, JobRow>(&sql)
            .bind(id)
            .fetch_optional(self.dialect.reader())
            .await?)
    }

    async fn job_progress(&self, id: i64, progress: f64, message: &str) -> StoreResult<bool> {
        let updated: Option<(i64,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', progress = $2, message = $3, \
             started_at_ms = COALESCE(started_at_ms, $4) \
             WHERE id = $1 AND state IN ('queued', 'running') RETURNING id",
        )
        .bind(id)
        .bind(progress)
        .bind(message)
        .bind(now_ms())
        .fetch_optional(self.dialect.writer())
        .await?;
        Ok(updated.is_some())
    }

    async fn job_done(&self, job: &JobRow, summary_json: &str) -> StoreResult<()> {
        let mut tx = self.dialect.writer().begin().await?;
        let written: Option<(i64,)> = sqlx::query_as(
            "UPDATE schedules SET summary = $3 WHERE id = $1 AND version = $2 RETURNING id",
        )
        .bind(job.schedule_id)
        .bind(job.schedule_version)
        .bind(summary_json)
        .fetch_optional(&mut *tx)
        .await?;
        let message = if written.is_some() {
            "summary stored"
        } else {
            "superseded by a newer version"
        };
        sqlx::query(
            "UPDATE jobs SET state = 'done', progress = 1, message = $2, error = NULL, \
             finished_at_ms = $3 WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(job.id)
        .bind(message)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_failed(&self, id: i64, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error = $2, finished_at_ms = $3 \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(error)
        .bind(now_ms())
        .execute(self.dialect.writer())
        .await?;
        Ok(())
    }

    async fn claim_job(&self, id: i64, owner: &str, until_ms: i64) -> StoreResult<bool> {
        let claimed: Option<(i64,)> = sqlx::query_as(
            "UPDATE jobs SET owner = $2, lease_expires_ms = $3 WHERE id = $1 \
             AND state IN ('queued', 'running') RETURNING id",
        )
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .fetch_optional(self.dialect.writer())
        .await?;
        Ok(claimed.is_some())
    }

    async fn renew_leases(&self, owner: &str, until_ms: i64) -> StoreResult<u64> {
        let renewed: Vec<(i64,)> = sqlx::query_as(
            "UPDATE jobs SET lease_expires_ms = $2 WHERE owner = $1 \
             AND state IN ('queued', 'running') RETURNING id",
        )
        .bind(owner)
        .bind(until_ms)
        .fetch_all(self.dialect.writer())
        .await?;
        Ok(renewed.len() as u64)
    }

    async fn recreate_jobs(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        retry_failed: bool,
    ) -> StoreResult<Vec<JobRow>> {
        let mut tx = self.dialect.writer().begin().await?;
        if let Some(lock) = D::CHECKSUM_LOCK {
            sqlx::query(lock)
                .bind("visbin: recreate jobs")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error = 'interrupted: the replica running it \
             stopped before it finished; a new job was created', finished_at_ms = $1 \
             WHERE state IN ('queued', 'running') \
             AND COALESCE(lease_expires_ms, created_at_ms + $2) < $1",
        )
        .bind(now_ms)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        // A job failed of an error (not interrupted) blocks its version
        // unless failures are retried.
        let missing: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, version FROM schedules s WHERE summary IS NULL AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.schedule_id = s.id AND j.schedule_version = s.version \
             AND (j.state IN ('queued', 'running') OR ($1 = 0 AND j.state = 'failed' \
             AND j.error NOT LIKE 'interrupted:%'))) ORDER BY id",
        )
        .bind(i64::from(retry_failed))
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::new();
        let job_sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        for (sid, version) in missing {
            let job_id = Self::insert_job(&mut tx, sid, version).await?;
            sqlx::query("UPDATE jobs SET owner = $2, lease_expires_ms = $3 WHERE id = $1")
                .bind(job_id)
                .bind(owner)
                .bind(now_ms + lease_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE schedules SET latest_job_id = $2 WHERE id = $1")
                .bind(sid)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            jobs.push(
                sqlx::query_as::<D::DB, JobRow>(&job_sql)
                    .bind(job_id)
                    .fetch_one(&mut *tx)
                    .await?,
            );
        }
        tx.commit().await?;
        Ok(jobs)
    }

    async fn legacy_schedules(&self) -> StoreResult<Option<Vec<i64>>> {
        let exists: Option<(i64,)> = sqlx::query_as(D::LEGACY_EXISTS)
            .fetch_optional(self.dialect.reader())
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let ids: Vec<(i64,)> =
            sqlx::query_as("SELECT DISTINCT schedule_id FROM periods ORDER BY schedule_id")
                .fetch_all(self.dialect.reader())
                .await?;
        Ok(Some(ids.into_iter().map(|(id,)| id).collect()))
    }

    async fn legacy_periods(&self, id: i64) -> StoreResult<Option<(i64, Vec<(i64, i64, i64)>)>> {
        let mut tx = self.dialect.begin_snapshot().await?;
        let version = Self::schedule_in(&mut tx, id, "").await?.map(|s| s.version);
        // The old Postgres layout had 32-bit block indices: cast for the
        // shared 64-bit mapping.
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT CAST(block_idx AS BIGINT), start_unix, end_unix FROM periods \
             WHERE schedule_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version.map(|v| (v, rows)))
    }

    async fn adopt_legacy(
        &self,
        id: i64,
        version: i64,
        chunks: &[PackedChunk],
    ) -> StoreResult<bool> {
        let mut tx = self.dialect.writer().begin().await?;
        let row = Self::schedule_in(&mut tx, id, D::LOCK_ROW).await?;
        // Under the schedule's lock: another replica moving the same
        // database may have moved this schedule already.
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM periods WHERE schedule_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if left == 0 {
            return Ok(true);
        }
        match row {
            // Rows of a deleted schedule: nothing to keep.
            None => {}
            Some(s) if s.version != version => return Ok(false),
            Some(_) => {
                let group = VersionGroup {
                    first: 1,
                    last: version,
                };
                D::write_chunks(&mut tx, id, group, 0, chunks).await?;
            }
        }
        sqlx::query("DELETE FROM periods WHERE schedule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn drop_legacy(&self) -> StoreResult<()> {
        sqlx::query("DROP TABLE IF EXISTS periods")
            .execute(self.dialect.writer())
            .await?;
        if let Some(sql) = D::AFTER_LEGACY_DROP {
            sqlx::query(sql).execute(self.dialect.writer()).await?;
        }
        Ok(())
    }
}
