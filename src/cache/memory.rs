//! Tier 1: extents per key in moka, bounded in bytes by a weigher.

use super::extent::{merge, ChangeLog, Extent};
use super::key::CacheKey;
use crate::engine::Grid;
use moka::future::Cache;
use moka::ops::compute::Op;
use std::sync::Arc;

/// The memory tier.
#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<CacheKey, Arc<Vec<Extent>>>,
}

impl MemoryTier {
    /// A tier holding at most `capacity_bytes` of weighted extents.
    pub fn new(capacity_bytes: u64) -> MemoryTier {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|k: &CacheKey, v: &Arc<Vec<Extent>>| {
                let bytes = k.heap_bytes() + v.iter().map(Extent::heap_bytes).sum::<usize>();
                bytes.min(u32::MAX as usize) as u32
            })
            .support_invalidation_closures()
            .build();
        MemoryTier { cache }
    }

    /// The extents held for `key`.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Vec<Extent>>> {
        self.cache.get(key).await
    }

    /// Merges `new` extents, computed at `log.version`, into `key`'s entry
    /// atomically (concurrent inserts of one key do not lose each other).
    pub async fn insert(&self, key: &CacheKey, new: Vec<Extent>, log: &ChangeLog, grid: &Grid) {
        if new.is_empty() {
            return;
        }
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let merged = match current {
                    Some(entry) => merge(entry.value(), &new, log, grid),
                    None => merge(&[], &new, log, grid),
                };
                std::future::ready(Op::Put(Arc::new(merged)))
            })
            .await;
    }

    /// Drops every entry of a schedule.
    pub fn forget_schedule(&self, schedule_id: i64) {
        // Only fails when closures are not enabled, which the builder does.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.schedule_id == schedule_id);
    }

    /// Current weighted size in bytes (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }

    /// Number of keys held.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}
