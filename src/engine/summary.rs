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

/// Summarises `blocks`; `range_bins` are the counters of the default range
/// query (`bin=900`, `origin=0`, the schedule's range), `None` when the
/// schedule has no range.
pub fn summarize(blocks: &BlockTable, range_bins: Option<&BinCounts>) -> Summary {
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
    let visible = range_bins.map(|b| b.column(Column::Visible)).unwrap_or(&[]);
    let total: u64 = visible.iter().map(|&v| u64::from(v)).sum();
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
        total_bins: visible.len() as u64,
        max_visible_in_bin: visible.iter().copied().max().unwrap_or(0),
        mean_visible_per_bin: if visible.is_empty() {
            0.0
        } else {
            total as f64 / visible.len() as f64
        },
    }
}
