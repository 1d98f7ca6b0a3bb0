//! The Postgres dialect: one pool, `COPY` for block rows, one `UNNEST`
//! statement for chunk rows, repeatable-read snapshots, row locks and an
//! advisory lock against concurrent identical uploads.

use super::sql::{schedule_by_id, Dialect, SqlStore};
use super::watch::{Announcement, HeadWatch};
use super::{
    ConfirmStats, KnownHeads, Notice, Pending, PoolConfig, ScheduleRow, StoreResult, VersionGroup,
};
use crate::model::{BlockMeta, PackedChunk};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres, Transaction};
use std::str::FromStr;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// COPY payloads are sent in pieces of about this many bytes.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// The Postgres dialect.
pub struct Pg {
    pool: PgPool,
    head: HeadLine,
    watch: std::sync::Arc<HeadWatch>,
}

/// One connection kept for the head read. A pooled read costs two round
/// trips (sqlx pings a pooled connection before lending it) and a task to
/// hand it back; the head read runs for every burst of requests, so it
/// gets a connection of its own, opened on first use and again after an
/// error. While it is busy (another schedule's head read), reads use the
/// pool, so schedules never queue behind each other.
struct HeadLine {
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    connect_timeout: std::time::Duration,
}

impl HeadLine {
    /// The row over the kept connection; `None` while it is busy.
    async fn row(
        &self,
        pool: &PgPool,
        id: i64,
    ) -> Option<Result<Option<ScheduleRow>, sqlx::Error>> {
        let mut slot = self.conn.try_lock().ok()?;
        if slot.is_none() {
            let opts = pool.connect_options();
            match tokio::time::timeout(self.connect_timeout, opts.connect()).await {
                Ok(Ok(conn)) => *slot = Some(conn),
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) => return Some(Err(sqlx::Error::PoolTimedOut)),
            }
        }
        let conn = slot.as_mut().expect("connected above");
        let sql = schedule_by_id();
        let result = sqlx::query_as::<Postgres, ScheduleRow>(sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await;
        if result.is_err() {
            // Whatever failed, the next read starts on a new connection.
            *slot = None;
        }
        Some(result)
    }
}

/// The Postgres store.
pub type PgStore = SqlStore<Pg>;

impl PgStore {
    /// Connects and applies migrations.
    pub async fn connect(url: &str, config: PoolConfig) -> StoreResult<PgStore> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        let head = HeadLine {
            conn: tokio::sync::Mutex::new(None),
            connect_timeout: config.acquire_timeout,
        };
        let watch = HeadWatch::new(
            pool.clone(),
            pool.connect_options().as_ref().clone(),
            config.head_lease,
            config.acquire_timeout,
        );
        Ok(SqlStore {
            dialect: Pg { pool, head, watch },
        })
    }
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

#[async_trait]
impl Dialect for Pg {
    type DB = Postgres;
    const NAME: &'static str = "postgres";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const CHECKSUM_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))");
    const LEGACY_EXISTS: &'static str =
        "SELECT CAST(1 AS BIGINT) WHERE to_regclass('periods') IS NOT NULL";
    const AFTER_LEGACY_DROP: Option<&'static str> = None;

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn pool_connections(&self) -> (u32, u32) {
        let idle = self.pool.num_idle() as u32;
        (idle, self.pool.size().saturating_sub(idle))
    }

    async fn head_row(&self, id: i64) -> Option<Result<Option<ScheduleRow>, sqlx::Error>> {
        self.head.row(&self.pool, id).await
    }

    async fn announce(
        &self,
        conn: &mut PgConnection,
        id: i64,
        version: Option<i64>,
    ) -> Result<Notice, sqlx::Error> {
        let a = self.watch.announce(conn, id, version).await?;
        Ok(Notice(Some(Pending::Leases(a))))
    }

    async fn confirm_leases(&self, a: Announcement) -> StoreResult<()> {
        self.watch.confirm(a).await
    }

    fn known_heads(&self) -> Option<std::sync::Arc<KnownHeads>> {
        Some(self.watch.known())
    }

    fn confirm_stats(&self) -> Option<ConfirmStats> {
        Some(self.watch.stats())
    }

    async fn release(&self) {
        self.watch.release().await
    }

    async fn begin_snapshot(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }

    async fn write_blocks(
        conn: &mut PgConnection,
        schedule_id: i64,
        first: i64,
        blocks: &[BlockMeta],
    ) -> Result<(), sqlx::Error> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut ib = itoa::Buffer::new();
        let mut copy = conn
            .copy_in_raw(
                "COPY blocks (schedule_id, block_idx, identity, priority, scheduled, period_count) \
                 FROM STDIN",
            )
            .await?;
        let mut buf = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
        let sid = ib.format(schedule_id).to_owned();
        for (i, b) in blocks.iter().enumerate() {
            buf.extend_from_slice(sid.as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(ib.format(first + i as i64).as_bytes());
            buf.push(b'\t');
            copy_text(&mut buf, &b.identity);
            buf.push(b'\t');
            // `{:?}` prints the shortest text that reads back as the same f64.
            buf.extend_from_slice(format!("{:?}", b.priority).as_bytes());
            buf.extend_from_slice(if b.scheduled { b"\tt\t" } else { b"\tf\t" });
            buf.extend_from_slice(ib.format(b.period_count).as_bytes());
            buf.push(b'\n');
            if buf.len() >= COPY_CHUNK_BYTES {
                copy.send(buf.as_slice()).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            copy.send(buf.as_slice()).await?;
        }
        copy.finish().await?;
        Ok(())
    }

    async fn write_chunks(
        conn: &mut PgConnection,
        schedule_id: i64,
        group: VersionGroup,
        block_base: i64,
        chunks: &[PackedChunk],
    ) -> Result<(), sqlx::Error> {
        if chunks.is_empty() {
            return Ok(());
        }
        // One statement, the payloads as binary parameters.
        let starts: Vec<i64> = chunks.iter().map(|c| c.chunk_start).collect();
        let counts: Vec<i64> = chunks.iter().map(|c| c.period_count).collect();
        let ends: Vec<i64> = chunks.iter().map(|c| c.max_end).collect();
        let payloads: Vec<&[u8]> = chunks.iter().map(|c| c.payload.as_slice()).collect();
        sqlx::query(
            "INSERT INTO period_chunks (schedule_id, first_version, version, block_base, \
             chunk_start, period_count, max_end, payload) \
             SELECT $1, $2, $3, $4, * FROM UNNEST($5::BIGINT[], $6::BIGINT[], $7::BIGINT[], \
             $8::BYTEA[])",
        )
        .bind(schedule_id)
        .bind(group.first)
        .bind(group.last)
        .bind(block_base)
        .bind(starts)
        .bind(counts)
        .bind(ends)
        .bind(payloads)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn existing_identity(
        conn: &mut PgConnection,
        id: i64,
        identities: &[&str],
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT identity FROM blocks WHERE schedule_id = $1 AND identity = ANY($2) LIMIT 1",
        )
        .bind(id)
        .bind(identities)
        .fetch_optional(conn)
        .await
    }
}
