//! Per-block attributes (priority, scheduled flag, identity), the priority
//! quartiles of DESIGN §4 and the filters that select blocks.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

/// Priority quartile of a block, relative to the whole schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quartile {
    Q1 = 0,
    Q2 = 1,
    Q3 = 2,
    Q4 = 3,
}

impl Quartile {
    /// The quartile of priority `p` in a schedule whose priorities span
    /// `[pmin, pmax]`, exactly as DESIGN §4 writes it.
    pub fn of(p: f64, pmin: f64, pmax: f64) -> Quartile {
        if pmax == pmin {
            return Quartile::Q2;
        }
        let x = (p - pmin) / (pmax - pmin);
        if x < 0.25 {
            Quartile::Q1
        } else if x < 0.5 {
            Quartile::Q2
        } else if x < 0.75 {
            Quartile::Q3
        } else {
            Quartile::Q4
        }
    }
}

/// The blocks of one schedule, indexed by their position (block index).
/// Identities are shared strings, so extending a copy of a large table by
/// an append's few blocks does not copy every identity.
#[derive(Debug, Default, Clone)]
pub struct BlockTable {
    identities: Vec<Arc<str>>,
    priorities: Vec<f64>,
    scheduled: Vec<bool>,
    period_counts: Vec<u32>,
    by_identity: OnceLock<HashMap<Arc<str>, u32>>,
}

impl BlockTable {
    /// An empty table.
    pub fn new() -> BlockTable {
        BlockTable::default()
    }

    /// Adds the next block (its index is the current length).
    pub fn push(&mut self, identity: &str, priority: f64, scheduled: bool, period_count: u32) {
        self.identities.push(identity.into());
        self.priorities.push(priority);
        self.scheduled.push(scheduled);
        self.period_counts.push(period_count);
        self.by_identity = OnceLock::new();
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.priorities.len()
    }

    /// True when the schedule has no block.
    pub fn is_empty(&self) -> bool {
        self.priorities.is_empty()
    }

    /// Priority of block `i`.
    pub fn priority(&self, i: usize) -> f64 {
        self.priorities[i]
    }

    /// Whether block `i` has a scheduled slot.
    pub fn is_scheduled(&self, i: usize) -> bool {
        self.scheduled[i]
    }

    /// Number of non-empty periods of block `i`.
    pub fn period_count(&self, i: usize) -> u32 {
        self.period_counts[i]
    }

    /// Lowest and highest priority over all blocks; `None` without blocks.
    pub fn priority_range(&self) -> Option<(f64, f64)> {
        priority_range(&self.priorities)
    }

    fn index_of(&self, identity: &str) -> Option<u32> {
        self.by_identity
            .get_or_init(|| {
                self.identities
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id.clone(), i as u32))
                    .collect()
            })
            .get(identity)
            .copied()
    }

    /// The counting category of every block under `filter`: quartile in
    /// bits 0–1, scheduled in bit 2, or [`Categories::EXCLUDED`].
    pub fn categories(&self, filter: &Filter) -> Categories {
        self.categories_of_first(self.len(), filter)
    }

    /// [`BlockTable::categories`] of the schedule made of the first `n`
    /// blocks (an earlier version: blocks are only ever appended), with
    /// quartiles over those blocks' priorities.
    pub fn categories_of_first(&self, n: usize, filter: &Filter) -> Categories {
        let n = n.min(self.len());
        let Some((lo, hi)) = priority_range(&self.priorities[..n]) else {
            return Categories(Vec::new());
        };
        let mut cats: Vec<u8> = (0..n)
            .map(|i| {
                let p = self.priorities[i];
                if filter.priority_min.is_some_and(|min| p < min)
                    || filter.priority_max.is_some_and(|max| p > max)
                    || filter.scheduled.is_some_and(|s| s != self.scheduled[i])
                {
                    Categories::EXCLUDED
                } else {
                    Quartile::of(p, lo, hi) as u8 | (u8::from(self.scheduled[i]) << 2)
                }
            })
            .collect();
        if let Some(ids) = &filter.block_ids {
            let mut keep = vec![false; cats.len()];
            for id in ids {
                if let Some(i) = self.index_of(id).filter(|&i| (i as usize) < n) {
                    keep[i as usize] = true;
                }
            }
            for (c, k) in cats.iter_mut().zip(keep) {
                if !k {
                    *c = Categories::EXCLUDED;
                }
            }
        }
        Categories(cats)
    }
}

fn priority_range(priorities: &[f64]) -> Option<(f64, f64)> {
    let mut it = priorities.iter().copied();
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), p| (lo.min(p), hi.max(p))))
}

/// Block selection of a query; all conditions combine with AND.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Inclusive lower bound on priority.
    pub priority_min: Option<f64>,
    /// Inclusive upper bound on priority.
    pub priority_max: Option<f64>,
    /// Only scheduled (`true`) or only unscheduled (`false`) blocks.
    pub scheduled: Option<bool>,
    /// Only these identities; an unknown identity matches nothing.
    pub block_ids: Option<BTreeSet<String>>,
}

impl Filter {
    /// True when the filter selects every block.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// Counting category per block index (see [`BlockTable::categories`]).
#[derive(Debug, Clone)]
pub struct Categories(pub(crate) Vec<u8>);

impl Categories {
    /// The category of a block that the filter leaves out.
    pub const EXCLUDED: u8 = u8::MAX;

    /// Number of blocks that are counted.
    pub fn included(&self) -> usize {
        self.0.iter().filter(|&&c| c != Self::EXCLUDED).count()
    }

    /// Number of blocks (included or not).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no blocks at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_equal_priorities_put_every_block_in_q2() {
        assert_eq!(Quartile::of(5.0, 5.0, 5.0), Quartile::Q2);
    }

    #[test]
    fn quartile_boundaries_follow_the_design() {
        assert_eq!(Quartile::of(0.0, 0.0, 4.0), Quartile::Q1);
        assert_eq!(Quartile::of(0.99, 0.0, 4.0), Quartile::Q1);
        assert_eq!(Quartile::of(1.0, 0.0, 4.0), Quartile::Q2);
        assert_eq!(Quartile::of(2.0, 0.0, 4.0), Quartile::Q3);
        assert_eq!(Quartile::of(3.0, 0.0, 4.0), Quartile::Q4);
        assert_eq!(Quartile::of(4.0, 0.0, 4.0), Quartile::Q4);
    }

    #[test]
    fn filters_combine_with_and_and_keep_whole_schedule_quartiles() {
        let mut t = BlockTable::new();
        t.push("a", 0.0, true, 1);
        t.push("b", 10.0, false, 1);
        t.push("c", 5.0, true, 1);
        let f = Filter {
            priority_min: Some(4.0),
            scheduled: Some(true),
            ..Filter::default()
        };
        let c = t.categories(&f);
        assert_eq!(c.0, vec![Categories::EXCLUDED, Categories::EXCLUDED, 2 | 4]);
        let f = Filter {
            block_ids: Some(["b".to_string(), "zz".to_string()].into()),
            ..Filter::default()
        };
        assert_eq!(t.categories(&f).included(), 1);
    }

    #[test]
    fn categories_of_an_earlier_version_use_its_own_priority_range() {
        let mut t = BlockTable::new();
        t.push("a", 0.0, false, 1);
        t.push("b", 4.0, false, 1);
        t.push("c", 100.0, true, 1);
        assert_eq!(t.categories_of_first(2, &Filter::default()).0, vec![0, 3]);
        let only_c = Filter {
            block_ids: Some(["c".to_string()].into()),
            ..Filter::default()
        };
        assert_eq!(t.categories_of_first(2, &only_c).included(), 0);
        assert_eq!(t.categories(&only_c).included(), 1);
    }
}
