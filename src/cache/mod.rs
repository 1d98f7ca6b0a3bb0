//! The bin-extent cache (DESIGN §6), used by the read path (`query`):
//! extents and their gap arithmetic, validity against the change log, the
//! memory tier (moka, bounded in bytes), the persisted tier's write queue,
//! and single-flight for identical misses.
//!
//! Correctness rests on one rule: an extent is used only if no change
//! recorded after the version it was computed at touches its span (or
//! moved the priority range).

pub mod extent;
pub mod flight;
mod key;
mod memory;
mod persist;

pub use extent::{assemble, cover, defragment, ChangeLog, Extent, MAX_EXTENT_BINS};
pub use key::{CacheKey, CACHE_FORMAT_VERSION};
pub use memory::MemoryTier;
pub use persist::{queue_max_bytes, PersistWriter};
