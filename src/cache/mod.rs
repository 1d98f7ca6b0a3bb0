//! The two-tier bin cache and the read path of range queries (DESIGN §6):
//! memory tier → persisted tier → compute only the gaps → merge → write back.
//!
//! Correctness rests on one rule: an extent is used only if no change
//! recorded after the version it was computed at touches its span (or
//! moved the priority range). Every request reads the schedule's current
//! version first (a primary-key lookup), so a replica never answers with
//! bins from before an append that was acknowledged before the request.

mod extent;
mod flight;
mod head;
mod key;
mod memory;
mod persist;

pub use extent::{ChangeLog, Extent, MAX_EXTENT_BINS};
pub use head::HeadReader;
pub use key::{CacheKey, CACHE_FORMAT_VERSION};
pub use memory::MemoryTier;

use crate::engine::{count_bins, BinCounts, BinRange, BlockTable, Filter, Grid};
use crate::metrics::Metrics;
use crate::store::{ExtentRow, ScheduleRow, Store, StoreError};
use extent::{assemble, cover, defragment};
use flight::Flights;
use futures_util::FutureExt;
use persist::PersistWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Gaps separated by a cached run shorter than this are computed together.
const MIN_CACHED_RUN: i64 = 32;
/// More gaps than this are computed as their hull.
const MAX_GAPS: usize = 8;
/// Computations over at most this many periods run on the async executor
/// (well under a millisecond); larger ones go to the blocking pool.
const INLINE_MAX_PERIODS: usize = 20_000;
/// Attempts when the schedule changes while a request is being answered.
const MAX_ATTEMPTS: usize = 3;

/// Errors of the read path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// The schedule does not exist (any more).
    #[error("schedule not found")]
    NotFound,
    /// The schedule kept changing while the request was answered.
    #[error("the schedule changed {MAX_ATTEMPTS} times while the request was answered; retry")]
    Busy,
    /// The store failed.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
    /// A computation task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound => ServiceError::NotFound,
            e => ServiceError::Store(Arc::new(e)),
        }
    }
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

/// A range query after validation.
#[derive(Debug, Clone)]
pub struct BinRequest {
    pub grid: Grid,
    pub bins: BinRange,
    pub filter: Filter,
}

/// The answer to a range query.
#[derive(Debug, Clone)]
pub struct BinAnswer {
    pub counts: BinCounts,
    pub outcome: CacheOutcome,
    pub timing: Timing,
    /// The schedule version the answer reflects.
    pub version: i64,
}

/// What a gap-filling flight returns to every waiter.
#[derive(Debug, Clone)]
struct Filled {
    /// Extents found in the persisted tier or computed; with the memory
    /// tier's extents they cover the request.
    extents: Vec<Extent>,
    computed: usize,
    timing: Timing,
}

/// Identical misses: same key, same version, same gaps to fill (the gaps,
/// not just the window, since tiers may change between two requests).
type FlightKey = (Arc<str>, i64, Vec<(i64, i64)>);

/// Blocks of a schedule as of `block_count` (blocks are append-only).
pub struct BlocksAt {
    block_count: i64,
    blocks: BlockTable,
}

impl BlocksAt {
    /// The blocks.
    pub fn blocks(&self) -> &BlockTable {
        &self.blocks
    }
}

/// The range-query service shared by all requests of one app.
pub struct BinService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    memory: MemoryTier,
    blocks: moka::future::Cache<i64, Arc<BlocksAt>>,
    logs: moka::future::Cache<i64, Arc<ChangeLog>>,
    flights: Arc<Flights<FlightKey, Result<Arc<Filled>, ServiceError>>>,
    writer: PersistWriter,
}

impl BinService {
    /// A service over `store` with a memory tier of `cache_bytes`.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        cache_bytes: u64,
        write_queue: usize,
    ) -> Arc<BinService> {
        metrics.cache_capacity.set(cache_bytes as i64);
        Arc::new(BinService {
            writer: PersistWriter::start(store.clone(), metrics.clone(), write_queue),
            store,
            metrics,
            memory: MemoryTier::new(cache_bytes),
            blocks: moka::future::Cache::builder()
                .max_capacity(64 * 1024 * 1024)
                .weigher(|_: &i64, b: &Arc<BlocksAt>| {
                    (b.blocks.len() * 48 + 64).min(u32::MAX as usize) as u32
                })
                .build(),
            logs: moka::future::Cache::new(10_000),
            flights: Flights::new(),
        })
    }

    /// The memory tier (for metrics and tests).
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// Forgets everything cached in memory for a deleted schedule.
    pub fn forget_schedule(&self, schedule_id: i64) {
        self.memory.forget_schedule(schedule_id);
        let (blocks, logs) = (self.blocks.clone(), self.logs.clone());
        tokio::spawn(async move {
            blocks.invalidate(&schedule_id).await;
            logs.invalidate(&schedule_id).await;
        });
    }

    /// Answers a range query for the schedule `head` (read by the caller
    /// at the start of the request).
    pub async fn bins(
        self: &Arc<Self>,
        head: &ScheduleRow,
        req: &BinRequest,
    ) -> Result<BinAnswer, ServiceError> {
        let mut head = head.clone();
        for _ in 0..MAX_ATTEMPTS {
            match self.try_bins(&head, req).await {
                Err(ServiceError::Busy) => {
                    head = self
                        .store
                        .schedule(head.id)
                        .await?
                        .ok_or(ServiceError::NotFound)?;
                }
                other => return other,
            }
        }
        Err(ServiceError::Busy)
    }

    async fn try_bins(
        self: &Arc<Self>,
        head: &ScheduleRow,
        req: &BinRequest,
    ) -> Result<BinAnswer, ServiceError> {
        let started = Instant::now();
        let key = CacheKey::new(head.id, &req.grid, &req.filter);
        let log = self
            .change_log(head)
            .instrument(tracing::debug_span!("store", query = "changes"))
            .await?;
        let after_log = Instant::now();
        let held = self.memory.get(&key).await;
        let valid: Vec<Extent> = held
            .iter()
            .flat_map(|xs| xs.iter())
            .filter(|x| log.is_valid(x.version, &req.grid, x.range()))
            .cloned()
            .collect();
        let (pieces, gaps) = cover(req.bins, &valid);
        let total = req.bins.len();
        let from_memory = total - gaps.iter().map(BinRange::len).sum::<usize>();
        self.metrics
            .cache_lookups
            .with_label_values(&["memory", CacheOutcome::of(from_memory, total).as_str()])
            .inc();
        let mut timing = Timing {
            store: after_log - started,
            cache: after_log.elapsed(),
            ..Timing::default()
        };
        let mut computed = 0;
        let pieces = if gaps.is_empty() {
            pieces
        } else {
            let flight_key: FlightKey = (
                key.text.clone(),
                head.version,
                gaps.iter().map(|g| (g.first, g.end)).collect(),
            );
            let this = Arc::clone(self);
            let (head2, key2, log2, req2) = (head.clone(), key.clone(), log.clone(), req.clone());
            let span = tracing::info_span!("cache", gaps = gaps.len());
            let (filled, _leader) = self
                .flights
                .run(flight_key, move || {
                    async move {
                        this.fill(&head2, &key2, &log2, &req2, gaps)
                            .await
                            .map(Arc::new)
                    }
                    .boxed()
                })
                .instrument(span)
                .await;
            let filled = filled?;
            computed = filled.computed.min(total);
            timing.cache += filled.timing.cache;
            timing.store += filled.timing.store;
            timing.compute += filled.timing.compute;
            // Computed spans may overlap cached runs (defragmentation); cover
            // picks non-overlapping slices of all extents.
            let mut all = valid;
            all.extend(filled.extents.iter().cloned());
            let (pieces, missing) = cover(req.bins, &all);
            if !missing.is_empty() {
                // A memory extent used for planning was evicted meanwhile:
                // plan again (bins() retries).
                return Err(ServiceError::Busy);
            }
            pieces
        };
        let from_store = (total - from_memory).saturating_sub(computed);
        let t = Instant::now();
        let counts = assemble(req.bins, pieces);
        timing.cache += t.elapsed();
        let m = &self.metrics.bins_served;
        m.with_label_values(&["memory"]).inc_by(from_memory as u64);
        m.with_label_values(&["store"]).inc_by(from_store as u64);
        m.with_label_values(&["computed"]).inc_by(computed as u64);
        Ok(BinAnswer {
            counts,
            outcome: CacheOutcome::of(total - computed, total),
            timing,
            version: head.version,
        })
    }

    /// Fills `gaps` from the persisted tier, then by computing what is left;
    /// writes what it found or computed back to the tiers.
    async fn fill(
        &self,
        head: &ScheduleRow,
        key: &CacheKey,
        log: &ChangeLog,
        req: &BinRequest,
        gaps: Vec<BinRange>,
    ) -> Result<Filled, ServiceError> {
        let mut timing = Timing::default();
        let wanted: usize = gaps.iter().map(BinRange::len).sum();
        let hull = BinRange {
            first: gaps[0].first,
            end: gaps[gaps.len() - 1].end,
        };
        // Tier 2.
        let t = Instant::now();
        let timer = self.metrics.store_timer("extents_read");
        let rows = self
            .store
            .read_extents(head.id, key.hash64(), hull.first, hull.end)
            .instrument(tracing::info_span!("store", query = "extents_read"))
            .await?;
        timer.observe_duration();
        timing.store += t.elapsed();
        let t = Instant::now();
        let stored: Vec<Extent> = rows
            .into_iter()
            .filter(|r| *r.key == *key.text)
            .filter(|r| {
                let range = BinRange {
                    first: r.first_bin,
                    end: r.end_bin,
                };
                log.is_valid(r.version, &req.grid, range)
            })
            .filter_map(|r| {
                let range = BinRange {
                    first: r.first_bin,
                    end: r.end_bin,
                };
                extent::decode(&r.payload, range).map(|c| Extent {
                    version: r.version,
                    counts: Arc::new(c),
                })
            })
            .collect();
        let mut remaining = Vec::new();
        for gap in &gaps {
            remaining.extend(cover(*gap, &stored).1);
        }
        let from_store = wanted - remaining.iter().map(BinRange::len).sum::<usize>();
        self.metrics
            .cache_lookups
            .with_label_values(&["store", CacheOutcome::of(from_store, wanted).as_str()])
            .inc();
        if !stored.is_empty() {
            self.memory
                .insert(key, stored.clone(), log, &req.grid)
                .await;
        }
        timing.cache += t.elapsed();
        if remaining.is_empty() {
            return Ok(Filled {
                extents: stored,
                computed: 0,
                timing,
            });
        }
        // Compute what no tier holds (once for all waiters of this flight).
        let to_compute = defragment(remaining, MIN_CACHED_RUN, MAX_GAPS);
        self.metrics.computations.inc();
        let t = Instant::now();
        let blocks = self.blocks_at(head).await?;
        timing.store += t.elapsed();
        let cats = Arc::new(blocks.blocks.categories(&req.filter));
        let mut new_extents = Vec::with_capacity(to_compute.len());
        for gap in &to_compute {
            let from = req.grid.bin_start(gap.first);
            let to = req.grid.bin_start(gap.end);
            let t = Instant::now();
            let timer = self.metrics.store_timer("window_periods");
            let (version, periods) = self
                .store
                .window_periods(head.id, from, to)
                .instrument(tracing::info_span!(
                    "store",
                    query = "window_periods",
                    bins = gap.len()
                ))
                .await?;
            timer.observe_duration();
            timing.store += t.elapsed();
            if version != head.version {
                return Err(ServiceError::Busy);
            }
            let t = Instant::now();
            let (cats, grid, gap) = (cats.clone(), req.grid, *gap);
            let periods_len = periods.len();
            let span = tracing::info_span!("compute", bins = gap.len(), periods = periods.len());
            let run = move || {
                let _entered = span.enter();
                count_bins(&periods, periods.max_len(), &cats, &grid, gap, None)
            };
            // Small inputs take microseconds: handing them to the blocking
            // pool would cost more than computing them here.
            let counts = if periods_len <= INLINE_MAX_PERIODS {
                run()
            } else {
                tokio::task::spawn_blocking(run)
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))?
            };
            let elapsed = t.elapsed();
            self.metrics.compute_duration.observe(elapsed.as_secs_f64());
            timing.compute += elapsed;
            new_extents.push(Extent {
                version: head.version,
                counts: Arc::new(counts),
            });
        }
        let computed: usize = to_compute.iter().map(BinRange::len).sum();
        // Only complete results reach this point: write back to both tiers.
        let t = Instant::now();
        self.memory
            .insert(key, new_extents.clone(), log, &req.grid)
            .await;
        self.persist(head, key, &new_extents).await;
        timing.cache += t.elapsed();
        let mut extents = stored;
        extents.extend(new_extents);
        Ok(Filled {
            extents,
            computed,
            timing,
        })
    }

    /// Queues the memory tier's coalesced extents that contain the newly
    /// computed runs for the persisted tier (which replaces the runs they
    /// contain, so tier 2 coalesces too).
    async fn persist(&self, head: &ScheduleRow, key: &CacheKey, new: &[Extent]) {
        let held = self.memory.get(key).await;
        let held: &[Extent] = held.as_deref().map(Vec::as_slice).unwrap_or(&[]);
        let mut sent: Vec<BinRange> = Vec::new();
        for x in new {
            let r = x.range();
            let best = held
                .iter()
                .find(|h| {
                    h.version == x.version && h.range().first <= r.first && h.range().end >= r.end
                })
                .unwrap_or(x);
            if sent.contains(&best.range()) {
                continue;
            }
            sent.push(best.range());
            self.writer.submit(ExtentRow {
                schedule_id: head.id,
                key_hash: key.hash64(),
                key: key.text.to_string(),
                version: best.version,
                first_bin: best.range().first,
                end_bin: best.range().end,
                payload: extent::encode(&best.counts),
            });
        }
    }

    /// The schedule's blocks at `head` (cached; reloaded when blocks were appended).
    pub async fn blocks_at(&self, head: &ScheduleRow) -> Result<Arc<BlocksAt>, ServiceError> {
        if let Some(b) = self.blocks.get(&head.id).await {
            if b.block_count == head.block_count {
                return Ok(b);
            }
        }
        let timer = self.metrics.store_timer("blocks");
        let blocks = self.store.blocks(head.id).await?;
        timer.observe_duration();
        if blocks.len() as i64 != head.block_count {
            // An append landed after `head` was read.
            return Err(ServiceError::Busy);
        }
        let b = Arc::new(BlocksAt {
            block_count: head.block_count,
            blocks,
        });
        self.blocks.insert(head.id, b.clone()).await;
        Ok(b)
    }

    async fn change_log(&self, head: &ScheduleRow) -> Result<ChangeLog, ServiceError> {
        if head.version == 1 {
            return Ok(ChangeLog {
                version: 1,
                changes: Vec::new(),
            });
        }
        if let Some(l) = self.logs.get(&head.id).await {
            if l.version >= head.version {
                return Ok(ChangeLog {
                    version: head.version,
                    changes: l
                        .changes
                        .iter()
                        .filter(|c| c.version <= head.version)
                        .copied()
                        .collect(),
                });
            }
        }
        let timer = self.metrics.store_timer("changes");
        let changes = self.store.changes_after(head.id, 0).await?;
        timer.observe_duration();
        let latest = changes
            .iter()
            .map(|c| c.version)
            .max()
            .unwrap_or(1)
            .max(head.version);
        self.logs
            .insert(
                head.id,
                Arc::new(ChangeLog {
                    version: latest,
                    changes: changes.clone(),
                }),
            )
            .await;
        Ok(ChangeLog {
            version: head.version,
            changes: changes
                .into_iter()
                .filter(|c| c.version <= head.version)
                .collect(),
        })
    }

    /// The TSI-compatible histogram over `[start, end)` in bins of `d`
    /// seconds aligned at `start`, the last one clipped at `end`. Computed
    /// directly (not cached): it is one small query per schedule range.
    pub async fn histogram(
        &self,
        head: &ScheduleRow,
        start: i64,
        end: i64,
        d: i64,
        filter: &Filter,
    ) -> Result<Vec<(i64, i64, u32)>, ServiceError> {
        let n = (end - start).div_euclid(d) + i64::from((end - start) % d != 0);
        let grid = Grid::new(d, start);
        let first = grid.bin_of(start);
        let bins = BinRange {
            first,
            end: first + n,
        };
        let blocks = self.blocks_at(head).await?;
        let timer = self.metrics.store_timer("window_periods");
        let (_, periods) = self.store.window_periods(head.id, start, end).await?;
        timer.observe_duration();
        let cats = blocks.blocks.categories(filter);
        let counts = tokio::task::spawn_blocking(move || {
            count_bins(&periods, periods.max_len(), &cats, &grid, bins, Some(end))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok((0..n)
            .map(|i| {
                let s = start + i * d;
                (s, (s + d).min(end), counts.columns[0][i as usize])
            })
            .collect())
    }
}
