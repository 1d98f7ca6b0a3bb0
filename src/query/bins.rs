//! The range query: the response cache, then the extent tiers (memory,
//! then persisted), then the engine for the bins no tier holds, computed
//! from resident periods (or the window's chunks for a schedule too large
//! to hold), then written back to both tiers.

use super::encode::{self, Envelope};
use super::*;
use crate::cache::{assemble, cover, defragment, extent, CacheKey, ChangeLog, Extent};
use crate::engine::count_bins;
use crate::store::ExtentRow;
use futures_util::FutureExt;
use std::time::Instant;
use tracing::Instrument;

/// Gaps separated by a cached run shorter than this are computed together.
const MIN_CACHED_RUN: i64 = 32;
/// More gaps than this are computed as their hull.
const MAX_GAPS: usize = 8;
/// Computations over at most this many candidate periods run on the async
/// executor (well under a millisecond); larger ones go to the blocking
/// pool.
const INLINE_MAX_PERIODS: usize = 20_000;
/// When the schedule is resident and the gaps hold at most this many
/// candidate periods, the persisted tier is not asked: the engine counts
/// them in about a millisecond (~5 ns a period), while a persisted-extent
/// read is a database round trip plus decoding, and costs as much or more.
/// Larger gaps (a full year of a large schedule takes tens of
/// milliseconds to count) still read the persisted tier first.
const SKIP_STORE_TIER_PERIODS: usize = 200_000;

/// Output formats of the range query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Columnar,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json | Format::Columnar => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// A range query, parsed.
#[derive(Debug, Clone)]
pub struct BinQuery {
    /// Window; either end defaults to the schedule's range.
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Bin width in seconds (≥ 1).
    pub width: i64,
    /// Grid origin as given (echoed in the answer).
    pub origin: i64,
    pub filter: Filter,
    pub format: Format,
    /// Opaque parts of the entity tags of answers the caller holds
    /// (`If-None-Match`): a matching answer is not built again.
    pub holds: Vec<String>,
}

/// What a gap-filling flight returns to every waiter.
#[derive(Debug, Clone)]
pub(super) struct Filled {
    /// Extents found in the persisted tier or computed; with the memory
    /// tier's extents they cover the request.
    extents: Vec<Extent>,
    computed: usize,
    timing: Timing,
}

/// Why a flight did not fill its gaps.
#[derive(Debug, Clone)]
pub(super) enum FillError {
    Query(QueryError),
    /// The periods are of this newer head (see the module doc of `query`).
    MoveTo(Arc<ScheduleRow>),
}

impl From<QueryError> for FillError {
    fn from(e: QueryError) -> FillError {
        FillError::Query(e)
    }
}

/// Identical misses: same key, same version, same gaps to fill (the gaps,
/// not just the window, since tiers may change between two requests), and
/// whether the caller waits for admission (summary jobs never join a
/// request's flight, which may be refused).
pub(super) type FlightKey = (Arc<str>, i64, Vec<(i64, i64)>, bool);

/// Refuses more bins than the limit, suggesting a width that fits.
pub(super) fn check_bin_count(count: u64, limit: u64, span: i64) -> Result<(), QueryError> {
    if count <= limit {
        return Ok(());
    }
    // Widening adds at most one bin, so span / (limit - 1) always fits.
    let fits = (span as u64)
        .div_ceil(limit.saturating_sub(1).max(1))
        .max(1);
    Err(QueryError::invalid(
        "too_many_bins",
        format!(
            "this query needs {count} bins, more than the limit of {limit} (VISBIN_MAX_BINS); \
             use a bin width of at least {fits} s, or a shorter window"
        ),
    ))
}

impl QueryService {
    /// Answers a range query of schedule `id`.
    pub async fn bins(self: &Arc<Self>, id: i64, q: &BinQuery) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let mut head = self.head(id).await?;
        let head_read = started.elapsed();
        for _ in 0..MAX_VERSION_MOVES {
            let (start, end) = match (q.start.or(head.range_start), q.end.or(head.range_end)) {
                (Some(s), Some(e)) => (s, e),
                _ => {
                    return Err(QueryError::invalid(
                        "invalid_parameter",
                        format!(
                            "schedule {id} has no range yet (no periods, no schedule_period); \
                             give both `start` and `end`"
                        ),
                    ))
                }
            };
            if start >= end {
                return Err(QueryError::invalid(
                    "invalid_parameter",
                    format!("`start` ({start}) must be before `end` ({end})"),
                ));
            }
            let grid = Grid::new(q.width, q.origin);
            let bins = grid.cover(start, end);
            check_bin_count(bins.len() as u64, self.limits.max_bins, end - start)?;
            let key = CacheKey::new(id, &grid, &q.filter);
            // A repeated request for the same version is answered with the
            // bytes already written for it (the version is in the key).
            let response_key: Arc<str> = format!(
                "bins|{}|{}|{}|{}|{:?}|{}",
                head.version, q.origin, bins.first, bins.end, q.format, key.text
            )
            .into();
            let looked_up = Instant::now();
            if let Some(held) = self.responses.answer(&response_key, &q.holds) {
                self.metrics.hot.bins_from_memory.inc_by(bins.len() as u64);
                return Ok(Answer {
                    body: held.body,
                    tag: held.tag,
                    cache: CacheOutcome::Hit,
                    timing: Timing {
                        store: head_read,
                        cache: looked_up.elapsed(),
                        ..Timing::default()
                    },
                    version: head.version,
                });
            }
            let req = BinRequest {
                grid,
                bins,
                filter: q.filter.clone(),
            };
            let computed = match self.range(&head, &key, &req, false).await? {
                Step::Done(c) => c,
                Step::MoveTo(newer) => {
                    head = newer;
                    continue;
                }
            };
            let env = Envelope {
                schedule_id: id,
                bin_seconds: q.width,
                origin: q.origin,
            };
            let t = Instant::now();
            let bytes = bytes::Bytes::from(match q.format {
                Format::Json => encode::json(&env, &grid, &computed.counts),
                Format::Columnar => encode::columnar(&env, &grid, &computed.counts),
                Format::Csv => encode::csv(&grid, &computed.counts),
            });
            let tag = tag_of(response_key.as_bytes());
            let body = Encoded::new(bytes, q.format.content_type(), tag.clone());
            self.responses.insert(response_key, body.clone());
            let mut timing = computed.timing;
            timing.store += head_read;
            timing.cache += t.elapsed();
            return Ok(Answer {
                body: Some(body),
                tag,
                cache: computed.outcome,
                timing,
                version: computed.head.version,
            });
        }
        Err(QueryError::Busy(id))
    }

    /// The counters of `req` at `head.version`, from the extent tiers and
    /// the engine. A `patient` caller (a summary job) waits for a
    /// computation slot however many are waiting; others may be refused.
    pub(super) async fn range(
        self: &Arc<Self>,
        head: &Arc<ScheduleRow>,
        key: &CacheKey,
        req: &BinRequest,
        patient: bool,
    ) -> Result<Step<Computed>, QueryError> {
        let started = Instant::now();
        let log = self
            .logs
            .at(head)
            .instrument(tracing::debug_span!("store", query = "changes"))
            .await
            .map_err(|e| QueryError::store(head.id, Arc::new(e)))?;
        let after_log = Instant::now();
        let held = self.memory.get(key).await;
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
                patient,
            );
            let this = Arc::clone(self);
            let (head2, key2, req2) = (head.clone(), key.clone(), req.clone());
            let span = tracing::info_span!("cache", gaps = gaps.len());
            let (filled, _leader) = self
                .flights
                .run(flight_key, move || {
                    async move {
                        this.fill(&head2, &key2, &log, &req2, gaps, patient)
                            .await
                            .map(Arc::new)
                    }
                    .boxed()
                })
                .instrument(span)
                .await;
            let filled = match filled {
                Ok(f) => f,
                Err(FillError::MoveTo(newer)) => return Ok(Step::MoveTo(newer)),
                Err(FillError::Query(e)) => return Err(e),
            };
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
                return Err(QueryError::Internal(format!(
                    "bins {missing:?} of {:?} were neither cached nor computed",
                    req.bins
                )));
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
        Ok(Step::Done(Computed {
            counts,
            outcome: CacheOutcome::of(total - computed, total),
            timing,
            head: head.clone(),
        }))
    }

    /// Fills `gaps` from the persisted tier, then by computing what is left;
    /// writes what it found or computed back to the tiers.
    async fn fill(
        &self,
        head: &Arc<ScheduleRow>,
        key: &CacheKey,
        log: &ChangeLog,
        req: &BinRequest,
        gaps: Vec<BinRange>,
        patient: bool,
    ) -> Result<Filled, FillError> {
        let _ticket = self.computations.enter(patient).await?;
        let mut timing = Timing::default();
        let wanted: usize = gaps.iter().map(BinRange::len).sum();
        let window = |g: &BinRange| (req.grid.bin_start(g.first), req.grid.bin_start(g.end));
        let resident = self
            .periods
            .peek(head.id, head.version)
            .and_then(|s| s.view(head.version));
        let cheap = resident.as_ref().is_some_and(|v| {
            let candidates: usize = gaps
                .iter()
                .map(|g| {
                    let (from, to) = window(g);
                    v.candidates(from, to)
                })
                .sum();
            candidates <= SKIP_STORE_TIER_PERIODS
        });
        let stored = if cheap {
            Vec::new()
        } else {
            self.read_store_tier(head, key, log, req, &gaps, &mut timing)
                .await?
        };
        let mut remaining = Vec::new();
        for gap in &gaps {
            remaining.extend(cover(*gap, &stored).1);
        }
        if !cheap {
            let from_store = wanted - remaining.iter().map(BinRange::len).sum::<usize>();
            self.metrics
                .cache_lookups
                .with_label_values(&["store", CacheOutcome::of(from_store, wanted).as_str()])
                .inc();
        }
        if remaining.is_empty() {
            return Ok(Filled {
                extents: stored,
                computed: 0,
                timing,
            });
        }
        // Compute what no tier holds (once for all waiters of this flight).
        let to_compute = defragment(remaining, MIN_CACHED_RUN, MAX_GAPS);
        let _slot = self.computations.slot().await;
        self.metrics.computations.inc();
        let t = Instant::now();
        let view = match resident {
            Some(v) => v,
            None => {
                let (from, _) = window(&to_compute[0]);
                let (_, to) = window(&to_compute[to_compute.len() - 1]);
                match self
                    .periods_at(head, from, to)
                    .instrument(tracing::info_span!("store", query = "periods"))
                    .await?
                {
                    Step::Done(v) => v,
                    Step::MoveTo(newer) => return Err(FillError::MoveTo(newer)),
                }
            }
        };
        let blocks = self
            .blocks
            .at(head)
            .await
            .map_err(|e| QueryError::store(head.id, Arc::new(e)))?;
        timing.store += t.elapsed();
        if view.block_end() > head.block_count {
            return Err(QueryError::Internal(format!(
                "periods of schedule {} at version {} refer to block {} of {}",
                head.id,
                head.version,
                view.block_end() - 1,
                head.block_count
            ))
            .into());
        }
        let cats = Arc::new(blocks.categories_of_first(head.block_count as usize, &req.filter));
        let mut new_extents = Vec::with_capacity(to_compute.len());
        for gap in &to_compute {
            let (from, to) = window(gap);
            let t = Instant::now();
            let (cats, view, grid, gap) = (cats.clone(), view.clone(), req.grid, *gap);
            let candidates = view.candidates(from, to);
            let span = tracing::info_span!("compute", bins = gap.len(), periods = candidates);
            let run = move || {
                let _entered = span.enter();
                count_bins(&view.columns(), &cats, &grid, gap, None)
            };
            // Small inputs take microseconds: handing them to the blocking
            // pool would cost more than computing them here.
            let counts = if candidates <= INLINE_MAX_PERIODS {
                run()
            } else {
                tokio::task::spawn_blocking(run)
                    .await
                    .map_err(|e| QueryError::Internal(e.to_string()))?
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

    /// The persisted tier's valid extents over the hull of `gaps`, copied
    /// into the memory tier.
    async fn read_store_tier(
        &self,
        head: &ScheduleRow,
        key: &CacheKey,
        log: &ChangeLog,
        req: &BinRequest,
        gaps: &[BinRange],
        timing: &mut Timing,
    ) -> Result<Vec<Extent>, QueryError> {
        let hull = BinRange {
            first: gaps[0].first,
            end: gaps[gaps.len() - 1].end,
        };
        let t = Instant::now();
        let timer = self.metrics.store_timer("extents_read");
        let rows = self
            .store
            .read_extents(head.id, key.hash64(), hull.first, hull.end)
            .instrument(tracing::info_span!("store", query = "extents_read"))
            .await
            .map_err(|e| QueryError::store(head.id, Arc::new(e)))?;
        timer.observe_duration();
        timing.store += t.elapsed();
        let t = Instant::now();
        let stored: Vec<Extent> = rows
            .into_iter()
            .filter(|r| *r.key == *key.text)
            .filter_map(|r| {
                let range = BinRange {
                    first: r.first_bin,
                    end: r.end_bin,
                };
                if !log.is_valid(r.version, &req.grid, range) {
                    return None;
                }
                extent::decode(&r.payload, range).map(|c| Extent {
                    version: r.version,
                    counts: Arc::new(c),
                })
            })
            .collect();
        if !stored.is_empty() {
            self.memory
                .insert(key, stored.clone(), log, &req.grid)
                .await;
        }
        timing.cache += t.elapsed();
        Ok(stored)
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
}
