//! The TSI-compatible histogram (DESIGN §5): bins of `d` seconds aligned at
//! the schedule's range start, the last one clipped at its end, counted
//! from the periods of one version. Not extent-cached (its grid depends on
//! the range, which appends move); answers are kept in the response cache.

use super::encode;
use super::*;
use crate::engine::count_bins;
use std::time::Instant;

/// A histogram request, parsed.
#[derive(Debug, Clone)]
pub struct HistogramQuery {
    /// `bin_duration_minutes`, if given (it wins over `num_bins`).
    pub bin_minutes: Option<i64>,
    /// `num_bins` (default 50).
    pub num_bins: i64,
    pub filter: Filter,
    /// Opaque parts of the entity tags of answers the caller holds.
    pub holds: Vec<String>,
}

impl QueryService {
    /// Answers the histogram of schedule `id`.
    pub async fn histogram(
        self: &Arc<Self>,
        id: i64,
        q: &HistogramQuery,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let mut head = self.head(id).await?;
        for _ in 0..MAX_VERSION_MOVES {
            let (Some(s), Some(e)) = (head.range_start, head.range_end) else {
                return Ok(empty(id, head.version, &q.holds));
            };
            if s >= e {
                return Ok(empty(id, head.version, &q.holds));
            }
            let d = match q.bin_minutes {
                Some(m) => m.checked_mul(60).ok_or_else(|| {
                    QueryError::invalid("invalid_parameter", "`bin_duration_minutes` is too large")
                })?,
                None => ((e - s) / q.num_bins).max(1),
            };
            let n = (e - s).div_euclid(d) + i64::from((e - s) % d != 0);
            bins::check_bin_count(n as u64, self.limits.max_bins, e - s)?;
            let grid = Grid::new(d, s);
            let key = crate::cache::CacheKey::new(id, &grid, &q.filter);
            let response_key: Arc<str> =
                format!("histogram|{}|{s}|{e}|{d}|{}", head.version, key.text).into();
            if let Some(held) = self.responses.answer(&response_key, &q.holds) {
                return Ok(Answer {
                    body: held.body,
                    tag: held.tag,
                    cache: CacheOutcome::Hit,
                    timing: Timing {
                        cache: started.elapsed(),
                        ..Timing::default()
                    },
                    version: head.version,
                });
            }
            let _ticket = self.computations.enter(false).await?;
            let _slot = self.computations.slot().await;
            let t = Instant::now();
            let view = match self.periods_at(&head, s, e).await? {
                Step::Done(v) => v,
                Step::MoveTo(newer) => {
                    head = newer;
                    continue;
                }
            };
            let blocks = self
                .blocks
                .at(&head)
                .await
                .map_err(|e| QueryError::store(id, Arc::new(e)))?;
            if view.block_end() > head.block_count {
                return Err(QueryError::Internal(format!(
                    "periods of schedule {id} at version {} refer to blocks it does not have",
                    head.version
                )));
            }
            let store = t.elapsed();
            let cats = blocks.categories_of_first(head.block_count as usize, &q.filter);
            let first = grid.bin_of(s);
            let range = BinRange {
                first,
                end: first + n,
            };
            let t = Instant::now();
            let counts = tokio::task::spawn_blocking(move || {
                count_bins(&view.columns(), &cats, &grid, range, Some(e))
            })
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))?;
            let compute = t.elapsed();
            self.metrics.compute_duration.observe(compute.as_secs_f64());
            let rows: Vec<(i64, i64, u32)> = (0..n)
                .map(|i| {
                    let a = s + i * d;
                    (a, (a + d).min(e), counts.columns[0][i as usize])
                })
                .collect();
            let tag = tag_of(response_key.as_bytes());
            let body = Encoded::new(
                bytes::Bytes::from(encode::histogram(&rows)),
                "application/json",
                tag.clone(),
            );
            self.responses.insert(response_key, body.clone());
            return Ok(Answer {
                body: Some(body),
                tag,
                cache: CacheOutcome::Miss,
                timing: Timing {
                    cache: Duration::ZERO,
                    store,
                    compute,
                },
                version: head.version,
            });
        }
        Err(QueryError::Busy(id))
    }
}

/// The histogram of a schedule without a range: an empty list.
fn empty(id: i64, version: i64, holds: &[String]) -> Answer {
    let tag = tag_of(format!("histogram|{version}|empty|schedule={id}|"));
    let held = holds_tag(holds, &tag);
    Answer {
        body: (!held).then(|| {
            Encoded::new(
                bytes::Bytes::from_static(b"[]"),
                "application/json",
                tag.clone(),
            )
        }),
        tag,
        cache: CacheOutcome::Hit,
        timing: Timing::default(),
        version,
    }
}
