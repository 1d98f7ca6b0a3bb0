//! The resident period tier: decoded periods of the schedules a replica
//! served recently, bounded in bytes (`VISBIN_PERIOD_CACHE_BYTES`), least
//! recently used out first.
//!
//! Every request reads its schedule's row first; that row's version says
//! whether the resident copy is current. A copy behind it is extended by
//! the chunk rows of the versions after it (appends never rewrite rows),
//! so an append costs a replica one read of the appended rows, not of the
//! schedule. A schedule larger than the whole budget is never loaded: its
//! queries read the chunks of their window instead.

use super::work::WorkBudget;
use super::PeriodSet;
use crate::cache::flight::Flights;
use crate::metrics::Metrics;
use crate::store::{ChunkSelect, ScheduleRow, Store, StoreError};
use futures_util::FutureExt;
use moka::policy::EvictionPolicy;
use std::sync::Arc;
use std::time::Instant;

/// Bytes a resident period takes: start and end (8 bytes each) and block
/// (4) in three columns, allocated to length.
pub const BYTES_PER_PERIOD: u64 = 20;

/// Bytes of a schedule's whole decoded period set, as the tier weighs it.
fn set_bytes(head: &ScheduleRow) -> u64 {
    (head.period_count.max(0) as u64).saturating_mul(BYTES_PER_PERIOD)
}

/// Schedules loaded at the same time, at most.
const MAX_LOADS: usize = 2;

/// Whether a schedule's periods can be held.
#[derive(Debug, Clone)]
pub enum Residency {
    /// Held (or just loaded) at a version at least the one asked for.
    Resident(Arc<PeriodSet>),
    /// Serve this request from window reads: the schedule is larger than
    /// the whole budget (or its copy kept being evicted while loading).
    WindowReads,
}

type Load = Result<Arc<PeriodSet>, Arc<StoreError>>;

/// The tier.
pub struct ResidentTier {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    capacity: u64,
    sets: moka::sync::Cache<i64, Arc<PeriodSet>>,
    loads: Arc<Flights<i64, Load>>,
    /// Loads of different schedules at once: each holds a schedule's rows,
    /// its decoded columns and perhaps a compacted copy until it lands,
    /// memory outside the budget.
    loading: tokio::sync::Semaphore,
    /// Bytes of periods decoded outside the tier (windows, loads).
    work: WorkBudget,
}

impl ResidentTier {
    /// A tier of at most `capacity` bytes over `store`, decoding at most
    /// `work_bytes` of periods outside it at a time.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        capacity: u64,
        work_bytes: u64,
    ) -> Arc<ResidentTier> {
        metrics.period_capacity.set(capacity as i64);
        Arc::new(ResidentTier {
            store,
            metrics,
            capacity,
            sets: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .weigher(|_: &i64, s: &Arc<PeriodSet>| s.heap_bytes().min(u32::MAX as usize) as u32)
                .build(),
            loads: Flights::new(),
            loading: tokio::sync::Semaphore::new(MAX_LOADS),
            work: WorkBudget::new(work_bytes),
        })
    }

    /// Whether a schedule of `head`'s size can be resident at all.
    pub fn fits(&self, head: &ScheduleRow) -> bool {
        set_bytes(head) + 512 <= self.capacity
    }

    /// The resident set of schedule `id` if it is held at `version` or later
    /// (counted as a hit); no load.
    pub fn peek(&self, id: i64, version: i64) -> Option<Arc<PeriodSet>> {
        let held = self.held(id, version);
        if held.is_some() {
            self.lookup("hit");
        }
        held
    }

    fn held(&self, id: i64, version: i64) -> Option<Arc<PeriodSet>> {
        self.sets.get(&id).filter(|s| s.version() >= version)
    }

    /// The periods of `head`'s schedule at `head.version` or later: the
    /// resident set, loaded or extended first if it is missing or behind.
    pub async fn get(self: &Arc<Self>, head: &ScheduleRow) -> Result<Residency, Arc<StoreError>> {
        if !self.fits(head) {
            self.lookup("bypass");
            return Ok(Residency::WindowReads);
        }
        if let Some(s) = self.peek(head.id, head.version) {
            return Ok(Residency::Resident(s));
        }
        self.lookup(if self.sets.contains_key(&head.id) {
            "stale"
        } else {
            "miss"
        });
        // A load joined while under way may have read before `head` was;
        // the next one starts after this request read `head`, so it is
        // current unless the copy is evicted at once (then: window reads).
        for _ in 0..3 {
            let this = Arc::clone(self);
            let id = head.id;
            let (loaded, _) = self
                .loads
                .run(id, move || {
                    async move { this.load(id).await.map_err(Arc::new) }.boxed()
                })
                .await;
            let set = loaded?;
            if set.version() >= head.version {
                return Ok(Residency::Resident(set));
            }
        }
        Ok(Residency::WindowReads)
    }

    /// The periods of `head`'s schedule meeting `[from, to)`, read from the
    /// chunks of that window in one snapshot (for schedules too large to
    /// hold). The set's version is that of the snapshot.
    pub async fn window(&self, id: i64, from: i64, to: i64) -> Result<PeriodSet, StoreError> {
        let started = Instant::now();
        let timer = self.metrics.store_timer("chunks_window");
        let snapshot = self
            .store
            .period_chunks(id, ChunkSelect::Window { from, to })
            .await?
            .ok_or(StoreError::NotFound)?;
        timer.observe_duration();
        let periods: i64 = snapshot
            .rows
            .iter()
            .map(|r| r.chunk.period_count.max(0))
            .sum();
        let charge = self.work.charge(periods as u64 * BYTES_PER_PERIOD).await;
        let set = tokio::task::spawn_blocking(move || PeriodSet::decode(&snapshot))
            .await
            .map_err(|e| StoreError::Corrupt(format!("decoding task failed: {e}")))?
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.loaded("window", started);
        Ok(set.charged(charge))
    }

    /// Loads schedule `id` as stored now: the chunk rows of the versions
    /// after the resident copy (one small read after an append), or all of
    /// them. It always reads, even if a copy as new as the leader's head
    /// arrived meanwhile, so that every request joining the load gets a
    /// copy read after the load began.
    async fn load(&self, id: i64) -> Result<Arc<PeriodSet>, StoreError> {
        let _loading = self.loading.acquire().await.expect("never closed");
        let started = Instant::now();
        let mut kind = "delta";
        let mut set = None;
        // Held until the tier holds the set: the decoded periods, or the
        // copy compaction or an extension makes, are outside it until then.
        let mut charge = None;
        if let Some(old) = self.sets.get(&id) {
            let timer = self.metrics.store_timer("chunks_delta");
            let delta = self
                .store
                .period_chunks(id, ChunkSelect::After(old.version()))
                .await?
                .ok_or(StoreError::NotFound)?;
            timer.observe_duration();
            charge = Some(self.work.charge(set_bytes(&delta.head)).await);
            set = decode_off_executor(move || old.extended(&delta)).await?;
        }
        let set = match set {
            Some(s) => s,
            None => {
                kind = "full";
                // One charge at a time: a second one waiting behind the
                // first could wait for itself.
                drop(charge.take());
                let timer = self.metrics.store_timer("chunks_full");
                let all = self
                    .store
                    .period_chunks(id, ChunkSelect::All)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                timer.observe_duration();
                charge = Some(self.work.charge(set_bytes(&all.head)).await);
                decode_off_executor(move || PeriodSet::decode(&all).map(Some))
                    .await?
                    .expect("a full decode yields a set")
            }
        };
        let set = match decode_off_executor({
            let s = set.clone();
            move || Ok(s.compacted())
        })
        .await?
        {
            Some(c) => {
                self.metrics
                    .compactions
                    .with_label_values(&["memory"])
                    .inc();
                c
            }
            None => set,
        };
        let set = Arc::new(set);
        if self.fits(&set.head) {
            self.sets.insert(id, set.clone());
        }
        drop(charge);
        self.loaded(kind, started);
        Ok(set)
    }

    /// Bytes of periods decoded outside the tier now (charged to the
    /// work budget).
    pub fn work_bytes(&self) -> u64 {
        self.work.charged_bytes()
    }

    /// Drops a deleted schedule's periods.
    pub fn forget(&self, id: i64) {
        self.sets.invalidate(&id);
    }

    /// Bytes held now (after pending maintenance).
    pub fn weighted_size(&self) -> u64 {
        self.sets.run_pending_tasks();
        self.sets.weighted_size()
    }

    fn lookup(&self, outcome: &str) {
        self.metrics
            .period_lookups
            .with_label_values(&[outcome])
            .inc();
    }

    fn loaded(&self, kind: &str, started: Instant) {
        self.metrics.period_loads.with_label_values(&[kind]).inc();
        self.metrics
            .period_load_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Runs a decode on the blocking pool (a full load decodes millions of
/// periods), mapping codec errors to the store's.
async fn decode_off_executor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::codec::CorruptChunk> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Corrupt(format!("decoding task failed: {e}")))?
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}
