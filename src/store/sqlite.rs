//! The SQLite dialect (the embedded default): one writer connection (SQLite
//! has one writer anyway; a single connection avoids lock-upgrade errors),
//! a pool of read-only connections over WAL (a read transaction is one
//! snapshot), multi-row inserts inside one transaction. The process that
//! serves a file claims it (`<file>.lock`): every write goes through that
//! process, so it answers from the heads it knows, without a read.

use super::sql::{Dialect, SqlStore};
use super::{KnownHeads, Notice, Pending, PoolConfig, StoreError, StoreResult, VersionGroup};
use crate::model::{BlockMeta, PackedChunk};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a write waits for the one writer connection (the write of a
/// 400 MB upload takes seconds).
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// SQLite allows 32,766 bound values per statement.
const MAX_BINDS: usize = 32_000;

/// The SQLite dialect.
pub struct Lite {
    read: SqlitePool,
    write: SqlitePool,
    /// Set when this process serves the file: it holds the file's claim
    /// and answers from the heads it knows, which its own writes keep
    /// current (no other process writes the file).
    served: Option<Served>,
}

/// The claim of the process serving a SQLite file.
struct Served {
    /// `<file>.lock`, locked for as long as the claim holds.
    claim: std::sync::Mutex<Option<std::fs::File>>,
    known: Arc<KnownHeads>,
}

impl Served {
    /// Claims `db` for this process; fails while another process serves it.
    fn claim(db: &Path) -> StoreResult<Served> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(sqlx::Error::Io)?;
        if file.try_lock().is_err() {
            return Err(StoreError::Claimed(format!(
                "another visbin process serves {} (it holds {}): one process serves a SQLite \
                 file; stop that one, or use Postgres to run several replicas",
                db.display(),
                path.display()
            )));
        }
        let known = KnownHeads::new();
        // Trusted for as long as the claim holds: every write goes through
        // this process, which applies its own notices.
        let epoch = known.begin_epoch();
        known.extend(epoch, Instant::now() + FOREVER);
        Ok(Served {
            claim: std::sync::Mutex::new(Some(file)),
            known,
        })
    }
}

/// How long a claimed file's heads are trusted: until the claim ends.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The SQLite store.
pub type SqliteStore = SqlStore<Lite>;

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn connect(url: &str, config: PoolConfig) -> StoreResult<SqliteStore> {
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
        // Claimed before anything is written: a second server of the file
        // is refused before it migrates or moves anything.
        let served = if config.serving {
            Some(Served::claim(opts.get_filename())?)
        } else {
            None
        };
        // Uploads are parsed before their transaction starts, so a write
        // holds this connection only while it writes; other writes queue
        // behind it for up to WRITER_WAIT.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(WRITER_WAIT.max(config.acquire_timeout))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqlStore {
            dialect: Lite {
                read,
                write,
                served,
            },
        })
    }
}

#[async_trait]
impl Dialect for Lite {
    type DB = Sqlite;
    const NAME: &'static str = "sqlite";
    // The single writer connection already excludes other writers.
    const LOCK_ROW: &'static str = "";
    const CHECKSUM_LOCK: Option<&'static str> = None;
    const LEGACY_EXISTS: &'static str =
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'periods'";
    // Give the old table's pages back to the file system.
    const AFTER_LEGACY_DROP: Option<&'static str> = Some("VACUUM");

    fn reader(&self) -> &SqlitePool {
        &self.read
    }

    fn writer(&self) -> &SqlitePool {
        &self.write
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn pool_connections(&self) -> (u32, u32) {
        let idle = (self.read.num_idle() + self.write.num_idle()) as u32;
        let size = self.read.size() + self.write.size();
        (idle, size.saturating_sub(idle))
    }

    async fn announce(
        &self,
        _conn: &mut SqliteConnection,
        id: i64,
        version: Option<i64>,
    ) -> Result<Notice, sqlx::Error> {
        Ok(Notice(self.served.as_ref().map(|s| Pending::Local {
            known: s.known.clone(),
            id,
            version,
        })))
    }

    fn known_heads(&self) -> Option<Arc<KnownHeads>> {
        self.served.as_ref().map(|s| s.known.clone())
    }

    async fn release(&self) {
        if let Some(s) = &self.served {
            // Stop trusting first: another process may serve the file next.
            s.known.end_epoch();
            s.claim.lock().expect("not poisoned").take();
        }
    }

    async fn begin_snapshot(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.read.begin().await
    }

    async fn write_blocks(
        conn: &mut SqliteConnection,
        schedule_id: i64,
        first: i64,
        blocks: &[BlockMeta],
    ) -> Result<(), sqlx::Error> {
        const PER_ROW: usize = 6;
        for (c, rows) in blocks.chunks(MAX_BINDS / PER_ROW).enumerate() {
            let base = first + (c * (MAX_BINDS / PER_ROW)) as i64;
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO blocks (schedule_id, block_idx, identity, priority, scheduled, \
                 period_count) ",
            );
            q.push_values(rows.iter().enumerate(), |mut row, (i, b)| {
                row.push_bind(schedule_id)
                    .push_bind(base + i as i64)
                    .push_bind(b.identity.as_str())
                    .push_bind(b.priority)
                    .push_bind(b.scheduled)
                    .push_bind(b.period_count);
            });
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn write_chunks(
        conn: &mut SqliteConnection,
        schedule_id: i64,
        group: VersionGroup,
        block_base: i64,
        chunks: &[PackedChunk],
    ) -> Result<(), sqlx::Error> {
        const PER_ROW: usize = 8;
        for rows in chunks.chunks(MAX_BINDS / PER_ROW) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO period_chunks (schedule_id, first_version, version, block_base, \
                 chunk_start, period_count, max_end, payload) ",
            );
            q.push_values(rows, |mut row, c| {
                row.push_bind(schedule_id)
                    .push_bind(group.first)
                    .push_bind(group.last)
                    .push_bind(block_base)
                    .push_bind(c.chunk_start)
                    .push_bind(c.period_count)
                    .push_bind(c.max_end)
                    .push_bind(c.payload.as_slice());
            });
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn existing_identity(
        conn: &mut SqliteConnection,
        id: i64,
        identities: &[&str],
    ) -> Result<Option<String>, sqlx::Error> {
        for batch in identities.chunks(MAX_BINDS - 1) {
            let mut q =
                QueryBuilder::<Sqlite>::new("SELECT identity FROM blocks WHERE schedule_id = ");
            q.push_bind(id).push(" AND identity IN (");
            let mut list = q.separated(", ");
            for identity in batch {
                list.push_bind(*identity);
            }
            q.push(") LIMIT 1");
            let clash: Option<String> = q
                .build_query_scalar()
                .persistent(false)
                .fetch_optional(&mut *conn)
                .await?;
            if clash.is_some() {
                return Ok(clash);
            }
        }
        Ok(None)
    }
}
