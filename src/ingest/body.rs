//! Reading request bodies within the configured limits: whole (JSON) or as
//! runs of complete lines (NDJSON, bounded memory). The HTTP layer hands
//! over the body as a stream of byte chunks; nothing here knows HTTP.

use super::IngestError;
use bytes::{Bytes, BytesMut};
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use std::time::Duration;

/// NDJSON is handed to the parser in runs of about this many bytes.
const CHUNK_TARGET: usize = 1 << 20;

/// Each run's buffer is allocated once at this size (room for the network
/// chunk that crosses the target): equal buffers are reused by the
/// allocator run after run, where growing ones would each leave a freed
/// extent behind.
const RUN_CAPACITY: usize = CHUNK_TARGET + (128 << 10);

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON document.
    Json,
    /// One JSON value per line.
    Ndjson,
}

impl BodyFormat {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Ndjson => "ndjson",
        }
    }
}

/// A request body: its chunks as they arrive, its declared length and format.
pub struct Body {
    pub chunks: LocalBoxStream<'static, Result<Bytes, String>>,
    /// `Content-Length`, if the client sent one.
    pub length: Option<u64>,
    pub format: BodyFormat,
}

impl Body {
    fn check_declared(&self, limit: u64) -> Result<(), IngestError> {
        match self.length {
            Some(n) if n > limit => Err(IngestError::TooLarge { limit }),
            _ => Ok(()),
        }
    }

    /// The next piece of the body, refused as [`IngestError::BodyTimeout`]
    /// when it takes longer than `pause`.
    async fn next_piece(
        &mut self,
        pause: Duration,
    ) -> Result<Option<Result<Bytes, String>>, IngestError> {
        tokio::time::timeout(pause, self.chunks.next())
            .await
            .map_err(|_| IngestError::BodyTimeout {
                seconds: pause.as_secs(),
            })
    }
}

/// Reads the whole body into one buffer (sized from its declared length).
pub async fn read_all(mut body: Body, limit: u64, pause: Duration) -> Result<Bytes, IngestError> {
    body.check_declared(limit)?;
    // Only as much up front as a client cannot claim without sending it:
    // a declared length is grown into as the bytes arrive.
    let mut buf =
        BytesMut::with_capacity(body.length.unwrap_or(64 * 1024).min(limit).min(1 << 20) as usize);
    while let Some(chunk) = body.next_piece(pause).await? {
        let chunk = chunk.map_err(IngestError::Unreadable)?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(IngestError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Yields runs of complete lines of a streamed body.
pub struct LineChunks {
    body: Body,
    buf: BytesMut,
    /// Position of the last newline in `buf`.
    last_newline: Option<usize>,
    total: u64,
    limit: u64,
    max_line: u64,
    pause: Duration,
    eof: bool,
}

impl LineChunks {
    /// Reads `body` within a body limit and a line-length limit.
    pub fn new(
        body: Body,
        limit: u64,
        max_line: u64,
        pause: Duration,
    ) -> Result<LineChunks, IngestError> {
        body.check_declared(limit)?;
        Ok(LineChunks {
            body,
            buf: BytesMut::with_capacity(RUN_CAPACITY),
            last_newline: None,
            total: 0,
            limit,
            max_line,
            pause,
            eof: false,
        })
    }

    /// The next run of complete lines, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, IngestError> {
        loop {
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = self.buf.len();
                return self.lines(n).map(Some);
            }
            match self.last_newline {
                Some(i) if self.buf.len() >= CHUNK_TARGET => return self.lines(i + 1).map(Some),
                // The unfinished last line is already too long.
                last if (self.buf.len() - last.map_or(0, |i| i + 1)) as u64 > self.max_line => {
                    return Err(IngestError::LineTooLong {
                        limit: self.max_line,
                    })
                }
                _ => {}
            }
            match self.body.next_piece(self.pause).await? {
                None => self.eof = true,
                Some(chunk) => {
                    let chunk = chunk.map_err(IngestError::Unreadable)?;
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        return Err(IngestError::TooLarge { limit: self.limit });
                    }
                    if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                        self.last_newline = Some(self.buf.len() + i);
                    }
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Splits off the first `n` buffered bytes, refusing any line in them
    /// longer than the limit; the rest moves to a fresh buffer.
    fn lines(&mut self, n: usize) -> Result<Bytes, IngestError> {
        let mut next = BytesMut::with_capacity(RUN_CAPACITY.max(self.buf.len() - n));
        next.extend_from_slice(&self.buf[n..]);
        self.buf.truncate(n);
        let run = std::mem::replace(&mut self.buf, next).freeze();
        // Runs end at the last newline (or take everything at the end).
        self.last_newline = None;
        if run
            .split(|&b| b == b'\n')
            .any(|line| line.len() as u64 > self.max_line)
        {
            return Err(IngestError::LineTooLong {
                limit: self.max_line,
            });
        }
        Ok(run)
    }
}
