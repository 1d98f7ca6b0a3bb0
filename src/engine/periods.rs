//! Periods as columns sorted by start, with the window lookup that finds the
//! periods meeting a window by two binary searches.

use std::ops::Range;

/// Non-empty periods `[start, end)` with their block index, sorted by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodColumns {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    pub blocks: Vec<u32>,
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
        }
    }

    /// Appends a period; callers keep the start order.
    pub fn push(&mut self, block: u32, start: i64, end: i64) {
        debug_assert!(self.starts.last().is_none_or(|&s| s <= start));
        self.starts.push(start);
        self.ends.push(end);
        self.blocks.push(block);
    }

    /// Number of periods.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when there is no period.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Longest period, the bound that turns "ends after the window start"
    /// into a binary search on starts.
    pub fn max_len(&self) -> i64 {
        self.starts
            .iter()
            .zip(&self.ends)
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(0)
    }

    /// Index range of the periods that may meet `[from, to)`: every period
    /// with `start < to` and `start > from - max_len`. Periods in the range
    /// may still end before `from`; the counter skips those.
    pub fn candidates(&self, max_len: i64, from: i64, to: i64) -> Range<usize> {
        let lo = self.starts.partition_point(|&s| s <= from - max_len);
        let hi = self.starts.partition_point(|&s| s < to);
        lo..hi.max(lo)
    }
}
