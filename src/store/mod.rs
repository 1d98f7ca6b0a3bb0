//! Persistence: the [`Store`] trait, its rows, and its two dialects. Only
//! this module speaks SQL. Postgres is the production and scale-out store;
//! SQLite is the embedded default.
//!
//! - `sql.rs`: everything both dialects share — row mapping, schedules,
//!   blocks, period chunks, changes, extents, jobs, the legacy move — as one
//!   implementation generic over the dialect. Statements use `$n`
//!   placeholders, which both databases accept.
//! - `postgres.rs`, `sqlite.rs`: what truly differs — pools, snapshots,
//!   bulk writes (`COPY` vs batched `INSERT`), locking.
//! - `known.rs`, `watch.rs`: head leases (Postgres) — the schedule heads a
//!   replica may answer from without a database read, kept current by
//!   notices every append and delete waits on before it is acknowledged.
//!
//! Queries are built at run time because compile-time checks would cover
//! one dialect only.

mod known;
mod postgres;
mod sql;
mod sqlite;
mod watch;

use crate::model::{BlockMeta, Header, PackedChunk, UploadStats};
use async_trait::async_trait;
use std::sync::Arc;

pub use known::{KnownHeads, KnownStats, Ticket};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use watch::{noting_stored_writes, ConfirmStats};

/// Errors of the storage layer, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The schedule (or job) does not exist.
    #[error("not found")]
    NotFound,
    /// An appended block repeats an identity the schedule already has.
    #[error("block identity \"{0}\" already exists in this schedule")]
    IdentityExists(String),
    /// An append would take the schedule past its limit of blocks or
    /// periods.
    #[error("the schedule would hold more than {limit} {what}")]
    TooMany { what: &'static str, limit: u64 },
    /// The database cannot be reached right now (connection refused or
    /// lost, pool exhausted, server shutting down, database locked): the
    /// same request may succeed shortly.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database answered with an error.
    #[error(transparent)]
    Database(sqlx::Error),
    /// Migrations could not be applied.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write committed, but not every replica holding a head lease
    /// confirmed it in time (the database became unreachable meanwhile):
    /// the write is stored, and every replica sees it once its lease has
    /// run out at the latest.
    #[error("stored, but {0}")]
    Unconfirmed(String),
    /// The database is served by another process already (a SQLite file
    /// has one server).
    #[error("{0}")]
    Claimed(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The rows to write could not be produced (the packer's spool file
    /// failed); nothing was written.
    #[error("{0}")]
    Feed(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// Errors that say "not now" rather than "never".
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // Connection exceptions (08…), shutdown (57P0x), too many
                // connections (53300).
                let code = pg.code();
                code.starts_with("08") || code.starts_with("57P0") || code == "53300"
            } else {
                // SQLite's extended codes of BUSY (5) and LOCKED (6): the
                // writer was held past the busy timeout.
                db.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A schedule as stored (everything but its blocks and periods).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ScheduleRow {
    pub id: i64,
    pub name: String,
    pub checksum: String,
    /// Hex of the order-independent sum of block digests (see `model`).
    pub blocks_digest: String,
    pub range_start: Option<i64>,
    pub range_end: Option<i64>,
    /// True when the range came from `schedule_period` (fixed).
    pub range_fixed: bool,
    /// Bumped by every append; cached bins carry the version they saw.
    pub version: i64,
    pub created_at_ms: i64,
    pub block_count: i64,
    pub period_count: i64,
    pub empty_periods_dropped: i64,
    pub priority_min: Option<f64>,
    pub priority_max: Option<f64>,
    /// Longest period; bounds the window lookup on starts.
    pub max_period_seconds: i64,
    pub latest_job_id: Option<i64>,
    /// The summary JSON of the current version, once its job is done.
    pub summary: Option<String>,
}

impl ScheduleRow {
    /// A row of schedule `id` at `version` with nothing else in it (for
    /// unit tests).
    #[cfg(test)]
    pub(crate) fn bare(id: i64, version: i64) -> ScheduleRow {
        ScheduleRow {
            id,
            name: "t".into(),
            checksum: String::new(),
            blocks_digest: String::new(),
            range_start: None,
            range_end: None,
            range_fixed: false,
            version,
            created_at_ms: 0,
            block_count: 0,
            period_count: 0,
            empty_periods_dropped: 0,
            priority_min: None,
            priority_max: None,
            max_period_seconds: 0,
            latest_job_id: None,
            summary: None,
        }
    }

    /// The schedule header as uploaded (for the checksum).
    pub fn header(&self) -> Header {
        Header {
            name: self.name.clone(),
            schedule_period: if self.range_fixed {
                self.range_start.zip(self.range_end)
            } else {
                None
            },
        }
    }
}

/// One recorded change of an append: the bins meeting `[start, end)` of
/// every grid changed at `version`; `all` means every bin did (the
/// priority range changed, so quartiles moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangeRow {
    pub version: i64,
    #[sqlx(rename = "span_start")]
    pub start: i64,
    #[sqlx(rename = "span_end")]
    pub end: i64,
    #[sqlx(rename = "all_bins")]
    pub all: bool,
}

/// A background job as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub schedule_id: i64,
    pub schedule_version: i64,
    pub state: String,
    pub progress: f64,
    pub message: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// A persisted cache extent (tier 2): a contiguous run of bins of one key.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExtentRow {
    pub schedule_id: i64,
    pub key_hash: i64,
    /// The full cache key (without version), compared on read.
    #[sqlx(rename = "cache_key")]
    pub key: String,
    pub version: i64,
    pub first_bin: i64,
    pub end_bin: i64,
    /// Counters, encoded by the cache module.
    pub payload: Vec<u8>,
}

/// The versions a row of packed periods holds: `first..=last`. A schedule's
/// chunk rows form version *groups* — the periods of one version, or of
/// several consecutive versions once compacted — whose ranges are disjoint
/// and together cover every version that added periods. Appends add blocks
/// only, so the groups' blocks are disjoint too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionGroup {
    pub first: i64,
    pub last: i64,
}

/// One stored chunk row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    pub group: VersionGroup,
    /// Block indices in the payload are relative to this.
    pub block_base: i64,
    pub chunk: PackedChunk,
}

/// Which chunk rows a period read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSelect {
    /// Every row (a full load).
    All,
    /// Rows of groups ending after this version (the versions appended
    /// since a load).
    After(i64),
    /// Rows that can hold periods meeting `[from, to)`.
    Window { from: i64, to: i64 },
}

/// Chunk rows read in one snapshot together with the schedule's row: the
/// rows selected among those stored at `head.version`.
#[derive(Debug, Clone)]
pub struct ChunkSnapshot {
    pub head: ScheduleRow,
    pub rows: Vec<ChunkRow>,
}

/// A chunk group as stored: its versions, block base and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: VersionGroup,
    pub block_base: i64,
    pub rows: i64,
    pub periods: i64,
}

/// Chunks to write, arriving in chunk order as they are packed (a bounded
/// channel fed from the blocking pool, so a large upload is never held
/// packed in memory all at once); an `Err` aborts the write.
pub type ChunkFeed = tokio::sync::mpsc::Receiver<Result<PackedChunk, String>>;

/// A new schedule, parsed and packed, ready to be written in one go.
#[derive(Debug)]
pub struct NewSchedule {
    pub header: Header,
    pub checksum: String,
    pub stats: UploadStats,
    pub blocks: Vec<BlockMeta>,
    /// Blocks relative to block 0.
    pub chunks: ChunkFeed,
}

/// Blocks to append, parsed and packed. `stats.digest` is the digest of
/// these blocks alone; the store combines it with the schedule's.
#[derive(Debug)]
pub struct NewBlocks {
    pub stats: UploadStats,
    /// Merged spans of the appended periods.
    pub changed_spans: Vec<(i64, i64)>,
    pub blocks: Vec<BlockMeta>,
    /// Blocks relative to the first appended block.
    pub chunks: ChunkFeed,
    /// The most blocks and periods the schedule may hold after the append
    /// (checked under the schedule's lock, against concurrent appends).
    pub max_totals: (u64, u64),
}

/// How an upload ended.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new schedule and its summary job.
    Created { schedule: ScheduleRow, job_id: i64 },
    /// Same content as an existing schedule; nothing was stored.
    Duplicate(ScheduleRow),
}

/// A stored append: the schedule as it is now and its new summary job.
#[derive(Debug)]
pub struct Appended {
    pub schedule: ScheduleRow,
    pub job_id: i64,
    /// To pass to [`Store::confirm`] before the append is acknowledged.
    pub notice: Notice,
}

/// A committed write's notice to whoever answers from known heads; see
/// [`Store::confirm`].
pub struct Notice(Option<Pending>);

/// Who must apply a notice before its write is acknowledged.
enum Pending {
    /// The replicas holding head leases (Postgres).
    Leases(watch::Announcement),
    /// This process's own table: it is the only server of the database
    /// (SQLite).
    Local {
        known: Arc<KnownHeads>,
        id: i64,
        version: Option<i64>,
    },
}

impl Notice {
    /// A notice nobody waits for.
    pub fn none() -> Notice {
        Notice(None)
    }

    /// Applies a local notice at once; what is left to confirm with the
    /// replicas holding leases.
    fn settle_locally(self) -> Option<watch::Announcement> {
        match self.0 {
            Some(Pending::Local { known, id, version }) => {
                known.changed(id, version);
                None
            }
            Some(Pending::Leases(a)) => Some(a),
            None => None,
        }
    }
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            None => "Notice(none)",
            Some(Pending::Leases(_)) => "Notice(leases)",
            Some(Pending::Local { .. }) => "Notice(local)",
        })
    }
}

/// Everything visbin persists.
#[async_trait]
pub trait Store: Send + Sync {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Readiness: the database answers and every migration is applied.
    async fn ready(&self) -> StoreResult<()>;
    /// Pool connections as (idle, active).
    fn pool_connections(&self) -> (u32, u32);

    /// The heads this replica may answer from without a database read,
    /// where the store keeps head leases (Postgres; `None` elsewhere).
    fn known_heads(&self) -> Option<Arc<KnownHeads>> {
        None
    }
    /// Waits until every replica holding a head lease has applied a
    /// committed append's notice; only then may the append be
    /// acknowledged. [`StoreError::Unconfirmed`] if that cannot be known in
    /// time.
    async fn confirm(&self, _notice: Notice) -> StoreResult<()> {
        Ok(())
    }
    /// What confirmations did, where the store keeps head leases.
    fn confirm_stats(&self) -> Option<ConfirmStats> {
        None
    }
    /// Gives up this replica's head lease (at shutdown), so that writers
    /// elsewhere stop waiting for it.
    async fn release(&self) {}

    /// The schedule with this checksum, if any.
    async fn find_by_checksum(&self, checksum: &str) -> StoreResult<Option<ScheduleRow>>;
    /// Writes a new schedule, its blocks, its chunks and its summary job in
    /// one transaction — unless a schedule with the same checksum exists
    /// (concurrent identical uploads are serialised: exactly one creates).
    async fn insert_schedule(&self, new: NewSchedule) -> StoreResult<Inserted>;
    /// Appends blocks to schedule `id` in one transaction: refuses
    /// identities it has ([`StoreError::IdentityExists`]), writes the blocks
    /// and their chunks as a new version, records the changed spans,
    /// updates the totals and creates the summary job.
    async fn append_blocks(&self, id: i64, new: NewBlocks) -> StoreResult<Appended>;

    /// One schedule by id (a primary-key lookup).
    async fn schedule(&self, id: i64) -> StoreResult<Option<ScheduleRow>>;
    /// Schedules, newest first, with ids below `before` if given.
    async fn list_schedules(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> StoreResult<Vec<ScheduleRow>>;
    /// Removes a schedule, its blocks, chunks, changes and cached extents;
    /// returns once every replica holding a head lease has applied it
    /// (see [`Store::confirm`]).
    async fn delete_schedule(&self, id: i64) -> StoreResult<bool>;

    /// Blocks of a schedule from index `first` on, by index (blocks are
    /// append-only: a reader extends what it holds).
    async fn blocks_from(&self, id: i64, first: i64) -> StoreResult<Vec<BlockMeta>>;
    /// The schedule's row and its chunk rows chosen by `select`, ordered by
    /// group then chunk, read in one snapshot; `None` if the schedule does
    /// not exist.
    async fn period_chunks(
        &self,
        id: i64,
        select: ChunkSelect,
    ) -> StoreResult<Option<ChunkSnapshot>>;
    /// The chunk groups of a schedule, oldest first.
    async fn chunk_groups(&self, id: i64) -> StoreResult<Vec<GroupInfo>>;
    /// Chunk rows of the groups within `versions` (inclusive), by chunk.
    async fn group_chunks(&self, id: i64, versions: VersionGroup) -> StoreResult<Vec<ChunkRow>>;
    /// Compaction: replaces the groups `old` (which must still be stored
    /// exactly as described) by one group `merged` of `chunks`, in one
    /// transaction. `false` when they changed meanwhile (nothing written).
    async fn replace_groups(
        &self,
        id: i64,
        old: &[GroupInfo],
        merged: VersionGroup,
        block_base: i64,
        chunks: &[PackedChunk],
    ) -> StoreResult<bool>;
    /// Changes recorded after `version`.
    async fn changes_after(&self, id: i64, version: i64) -> StoreResult<Vec<ChangeRow>>;

    /// Persisted extents of one key meeting bins `[first, end)`.
    async fn read_extents(
        &self,
        id: i64,
        key_hash: i64,
        first: i64,
        end: i64,
    ) -> StoreResult<Vec<ExtentRow>>;
    /// Stores an extent, replacing the extents of its key that it contains.
    async fn write_extent(&self, extent: &ExtentRow) -> StoreResult<()>;

    /// One job.
    async fn job(&self, id: i64) -> StoreResult<Option<JobRow>>;
    /// Marks a job running with `progress` in 0..1 and a message; `false`
    /// when it is not queued or running any more (another replica took it
    /// over after its lease expired: its runner should stop).
    async fn job_progress(&self, id: i64, progress: f64, message: &str) -> StoreResult<bool>;
    /// Finishes a job: stores the summary if the schedule is still at the
    /// job's version, and marks the job done unless it was failed
    /// meanwhile (taken over), in one transaction.
    async fn job_done(&self, job: &JobRow, summary_json: &str) -> StoreResult<()>;
    /// Marks a job failed (unless it finished meanwhile).
    async fn job_failed(&self, id: i64, error: &str) -> StoreResult<()>;
    /// Takes job `id` for `owner` until `until_ms`; `false` if it is not
    /// queued or running any more.
    async fn claim_job(&self, id: i64, owner: &str, until_ms: i64) -> StoreResult<bool>;
    /// Extends the leases of `owner`'s unfinished jobs to `until_ms` (the
    /// heartbeat); returns how many it extended.
    async fn renew_leases(&self, owner: &str, until_ms: i64) -> StoreResult<u64>;
    /// Fails the unfinished jobs whose lease expired by `now_ms` (their
    /// replica died; a job never claimed counts from its creation, with
    /// `lease_ms`), and creates a job owned by `owner` for every schedule
    /// whose summary is missing and whose version no live job covers —
    /// skipping versions whose job failed of an error unless
    /// `retry_failed` (a replica's start retries them; its heartbeat does
    /// not, so a job that fails for good is not recomputed forever).
    /// Replicas do this one at a time.
    async fn recreate_jobs(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        retry_failed: bool,
    ) -> StoreResult<Vec<JobRow>>;

    /// Schedules whose periods are still in the one-row-per-period layout
    /// of before packed chunks; `None` once that table is gone.
    async fn legacy_schedules(&self) -> StoreResult<Option<Vec<i64>>>;
    /// A legacy schedule's version and periods as `(block, start, end)`.
    async fn legacy_periods(&self, id: i64) -> StoreResult<Option<(i64, Vec<(i64, i64, i64)>)>>;
    /// Writes a legacy schedule's periods as one group `1..=version` of
    /// chunks and deletes its legacy rows, in one transaction; `false` if
    /// the schedule moved past `version` meanwhile.
    async fn adopt_legacy(
        &self,
        id: i64,
        version: i64,
        chunks: &[PackedChunk],
    ) -> StoreResult<bool>;
    /// Drops the legacy table once every schedule has moved.
    async fn drop_legacy(&self) -> StoreResult<()>;
}

/// How the store's connection pool behaves.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_connections: u32,
    /// How long a call waits for a connection (connecting included) before
    /// it fails as [`StoreError::Unavailable`].
    pub acquire_timeout: std::time::Duration,
    /// How long a head lease lasts (Postgres); zero: hold none, so every
    /// burst of requests reads its schedule's head from the database.
    pub head_lease: std::time::Duration,
    /// This process serves the database (`visbin serve`): on SQLite it
    /// claims the file for itself, so that it may answer from the heads it
    /// knows (every write goes through it).
    pub serving: bool,
}

impl PoolConfig {
    /// `max_connections` connections, waiting at most `acquire_timeout`.
    pub fn new(max_connections: u32, acquire_timeout: std::time::Duration) -> PoolConfig {
        PoolConfig {
            max_connections,
            acquire_timeout,
            head_lease: std::time::Duration::ZERO,
            serving: false,
        }
    }

    /// The same for the process that serves the database.
    pub fn serving(mut self) -> PoolConfig {
        self.serving = true;
        self
    }

    /// The same with head leases of `lease` (zero: none).
    pub fn with_head_lease(mut self, lease: std::time::Duration) -> PoolConfig {
        self.head_lease = lease;
        self
    }
}

/// Opens the store named by `url` and applies migrations.
pub async fn connect(url: &str, pool: PoolConfig) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = PgStore::connect(url, pool)
            .await
            .context("Failed to connect to Postgres")?;
        Ok(Arc::new(s))
    } else if url.starts_with("sqlite:") {
        let s = SqliteStore::connect(url, pool)
            .await
            .context("Failed to open the SQLite database")?;
        Ok(Arc::new(s))
    } else {
        anyhow::bail!("DATABASE_URL must start with postgres:// or sqlite:// (got `{url}`)")
    }
}

/// Milliseconds since the Unix epoch, for timestamps stored as integers
/// (the same column type in both dialects).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The schedule fields an append sets (dialect-neutral arithmetic).
#[derive(Debug, Clone)]
pub(crate) struct AppendUpdate {
    pub version: i64,
    pub checksum: String,
    pub blocks_digest: String,
    pub range_start: Option<i64>,
    pub range_end: Option<i64>,
    pub block_count: i64,
    pub period_count: i64,
    pub empty_periods_dropped: i64,
    pub priority_min: Option<f64>,
    pub priority_max: Option<f64>,
    pub max_period_seconds: i64,
    /// The priority range moved, so every quartile (every bin) may change.
    pub all_bins_changed: bool,
}

/// What appending `stats` to `old` makes of the schedule's row; `None` if
/// the stored digest cannot be read.
pub(crate) fn append_update(old: &ScheduleRow, stats: &UploadStats) -> Option<AppendUpdate> {
    fn min_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y < x { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
    fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y > x { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
    let mut digest = crate::model::BlockDigest::from_hex(&old.blocks_digest)?;
    digest.combine(&stats.digest);
    let (range_start, range_end) = if old.range_fixed {
        (old.range_start, old.range_end)
    } else {
        (
            min_opt(old.range_start, stats.min_start),
            max_opt(old.range_end, stats.max_end),
        )
    };
    let priority_min = min_opt(old.priority_min, stats.priority_min);
    let priority_max = max_opt(old.priority_max, stats.priority_max);
    Some(AppendUpdate {
        version: old.version + 1,
        checksum: crate::model::schedule_checksum(&old.header(), &digest),
        blocks_digest: digest.to_hex(),
        range_start,
        range_end,
        block_count: old.block_count + stats.blocks as i64,
        period_count: old.period_count + stats.periods as i64,
        empty_periods_dropped: old.empty_periods_dropped + stats.empty_periods_dropped as i64,
        priority_min,
        priority_max,
        max_period_seconds: old.max_period_seconds.max(stats.max_period_seconds),
        all_bins_changed: (priority_min, priority_max) != (old.priority_min, old.priority_max),
    })
}
