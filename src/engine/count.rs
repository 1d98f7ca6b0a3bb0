//! Exact distinct-block counting with difference arrays.

use super::blocks::Categories;
use super::grid::{BinRange, Grid};
use super::periods::PeriodColumns;

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
            columns: std::array::from_fn(|_| zeroed(range.len())),
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

/// `n` zeros, by malloc + memset rather than calloc: calloc of a large
/// block hands out fresh pages that fault in on first write, which cost
/// more than the counting.
#[allow(clippy::slow_vector_initialization)]
fn zeroed(n: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0);
    v
}

/// Below this many candidate periods one thread is faster than splitting.
const PARALLEL_MIN_PERIODS: usize = 40_000;

/// The seven counter columns of a run of bins, borrowed for writing.
type ColumnsMut<'a> = [&'a mut [u32]; 7];

/// Counts, for every bin of `bins`, the distinct blocks whose periods
/// strictly overlap it, split into the seven counters.
///
/// `segments` are start-sorted period columns whose blocks are disjoint
/// (each version of a schedule adds periods of new blocks only, so a
/// schedule's segments are): their counts add up, and one pass over each
/// into the same difference arrays counts them all. With `clip_end`,
/// periods starting at or after it are ignored: that is how the clipped
/// last bin of the TSI histogram counts only overlap before the range end.
pub fn count_bins(
    segments: &[&PeriodColumns],
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
) -> BinCounts {
    let mut out = BinCounts::zeros(bins);
    if bins.is_empty() {
        return out;
    }
    let from = grid.bin_start(bins.first);
    let to = grid.bin_start(bins.end).min(clip_end.unwrap_or(i64::MAX));
    let candidates: usize = segments.iter().map(|p| p.candidates(from, to).len()).sum();
    let threads = rayon::current_num_threads();
    let tasks = if candidates < PARALLEL_MIN_PERIODS || bins.len() < 2 * threads {
        1
    } else {
        threads
    };
    // One sub-window of bins per task, each writing its own slice of the
    // output: each task sees every period meeting its bins, so per-block
    // de-duplication stays exact.
    let chunk = bins.len().div_ceil(tasks);
    let mut parts = Vec::with_capacity(tasks);
    let mut rest: ColumnsMut<'_> = out.columns.each_mut().map(|c| c.as_mut_slice());
    let mut first = bins.first;
    while first < bins.end {
        let len = chunk.min((bins.end - first) as usize);
        let (head, tail) = split_columns(rest, len);
        let end = first + len as i64;
        parts.push((BinRange { first, end }, head));
        (rest, first) = (tail, end);
    }
    let count = |(range, cols): (BinRange, ColumnsMut<'_>)| {
        count_serial(segments, cats, grid, range, clip_end, cols)
    };
    let mut parts = parts.into_iter();
    let own = parts.next().expect("a non-empty window has a part");
    if parts.len() == 0 {
        count(own);
    } else {
        // The calling thread counts the first part itself: it is awake
        // already, while pool threads may first have to be woken.
        rayon::in_place_scope(|scope| {
            for part in parts {
                scope.spawn(move |_| count(part));
            }
            count(own);
        });
    }
    out
}

/// Splits every column at `at`.
fn split_columns(cols: ColumnsMut<'_>, at: usize) -> (ColumnsMut<'_>, ColumnsMut<'_>) {
    let [a, b, c, d, e, f, g] = cols.map(|col| col.split_at_mut(at));
    (
        [a.0, b.0, c.0, d.0, e.0, f.0, g.0],
        [a.1, b.1, c.1, d.1, e.1, f.1, g.1],
    )
}

fn count_serial(
    segments: &[&PeriodColumns],
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
    out: ColumnsMut<'_>,
) {
    // Narrow counters halve the difference arrays' memory traffic; they are
    // exact while no counter can reach 65,536 (wrapping arithmetic cancels
    // out in the prefix sums).
    if cats.included() < u16::MAX as usize {
        count_with::<u16>(segments, cats, grid, bins, clip_end, out)
    } else {
        count_with::<u32>(segments, cats, grid, bins, clip_end, out)
    }
}

/// Difference-array lanes per bin, one per counting category (quartile in
/// bits 0–1, scheduled in bit 2): a period changes a single lane where it
/// starts and one where it stops, and the seven counters are lane sums.
const LANES: usize = 8;

/// A counter cell of the difference arrays.
trait Cell: Copy + Default + 'static {
    /// Lends this cell type's per-thread scratch buffers to `f`.
    fn with_scratch<R>(
        diff_len: usize,
        blocks: usize,
        f: impl FnOnce(&mut [[Self; LANES]], &mut [u32]) -> R,
    ) -> R;
    /// Adds 1 (wrapping).
    fn incr(&mut self);
    /// Subtracts 1 (wrapping).
    fn decr(&mut self);
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
                f: impl FnOnce(&mut [[$t; LANES]], &mut [u32]) -> R,
            ) -> R {
                with_scratch(&$scratch, d, b, f)
            }
            #[inline]
            fn incr(&mut self) {
                *self = self.wrapping_add(1);
            }
            #[inline]
            fn decr(&mut self) {
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
    };
}

cell!(u16, SCRATCH16);
cell!(u32, SCRATCH32);

fn count_with<T: Cell>(
    segments: &[&PeriodColumns],
    cats: &Categories,
    grid: &Grid,
    bins: BinRange,
    clip_end: Option<i64>,
    out: ColumnsMut<'_>,
) {
    let n = bins.len();
    let from = grid.bin_start(bins.first);
    let to = grid.bin_start(bins.end).min(clip_end.unwrap_or(i64::MAX));
    T::with_scratch(n + 1, cats.0.len(), |diff, covered| {
        // The segments' blocks are disjoint, so they share `covered`.
        for periods in segments {
            let range = periods.candidates(from, to);
            fill(periods, range, &cats.0, grid, from, n, diff, covered);
        }
        prefix(diff, out);
    })
}

/// Per-thread scratch buffers, reused across calls: fresh allocations
/// would be page-faulted in on every request.
struct Scratch<T> {
    diff: Vec<[T; LANES]>,
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
    f: impl FnOnce(&mut [[T; LANES]], &mut [u32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let s = &mut *s;
            s.diff.clear();
            s.diff.resize(diff_len, [T::default(); LANES]);
            s.covered.clear();
            s.covered.resize(blocks, 0);
            f(&mut s.diff, &mut s.covered)
        }
        // Re-entered on this thread (cannot happen today): use fresh buffers.
        Err(_) => f(
            &mut vec![[T::default(); LANES]; diff_len],
            &mut vec![0; blocks],
        ),
    })
}

/// Adds every candidate period's not-yet-counted bins to the difference
/// arrays.
#[allow(clippy::too_many_arguments)]
fn fill<T: Cell>(
    periods: &PeriodColumns,
    range: std::ops::Range<usize>,
    cats: &[u8],
    grid: &Grid,
    from: i64,
    n: usize,
    diff: &mut [[T; LANES]],
    covered: &mut [u32],
) {
    // Window offsets are clamped to `span`, so a divisor exact up to
    // `span` suffices.
    let width = grid.width() as u64;
    let span = (n as u64).saturating_mul(width);
    match ShortDivisor::new(width, span) {
        Some(d) => fill_with(periods, range, cats, from, (n, span), d, diff, covered),
        None => {
            let d = strength_reduce::StrengthReducedU64::new(width);
            fill_with(periods, range, cats, from, (n, span), d, diff, covered)
        }
    }
}

/// Unsigned division by the bin width.
trait Divisor: Copy {
    fn div(self, x: u64) -> u64;
}

impl Divisor for strength_reduce::StrengthReducedU64 {
    #[inline]
    fn div(self, x: u64) -> u64 {
        x / self
    }
}

/// Exact division by `d` of every `x < 2^31` as one 64-bit multiply and a
/// shift: with `l = ⌈log2 d⌉`, `m = ⌈2^(31+l) / d⌉` and `x < 2^31`, the
/// error of `x·m / 2^(31+l)` is below `1/d`, so its floor is `⌊x/d⌋`, and
/// `x·m < 2^64`.
#[derive(Clone, Copy)]
struct ShortDivisor {
    multiplier: u64,
    shift: u32,
}

impl ShortDivisor {
    /// A divisor by `d` for numerators up to `max`, if `max < 2^31`.
    fn new(d: u64, max: u64) -> Option<ShortDivisor> {
        if max >= 1 << 31 || d == 0 || d >= 1 << 31 {
            return None;
        }
        let shift = 31 + (64 - (d - 1).leading_zeros());
        let multiplier = (1u128 << shift).div_ceil(u128::from(d));
        Some(ShortDivisor {
            multiplier: u64::try_from(multiplier).ok()?,
            shift,
        })
    }
}

impl Divisor for ShortDivisor {
    #[inline]
    fn div(self, x: u64) -> u64 {
        (x * self.multiplier) >> self.shift
    }
}

#[allow(clippy::too_many_arguments)]
fn fill_with<T: Cell, D: Divisor>(
    periods: &PeriodColumns,
    range: std::ops::Range<usize>,
    cats: &[u8],
    from: i64,
    (n, span): (usize, u64),
    width: D,
    diff: &mut [[T; LANES]],
    covered: &mut [u32],
) {
    let n = n as u64;
    let starts = &periods.starts[range.clone()];
    let ends = &periods.ends[range.clone()];
    let blocks = &periods.blocks[range];
    for ((&s, &e), &b) in starts.iter().zip(ends).zip(blocks) {
        let cat = cats[b as usize];
        if cat == Categories::EXCLUDED || e <= from {
            continue;
        }
        // Offsets into the window, clamped to it: a period starting before
        // the window counts from bin 0, one ending after it up to bin n.
        let a = width.div(((s - from).max(0) as u64).min(span));
        let z = (width.div(((e - 1 - from) as u64).min(span)) + 1).min(n);
        // A block counts once per bin: skip the bins its earlier periods
        // (which started no later than this one) already cover.
        let seen = &mut covered[b as usize];
        let a = a.max(u64::from(*seen));
        if a >= z {
            continue;
        }
        *seen = z as u32;
        let cat = usize::from(cat);
        diff[a as usize][cat].incr();
        diff[z as usize][cat].decr();
    }
}

/// One prefix pass over the difference arrays producing all seven counters.
fn prefix<T: Cell>(diff: &[[T; LANES]], out: ColumnsMut<'_>) {
    let [visible, q1, q2, q3, q4, sched, unsched] = out;
    let n = visible.len();
    let (visible, q1, q2, q3, q4, sched, unsched) = (
        &mut visible[..n],
        &mut q1[..n],
        &mut q2[..n],
        &mut q3[..n],
        &mut q4[..n],
        &mut sched[..n],
        &mut unsched[..n],
    );
    let mut acc = [T::default(); LANES];
    for (j, d) in diff[..n].iter().enumerate() {
        for (acc, d) in acc.iter_mut().zip(d) {
            *acc = acc.add(*d);
        }
        let l = acc.map(T::get);
        let unscheduled = l[0] + l[1] + l[2] + l[3];
        let scheduled = l[4] + l[5] + l[6] + l[7];
        visible[j] = unscheduled + scheduled;
        q1[j] = l[0] + l[4];
        q2[j] = l[1] + l[5];
        q3[j] = l[2] + l[6];
        q4[j] = l[3] + l[7];
        sched[j] = scheduled;
        unsched[j] = unscheduled;
    }
}

#[cfg(test)]
mod tests {
    use super::{Divisor, ShortDivisor};
    use rand::{Rng, SeedableRng};

    #[test]
    fn short_divisor_is_exact_below_2_pow_31() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let max = (1u64 << 31) - 1;
        let mut widths = vec![1, 2, 3, 7, 60, 900, 3600, 86_400, 604_800, 1 << 30, max];
        widths.extend((0..200).map(|_| rng.gen_range(1..=max)));
        for d in widths {
            let div = ShortDivisor::new(d, max).expect("fits");
            let mut xs = vec![0, 1, d - 1, d, d + 1, max - 1, max];
            xs.extend((0..2_000).map(|_| rng.gen_range(0..=max)));
            xs.retain(|&x| x <= max);
            for x in xs {
                assert_eq!(div.div(x), x / d, "{x} / {d}");
            }
        }
    }

    #[test]
    fn short_divisor_refuses_numerators_from_2_pow_31() {
        assert!(ShortDivisor::new(900, 1 << 31).is_none());
        assert!(ShortDivisor::new(900, (1 << 31) - 1).is_some());
    }
}
