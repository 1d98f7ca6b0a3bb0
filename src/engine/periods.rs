//! Periods as columns sorted by start, with the window lookup that finds the
//! periods meeting a window by two binary searches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

/// Non-empty periods `[start, end)` with their block index, sorted by start.
///
/// The longest period is kept as the columns grow: it is the bound that
/// turns "ends after the window start" into a binary search on starts, and
/// scanning seven million periods for it per query would cost milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodColumns {
    pub(crate) starts: Vec<i64>,
    pub(crate) ends: Vec<i64>,
    pub(crate) blocks: Vec<u32>,
    max_len: i64,
}

impl PeriodColumns {
    /// Builds the columns from unsorted `(block, start, end)` triples.
    pub fn from_unsorted(mut rows: Vec<(u32, i64, i64)>) -> PeriodColumns {
        rows.sort_unstable_by_key(|&(b, s, e)| (s, e, b));
        let mut p = PeriodColumns::with_capacity(rows.len());
        for (b, s, e) in rows {
            p.push(b, s, e);
        }
        p
    }

    /// Empty columns with room for `n` periods.
    pub fn with_capacity(n: usize) -> PeriodColumns {
        PeriodColumns {
            starts: Vec::with_capacity(n),
            ends: Vec::with_capacity(n),
            blocks: Vec::with_capacity(n),
            max_len: 0,
        }
    }

    /// Appends a period; callers keep the start order.
    pub fn push(&mut self, block: u32, start: i64, end: i64) {
        debug_assert!(self.starts.last().is_none_or(|&s| s <= start));
        self.starts.push(start);
        self.ends.push(end);
        self.blocks.push(block);
        self.max_len = self.max_len.max(end - start);
    }

    /// Columns from parts that are already sorted by start (checked in
    /// debug builds) and of equal length.
    pub fn from_sorted(starts: Vec<i64>, ends: Vec<i64>, blocks: Vec<u32>) -> PeriodColumns {
        assert!(starts.len() == ends.len() && ends.len() == blocks.len());
        debug_assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        let max_len = starts
            .iter()
            .zip(&ends)
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(0);
        PeriodColumns {
            starts,
            ends,
            blocks,
            max_len,
        }
    }

    /// Number of periods.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when there is no period.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Period starts, sorted.
    pub fn starts(&self) -> &[i64] {
        &self.starts
    }

    /// Period ends, in start order.
    pub fn ends(&self) -> &[i64] {
        &self.ends
    }

    /// Block index of each period, in start order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Longest period.
    pub fn max_len(&self) -> i64 {
        self.max_len
    }

    /// Bytes allocated for the columns (capacity, not length: what the
    /// allocator really holds).
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 8 + self.ends.capacity() * 8 + self.blocks.capacity() * 4
    }

    /// Index range of the periods that may meet `[from, to)`: every period
    /// with `start < to` and `start > from - max_len`. Periods in the range
    /// may still end before `from`; the counter skips those.
    pub fn candidates(&self, from: i64, to: i64) -> Range<usize> {
        let lo = self
            .starts
            .partition_point(|&s| s <= from.saturating_sub(self.max_len));
        let hi = self.starts.partition_point(|&s| s < to);
        lo..hi.max(lo)
    }

    /// Merges start-sorted columns into one, in start order (a k-way merge).
    pub fn merge(parts: &[&PeriodColumns]) -> PeriodColumns {
        let total = parts.iter().map(|p| p.len()).sum();
        let mut out = PeriodColumns::with_capacity(total);
        let mut next = vec![0usize; parts.len()];
        let mut heap: BinaryHeap<Reverse<(i64, usize)>> = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(k, p)| Reverse((p.starts[0], k)))
            .collect();
        while let Some(Reverse((_, k))) = heap.pop() {
            let (p, i) = (parts[k], next[k]);
            out.push(p.blocks[i], p.starts[i], p.ends[i]);
            next[k] += 1;
            if let Some(&s) = p.starts.get(i + 1) {
                heap.push(Reverse((s, k)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_start_order_and_every_period() {
        let a = PeriodColumns::from_unsorted(vec![(0, 1, 5), (0, 10, 11), (0, 30, 31)]);
        let b = PeriodColumns::from_unsorted(vec![(1, 2, 100), (1, 10, 12)]);
        let m = PeriodColumns::merge(&[&a, &PeriodColumns::default(), &b]);
        assert_eq!(m.starts(), &[1, 2, 10, 10, 30]);
        assert_eq!(m.len(), 5);
        assert_eq!(m.max_len(), 98);
    }

    #[test]
    fn candidates_are_bounded_by_the_longest_period() {
        let p = PeriodColumns::from_unsorted(vec![(0, 0, 10), (0, 100, 105), (0, 200, 201)]);
        assert_eq!(p.candidates(101, 150), 1..2);
        assert_eq!(p.candidates(5, 6), 0..1);
        assert_eq!(p.candidates(300, 400), 3..3);
    }
}
