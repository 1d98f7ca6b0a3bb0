//! Per-schedule tables the read path keeps beside the periods: block
//! attributes (append-only, so a table is extended by the blocks it lacks)
//! and the change log that says which cached extents an append touched.

use crate::cache::ChangeLog;
use crate::engine::BlockTable;
use crate::metrics::Metrics;
use crate::store::{ScheduleRow, Store, StoreError};
use std::sync::Arc;

/// Block tables by schedule, bounded in bytes.
pub struct BlockTables {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    tables: moka::future::Cache<i64, Arc<BlockTable>>,
}

impl BlockTables {
    /// Tables over `store`, holding at most `capacity` bytes.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, capacity: u64) -> BlockTables {
        BlockTables {
            store,
            metrics,
            tables: moka::future::Cache::builder()
                .max_capacity(capacity)
                // Identity, priority, flag, count and the map entry.
                .weigher(|_: &i64, t: &Arc<BlockTable>| {
                    (t.len() * 64 + 64).min(u32::MAX as usize) as u32
                })
                .build(),
        }
    }

    /// A table holding at least the `head.block_count` blocks of `head`'s
    /// version (more if a later append was read already: callers use the
    /// first `block_count`).
    pub async fn at(&self, head: &ScheduleRow) -> Result<Arc<BlockTable>, StoreError> {
        let held = self.tables.get(&head.id).await;
        if let Some(t) = held.as_ref().filter(|t| t.len() as i64 >= head.block_count) {
            return Ok(t.clone());
        }
        let have = held.as_ref().map_or(0, |t| t.len());
        let timer = self.metrics.store_timer("blocks");
        let rows = self.store.blocks_from(head.id, have as i64).await?;
        timer.observe_duration();
        let mut table = held.map(|t| (*t).clone()).unwrap_or_default();
        for b in &rows {
            table.push(&b.identity, b.priority, b.scheduled, b.period_count as u32);
        }
        if (table.len() as i64) < head.block_count {
            // Blocks are written with the version that counts them; fewer
            // means the schedule was deleted meanwhile.
            return Err(StoreError::NotFound);
        }
        let table = Arc::new(table);
        self.tables.insert(head.id, table.clone()).await;
        Ok(table)
    }

    /// Forgets a deleted schedule's table.
    pub async fn forget(&self, id: i64) {
        self.tables.invalidate(&id).await;
    }
}

/// Change logs by schedule.
pub struct ChangeLogs {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    logs: moka::future::Cache<i64, Arc<ChangeLog>>,
}

impl ChangeLogs {
    /// Logs over `store`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> ChangeLogs {
        ChangeLogs {
            store,
            metrics,
            logs: moka::future::Cache::new(10_000),
        }
    }

    /// The schedule's changes up to `head.version`.
    pub async fn at(&self, head: &ScheduleRow) -> Result<ChangeLog, StoreError> {
        if head.version == 1 {
            return Ok(ChangeLog {
                version: 1,
                changes: Vec::new(),
            });
        }
        let log = match self.logs.get(&head.id).await {
            Some(l) if l.version >= head.version => l,
            _ => {
                let timer = self.metrics.store_timer("changes");
                let changes = self.store.changes_after(head.id, 0).await?;
                timer.observe_duration();
                let latest = changes
                    .iter()
                    .map(|c| c.version)
                    .max()
                    .unwrap_or(1)
                    .max(head.version);
                let l = Arc::new(ChangeLog {
                    version: latest,
                    changes,
                });
                self.logs.insert(head.id, l.clone()).await;
                l
            }
        };
        Ok(ChangeLog {
            version: head.version,
            changes: log
                .changes
                .iter()
                .filter(|c| c.version <= head.version)
                .copied()
                .collect(),
        })
    }

    /// Forgets a deleted schedule's log.
    pub async fn forget(&self, id: i64) {
        self.logs.invalidate(&id).await;
    }
}
