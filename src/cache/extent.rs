//! Extents (contiguous runs of computed bins of one key), the arithmetic of
//! gaps and coverage, validity against the change log, coalescing, and the
//! persisted encoding.

use crate::engine::{BinCounts, BinRange, Grid};
use crate::store::ChangeRow;
use std::sync::Arc;

/// Coalesced extents never grow beyond this many bins (a year of 15-minute
/// bins is 35,040), so that one merge or one persisted write stays cheap.
pub const MAX_EXTENT_BINS: usize = 65_536;

/// A run of bins computed at schedule `version`.
#[derive(Debug, Clone)]
pub struct Extent {
    pub version: i64,
    pub counts: Arc<BinCounts>,
}

impl Extent {
    /// The bins it covers.
    pub fn range(&self) -> BinRange {
        self.counts.range
    }

    /// Heap bytes, for the memory tier's weigher.
    pub fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes() + 64
    }
}

/// A schedule's changes up to `version` (the version a request reads).
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    pub version: i64,
    pub changes: Vec<ChangeRow>,
}

impl ChangeLog {
    /// Whether bins `range` of `grid` computed at `computed_at` still equal a
    /// fresh computation at `self.version`: no later change touches them.
    pub fn is_valid(&self, computed_at: i64, grid: &Grid, range: BinRange) -> bool {
        if computed_at > self.version {
            return false;
        }
        let (from, to) = (grid.bin_start(range.first), grid.bin_start(range.end));
        self.changes
            .iter()
            .filter(|c| c.version > computed_at && c.version <= self.version)
            .all(|c| !c.all && (c.start >= to || c.end <= from))
    }
}

/// A part of a wanted range and the extent that supplies it.
#[derive(Debug, Clone)]
pub struct Piece {
    pub range: BinRange,
    pub extent: Extent,
}

/// Splits `want` into pieces served by `extents` and the gaps none covers.
/// Extents may overlap; the one reaching furthest is used.
pub fn cover(want: BinRange, extents: &[Extent]) -> (Vec<Piece>, Vec<BinRange>) {
    let mut pieces = Vec::new();
    let mut gaps = Vec::new();
    let mut cursor = want.first;
    while cursor < want.end {
        let best = extents
            .iter()
            .filter(|x| x.range().first <= cursor && x.range().end > cursor)
            .max_by_key(|x| x.range().end);
        match best {
            Some(x) => {
                let end = x.range().end.min(want.end);
                pieces.push(Piece {
                    range: BinRange { first: cursor, end },
                    extent: x.clone(),
                });
                cursor = end;
            }
            None => {
                let next = extents
                    .iter()
                    .map(|x| x.range().first)
                    .filter(|&f| f > cursor)
                    .min()
                    .unwrap_or(want.end)
                    .min(want.end);
                gaps.push(BinRange {
                    first: cursor,
                    end: next,
                });
                cursor = next;
            }
        }
    }
    (pieces, gaps)
}

/// Guards against fragmentation: gaps separated by a cached run shorter
/// than `min_run` bins are computed as one span, and more than `max_gaps`
/// gaps become their hull. Recomputing a few cached bins is cheaper than
/// one more store round trip per gap.
pub fn defragment(gaps: Vec<BinRange>, min_run: i64, max_gaps: usize) -> Vec<BinRange> {
    let mut out: Vec<BinRange> = Vec::with_capacity(gaps.len());
    for g in gaps {
        match out.last_mut() {
            Some(last) if g.first - last.end < min_run => last.end = g.end,
            _ => out.push(g),
        }
    }
    if out.len() > max_gaps {
        let hull = BinRange {
            first: out[0].first,
            end: out[out.len() - 1].end,
        };
        return vec![hull];
    }
    out
}

/// Builds the counters of `want` from pieces that cover it exactly.
pub fn assemble(want: BinRange, mut pieces: Vec<Piece>) -> BinCounts {
    pieces.sort_by_key(|p| p.range.first);
    if pieces.len() == 1 && pieces[0].extent.range() == want {
        return (*pieces[0].extent.counts).clone();
    }
    let parts: Vec<BinCounts> = pieces
        .iter()
        .map(|p| p.extent.counts.slice(p.range))
        .collect();
    let out = BinCounts::concat(&parts);
    debug_assert_eq!(out.range, want);
    out
}

/// Merges `new` extents (computed at `log.version`) into `existing` ones of
/// the same key: extents invalid at `log.version` are dropped, valid ones are
/// re-tagged with it, and same-version runs that overlap or touch are
/// coalesced up to [`MAX_EXTENT_BINS`].
pub fn merge(existing: &[Extent], new: &[Extent], log: &ChangeLog, grid: &Grid) -> Vec<Extent> {
    let mut all: Vec<Extent> = Vec::with_capacity(existing.len() + new.len());
    for x in existing {
        if x.version > log.version {
            all.push(x.clone());
        } else if log.is_valid(x.version, grid, x.range()) {
            all.push(Extent {
                version: log.version,
                counts: x.counts.clone(),
            });
        }
    }
    all.extend(new.iter().cloned());
    all.sort_by_key(|x| (x.version, x.range().first, std::cmp::Reverse(x.range().end)));
    let mut out: Vec<Extent> = Vec::with_capacity(all.len());
    for x in all {
        if let Some(last) = out.last_mut() {
            let (l, r) = (last.range(), x.range());
            if last.version == x.version && r.first <= l.end {
                if r.end <= l.end {
                    continue; // contained
                }
                if (r.end - l.first) as usize <= MAX_EXTENT_BINS {
                    let tail = x.counts.slice(BinRange {
                        first: l.end,
                        end: r.end,
                    });
                    last.counts = Arc::new(BinCounts::concat(&[(*last.counts).clone(), tail]));
                    continue;
                }
            }
        }
        out.push(x);
    }
    out.sort_by_key(|x| x.range().first);
    out
}

/// Counters persisted per bin: the four quartiles and "scheduled"; visible
/// and unscheduled are derived on decode.
const STORED: [usize; 5] = [1, 2, 3, 4, 5];

/// Encodes counters for the persisted tier (little-endian u32 columns).
pub fn encode(counts: &BinCounts) -> Vec<u8> {
    let n = counts.range.len();
    let mut out = Vec::with_capacity(n * 4 * STORED.len());
    for c in STORED {
        for v in &counts.columns[c] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Decodes [`encode`]'s bytes for bins `range`; `None` if the size is wrong.
pub fn decode(bytes: &[u8], range: BinRange) -> Option<BinCounts> {
    let n = range.len();
    if bytes.len() != n * 4 * STORED.len() {
        return None;
    }
    let mut out = BinCounts::zeros(range);
    for (k, &c) in STORED.iter().enumerate() {
        let col = &bytes[k * n * 4..(k + 1) * n * 4];
        for (dst, src) in out.columns[c].iter_mut().zip(col.chunks_exact(4)) {
            *dst = u32::from_le_bytes(src.try_into().expect("4 bytes"));
        }
    }
    for j in 0..n {
        let v: u32 = (1..=4).map(|c| out.columns[c][j]).sum();
        out.columns[0][j] = v;
        out.columns[6][j] = v.checked_sub(out.columns[5][j])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(version: i64, first: i64, end: i64, fill: u32) -> Extent {
        let mut c = BinCounts::zeros(BinRange { first, end });
        for col in &mut c.columns {
            col.iter_mut().for_each(|v| *v = fill);
        }
        Extent {
            version,
            counts: Arc::new(c),
        }
    }

    #[test]
    fn cover_finds_pieces_and_gaps() {
        let xs = [ext(1, 2, 5, 0), ext(1, 4, 8, 0), ext(1, 10, 12, 0)];
        let (pieces, gaps) = cover(BinRange { first: 0, end: 11 }, &xs);
        let got: Vec<_> = pieces
            .iter()
            .map(|p| (p.range.first, p.range.end))
            .collect();
        assert_eq!(got, vec![(2, 5), (5, 8), (10, 11)]);
        let gaps: Vec<_> = gaps.iter().map(|g| (g.first, g.end)).collect();
        assert_eq!(gaps, vec![(0, 2), (8, 10)]);
    }

    #[test]
    fn defragment_joins_gaps_around_short_runs() {
        let g = |a, b| BinRange { first: a, end: b };
        let out = defragment(vec![g(0, 2), g(3, 5), g(100, 110)], 4, 8);
        assert_eq!(out, vec![g(0, 5), g(100, 110)]);
        assert_eq!(
            defragment(vec![g(0, 1), g(10, 11), g(20, 21)], 1, 2),
            vec![g(0, 21)]
        );
    }

    #[test]
    fn merge_coalesces_touching_runs_and_drops_invalidated_ones() {
        let grid = Grid::new(10, 0);
        let log = ChangeLog {
            version: 2,
            changes: vec![ChangeRow {
                version: 2,
                start: 55,
                end: 56,
                all: false,
            }],
        };
        let existing = [ext(1, 0, 3, 1), ext(1, 5, 6, 9)];
        let merged = merge(&existing, &[ext(2, 3, 4, 2)], &log, &grid);
        assert_eq!(merged.len(), 1, "the extent over bin 5 saw the change");
        assert_eq!(merged[0].range(), BinRange { first: 0, end: 4 });
        assert_eq!(merged[0].version, 2);
        assert_eq!(merged[0].counts.columns[0], vec![1, 1, 1, 2]);
    }

    #[test]
    fn validity_follows_the_change_log() {
        let grid = Grid::new(10, 0);
        let log = ChangeLog {
            version: 3,
            changes: vec![
                ChangeRow {
                    version: 2,
                    start: 15,
                    end: 25,
                    all: false,
                },
                ChangeRow {
                    version: 3,
                    start: 0,
                    end: 0,
                    all: true,
                },
            ],
        };
        let r = BinRange { first: 0, end: 1 };
        assert!(log.is_valid(3, &grid, r));
        assert!(
            !log.is_valid(2, &grid, r),
            "the priority range changed at 3"
        );
        let log2 = ChangeLog {
            version: 2,
            changes: log.changes[..1].to_vec(),
        };
        assert!(log2.is_valid(1, &grid, r), "bin [0,10) misses [15,25)");
        assert!(!log2.is_valid(1, &grid, BinRange { first: 1, end: 2 }));
        assert!(!log2.is_valid(3, &grid, r), "newer than the reader");
    }

    #[test]
    fn encoding_round_trips() {
        let mut c = BinCounts::zeros(BinRange { first: -3, end: 2 });
        for j in 0..5 {
            c.columns[1][j] = j as u32;
            c.columns[4][j] = 2;
            c.columns[5][j] = 1;
            c.columns[0][j] = j as u32 + 2;
            c.columns[6][j] = j as u32 + 1;
        }
        assert_eq!(decode(&encode(&c), c.range), Some(c.clone()));
        assert_eq!(decode(&encode(&c)[1..], c.range), None);
    }
}
