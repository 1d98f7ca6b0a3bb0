//! What a summary job needs of the read path: the default range query's
//! bins and the block statistics, both of exactly the job's version.

use super::*;
use crate::cache::CacheKey;
use crate::engine::{summarize, Summary, VisibleTally, SUMMARY_BIN_SECONDS};

impl QueryService {
    /// The counters of bins `bins` of the default range query (`bin=900`,
    /// `origin=0`, no filter) at exactly `head.version`, through the extent
    /// tiers (so the job warms them); `None` when the schedule moved past
    /// that version.
    pub async fn summary_bins(
        self: &Arc<Self>,
        head: &Arc<ScheduleRow>,
        bins: BinRange,
    ) -> Result<Option<BinCounts>, QueryError> {
        let grid = Grid::new(SUMMARY_BIN_SECONDS, 0);
        let filter = Filter::default();
        let key = CacheKey::new(head.id, &grid, &filter);
        let req = BinRequest { grid, bins, filter };
        Ok(match self.range(head, &key, &req, true).await? {
            Step::Done(c) if c.head.version == head.version => Some(c.counts),
            _ => None,
        })
    }

    /// The summary of `head.version` given the tally of its whole default
    /// range; `None` when the schedule moved past that version.
    pub async fn summary(
        &self,
        head: &ScheduleRow,
        range: &VisibleTally,
    ) -> Result<Option<Summary>, QueryError> {
        let blocks = self
            .blocks
            .at(head)
            .await
            .map_err(|e| QueryError::store(head.id, Arc::new(e)))?;
        // More blocks than the version counts: a later append is stored.
        if blocks.len() as i64 != head.block_count {
            return Ok(None);
        }
        Ok(Some(summarize(&blocks, range)))
    }
}
