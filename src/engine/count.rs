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
const PARALLEL_MIN_PERIODS: usize = 40_000;

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
trait Cell: Copy + Default + 'static {
    /// Lends this cell type's per-thread scratch buffers to `f`.
    fn with_scratch<R>(
        diff_len: usize,
        blocks: usize,
        f: impl FnOnce(&mut [[Self; SLOTS]], &mut [u32]) -> R,
    ) -> R;
    /// Adds 0 or 1 (wrapping).
    fn plus(&mut self, bit: u8);
    /// Subtracts 0 or 1 (wrapping).
    fn minus(&mut self, bit: u8);
    /// Wrapping sum (the prefix pass).
    fn add(self, other: Self) -> Self;
    /// The counter value.
    fn get(self) -> u32;
}

macro_rules! cell {
    ($t:ty, $scratch:ident) => {
        impl Cell for $t {
            fn with_scratch<R>(
                d: usize,
                b: usize,
                f: impl FnOnce(&mut [[$t; SLOTS]], &mut [u32]) -> R,
            ) -> R {
                with_scratch(&$scratch, d, b, f)
            }
            #[inline]
            fn plus(&mut self, bit: u8) {
                *self = self.wrapping_add(<$t>::from(bit));
            }
            #[inline]
            fn minus(&mut self, bit: u8) {
                *self = self.wrapping_sub(<$t>::from(bit));
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
    };
}

cell!(u16, SCRATCH16);
cell!(u32, SCRATCH32);

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
    T::with_scratch(n + 1, cats.len(), |diff, covered| {
        fill_diff(periods, range, cats, grid, bins, from, diff, covered);
        prefix(bins, diff)
    })
}

/// Per-thread scratch buffers, reused across calls: fresh megabyte-sized
/// allocations would be page-faulted in on every request.
struct Scratch<T> {
    diff: Vec<[T; SLOTS]>,
    covered: Vec<u32>,
}

thread_local! {
    static SCRATCH16: std::cell::RefCell<Scratch<u16>> = const { std::cell::RefCell::new(Scratch { diff: Vec::new(), covered: Vec::new() }) };
    static SCRATCH32: std::cell::RefCell<Scratch<u32>> = const { std::cell::RefCell::new(Scratch { diff: Vec::new(), covered: Vec::new() }) };
}

/// Scratch buffers of `diff_len` zeroed diff cells and `blocks` zeroed
/// covered marks, lent to `f`.
fn with_scratch<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Scratch<T>>>,
    diff_len: usize,
    blocks: usize,
    f: impl FnOnce(&mut [[T; SLOTS]], &mut [u32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let s = &mut *s;
            s.diff.clear();
            s.diff.resize(diff_len, [T::default(); SLOTS]);
            s.covered.clear();
            s.covered.resize(blocks, 0);
            f(&mut s.diff, &mut s.covered)
        }
        // Re-entered on this thread (cannot happen today): use fresh buffers.
        Err(_) => f(
            &mut vec![[T::default(); SLOTS]; diff_len],
            &mut vec![0; blocks],
        ),
    })
}

/// Adds every candidate period's not-yet-counted bins to the difference arrays.
#[allow(clippy::too_many_arguments)]
fn fill_diff<T: Cell>(
    periods: &PeriodColumns,
    range: std::ops::Range<usize>,
    cats: &[u8],
    grid: &Grid,
    bins: BinRange,
    from: i64,
    diff: &mut [[T; SLOTS]],
    covered: &mut [u32],
) {
    let n = bins.len() as u64;
    // Times relative to the window start are non-negative for every counted
    // period, so bin indices are unsigned divisions by the width, done as
    // a multiply and shift (strength reduction) instead of a hardware divide.
    let width = strength_reduce::StrengthReducedU64::new(grid.width() as u64);
    let starts = &periods.starts[range.clone()];
    let ends = &periods.ends[range.clone()];
    let blocks = &periods.blocks[range];
    for ((&s, &e), &b) in starts.iter().zip(ends).zip(blocks) {
        let cat = cats[b as usize];
        if cat == Categories::EXCLUDED || e <= from {
            continue;
        }
        let a = if s <= from {
            0
        } else {
            (s - from) as u64 / width
        };
        let z = ((e - 1 - from) as u64 / width + 1).min(n);
        let seen = &mut covered[b as usize];
        let a = a.max(u64::from(*seen));
        if a >= z {
            continue;
        }
        *seen = z as u32;
        let (q, sched) = ((cat & 3) as usize, cat >> 2);
        let (a, z) = (a as usize, z as usize);
        diff[a][q].plus(1);
        diff[z][q].minus(1);
        // Branch-free: the scheduled flag is 0 or 1.
        diff[a][4].plus(sched);
        diff[z][4].minus(sched);
    }
}

/// One prefix pass over the difference arrays producing all seven counters.
fn prefix<T: Cell>(bins: BinRange, diff: &[[T; SLOTS]]) -> BinCounts {
    let n = bins.len();
    // malloc + memset, not calloc: calloc of a large block hands out fresh
    // pages that fault in on first write, which cost more than the counting.
    #[allow(clippy::slow_vector_initialization)]
    let mut columns: [Vec<u32>; 7] = std::array::from_fn(|_| {
        let mut v = Vec::with_capacity(n);
        v.resize(n, 0);
        v
    });
    let [visible, q1, q2, q3, q4, sched, unsched] = &mut columns;
    let (visible, q1, q2, q3, q4, sched, unsched) = (
        &mut visible[..n],
        &mut q1[..n],
        &mut q2[..n],
        &mut q3[..n],
        &mut q4[..n],
        &mut sched[..n],
        &mut unsched[..n],
    );
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
    BinCounts {
        range: bins,
        columns,
    }
}
