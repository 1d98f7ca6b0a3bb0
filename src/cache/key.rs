//! Cache keys: (schedule, grid, normalised filter, cache format version).
//! The schedule version is not part of the lookup key: each extent carries
//! the version it was computed at and is checked against the change log, so
//! extents an append did not touch stay usable (DESIGN §6).

use crate::engine::{Filter, Grid};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Bumped whenever the meaning or encoding of cached bins changes.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// The identity of a run of bins: everything but the version and the bins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub schedule_id: i64,
    /// Canonical text of the whole key; stored with persisted extents and
    /// compared on read so a hash collision can never return another key's bins.
    pub text: Arc<str>,
}

impl CacheKey {
    /// The key of `grid` and `filter` on schedule `schedule_id`.
    pub fn new(schedule_id: i64, grid: &Grid, filter: &Filter) -> CacheKey {
        let text = format!(
            "bins/v{CACHE_FORMAT_VERSION}|schedule={schedule_id}|width={}|origin={}|{}",
            grid.width(),
            grid.origin(),
            normalise_filter(filter)
        );
        CacheKey {
            schedule_id,
            text: text.into(),
        }
    }

    /// A 64-bit hash of the key text (the persisted tier's index column).
    pub fn hash64(&self) -> i64 {
        let d = Sha256::digest(self.text.as_bytes());
        i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// Approximate heap size, for the memory tier's weigher.
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + 32
    }
}

/// A canonical text for a filter: equal selections give equal text (bounds
/// as exact float bits, `-0.0` as `0.0`; identities sorted, length-prefixed).
fn normalise_filter(f: &Filter) -> String {
    fn bits(v: Option<f64>) -> String {
        match v {
            Some(x) => format!("{:016x}", if x == 0.0 { 0.0f64 } else { x }.to_bits()),
            None => "-".into(),
        }
    }
    let sched = match f.scheduled {
        Some(true) => "1",
        Some(false) => "0",
        None => "-",
    };
    let ids = match &f.block_ids {
        Some(ids) => ids
            .iter()
            .map(|i| format!("{}:{i}", i.len()))
            .collect::<Vec<_>>()
            .join(","),
        None => "-".into(),
    };
    format!(
        "pmin={}|pmax={}|scheduled={sched}|ids={ids}",
        bits(f.priority_min),
        bits(f.priority_max)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_selections_share_a_key_and_origins_reduce_mod_width() {
        let f1 = Filter {
            block_ids: Some(["b".to_string(), "a".to_string()].into()),
            priority_min: Some(-0.0),
            ..Filter::default()
        };
        let f2 = Filter {
            block_ids: Some(["a".to_string(), "b".to_string()].into()),
            priority_min: Some(0.0),
            ..Filter::default()
        };
        let a = CacheKey::new(1, &Grid::new(900, 0), &f1);
        let b = CacheKey::new(1, &Grid::new(900, 1800), &f2);
        assert_eq!(a, b);
        assert_ne!(a, CacheKey::new(1, &Grid::new(900, 1), &f2));
        assert_ne!(a, CacheKey::new(2, &Grid::new(900, 0), &f1));
        // Identities containing the separator cannot alias two lists.
        let g1 = Filter {
            block_ids: Some(["a,1:b".to_string()].into()),
            ..Filter::default()
        };
        let g2 = Filter {
            block_ids: Some(["a".to_string(), "b".to_string()].into()),
            ..Filter::default()
        };
        assert_ne!(
            CacheKey::new(1, &Grid::new(9, 0), &g1),
            CacheKey::new(1, &Grid::new(9, 0), &g2)
        );
    }
}
