//! Schedules, blocks and periods as visbin stores them, and the parsing and
//! validation of uploads into those types (DESIGN §2–3).

mod checksum;
mod chunk;
mod spans;
pub mod time;
mod upload;

pub use checksum::{schedule_checksum, BlockDigest};
pub use chunk::{chunk_start_of, PackedChunk, CHUNK_SPAN};
pub use spans::SpanSet;
pub use upload::{
    parse_block_line, parse_document, parse_header_line, parse_ndjson_chunk, Block, Header,
    IdentitySet, NdjsonChunk, ParsedDocument, UploadStats,
};

/// A block as stored, without its periods (those are packed in chunks).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMeta {
    pub identity: String,
    pub priority: f64,
    pub scheduled: bool,
    /// Number of its non-empty periods.
    pub period_count: i64,
}

impl BlockMeta {
    /// The stored form of `block`.
    pub fn of(block: &Block) -> BlockMeta {
        BlockMeta {
            identity: block.identity.clone(),
            priority: block.priority,
            scheduled: block.scheduled,
            period_count: block.periods.len() as i64,
        }
    }
}

/// A refused upload: `detail` says which block and field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidUpload {
    pub detail: String,
}

impl From<String> for InvalidUpload {
    fn from(detail: String) -> InvalidUpload {
        InvalidUpload { detail }
    }
}

impl InvalidUpload {
    /// A refusal with the given explanation.
    pub fn new(detail: impl Into<String>) -> InvalidUpload {
        InvalidUpload {
            detail: detail.into(),
        }
    }
}
