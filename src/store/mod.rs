//! Persistence: the [`Store`] trait and its two dialects. Only this module
//! speaks SQL. Postgres is the production and scale-out store; SQLite is the
//! embedded default. Queries are built at run time because compile-time
//! checks would cover one dialect only.

mod postgres;
mod sqlite;

use crate::engine::{BlockTable, PeriodColumns};
use crate::model::{Block, Header};
use async_trait::async_trait;
use std::sync::Arc;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The schedule (or job) does not exist.
    #[error("not found")]
    NotFound,
    /// An appended block repeats an identity the schedule already has.
    #[error("block identity \"{0}\" already exists in this schedule")]
    IdentityExists(String),
    /// The database could not be reached or failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A schedule as stored (everything but its blocks and periods).
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRow {
    pub version: i64,
    pub start: i64,
    pub end: i64,
    pub all: bool,
}

/// A background job as stored.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct ExtentRow {
    pub schedule_id: i64,
    pub key_hash: i64,
    /// The full cache key (without version), compared on read.
    pub key: String,
    pub version: i64,
    pub first_bin: i64,
    pub end_bin: i64,
    /// Counters, encoded by the cache module.
    pub payload: Vec<u8>,
}

/// What an upload's commit should record besides its rows.
#[derive(Debug, Clone)]
pub struct UploadTotals {
    pub header: Header,
    pub checksum: String,
    pub blocks_digest: String,
    pub stats: crate::model::UploadStats,
}

/// What an append's commit should record.
#[derive(Debug, Clone)]
pub struct AppendTotals {
    pub checksum: String,
    pub blocks_digest: String,
    pub stats: crate::model::UploadStats,
    /// Merged spans of the appended periods.
    pub changed_spans: Vec<(i64, i64)>,
}

/// How an upload or append ended.
#[derive(Debug, Clone)]
pub enum Committed {
    /// A new schedule (or the appended one) and its new summary job.
    Stored { schedule: ScheduleRow, job_id: i64 },
    /// Same content as an existing schedule; nothing was stored.
    Duplicate(ScheduleRow),
}

/// An open upload or append transaction. Dropping it without `commit`
/// rolls everything back, so a refused, cancelled or disconnected upload
/// leaves nothing behind.
#[async_trait]
pub trait Ingest: Send {
    /// Writes the next blocks (their indices follow the ones written so far).
    async fn add_blocks(&mut self, blocks: &[Block]) -> StoreResult<()>;
    /// Finishes an upload: refuses duplicates, records totals, creates the
    /// summary job, commits.
    async fn commit_upload(self: Box<Self>, totals: UploadTotals) -> StoreResult<Committed>;
    /// Finishes an append: bumps the version, records changed spans,
    /// updates totals, creates the summary job, commits.
    async fn commit_append(self: Box<Self>, totals: AppendTotals) -> StoreResult<Committed>;
    /// The schedule as it was when the transaction locked it (appends only).
    fn schedule(&self) -> Option<&ScheduleRow>;
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

    /// Opens an upload of a new schedule.
    async fn begin_upload(&self) -> StoreResult<Box<dyn Ingest>>;
    /// Opens an append to schedule `id`, locking it against other appends.
    async fn begin_append(&self, id: i64) -> StoreResult<Box<dyn Ingest>>;
    /// The schedule with this checksum, if any.
    async fn find_by_checksum(&self, checksum: &str) -> StoreResult<Option<ScheduleRow>>;

    /// One schedule by id (a primary-key lookup).
    async fn schedule(&self, id: i64) -> StoreResult<Option<ScheduleRow>>;
    /// Schedules, newest first, with ids below `before` if given.
    async fn list_schedules(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> StoreResult<Vec<ScheduleRow>>;
    /// Removes a schedule, its blocks, periods, changes and cached extents.
    async fn delete_schedule(&self, id: i64) -> StoreResult<bool>;

    /// All blocks of a schedule by index.
    async fn blocks(&self, id: i64) -> StoreResult<BlockTable>;
    /// The periods that may meet `[from, to)` (start-sorted) together with
    /// the version they belong to, read in one snapshot.
    async fn window_periods(
        &self,
        id: i64,
        from: i64,
        to: i64,
    ) -> StoreResult<(i64, PeriodColumns)>;
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
    /// Marks a job running with `progress` in 0..1 and a message.
    async fn job_progress(&self, id: i64, progress: f64, message: &str) -> StoreResult<()>;
    /// Finishes a job: stores the summary if the schedule is still at the
    /// job's version, and marks the job done, in one transaction.
    async fn job_done(&self, job: &JobRow, summary_json: &str) -> StoreResult<()>;
    /// Marks a job failed.
    async fn job_failed(&self, id: i64, error: &str) -> StoreResult<()>;
    /// On start: fails unfinished jobs (they died with their process) and
    /// creates a new job for every schedule whose summary is missing.
    async fn recreate_jobs(&self) -> StoreResult<Vec<JobRow>>;
}

/// Opens the store named by `url` and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = PgStore::connect(url, max_connections)
            .await
            .context("Failed to connect to Postgres")?;
        Ok(Arc::new(s))
    } else if url.starts_with("sqlite:") {
        let s = SqliteStore::connect(url, max_connections)
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

pub(crate) fn append_update(old: &ScheduleRow, t: &AppendTotals) -> AppendUpdate {
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
    let (range_start, range_end) = if old.range_fixed {
        (old.range_start, old.range_end)
    } else {
        (
            min_opt(old.range_start, t.stats.min_start),
            max_opt(old.range_end, t.stats.max_end),
        )
    };
    let priority_min = min_opt(old.priority_min, t.stats.priority_min);
    let priority_max = max_opt(old.priority_max, t.stats.priority_max);
    AppendUpdate {
        version: old.version + 1,
        range_start,
        range_end,
        block_count: old.block_count + t.stats.blocks as i64,
        period_count: old.period_count + t.stats.periods as i64,
        empty_periods_dropped: old.empty_periods_dropped + t.stats.empty_periods_dropped as i64,
        priority_min,
        priority_max,
        max_period_seconds: old.max_period_seconds.max(t.stats.max_period_seconds),
        all_bins_changed: (priority_min, priority_max) != (old.priority_min, old.priority_max),
    }
}
