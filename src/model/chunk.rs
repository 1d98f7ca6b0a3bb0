//! Periods as they are stored: packed into chunks (DESIGN §6). This is the
//! plain data that travels between the codec (`periods::codec`) and the
//! store; neither side needs to know the other.

/// Periods are packed per UTC day of their start: a window read fetches
/// about one row per day it covers, a year of a large schedule is a few
/// hundred rows, and a day of 150,000 blocks (~20,000 periods) packs into
/// ~150 KB. Measured against 1 h and 7 d spans in `docs/BENCHMARKS.md`.
pub const CHUNK_SPAN: i64 = 86_400;

/// The start of the chunk holding periods that start at `t`.
pub fn chunk_start_of(t: i64) -> i64 {
    t.div_euclid(CHUNK_SPAN) * CHUNK_SPAN
}

/// One packed chunk: the periods of one version group whose start lies in
/// `[chunk_start, chunk_start + CHUNK_SPAN)`, in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedChunk {
    pub chunk_start: i64,
    pub period_count: i64,
    /// The latest end of the chunk's periods: a window starting at or after
    /// it cannot meet any of them.
    pub max_end: i64,
    /// The encoded columns (see `periods::codec`).
    pub payload: Vec<u8>,
}
