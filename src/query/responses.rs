//! The response cache: serialized answers by schedule version and
//! normalised request, bounded in bytes. A warm request is a head read
//! and a lookup here; the bytes are written once per version.

use crate::metrics::Metrics;
use bytes::Bytes;
use std::sync::Arc;

/// Serialized answers.
pub struct Responses {
    cache: moka::sync::Cache<Arc<str>, Bytes>,
    metrics: Arc<Metrics>,
}

impl Responses {
    /// A cache of at most `capacity` bytes.
    pub fn new(capacity: u64, metrics: Arc<Metrics>) -> Responses {
        Responses {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|k: &Arc<str>, v: &Bytes| {
                    (k.len() + v.len()).min(u32::MAX as usize) as u32
                })
                .support_invalidation_closures()
                .build(),
            metrics,
        }
    }

    /// The answer stored under `key`, counted as a lookup of the
    /// `response` tier.
    pub fn get(&self, key: &Arc<str>) -> Option<Bytes> {
        let found = self.cache.get(key);
        self.metrics
            .cache_lookups
            .with_label_values(&["response", if found.is_some() { "hit" } else { "miss" }])
            .inc();
        found
    }

    /// Stores an answer.
    pub fn insert(&self, key: Arc<str>, body: Bytes) {
        self.cache.insert(key, body);
    }

    /// Drops every answer of a deleted schedule (keys hold
    /// `schedule=<id>|`).
    pub fn forget_schedule(&self, id: i64) {
        let needle = format!("|schedule={id}|");
        // Only fails when closures are not enabled, which the builder does.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.contains(needle.as_str()));
    }

    /// Bytes held now.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}
