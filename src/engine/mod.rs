//! The pure binning engine: grid, filters and exact distinct-block counts
//! (DESIGN §4). No I/O, no HTTP, no SQL — it takes blocks and periods in
//! memory and returns counters.
//!
//! How a count stays exact without a set per bin: periods are visited in
//! start order, each mapped to the run of bins it strictly overlaps; per
//! block we remember the end of the bins already counted, so only the part
//! of a run not yet covered by that block's earlier periods is added (a
//! block counts once per bin however many of its periods touch it). The
//! runs go into difference arrays (+1 at the first bin, −1 after the last)
//! and one prefix pass yields all seven counters.

mod blocks;
mod count;
mod grid;
mod periods;
mod summary;

pub use blocks::{BlockTable, Categories, Filter, Quartile};
pub use count::{count_bins, BinCounts, Column, COLUMNS};
pub use grid::{BinRange, Grid};
pub use periods::PeriodColumns;
pub use summary::{summarize, Summary, VisibleTally, SUMMARY_BIN_SECONDS};
