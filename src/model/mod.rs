//! Schedules, blocks and periods as visbin stores them, and the parsing and
//! validation of uploads into those types (DESIGN §2–3).

mod checksum;
mod spans;
pub mod time;
mod upload;

pub use checksum::{schedule_checksum, BlockDigest};
pub use spans::SpanSet;
pub use upload::{
    parse_block_line, parse_document, parse_header_line, parse_ndjson_chunk, Block, Header,
    IdentitySet, NdjsonChunk, ParsedDocument, UploadStats,
};

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
