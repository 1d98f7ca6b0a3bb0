//! What the memory allocator holds, read at each `/metrics` scrape.
//!
//! The binary allocates through jemalloc (`src/main.rs`; its options,
//! such as how fast it returns freed pages, are in `.cargo/config.toml`).
//! Its own counts tell the bytes the program has live (`allocated`) from
//! the pages it keeps mapped (`resident`, which is what the process's RSS
//! mostly is): the budgets bound the first, the difference is the
//! allocator's.

/// Bytes the allocator reports.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorBytes {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes of physical pages the allocator keeps mapped.
    pub resident: u64,
}

/// The allocator's counts now, or `None` when it cannot tell (a build on
/// another allocator reports zeros or fails here).
pub fn bytes() -> Option<AllocatorBytes> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The counts are cached by jemalloc until the epoch advances.
    epoch::advance().ok()?;
    Some(AllocatorBytes {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// The allocator options that bound what it keeps beyond live bytes.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorOptions {
    /// Whether a background thread returns unused pages.
    pub background_thread: bool,
    /// Arenas (each keeps its own free pages).
    pub arenas: u32,
}

/// The options the allocator started with, or `None` when it cannot tell.
pub fn options() -> Option<AllocatorOptions> {
    use tikv_jemalloc_ctl::opt;
    Some(AllocatorOptions {
        background_thread: opt::background_thread::read().ok()?,
        arenas: opt::narenas::read().ok()?,
    })
}
