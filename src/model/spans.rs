//! Changed spans of an append: the union of the appended periods, kept to a
//! bounded number of spans (closest spans merged first), so an append that
//! touches a few nights invalidates those nights, not the whole year.

/// A bounded, sorted set of disjoint spans `[start, end)`.
#[derive(Debug, Clone)]
pub struct SpanSet {
    spans: Vec<(i64, i64)>,
    limit: usize,
}

impl SpanSet {
    /// An empty set keeping at most `limit` (≥ 1) spans.
    pub fn new(limit: usize) -> SpanSet {
        SpanSet {
            spans: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// Adds a span, merging overlapping or touching ones.
    pub fn add(&mut self, s: i64, e: i64) {
        let i = self.spans.partition_point(|&(_, end)| end < s);
        let mut j = i;
        let (mut ns, mut ne) = (s, e);
        while j < self.spans.len() && self.spans[j].0 <= e {
            ns = ns.min(self.spans[j].0);
            ne = ne.max(self.spans[j].1);
            j += 1;
        }
        self.spans.splice(i..j, [(ns, ne)]);
        if self.spans.len() > 2 * self.limit {
            self.shrink();
        }
    }

    /// Merges across the smallest gaps until at most `limit` spans remain.
    fn shrink(&mut self) {
        while self.spans.len() > self.limit {
            let k = (0..self.spans.len() - 1)
                .min_by_key(|&k| self.spans[k + 1].0 - self.spans[k].1)
                .expect("at least two spans");
            self.spans[k].1 = self.spans[k + 1].1;
            self.spans.remove(k + 1);
        }
    }

    /// The spans, at most `limit` of them.
    pub fn into_spans(mut self) -> Vec<(i64, i64)> {
        self.shrink();
        self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_merge_and_stay_bounded_while_covering_everything() {
        let mut s = SpanSet::new(2);
        for (a, b) in [(10, 20), (0, 5), (18, 30), (100, 110), (50, 51)] {
            s.add(a, b);
        }
        let spans = s.into_spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans, vec![(0, 51), (100, 110)]);
    }
}
