//! The schedule summary of DESIGN §5, computed from the block table and the
//! counters of the default range query.

use super::blocks::{BlockTable, Quartile};
use super::count::{BinCounts, Column};
use serde::{Deserialize, Serialize};

/// Bin width of the summary's default range query.
pub const SUMMARY_BIN_SECONDS: i64 = 900;

/// Block statistics plus max/mean visibility over the default range query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total_blocks: u64,
    pub blocks_with_visibility: u64,
    pub priority_min: Option<f64>,
    pub priority_max: Option<f64>,
    pub priority_q1_blocks: u64,
    pub priority_q2_blocks: u64,
    pub priority_q3_blocks: u64,
    pub priority_q4_blocks: u64,
    pub scheduled_blocks: u64,
    pub unscheduled_blocks: u64,
    pub bin_seconds: i64,
    pub total_bins: u64,
    pub max_visible_in_bin: u32,
    pub mean_visible_per_bin: f64,
}

/// The visible counts of the default range query (`bin=900`, `origin=0`,
/// the schedule's range), tallied piece by piece so that a long range is
/// never held whole; empty when the schedule has no range.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VisibleTally {
    bins: u64,
    max: u32,
    sum: u64,
}

impl VisibleTally {
    /// Accounts for the bins of `counts` (the pieces must not overlap).
    pub fn add(&mut self, counts: &BinCounts) {
        let visible = counts.column(Column::Visible);
        self.bins += visible.len() as u64;
        self.max = visible.iter().copied().fold(self.max, u32::max);
        self.sum += visible.iter().map(|&v| u64::from(v)).sum::<u64>();
    }
}

/// Summarises `blocks` given the tally of the default range query.
pub fn summarize(blocks: &BlockTable, visible: &VisibleTally) -> Summary {
    let mut quartiles = [0u64; 4];
    let mut scheduled = 0u64;
    let mut with_visibility = 0u64;
    let range = blocks.priority_range();
    for i in 0..blocks.len() {
        let (lo, hi) = range.expect("a block exists");
        quartiles[Quartile::of(blocks.priority(i), lo, hi) as usize] += 1;
        scheduled += u64::from(blocks.is_scheduled(i));
        with_visibility += u64::from(blocks.period_count(i) > 0);
    }
    Summary {
        total_blocks: blocks.len() as u64,
        blocks_with_visibility: with_visibility,
        priority_min: range.map(|r| r.0),
        priority_max: range.map(|r| r.1),
        priority_q1_blocks: quartiles[Quartile::Q1 as usize],
        priority_q2_blocks: quartiles[Quartile::Q2 as usize],
        priority_q3_blocks: quartiles[Quartile::Q3 as usize],
        priority_q4_blocks: quartiles[Quartile::Q4 as usize],
        scheduled_blocks: scheduled,
        unscheduled_blocks: blocks.len() as u64 - scheduled,
        bin_seconds: SUMMARY_BIN_SECONDS,
        total_bins: visible.bins,
        max_visible_in_bin: visible.max,
        mean_visible_per_bin: if visible.bins == 0 {
            0.0
        } else {
            visible.sum as f64 / visible.bins as f64
        },
    }
}
