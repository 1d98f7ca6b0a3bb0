//! Periods on the read path (DESIGN §6, "Periods: stored packed, kept
//! resident"): the chunk codec, decoded version groups of a schedule and
//! the views a query counts over, the resident tier that keeps them per
//! replica, compaction, and the move from the old one-row-per-period
//! layout.
//!
//! A schedule's periods are a list of *segments*, one per stored version
//! group, oldest first. Appends add blocks only, so segments never share a
//! block: the engine counts them one after the other into the same
//! difference arrays, and the periods of version `v` are exactly the
//! segments whose versions are all `≤ v`. That makes "the answer of the
//! version the query read" a matter of choosing segments, never of
//! reading the database in some other snapshot.

pub mod codec;
pub mod compact;
pub mod legacy;
pub mod pack;
mod resident;
pub mod work;

pub use resident::{Residency, ResidentTier};

use crate::engine::PeriodColumns;
use crate::store::{ChunkRow, ChunkSnapshot, ScheduleRow, VersionGroup};
use codec::{decode_all, ChunkRef, CorruptChunk};
use std::sync::Arc;

/// The decoded periods of one version group.
#[derive(Debug)]
pub struct Segment {
    pub group: VersionGroup,
    /// One past the highest block index its periods refer to.
    pub block_end: i64,
    pub columns: PeriodColumns,
}

impl Segment {
    fn new(group: VersionGroup, columns: PeriodColumns) -> Segment {
        let block_end = columns
            .blocks()
            .iter()
            .max()
            .map_or(0, |&b| i64::from(b) + 1);
        Segment {
            group,
            block_end,
            columns,
        }
    }

    /// Heap bytes of the segment.
    pub fn heap_bytes(&self) -> usize {
        self.columns.heap_bytes() + std::mem::size_of::<Segment>()
    }
}

/// A schedule's periods as of `head.version`: segments of disjoint,
/// ascending version groups.
#[derive(Debug, Clone)]
pub struct PeriodSet {
    head: Arc<ScheduleRow>,
    segments: Vec<Arc<Segment>>,
    /// What a window read charged to the work budget for these periods:
    /// returned when the last set or view of them is dropped.
    charge: Option<Arc<work::Charge>>,
}

/// The segments a query at one version counts over.
#[derive(Debug, Clone)]
pub struct PeriodView {
    segments: Vec<Arc<Segment>>,
    _charge: Option<Arc<work::Charge>>,
}

impl PeriodView {
    /// The segments' columns, for the engine.
    pub fn columns(&self) -> Vec<&PeriodColumns> {
        self.segments.iter().map(|s| &s.columns).collect()
    }

    /// One past the highest block index any period refers to.
    pub fn block_end(&self) -> i64 {
        self.segments.iter().map(|s| s.block_end).max().unwrap_or(0)
    }

    /// Periods that may meet `[from, to)` (the engine's candidates).
    pub fn candidates(&self, from: i64, to: i64) -> usize {
        self.segments
            .iter()
            .map(|s| s.columns.candidates(from, to).len())
            .sum()
    }
}

/// Groups consecutive rows of one version group (rows come ordered by
/// group, then chunk) and decodes each group into a segment.
fn decode_groups(rows: &[ChunkRow]) -> Result<Vec<Arc<Segment>>, CorruptChunk> {
    let mut out: Vec<Arc<Segment>> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let group = rows[i].group;
        let j = i + rows[i..].iter().take_while(|r| r.group == group).count();
        let refs: Vec<ChunkRef<'_>> = rows[i..j]
            .iter()
            .map(|r| ChunkRef {
                chunk_start: r.chunk.chunk_start,
                block_base: r.block_base,
                period_count: r.chunk.period_count.max(0) as usize,
                max_end: r.chunk.max_end,
                payload: r.chunk.payload.as_slice(),
            })
            .collect();
        if out
            .last()
            .is_some_and(|prev| prev.group.last >= group.first)
            || group.first > group.last
        {
            return Err(CorruptChunk {
                chunk_start: rows[i].chunk.chunk_start,
                reason: "version groups overlap",
            });
        }
        out.push(Arc::new(Segment::new(group, decode_all(&refs)?)));
        i = j;
    }
    Ok(out)
}

impl PeriodSet {
    /// Decodes the rows of a snapshot (all of a schedule's rows, or those
    /// of a window).
    pub fn decode(snapshot: &ChunkSnapshot) -> Result<PeriodSet, CorruptChunk> {
        Ok(PeriodSet {
            head: Arc::new(snapshot.head.clone()),
            segments: decode_groups(&snapshot.rows)?,
            charge: None,
        })
    }

    /// The set holding `charge` for as long as it or a view of it lives.
    pub fn charged(mut self, charge: work::Charge) -> PeriodSet {
        self.charge = Some(Arc::new(charge));
        self
    }

    /// This set brought up to `delta.head`, where `delta` holds the rows of
    /// every group ending after this set's version (read with
    /// `ChunkSelect::After(self.version())`). Usually those groups are all
    /// newer and simply follow. When a compaction merged versions this set
    /// holds into a newer group, that group replaces the segments it
    /// covers; `None` when a segment of this set straddles the merged
    /// group's start (merged in memory differently: only a full load can
    /// say what is stored then).
    pub fn extended(&self, delta: &ChunkSnapshot) -> Result<Option<PeriodSet>, CorruptChunk> {
        let from = delta
            .rows
            .iter()
            .map(|r| r.group.first)
            .min()
            .unwrap_or(i64::MAX);
        let mut segments = Vec::with_capacity(self.segments.len() + 1);
        for s in &self.segments {
            if s.group.last < from {
                segments.push(s.clone());
            } else if s.group.first < from {
                return Ok(None);
            }
        }
        segments.extend(decode_groups(&delta.rows)?);
        Ok(Some(PeriodSet {
            head: Arc::new(delta.head.clone()),
            segments,
            charge: None,
        }))
    }

    /// The schedule's row as of this set.
    pub fn head(&self) -> &Arc<ScheduleRow> {
        &self.head
    }

    /// The version this set holds.
    pub fn version(&self) -> i64 {
        self.head.version
    }

    /// The periods of `version`, if this set can tell them apart: every
    /// segment is wholly before or wholly after it.
    pub fn view(&self, version: i64) -> Option<PeriodView> {
        if version > self.version() {
            return None;
        }
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            if s.group.last <= version {
                segments.push(s.clone());
            } else if s.group.first <= version {
                return None;
            }
        }
        Some(PeriodView {
            segments,
            _charge: self.charge.clone(),
        })
    }

    /// Number of periods held.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.columns.len()).sum()
    }

    /// True when no period is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Heap bytes held (the resident tier's weight).
    pub fn heap_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.heap_bytes()).sum::<usize>() + 512
    }

    /// The set with consecutive segments merged per [`compact::plan`], or
    /// `None` when it has few enough. The merged versions can no longer be
    /// told apart; queries of older versions already hold their own views.
    pub fn compacted(&self) -> Option<PeriodSet> {
        let sizes: Vec<i64> = self
            .segments
            .iter()
            .map(|s| s.columns.len() as i64)
            .collect();
        let range = compact::plan(&sizes, compact::MAX_GROUPS)?;
        let parts: Vec<&PeriodColumns> = self.segments[range.clone()]
            .iter()
            .map(|s| &s.columns)
            .collect();
        let merged = Segment::new(
            VersionGroup {
                first: self.segments[range.start].group.first,
                last: self.segments[range.end - 1].group.last,
            },
            PeriodColumns::merge(&parts),
        );
        let mut segments = self.segments[..range.start].to_vec();
        segments.push(Arc::new(merged));
        segments.extend_from_slice(&self.segments[range.end..]);
        Some(PeriodSet {
            head: self.head.clone(),
            segments,
            charge: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CHUNK_SPAN;

    fn head(version: i64) -> ScheduleRow {
        ScheduleRow::bare(1, version)
    }

    fn row(first: i64, last: i64, base: i64, day: i64, periods: &[(i64, i64, u32)]) -> ChunkRow {
        ChunkRow {
            group: VersionGroup { first, last },
            block_base: base,
            chunk: codec::encode(day * CHUNK_SPAN, periods),
        }
    }

    #[test]
    fn views_pick_the_segments_of_a_version_or_refuse() {
        let d = CHUNK_SPAN;
        let snap = ChunkSnapshot {
            head: head(4),
            rows: vec![
                row(1, 1, 0, 0, &[(5, 9, 0), (6, 7, 1)]),
                row(1, 1, 0, 2, &[(2 * d, 2 * d + 1, 1)]),
                row(2, 3, 2, 0, &[(1, 2, 0)]),
                row(4, 4, 3, 1, &[(d, d + 5, 0)]),
            ],
        };
        let set = PeriodSet::decode(&snap).unwrap();
        assert_eq!(set.segment_count(), 3);
        assert_eq!(set.len(), 5);
        assert_eq!(set.view(1).unwrap().columns().len(), 1);
        assert!(
            set.view(2).is_none(),
            "versions 2 and 3 were compacted together"
        );
        let v3 = set.view(3).unwrap();
        assert_eq!(v3.block_end(), 3);
        assert_eq!(v3.columns()[1].blocks(), &[2]);
        assert_eq!(set.view(4).unwrap().block_end(), 4);
        assert!(set.view(5).is_none(), "newer than the set");
    }

    #[test]
    fn a_delta_extends_unless_a_compaction_crossed_the_set() {
        let base = PeriodSet::decode(&ChunkSnapshot {
            head: head(1),
            rows: vec![row(1, 1, 0, 0, &[(5, 9, 0)])],
        })
        .unwrap();
        let delta = ChunkSnapshot {
            head: head(3),
            rows: vec![row(2, 2, 1, 0, &[(1, 2, 0)]), row(3, 3, 2, 0, &[(3, 4, 0)])],
        };
        let grown = base.extended(&delta).unwrap().unwrap();
        assert_eq!((grown.version(), grown.segment_count()), (3, 3));
        // A compaction merged versions 1..3: the merged group replaces the
        // set's segment of version 1.
        let crossed = ChunkSnapshot {
            head: head(3),
            rows: vec![row(1, 3, 0, 0, &[(1, 2, 0), (3, 4, 2), (5, 9, 0)])],
        };
        let replaced = base.extended(&crossed).unwrap().unwrap();
        assert_eq!((replaced.segment_count(), replaced.len()), (1, 3));
        // Merged 2..3 after the set had 1..1 and 2..2: keep 1, replace 2.
        let two = grown.extended(&ChunkSnapshot {
            head: head(4),
            rows: vec![row(2, 4, 1, 0, &[(1, 2, 0), (3, 4, 1), (7, 8, 2)])],
        });
        let two = two.unwrap().unwrap();
        assert_eq!((two.version(), two.segment_count(), two.len()), (4, 2, 4));
        // A segment straddling the merged group's start: no way to tell.
        let merged_in_memory = PeriodSet::decode(&ChunkSnapshot {
            head: head(3),
            rows: vec![row(1, 3, 0, 0, &[(5, 9, 0)])],
        })
        .unwrap();
        let straddle = ChunkSnapshot {
            head: head(4),
            rows: vec![row(3, 4, 2, 0, &[(1, 2, 0)])],
        };
        assert!(merged_in_memory.extended(&straddle).unwrap().is_none());
        // Versions 2..4 added blocks without periods: no rows, no groups.
        let gap = ChunkSnapshot {
            head: head(5),
            rows: vec![row(5, 5, 3, 0, &[(1, 2, 0)])],
        };
        assert_eq!(base.extended(&gap).unwrap().unwrap().segment_count(), 2);
    }

    #[test]
    fn overlapping_groups_are_refused() {
        let snap = ChunkSnapshot {
            head: head(3),
            rows: vec![row(1, 2, 0, 0, &[(5, 9, 0)]), row(2, 3, 1, 0, &[(1, 2, 0)])],
        };
        assert!(PeriodSet::decode(&snap).is_err());
    }

    #[test]
    fn compaction_in_memory_keeps_every_period() {
        let mut rows = vec![row(1, 1, 0, 0, &[(5, 9, 0), (50, 90, 1)])];
        for v in 2..=12 {
            rows.push(row(v, v, v, 0, &[(v * 10, v * 10 + 3, 0)]));
        }
        let set = PeriodSet::decode(&ChunkSnapshot {
            head: head(12),
            rows,
        })
        .unwrap();
        let c = set.compacted().expect("more segments than the bound");
        assert!(c.segment_count() <= compact::MAX_GROUPS);
        assert_eq!(c.len(), set.len());
        assert_eq!(c.version(), 12);
        assert!(c.view(12).is_some());
    }
}
