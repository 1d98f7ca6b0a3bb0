//! The bin grid: `[origin + k·W, origin + (k+1)·W)`, and the mapping of
//! instants and periods to bin indices.

/// A grid of bins of `width` seconds anchored at `origin` (reduced mod width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    width: i64,
    origin: i64,
    /// `1 / width`, so that mapping a time to a bin is a multiply plus an
    /// exact integer correction instead of a 64-bit division per endpoint.
    inverse: f64,
}

/// A half-open run of bin indices `[first, end)` on some grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BinRange {
    pub first: i64,
    pub end: i64,
}

impl BinRange {
    /// Number of bins in the range.
    pub fn len(&self) -> usize {
        (self.end - self.first).max(0) as usize
    }

    /// True when the range holds no bin.
    pub fn is_empty(&self) -> bool {
        self.end <= self.first
    }
}

impl Grid {
    /// A grid of `width` ≥ 1 seconds whose bins start at `origin + k·width`.
    /// Panics on a width below 1: callers validate widths at the edge.
    pub fn new(width: i64, origin: i64) -> Grid {
        assert!(width >= 1, "bin width must be at least 1 s");
        Grid {
            width,
            origin: origin.rem_euclid(width),
            inverse: 1.0 / width as f64,
        }
    }

    /// Bin width in seconds.
    pub fn width(&self) -> i64 {
        self.width
    }

    /// The origin reduced to `[0, width)`; two grids with equal width and
    /// reduced origin are the same grid.
    pub fn origin(&self) -> i64 {
        self.origin
    }

    /// Index of the bin containing instant `t`.
    #[inline]
    pub fn bin_of(&self, t: i64) -> i64 {
        let d = t - self.origin;
        // Truncation (not `floor`, which is a libm call on baseline x86-64)
        // plus float error leaves the estimate within a step or two of the
        // exact floor division; the loops fix it exactly.
        let mut k = (d as f64 * self.inverse) as i64;
        while k * self.width > d {
            k -= 1;
        }
        while (k + 1) * self.width <= d {
            k += 1;
        }
        k
    }

    /// Start instant of bin `k`.
    #[inline]
    pub fn bin_start(&self, k: i64) -> i64 {
        self.origin + k * self.width
    }

    /// The bins a window `[start, end)` is widened to: the first contains
    /// `start`, the last contains `end - 1`. Requires `start < end`.
    pub fn cover(&self, start: i64, end: i64) -> BinRange {
        debug_assert!(start < end);
        BinRange {
            first: self.bin_of(start),
            end: self.bin_of(end - 1) + 1,
        }
    }

    /// The bins a non-empty period `[s, e)` strictly overlaps:
    /// `s < bin_end && e > bin_start`.
    #[inline]
    pub fn bins_of_period(&self, s: i64, e: i64) -> BinRange {
        BinRange {
            first: self.bin_of(s),
            end: self.bin_of(e - 1) + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_of_matches_div_euclid_around_edges() {
        for width in [1, 7, 900, 3600, 86_400] {
            for origin in [-1_000_003, -5, 0, 3, 86_399] {
                let g = Grid::new(width, origin);
                for base in [-3_000_000_000i64, -1, 0, 1_737_244_800, 5_000_000_000] {
                    for delta in -3..=3 {
                        let t = base + delta;
                        let expected = (t - origin.rem_euclid(width)).div_euclid(width);
                        assert_eq!(g.bin_of(t), expected, "t={t} w={width} o={origin}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_period_ending_on_a_bin_edge_does_not_reach_the_next_bin() {
        let g = Grid::new(900, 0);
        assert_eq!(g.bins_of_period(0, 900), BinRange { first: 0, end: 1 });
        assert_eq!(g.bins_of_period(899, 901), BinRange { first: 0, end: 2 });
    }

    #[test]
    fn cover_widens_to_whole_bins() {
        let g = Grid::new(900, 100);
        let r = g.cover(1000, 1001);
        assert_eq!((g.bin_start(r.first), g.bin_start(r.end)), (1000, 1900));
        let r = g.cover(999, 1900);
        assert_eq!((g.bin_start(r.first), g.bin_start(r.end)), (100, 1900));
    }
}
