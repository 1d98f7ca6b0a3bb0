//! Exact distinct-block counting with difference arrays.

use super::blocks::Categories;
use super::grid::{BinRange, Grid};
use super::periods::PeriodColumns;
use rayon::prelude::*;

/// One of the seven per-bin counters, in response order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Visible = 0,
    Q1 = 1,
    Q2 = 2,
    Q3 = 3,
    Q4 = 4,
    Scheduled = 5,
    Unscheduled = 6,
}

/// Field names of the seven counters, in column order (DESIGN §4).
pub const COLUMNS: [&str; 7] = [
    "visible_count",
    "priority_q1_count",
    "priority_q2_count",
    "priority_q3_count",
    "priority_q4_count",
    "scheduled_visible_count",
    "unscheduled_visible_count",
];

/// The seven counters for a run of consecutive bins of one grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinCounts {
    /// The grid bins these counters cover.
    pub range: BinRange,
    /// One vector per [`Column`], each `range.len()` long.
    pub columns: [Vec<u32>; 7],
}

impl BinCounts {
    /// All-zero counters for `range`.
    pub fn zeros(range: BinRange) -> BinCounts {
        BinCounts {
            range,
            columns: std::array::from_fn(|_| vec![0; range.len()]),
        }
    }

    /// Counter `c` of the bins.
    pub fn column(&self, c: Column) -> &[u32] {
        &self.columns[c as usize]
    }

    /// The sub-run `sub` (which must lie inside `self.range`).
    pub fn slice(&self, sub: BinRange) -> BinCounts {
        assert!(sub.first >= self.range.first && sub.end <= self.range.end);
        let a = (sub.first - self.range.first) as usize;
        let b = (sub.end - self.range.first) as usize;
        BinCounts {
            range: sub,
            columns: std::array::from_fn(|c| self.columns[c][a..b].to_vec()),
        }
    }

    /// Concatenates runs that follow each other without gap or overlap.
    pub fn concat(parts: &[BinCounts]) -> BinCounts {
        let first = parts.first().expect("at least one part").range.first;
        let mut end = first;
        for p in parts {
            assert_eq!(p.range.first, end, "parts must be contiguous");
            end = p.range.end;
        }
        BinCounts {
            range: BinRange { first, end },
            columns: std::array::from_fn(|c| {
                let mut v = Vec::with_capacity((end - first) as usize);
                for p in parts {
                    v.extend_from_slice(&p.columns[c]);
                }
                v
            }),
        }
    }

    /// Approximate heap size in bytes (for the cache's weigher).
    pub fn heap_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.len() * 4).sum()
    }
}

/// Below this many candidate periods one thread is faster than splitting.
const PARALLEL_MIN_PERIODS: usize = 200_000;

/// Counts, for every bin of `bins`, the distinct blocks whose periods
/// strictly overlap it, split into the seven counters.
///
/// `periods` must be sorted by start and `max_len` must be at least the
/// longest period. With `clip_end`, periods starting at or after it are
/// ignored: that is how the clipped last bin of the TSI histogram counts
/// only overlap before the range end.
pub fn count_bins(
    periods: &PeriodColumns,
    max_len: i64,
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
) -> BinCounts {
    if bins.is_empty() {
        return BinCounts::zeros(bins);
    }
    let from = grid.bin_start(bins.first);
    let to = grid.bin_start(bins.end).min(clip_end.unwrap_or(i64::MAX));
    let candidates = periods.candidates(max_len, from, to).len();
    let threads = rayon::current_num_threads();
    if candidates < PARALLEL_MIN_PERIODS || threads < 2 || bins.len() < 2 * threads {
        return count_serial(periods, max_len, cats, grid, bins, clip_end);
    }
    // One sub-window of bins per task: each task sees every period meeting
    // its bins, so per-block de-duplication stays exact.
    let chunk = bins.len().div_ceil(threads) as i64;
    let parts: Vec<BinCounts> = (0..threads as i64)
        .into_par_iter()
        .filter_map(|t| {
            let first = bins.first + t * chunk;
            let end = (first + chunk).min(bins.end);
            (first < end).then(|| {
                count_serial(
                    periods,
                    max_len,
                    cats,
                    grid,
                    BinRange { first, end },
                    clip_end,
                )
            })
        })
        .collect();
    BinCounts::concat(&parts)
}

fn count_serial(
    periods: &PeriodColumns,
    max_len: i64,
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
) -> BinCounts {
    // Narrow counters halve the difference arrays' memory traffic; they are
    // exact while no counter can reach 65,536 (wrapping arithmetic cancels
    // out in the prefix sums).
    if cats.included() < u16::MAX as usize {
        count_with::<u16>(periods, max_len, cats, grid, bins, clip_end)
    } else {
        count_with::<u32>(periods, max_len, cats, grid, bins, clip_end)
    }
}

/// A counter cell of the difference arrays.
trait Cell: Copy + Default {
    fn inc(&mut self);
    fn dec(&mut self);
    fn add(self, other: Self) -> Self;
    fn get(self) -> u32;
}

impl Cell for u16 {
    #[inline]
    fn inc(&mut self) {
        *self = self.wrapping_add(1);
    }
    #[inline]
    fn dec(&mut self) {
        *self = self.wrapping_sub(1);
    }
    #[inline]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    #[inline]
    fn get(self) -> u32 {
        u32::from(self)
    }
}

impl Cell for u32 {
    #[inline]
    fn inc(&mut self) {
        *self = self.wrapping_add(1);
    }
    #[inline]
    fn dec(&mut self) {
        *self = self.wrapping_sub(1);
    }
    #[inline]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    #[inline]
    fn get(self) -> u32 {
        self
    }
}

/// Difference-array slots per bin: the four quartiles, then "scheduled".
/// Visible is their quartile sum and unscheduled = visible − scheduled.
const SLOTS: usize = 5;

fn count_with<T: Cell>(
    periods: &PeriodColumns,
    max_len: i64,
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
) -> BinCounts {
    let n = bins.len();
    let from = grid.bin_start(bins.first);
    let to = grid.bin_start(bins.end).min(clip_end.unwrap_or(i64::MAX));
    let range = periods.candidates(max_len, from, to);
    let cats = &cats.0;
    // diff[j] holds the changes at bin j; slots of one bin share a cache line.
    let mut diff: Vec<[T; SLOTS]> = vec![[T::default(); SLOTS]; n + 1];
    // covered[b]: bins before this (relative) index are already counted for
    // block b. Valid because periods arrive in start order.
    let mut covered: Vec<u32> = vec![0; cats.len()];
    let starts = &periods.starts[range.clone()];
    let ends = &periods.ends[range.clone()];
    let blocks = &periods.blocks[range];
    for ((&s, &e), &b) in starts.iter().zip(ends).zip(blocks) {
        let cat = cats[b as usize];
        if cat == Categories::EXCLUDED || e <= from {
            continue;
        }
        let a = (grid.bin_of(s) - bins.first).max(0) as u32;
        let z = (grid.bin_of(e - 1) - bins.first + 1).min(n as i64) as u32;
        let seen = &mut covered[b as usize];
        let a = a.max(*seen);
        if a >= z {
            continue;
        }
        *seen = z;
        let q = (cat & 3) as usize;
        diff[a as usize][q].inc();
        diff[z as usize][q].dec();
        if cat & 4 != 0 {
            diff[a as usize][4].inc();
            diff[z as usize][4].dec();
        }
    }
    let mut out = BinCounts::zeros(bins);
    let [visible, q1, q2, q3, q4, sched, unsched] = &mut out.columns;
    let mut acc = [T::default(); SLOTS];
    for (j, d) in diff[..n].iter().enumerate() {
        for k in 0..SLOTS {
            acc[k] = acc[k].add(d[k]);
        }
        let (a, b, c, dd, s) = (
            acc[0].get(),
            acc[1].get(),
            acc[2].get(),
            acc[3].get(),
            acc[4].get(),
        );
        let v = a + b + c + dd;
        visible[j] = v;
        q1[j] = a;
        q2[j] = b;
        q3[j] = c;
        q4[j] = dd;
        sched[j] = s;
        unsched[j] = v - s;
    }
    out
}
