//! The SQLite dialect (the embedded default): one writer connection (SQLite
//! has one writer anyway; a single connection avoids lock-upgrade errors),
//! a pool of readers over WAL, multi-row inserts inside one transaction.

use super::*;
use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const SCHEDULE_COLUMNS: &str = "id, name, checksum, blocks_digest, range_start, range_end, \
    range_fixed, version, created_at_ms, block_count, period_count, empty_periods_dropped, \
    priority_min, priority_max, max_period_seconds, latest_job_id, summary";

const JOB_COLUMNS: &str = "id, kind, schedule_id, schedule_version, state, progress, message, \
    error, created_at_ms, started_at_ms, finished_at_ms";

/// SQLite allows 32,766 bound values per statement.
const MAX_BINDS: usize = 32_000;

/// The SQLite store.
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false);
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
        }
        // A long upload holds the writer; other writes wait for it.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(600))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore { read, write })
    }
}

fn schedule_row(r: &SqliteRow) -> StoreResult<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        checksum: r.try_get(2)?,
        blocks_digest: r.try_get(3)?,
        range_start: r.try_get(4)?,
        range_end: r.try_get(5)?,
        range_fixed: r.try_get(6)?,
        version: r.try_get(7)?,
        created_at_ms: r.try_get(8)?,
        block_count: r.try_get(9)?,
        period_count: r.try_get(10)?,
        empty_periods_dropped: r.try_get(11)?,
        priority_min: r.try_get(12)?,
        priority_max: r.try_get(13)?,
        max_period_seconds: r.try_get(14)?,
        latest_job_id: r.try_get(15)?,
        summary: r.try_get(16)?,
    })
}

fn job_row(r: &SqliteRow) -> StoreResult<JobRow> {
    Ok(JobRow {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        schedule_id: r.try_get(2)?,
        schedule_version: r.try_get(3)?,
        state: r.try_get(4)?,
        progress: r.try_get(5)?,
        message: r.try_get(6)?,
        error: r.try_get(7)?,
        created_at_ms: r.try_get(8)?,
        started_at_ms: r.try_get(9)?,
        finished_at_ms: r.try_get(10)?,
    })
}

async fn insert_job(
    tx: &mut Transaction<'static, Sqlite>,
    schedule_id: i64,
    version: i64,
) -> StoreResult<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, schedule_id, schedule_version, state, created_at_ms) \
         VALUES ('summary', ?, ?, 'queued', ?) RETURNING id",
    )
    .bind(schedule_id)
    .bind(version)
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

struct SqliteIngest {
    tx: Transaction<'static, Sqlite>,
    schedule_id: i64,
    next_block: i64,
    existing: Option<ScheduleRow>,
}

#[async_trait]
impl Ingest for SqliteIngest {
    async fn add_blocks(&mut self, blocks: &[Block]) -> StoreResult<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        if self.existing.is_some() {
            for chunk in blocks.chunks(MAX_BINDS - 1) {
                let mut q =
                    QueryBuilder::<Sqlite>::new("SELECT identity FROM blocks WHERE schedule_id = ");
                q.push_bind(self.schedule_id).push(" AND identity IN (");
                let mut sep = q.separated(", ");
                for b in chunk {
                    sep.push_bind(b.identity.as_str());
                }
                q.push(") LIMIT 1");
                let clash: Option<String> =
                    q.build_query_scalar().fetch_optional(&mut *self.tx).await?;
                if let Some(id) = clash {
                    return Err(StoreError::IdentityExists(id));
                }
            }
        }
        let sid = self.schedule_id;
        for (c, chunk) in blocks.chunks(MAX_BINDS / 6).enumerate() {
            let base = self.next_block + (c * (MAX_BINDS / 6)) as i64;
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO blocks (schedule_id, block_idx, identity, priority, scheduled, period_count) ",
            );
            q.push_values(chunk.iter().enumerate(), |mut row, (i, b)| {
                row.push_bind(sid)
                    .push_bind(base + i as i64)
                    .push_bind(b.identity.as_str())
                    .push_bind(b.priority)
                    .push_bind(b.scheduled)
                    .push_bind(b.periods.len() as i64);
            });
            q.build().execute(&mut *self.tx).await?;
        }
        let rows: Vec<(i64, i64, i64)> = blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                let idx = self.next_block + i as i64;
                b.periods.iter().map(move |&(s, e)| (idx, s, e))
            })
            .collect();
        for chunk in rows.chunks(MAX_BINDS / 4) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO periods (schedule_id, block_idx, start_unix, end_unix) ",
            );
            q.push_values(chunk, |mut row, &(idx, s, e)| {
                row.push_bind(sid).push_bind(idx).push_bind(s).push_bind(e);
            });
            q.build().execute(&mut *self.tx).await?;
        }
        self.next_block += blocks.len() as i64;
        Ok(())
    }

    async fn commit_upload(mut self: Box<Self>, t: UploadTotals) -> StoreResult<Committed> {
        // The single writer connection serialises uploads, so the check
        // and the commit cannot interleave with another upload.
        let dup = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = ? AND id <> ? \
             ORDER BY id LIMIT 1"
        ))
        .bind(&t.checksum)
        .bind(self.schedule_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        if let Some(r) = dup {
            let row = schedule_row(&r)?;
            self.tx.rollback().await?;
            return Ok(Committed::Duplicate(row));
        }
        let job_id = insert_job(&mut self.tx, self.schedule_id, 1).await?;
        let (range_start, range_end) = match t.header.schedule_period {
            Some((s, e)) => (Some(s), Some(e)),
            None => (t.stats.min_start, t.stats.max_end),
        };
        let r = sqlx::query(&format!(
            "UPDATE schedules SET name = ?, checksum = ?, blocks_digest = ?, range_start = ?, \
             range_end = ?, range_fixed = ?, block_count = ?, period_count = ?, \
             empty_periods_dropped = ?, priority_min = ?, priority_max = ?, \
             max_period_seconds = ?, latest_job_id = ? WHERE id = ? \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(&t.header.name)
        .bind(&t.checksum)
        .bind(&t.blocks_digest)
        .bind(range_start)
        .bind(range_end)
        .bind(t.header.schedule_period.is_some())
        .bind(t.stats.blocks as i64)
        .bind(t.stats.periods as i64)
        .bind(t.stats.empty_periods_dropped as i64)
        .bind(t.stats.priority_min)
        .bind(t.stats.priority_max)
        .bind(t.stats.max_period_seconds)
        .bind(job_id)
        .bind(self.schedule_id)
        .fetch_one(&mut *self.tx)
        .await?;
        let schedule = schedule_row(&r)?;
        self.tx.commit().await?;
        Ok(Committed::Stored { schedule, job_id })
    }

    async fn commit_append(mut self: Box<Self>, t: AppendTotals) -> StoreResult<Committed> {
        let old = self.existing.clone().ok_or(StoreError::NotFound)?;
        let update = super::append_update(&old, &t);
        for &(s, e) in &t.changed_spans {
            sqlx::query(
                "INSERT INTO schedule_changes (schedule_id, version, span_start, span_end, all_bins) \
                 VALUES (?, ?, ?, ?, 0)",
            )
            .bind(old.id)
            .bind(update.version)
            .bind(s)
            .bind(e)
            .execute(&mut *self.tx)
            .await?;
        }
        if update.all_bins_changed {
            sqlx::query(
                "INSERT INTO schedule_changes (schedule_id, version, span_start, span_end, all_bins) \
                 VALUES (?, ?, 0, 0, 1)",
            )
            .bind(old.id)
            .bind(update.version)
            .execute(&mut *self.tx)
            .await?;
        }
        let job_id = insert_job(&mut self.tx, old.id, update.version).await?;
        let r = sqlx::query(&format!(
            "UPDATE schedules SET version = ?, checksum = ?, blocks_digest = ?, \
             range_start = ?, range_end = ?, block_count = ?, period_count = ?, \
             empty_periods_dropped = ?, priority_min = ?, priority_max = ?, \
             max_period_seconds = ?, latest_job_id = ?, summary = NULL WHERE id = ? \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(update.version)
        .bind(&t.checksum)
        .bind(&t.blocks_digest)
        .bind(update.range_start)
        .bind(update.range_end)
        .bind(update.block_count)
        .bind(update.period_count)
        .bind(update.empty_periods_dropped)
        .bind(update.priority_min)
        .bind(update.priority_max)
        .bind(update.max_period_seconds)
        .bind(job_id)
        .bind(old.id)
        .fetch_one(&mut *self.tx)
        .await?;
        let schedule = schedule_row(&r)?;
        self.tx.commit().await?;
        Ok(Committed::Stored { schedule, job_id })
    }

    fn schedule(&self) -> Option<&ScheduleRow> {
        self.existing.as_ref()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ready(&self) -> StoreResult<()> {
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.read)
                .await?;
        if (applied as usize) < MIGRATOR.iter().count() {
            return Err(StoreError::Corrupt("migrations are not all applied".into()));
        }
        Ok(())
    }

    fn pool_connections(&self) -> (u32, u32) {
        let idle = (self.read.num_idle() + self.write.num_idle()) as u32;
        let size = self.read.size() + self.write.size();
        (idle, size.saturating_sub(idle))
    }

    async fn begin_upload(&self) -> StoreResult<Box<dyn Ingest>> {
        let mut tx = self.write.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO schedules (name, checksum, blocks_digest, range_fixed, version, created_at_ms) \
             VALUES ('', '', '', 0, 1, ?) RETURNING id",
        )
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        Ok(Box::new(SqliteIngest {
            tx,
            schedule_id: id,
            next_block: 0,
            existing: None,
        }))
    }

    async fn begin_append(&self, id: i64) -> StoreResult<Box<dyn Ingest>> {
        let mut tx = self.write.begin().await?;
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let row = schedule_row(&r)?;
        Ok(Box::new(SqliteIngest {
            tx,
            schedule_id: id,
            next_block: row.block_count,
            existing: Some(row),
        }))
    }

    async fn find_by_checksum(&self, checksum: &str) -> StoreResult<Option<ScheduleRow>> {
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = ? ORDER BY id LIMIT 1"
        ))
        .bind(checksum)
        .fetch_optional(&self.read)
        .await?;
        r.as_ref().map(schedule_row).transpose()
    }

    async fn schedule(&self, id: i64) -> StoreResult<Option<ScheduleRow>> {
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        r.as_ref().map(schedule_row).transpose()
    }

    async fn list_schedules(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> StoreResult<Vec<ScheduleRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id < ? \
             ORDER BY id DESC LIMIT ?"
        ))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(schedule_row).collect()
    }

    async fn delete_schedule(&self, id: i64) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let found = sqlx::query("DELETE FROM schedules WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        for table in ["blocks", "periods", "schedule_changes", "bin_extents"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE schedule_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn blocks(&self, id: i64) -> StoreResult<BlockTable> {
        let mut rows = sqlx::query(
            "SELECT identity, priority, scheduled, period_count FROM blocks \
             WHERE schedule_id = ? ORDER BY block_idx",
        )
        .bind(id)
        .fetch(&self.read);
        let mut t = BlockTable::new();
        while let Some(r) = rows.try_next().await? {
            let pc: i64 = r.try_get(3)?;
            t.push(
                r.try_get::<&str, _>(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                pc as u32,
            );
        }
        Ok(t)
    }

    async fn window_periods(
        &self,
        id: i64,
        from: i64,
        to: i64,
    ) -> StoreResult<(i64, PeriodColumns)> {
        // A read transaction in WAL mode is one snapshot for both reads.
        let mut tx = self.read.begin().await?;
        let head: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, max_period_seconds FROM schedules WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let (version, max_len) = head.ok_or(StoreError::NotFound)?;
        let mut out = PeriodColumns::default();
        {
            let mut rows = sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT block_idx, start_unix, end_unix FROM periods \
                 WHERE schedule_id = ? AND start_unix > ? AND start_unix < ? AND end_unix > ? \
                 ORDER BY start_unix",
            )
            .bind(id)
            .bind(from.saturating_sub(max_len))
            .bind(to)
            .bind(from)
            .fetch(&mut *tx);
            while let Some((b, s, e)) = rows.try_next().await? {
                out.push(b as u32, s, e);
            }
        }
        tx.commit().await?;
        Ok((version, out))
    }

    async fn changes_after(&self, id: i64, version: i64) -> StoreResult<Vec<ChangeRow>> {
        let rows: Vec<(i64, i64, i64, bool)> = sqlx::query_as(
            "SELECT version, span_start, span_end, all_bins FROM schedule_changes \
             WHERE schedule_id = ? AND version > ? ORDER BY version",
        )
        .bind(id)
        .bind(version)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(version, start, end, all)| ChangeRow {
                version,
                start,
                end,
                all,
            })
            .collect())
    }

    async fn read_extents(
        &self,
        id: i64,
        key_hash: i64,
        first: i64,
        end: i64,
    ) -> StoreResult<Vec<ExtentRow>> {
        let rows: Vec<(String, i64, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT cache_key, version, first_bin, end_bin, payload FROM bin_extents \
             WHERE schedule_id = ? AND key_hash = ? AND first_bin < ? AND end_bin > ? \
             ORDER BY first_bin",
        )
        .bind(id)
        .bind(key_hash)
        .bind(end)
        .bind(first)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, version, first_bin, end_bin, payload)| ExtentRow {
                schedule_id: id,
                key_hash,
                key,
                version,
                first_bin,
                end_bin,
                payload,
            })
            .collect())
    }

    async fn write_extent(&self, x: &ExtentRow) -> StoreResult<()> {
        // Replace the runs this extent contains, unless they are newer.
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "DELETE FROM bin_extents WHERE schedule_id = ? AND key_hash = ? AND cache_key = ? \
             AND first_bin >= ? AND end_bin <= ? AND version <= ?",
        )
        .bind(x.schedule_id)
        .bind(x.key_hash)
        .bind(&x.key)
        .bind(x.first_bin)
        .bind(x.end_bin)
        .bind(x.version)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO bin_extents (schedule_id, key_hash, cache_key, version, first_bin, end_bin, \
             payload, created_at_ms) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 \
             WHERE EXISTS (SELECT 1 FROM schedules WHERE id = ?1)",
        )
        .bind(x.schedule_id)
        .bind(x.key_hash)
        .bind(&x.key)
        .bind(x.version)
        .bind(x.first_bin)
        .bind(x.end_bin)
        .bind(&x.payload)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job(&self, id: i64) -> StoreResult<Option<JobRow>> {
        let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        r.as_ref().map(job_row).transpose()
    }

    async fn job_progress(&self, id: i64, progress: f64, message: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'running', progress = ?, message = ?, \
             started_at_ms = COALESCE(started_at_ms, ?) WHERE id = ?",
        )
        .bind(progress)
        .bind(message)
        .bind(now_ms())
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn job_done(&self, job: &JobRow, summary_json: &str) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let written = sqlx::query("UPDATE schedules SET summary = ? WHERE id = ? AND version = ?")
            .bind(summary_json)
            .bind(job.schedule_id)
            .bind(job.schedule_version)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let message = if written {
            "summary stored"
        } else {
            "superseded by a newer version"
        };
        sqlx::query(
            "UPDATE jobs SET state = 'done', progress = 1, message = ?, error = NULL, \
             finished_at_ms = ? WHERE id = ?",
        )
        .bind(message)
        .bind(now_ms())
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_failed(&self, id: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE jobs SET state = 'failed', error = ?, finished_at_ms = ? WHERE id = ?")
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn recreate_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error = 'interrupted: the server stopped before the \
             job finished; a new job was created', finished_at_ms = ? \
             WHERE state IN ('queued', 'running')",
        )
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let missing: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, version FROM schedules WHERE summary IS NULL ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let mut jobs = Vec::new();
        for (sid, version) in missing {
            let job_id = insert_job(&mut tx, sid, version).await?;
            sqlx::query("UPDATE schedules SET latest_job_id = ? WHERE id = ?")
                .bind(job_id)
                .bind(sid)
                .execute(&mut *tx)
                .await?;
            let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await?;
            jobs.push(job_row(&r)?);
        }
        tx.commit().await?;
        Ok(jobs)
    }
}
