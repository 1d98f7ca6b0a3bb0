//! The one read path (DESIGN §6): every range query, TSI histogram and
//! summary job goes through [`QueryService`], which owns the head read,
//! the resident period tier, the bin-extent tiers and the response cache.
//!
//! Each answer comes from one version. A request takes its schedule's row
//! (the *head*) first — from the heads the replica knows where it may
//! trust them (`store::KnownHeads`), else by a database read; cached bins,
//! blocks and periods are then taken *as of that version*: extents are
//! checked against the change log up to it, blocks are the first
//! `block_count` of the table, periods are the segments of the groups up
//! to it. When the periods at hand can no longer tell that version apart
//! (a compaction merged it with a later one), the request moves on to the
//! version of the periods it holds and plans again — it never mixes two
//! versions and never fails for it.

mod bins;
mod encode;
mod head;
mod histogram;
mod responses;
mod summary;
mod tables;

pub use bins::{BinQuery, Format};
pub use histogram::HistogramQuery;
pub use responses::{tag_of, Coding, Encoded};

use crate::cache::flight::Flights;
use crate::cache::{MemoryTier, PersistWriter};
use crate::engine::{BinCounts, BinRange, Filter, Grid};
use crate::metrics::Metrics;
use crate::periods::{PeriodSet, PeriodView, Residency, ResidentTier};
use crate::store::{KnownHeads, ScheduleRow, Store, StoreError};
use head::HeadReader;
use responses::{holds_tag, Responses};
use std::sync::Arc;
use std::time::Duration;
use tables::{BlockTables, ChangeLogs};

/// How many times a request may move on to a newer version (see the
/// module doc) before giving up; reaching it would take a compaction per
/// attempt racing the same request.
const MAX_VERSION_MOVES: usize = 8;

/// Errors of the read path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The schedule does not exist (any more).
    #[error("schedule {0} does not exist")]
    NotFound(i64),
    /// The request cannot be answered as asked; `detail` says what to do.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// The store failed.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
    /// More bin computations are running and waiting than allowed
    /// (`VISBIN_MAX_COMPUTATIONS`): retry shortly.
    #[error(
        "{running} bin computations are running and {waiting} waiting, the most allowed \
         (VISBIN_MAX_COMPUTATIONS); retry shortly"
    )]
    Overloaded { running: usize, waiting: usize },
    /// The schedule kept changing under the request (it would take a
    /// compaction per attempt): retrying will succeed.
    #[error("schedule {0} changed version {MAX_VERSION_MOVES} times under one request; retry")]
    Busy(i64),
    /// A computation failed (a bug or corrupt data).
    #[error("internal: {0}")]
    Internal(String),
}

impl QueryError {
    fn invalid(code: &'static str, detail: impl Into<String>) -> QueryError {
        QueryError::Invalid {
            code,
            detail: detail.into(),
        }
    }

    fn store(id: i64, e: Arc<StoreError>) -> QueryError {
        match &*e {
            StoreError::NotFound => QueryError::NotFound(id),
            _ => QueryError::Store(e),
        }
    }
}

/// A step of the read path that may have to start over at a newer version.
enum Step<T> {
    Done(T),
    /// The periods at hand are of this newer head: plan again with it.
    MoveTo(Arc<ScheduleRow>),
}

/// Whether the bins of an answer came from the cache tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Every bin came from a cache tier.
    Hit,
    /// Some bins did.
    Partial,
    /// None did.
    Miss,
}

impl CacheOutcome {
    /// The `X-Cache` header value and metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Partial => "partial",
            CacheOutcome::Miss => "miss",
        }
    }

    fn of(served: usize, total: usize) -> CacheOutcome {
        if served == total {
            CacheOutcome::Hit
        } else if served == 0 {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Partial
        }
    }
}

/// Time spent per stage (for `Server-Timing`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub cache: Duration,
    pub store: Duration,
    pub compute: Duration,
}

/// A serialized answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer; `None` when the caller said it holds the answer with
    /// this tag already (a revalidation: nothing was read or computed).
    pub body: Option<Arc<Encoded>>,
    /// The opaque part of the answer's entity tag: it changes whenever the
    /// answer could (schedule version, normalised request).
    pub tag: Arc<str>,
    pub cache: CacheOutcome,
    pub timing: Timing,
    /// The schedule version the answer is of.
    pub version: i64,
}

/// Limits of the read path.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Most bins one answer may hold.
    pub max_bins: u64,
    /// Bin computations at once; beyond it up to four times as many wait,
    /// more are refused ([`QueryError::Overloaded`]).
    pub max_computations: usize,
}

/// Admission of bin computations: a bounded number run, a bounded number
/// wait, the rest are refused at once rather than queued without end. A
/// computation holds a ticket from admission to its end (its store reads
/// included) and a running slot while it loads periods and counts.
struct Admission {
    tickets: Arc<tokio::sync::Semaphore>,
    running: Arc<tokio::sync::Semaphore>,
    max_running: usize,
}

impl Admission {
    fn new(running: usize) -> Admission {
        let running = running.max(1);
        Admission {
            // As many may wait as run, four times over.
            tickets: Arc::new(tokio::sync::Semaphore::new(5 * running)),
            running: Arc::new(tokio::sync::Semaphore::new(running)),
            max_running: running,
        }
    }

    /// A ticket for one computation: at once or refused, or (`patient`: a
    /// summary job) waiting for one.
    async fn enter(&self, patient: bool) -> Result<tokio::sync::OwnedSemaphorePermit, QueryError> {
        if patient {
            return Ok(self
                .tickets
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"));
        }
        self.tickets
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::Overloaded {
                running: self.max_running,
                waiting: 4 * self.max_running,
            })
    }

    /// A running slot, waiting for one if all are taken.
    async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.running
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }
}

/// Memory budgets of the read path's caches.
#[derive(Debug, Clone, Copy)]
pub struct QueryBudgets {
    /// Computed bin extents (the memory tier).
    pub extent_bytes: u64,
    /// Serialized answers.
    pub response_bytes: u64,
    /// Decoded periods (the resident tier).
    pub period_bytes: u64,
    /// Decoded periods outside the resident tier (window reads, loads).
    pub period_work_bytes: u64,
    /// Block tables.
    pub block_bytes: u64,
    /// Queue of writes to the persisted extent tier.
    pub write_queue: usize,
}

/// A range of bins of one grid and filter: what the extent tiers cache.
#[derive(Debug, Clone)]
struct BinRequest {
    grid: Grid,
    bins: BinRange,
    filter: Filter,
}

/// Counters of a [`BinRequest`] at one version.
#[derive(Debug, Clone)]
struct Computed {
    counts: BinCounts,
    outcome: CacheOutcome,
    timing: Timing,
    head: Arc<ScheduleRow>,
}

/// The read path shared by every request of one app.
pub struct QueryService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: QueryLimits,
    heads: Arc<HeadReader>,
    /// Heads this replica knows: under its head lease (Postgres), or as
    /// the only server of the file (SQLite).
    known: Option<Arc<KnownHeads>>,
    periods: Arc<ResidentTier>,
    blocks: BlockTables,
    logs: ChangeLogs,
    memory: MemoryTier,
    writer: PersistWriter,
    flights: Arc<Flights<bins::FlightKey, Result<Arc<bins::Filled>, bins::FillError>>>,
    responses: Responses,
    /// One load of a schedule runs behind a small-window answer at a time
    /// (each holds a schedule's rows and columns until it lands).
    background_loads: Arc<tokio::sync::Semaphore>,
    computations: Admission,
}

impl QueryService {
    /// A service over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: QueryLimits,
        budgets: QueryBudgets,
    ) -> Arc<QueryService> {
        metrics.cache_capacity.set(budgets.extent_bytes as i64);
        Arc::new(QueryService {
            heads: HeadReader::new(store.clone()),
            known: store.known_heads(),
            periods: ResidentTier::new(
                store.clone(),
                metrics.clone(),
                budgets.period_bytes,
                budgets.period_work_bytes,
            ),
            blocks: BlockTables::new(store.clone(), metrics.clone(), budgets.block_bytes),
            logs: ChangeLogs::new(store.clone(), metrics.clone()),
            memory: MemoryTier::new(budgets.extent_bytes),
            writer: PersistWriter::start(
                store.clone(),
                metrics.clone(),
                budgets.write_queue,
                crate::cache::queue_max_bytes(budgets.extent_bytes),
            ),
            flights: Flights::new(),
            responses: Responses::new(budgets.response_bytes, metrics.clone()),
            background_loads: Arc::new(tokio::sync::Semaphore::new(1)),
            computations: Admission::new(limits.max_computations),
            store,
            metrics,
            limits,
        })
    }

    /// The memory tier of bin extents (for metrics and tests).
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The resident period tier (for metrics and tests).
    pub fn periods(&self) -> &ResidentTier {
        &self.periods
    }

    /// The most bins one answer may have (`VISBIN_MAX_BINS`).
    pub fn max_bins(&self) -> u64 {
        self.limits.max_bins
    }

    /// Bytes of serialized answers held.
    pub fn response_bytes(&self) -> u64 {
        self.responses.weighted_size()
    }

    /// Forgets everything held in memory for a deleted schedule.
    pub async fn forget_schedule(&self, id: i64) {
        self.memory.forget_schedule(id);
        self.periods.forget(id);
        self.responses.forget_schedule(id);
        self.blocks.forget(id).await;
        self.logs.forget(id).await;
    }

    /// The schedule's row as of a moment after this call began: the head
    /// this replica knows, else a database read (coalesced with concurrent
    /// requests for the same schedule), which it then keeps while it may.
    async fn head(&self, id: i64) -> Result<Arc<ScheduleRow>, QueryError> {
        if let Some(row) = self.known.as_ref().and_then(|k| k.get(id)) {
            self.metrics.hot.heads_known.inc();
            return Ok(row);
        }
        // Taken before the read is sent (a coalesced read is sent after
        // this request began).
        let ticket = self.known.as_ref().and_then(|k| k.ticket());
        let timer = self.metrics.store_timer("schedule_head");
        let head = self
            .heads
            .read(id)
            .await
            .map_err(|e| QueryError::store(id, e))?;
        timer.observe_duration();
        self.metrics.hot.heads_from_database.inc();
        let head = head.ok_or(QueryError::NotFound(id))?;
        if let (Some(known), Some(ticket)) = (&self.known, ticket) {
            known.learn(ticket, &head);
        }
        Ok(head)
    }

    /// The periods of `head.version` that may meet `[from, to)`: from the
    /// resident tier, or from the window's chunks when the schedule is too
    /// large to hold. `MoveTo` when they are of a later version that cannot
    /// tell `head.version` apart.
    ///
    /// A schedule not resident yet is loaded before answering when the
    /// window covers much of it; for a small window (a UI's first look at a
    /// day) the window's chunks answer now and the load runs behind.
    async fn periods_at(
        &self,
        head: &Arc<ScheduleRow>,
        from: i64,
        to: i64,
    ) -> Result<Step<PeriodView>, QueryError> {
        let set: Arc<PeriodSet> = match self.periods.peek(head.id, head.version) {
            Some(set) => set,
            None if self.periods.fits(head) && !covers_much(head, from, to) => {
                // Busy with another schedule's load: this one waits for a
                // later request.
                if let Ok(permit) = self.background_loads.clone().try_acquire_owned() {
                    let (tier, behind) = (self.periods.clone(), head.clone());
                    tokio::spawn(async move {
                        if let Err(e) = tier.get(&behind).await {
                            tracing::warn!(schedule_id = behind.id, error = %e, "loading periods failed");
                        }
                        drop(permit);
                    });
                }
                self.window(head, from, to).await?
            }
            None => match self
                .periods
                .get(head)
                .await
                .map_err(|e| QueryError::store(head.id, e))?
            {
                Residency::Resident(set) => set,
                Residency::WindowReads => self.window(head, from, to).await?,
            },
        };
        Ok(match set.view(head.version) {
            Some(view) => Step::Done(view),
            None => Step::MoveTo(set.head().clone()),
        })
    }

    /// Makes `head`'s schedule resident (if it fits) before a computation
    /// that will cover all of it, such as a summary job.
    pub async fn preload(&self, head: &ScheduleRow) -> Result<(), QueryError> {
        self.periods
            .get(head)
            .await
            .map(|_| ())
            .map_err(|e| QueryError::store(head.id, e))
    }

    async fn window(
        &self,
        head: &ScheduleRow,
        from: i64,
        to: i64,
    ) -> Result<Arc<PeriodSet>, QueryError> {
        self.periods
            .window(head.id, from, to)
            .await
            .map(Arc::new)
            .map_err(|e| QueryError::store(head.id, Arc::new(e)))
    }
}

/// Whether `[from, to)` covers an eighth or more of the schedule's range
/// (or the schedule has none): then loading all of it costs at most a few
/// times reading the window.
fn covers_much(head: &ScheduleRow, from: i64, to: i64) -> bool {
    match (head.range_start, head.range_end) {
        (Some(s), Some(e)) if e > s => (to.min(e) - from.max(s)).saturating_mul(8) >= e - s,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
