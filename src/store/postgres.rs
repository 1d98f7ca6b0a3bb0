//! The Postgres dialect: `COPY` for ingest, a covering index for window
//! reads, advisory locks against concurrent identical uploads.

use super::*;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Columns of [`ScheduleRow`], in struct order.
const SCHEDULE_COLUMNS: &str = "id, name, checksum, blocks_digest, range_start, range_end, \
    range_fixed, version, created_at_ms, block_count, period_count, empty_periods_dropped, \
    priority_min, priority_max, max_period_seconds, latest_job_id, summary";

const JOB_COLUMNS: &str = "id, kind, schedule_id, schedule_version, state, progress, message, \
    error, created_at_ms, started_at_ms, finished_at_ms";

/// COPY payloads are sent in chunks of about this many bytes.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// The Postgres store.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<PgStore> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }
}

fn schedule_row(r: &sqlx::postgres::PgRow) -> StoreResult<ScheduleRow> {
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

fn job_row(r: &sqlx::postgres::PgRow) -> StoreResult<JobRow> {
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

/// Escapes a value for COPY's text format.
fn copy_text(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

async fn insert_job(
    tx: &mut Transaction<'static, Postgres>,
    schedule_id: i64,
    version: i64,
) -> StoreResult<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, schedule_id, schedule_version, state, created_at_ms) \
         VALUES ('summary', $1, $2, 'queued', $3) RETURNING id",
    )
    .bind(schedule_id)
    .bind(version)
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

struct PgIngest {
    tx: Transaction<'static, Postgres>,
    schedule_id: i64,
    next_block: i64,
    existing: Option<ScheduleRow>,
    buf: Vec<u8>,
}

#[async_trait]
impl Ingest for PgIngest {
    async fn add_blocks(&mut self, blocks: &[Block]) -> StoreResult<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        if self.existing.is_some() {
            let ids: Vec<&str> = blocks.iter().map(|b| b.identity.as_str()).collect();
            let clash: Option<String> = sqlx::query_scalar(
                "SELECT identity FROM blocks WHERE schedule_id = $1 AND identity = ANY($2) LIMIT 1",
            )
            .bind(self.schedule_id)
            .bind(&ids)
            .fetch_optional(&mut *self.tx)
            .await?;
            if let Some(id) = clash {
                return Err(StoreError::IdentityExists(id));
            }
        }
        let sid = self.schedule_id;
        let mut ib = itoa::Buffer::new();
        // Blocks.
        let buf = &mut self.buf;
        buf.clear();
        for (i, b) in blocks.iter().enumerate() {
            buf.extend_from_slice(ib.format(sid).as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(ib.format(self.next_block + i as i64).as_bytes());
            buf.push(b'\t');
            copy_text(buf, &b.identity);
            buf.push(b'\t');
            buf.extend_from_slice(format!("{:?}", b.priority).as_bytes());
            buf.extend_from_slice(if b.scheduled { b"\tt\t" } else { b"\tf\t" });
            buf.extend_from_slice(ib.format(b.periods.len()).as_bytes());
            buf.push(b'\n');
        }
        let mut copy = self
            .tx
            .copy_in_raw(
                "COPY blocks (schedule_id, block_idx, identity, priority, scheduled, period_count) \
                 FROM STDIN",
            )
            .await?;
        copy.send(buf.as_slice()).await?;
        copy.finish().await?;
        // Periods.
        let mut copy = self
            .tx
            .copy_in_raw("COPY periods (schedule_id, block_idx, start_unix, end_unix) FROM STDIN")
            .await?;
        let buf = &mut self.buf;
        buf.clear();
        let sid_text = ib.format(sid).to_owned();
        for (i, b) in blocks.iter().enumerate() {
            let idx_text = ib.format(self.next_block + i as i64).to_owned();
            for &(s, e) in &b.periods {
                buf.extend_from_slice(sid_text.as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(idx_text.as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(ib.format(s).as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(ib.format(e).as_bytes());
                buf.push(b'\n');
            }
            if buf.len() >= COPY_CHUNK_BYTES {
                copy.send(buf.as_slice()).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            copy.send(buf.as_slice()).await?;
        }
        copy.finish().await?;
        self.next_block += blocks.len() as i64;
        Ok(())
    }

    async fn commit_upload(mut self: Box<Self>, t: UploadTotals) -> StoreResult<Committed> {
        // Serialise uploads of the same content so that exactly one wins.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&t.checksum)
            .execute(&mut *self.tx)
            .await?;
        let dup = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = $1 AND id <> $2 \
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
            "UPDATE schedules SET name = $2, checksum = $3, blocks_digest = $4, range_start = $5, \
             range_end = $6, range_fixed = $7, block_count = $8, period_count = $9, \
             empty_periods_dropped = $10, priority_min = $11, priority_max = $12, \
             max_period_seconds = $13, latest_job_id = $14 WHERE id = $1 \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(self.schedule_id)
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
                 VALUES ($1, $2, $3, $4, false)",
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
                 VALUES ($1, $2, 0, 0, true)",
            )
            .bind(old.id)
            .bind(update.version)
            .execute(&mut *self.tx)
            .await?;
        }
        let job_id = insert_job(&mut self.tx, old.id, update.version).await?;
        let r = sqlx::query(&format!(
            "UPDATE schedules SET version = $2, checksum = $3, blocks_digest = $4, \
             range_start = $5, range_end = $6, block_count = $7, period_count = $8, \
             empty_periods_dropped = $9, priority_min = $10, priority_max = $11, \
             max_period_seconds = $12, latest_job_id = $13, summary = NULL WHERE id = $1 \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(old.id)
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
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ready(&self) -> StoreResult<()> {
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        if (applied as usize) < MIGRATOR.iter().count() {
            return Err(StoreError::Corrupt("migrations are not all applied".into()));
        }
        Ok(())
    }

    fn pool_connections(&self) -> (u32, u32) {
        let idle = self.pool.num_idle() as u32;
        (idle, self.pool.size().saturating_sub(idle))
    }

    async fn begin_upload(&self) -> StoreResult<Box<dyn Ingest>> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO schedules (name, checksum, blocks_digest, range_fixed, version, created_at_ms) \
             VALUES ('', '', '', false, 1, $1) RETURNING id",
        )
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        Ok(Box::new(PgIngest {
            tx,
            schedule_id: id,
            next_block: 0,
            existing: None,
            buf: Vec::new(),
        }))
    }

    async fn begin_append(&self, id: i64) -> StoreResult<Box<dyn Ingest>> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let row = schedule_row(&r)?;
        Ok(Box::new(PgIngest {
            tx,
            schedule_id: id,
            next_block: row.block_count,
            existing: Some(row),
            buf: Vec::new(),
        }))
    }

    async fn find_by_checksum(&self, checksum: &str) -> StoreResult<Option<ScheduleRow>> {
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE checksum = $1 ORDER BY id LIMIT 1"
        ))
        .bind(checksum)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(schedule_row).transpose()
    }

    async fn schedule(&self, id: i64) -> StoreResult<Option<ScheduleRow>> {
        let r = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(schedule_row).transpose()
    }

    async fn list_schedules(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> StoreResult<Vec<ScheduleRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id < $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_row).collect()
    }

    async fn delete_schedule(&self, id: i64) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        for table in ["blocks", "periods", "schedule_changes", "bin_extents"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE schedule_id = $1"))
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
             WHERE schedule_id = $1 ORDER BY block_idx",
        )
        .bind(id)
        .fetch(&self.pool);
        let mut t = BlockTable::new();
        while let Some(r) = rows.try_next().await? {
            let pc: i32 = r.try_get(3)?;
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
        // One statement is one snapshot: the version and the periods it
        // tags come from the same state, in a single round trip. The
        // schedule row drives a lateral index scan in start order.
        let mut rows = sqlx::query_as::<_, (i64, Option<i32>, Option<i64>, Option<i64>)>(
            "SELECT s.version, p.block_idx, p.start_unix, p.end_unix FROM schedules s \
             LEFT JOIN LATERAL (SELECT block_idx, start_unix, end_unix FROM periods \
               WHERE schedule_id = s.id AND start_unix > $2 - s.max_period_seconds \
               AND start_unix < $3 AND end_unix > $2 ORDER BY start_unix) p ON true \
             WHERE s.id = $1",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .fetch(&self.pool);
        let mut version = None;
        let mut found: Vec<(u32, i64, i64)> = Vec::new();
        let mut sorted = true;
        while let Some((v, b, s, e)) = rows.try_next().await? {
            version = Some(v);
            if let (Some(b), Some(s), Some(e)) = (b, s, e) {
                sorted &= found.last().is_none_or(|&(_, prev, _)| prev <= s);
                found.push((b as u32, s, e));
            }
        }
        let version = version.ok_or(StoreError::NotFound)?;
        // The lateral scan yields start order; sort only if a plan did not.
        let out = if sorted {
            let mut p = PeriodColumns::with_capacity(found.len());
            for (b, s, e) in found {
                p.push(b, s, e);
            }
            p
        } else {
            PeriodColumns::from_unsorted(found)
        };
        Ok((version, out))
    }

    async fn changes_after(&self, id: i64, version: i64) -> StoreResult<Vec<ChangeRow>> {
        let rows: Vec<(i64, i64, i64, bool)> = sqlx::query_as(
            "SELECT version, span_start, span_end, all_bins FROM schedule_changes \
             WHERE schedule_id = $1 AND version > $2 ORDER BY version",
        )
        .bind(id)
        .bind(version)
        .fetch_all(&self.pool)
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
             WHERE schedule_id = $1 AND key_hash = $2 AND first_bin < $4 AND end_bin > $3 \
             ORDER BY first_bin",
        )
        .bind(id)
        .bind(key_hash)
        .bind(first)
        .bind(end)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM bin_extents WHERE schedule_id = $1 AND key_hash = $2 AND cache_key = $3 \
             AND first_bin >= $4 AND end_bin <= $5 AND version <= $6",
        )
        .bind(x.schedule_id)
        .bind(x.key_hash)
        .bind(&x.key)
        .bind(x.first_bin)
        .bind(x.end_bin)
        .bind(x.version)
        .execute(&mut *tx)
        .await?;
        // Skip the write when the schedule was deleted meanwhile.
        sqlx::query(
            "INSERT INTO bin_extents (schedule_id, key_hash, cache_key, version, first_bin, end_bin, \
             payload, created_at_ms) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE EXISTS (SELECT 1 FROM schedules WHERE id = $1)",
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
        let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(job_row).transpose()
    }

    async fn job_progress(&self, id: i64, progress: f64, message: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'running', progress = $2, message = $3, \
             started_at_ms = COALESCE(started_at_ms, $4) WHERE id = $1",
        )
        .bind(id)
        .bind(progress)
        .bind(message)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job_done(&self, job: &JobRow, summary_json: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let written =
            sqlx::query("UPDATE schedules SET summary = $3 WHERE id = $1 AND version = $2")
                .bind(job.schedule_id)
                .bind(job.schedule_version)
                .bind(summary_json)
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
            "UPDATE jobs SET state = 'done', progress = 1, message = $2, error = NULL, \
             finished_at_ms = $3 WHERE id = $1",
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
            "UPDATE jobs SET state = 'failed', error = $2, finished_at_ms = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn recreate_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error = 'interrupted: the server stopped before the \
             job finished; a new job was created', finished_at_ms = $1 \
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
            sqlx::query("UPDATE schedules SET latest_job_id = $2 WHERE id = $1")
                .bind(sid)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await?;
            jobs.push(job_row(&r)?);
        }
        tx.commit().await?;
        Ok(jobs)
    }
}
