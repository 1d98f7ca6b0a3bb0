//! Reading request bodies within the configured limits: whole (JSON) or as
//! runs of complete lines (NDJSON, bounded memory).

use super::error::ApiError;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

/// NDJSON is handed to the parser in runs of about this many bytes.
const CHUNK_TARGET: usize = 4 << 20;

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than the limit of {limit} bytes (VISBIN_MAX_BODY_BYTES); \
             split it into an upload and appends, or raise the limit; nothing was stored"
        ),
    )
}

fn unreadable(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_upload",
        format!("the request body could not be read ({e}); nothing was stored"),
    )
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// True when the body is NDJSON (by content type).
pub fn is_ndjson(req: &HttpRequest) -> bool {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        ct.as_str(),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl"
    )
}

/// Reads the whole body into one buffer (sized from Content-Length).
pub async fn read_all(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let hint = content_length(req);
    if hint.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut buf = BytesMut::with_capacity(hint.unwrap_or(64 * 1024).min(limit) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(unreadable)?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Yields runs of complete lines of a streamed body.
pub struct LineChunks {
    payload: web::Payload,
    buf: BytesMut,
    total: u64,
    limit: u64,
    max_line: u64,
    eof: bool,
}

impl LineChunks {
    /// Reads `payload` within a body limit and a line-length limit.
    pub fn new(
        req: &HttpRequest,
        payload: web::Payload,
        limit: u64,
        max_line: u64,
    ) -> Result<LineChunks, ApiError> {
        if content_length(req).is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        Ok(LineChunks {
            payload,
            buf: BytesMut::new(),
            total: 0,
            limit,
            max_line,
            eof: false,
        })
    }

    /// The next run of complete lines, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = self.buf.len();
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            if self.buf.len() >= CHUNK_TARGET {
                match self.buf.iter().rposition(|&b| b == b'\n') {
                    Some(i) => return Ok(Some(self.buf.split_to(i + 1).freeze())),
                    None if self.buf.len() as u64 > self.max_line => {
                        return Err(ApiError::bad_request(
                            "invalid_upload",
                            format!(
                                "an NDJSON line is longer than {} bytes (VISBIN_MAX_LINE_BYTES); \
                                 put one block per line; nothing was stored",
                                self.max_line
                            ),
                        ))
                    }
                    None => {}
                }
            }
            match self.payload.next().await {
                None => self.eof = true,
                Some(chunk) => {
                    let chunk = chunk.map_err(unreadable)?;
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        return Err(too_large(self.limit));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }
}
