//! The response cache: serialized answers by schedule version and
//! normalised request, bounded in bytes, each with its entity tag and its
//! compressed forms, made once per answer on first demand (DESIGN §5). A
//! warm request is a head read and a lookup here.

use crate::metrics::Metrics;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// Answers up to this size are not compressed (DESIGN §5: over 1 KiB).
pub const COMPRESS_MIN_BYTES: usize = 1024;

/// Compressing more than this runs on the blocking pool.
const COMPRESS_INLINE_MAX: usize = 64 << 10;

/// Whether the caller holds the answer tagged `tag` (the opaque parts of
/// its `If-None-Match`). `*` is not matched here: a `304` for it must carry
/// the answer's own tag, which only the answer itself tells (its size
/// decides whether it is sent compressed), so the answer is made and the
/// response step answers `304`.
pub fn holds_tag(holds: &[String], tag: &str) -> bool {
    holds.iter().any(|h| h == tag)
}

/// A content coding of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Identity,
    Gzip,
    Br,
    Zstd,
}

impl Coding {
    /// The `Content-Encoding` token (`None` for identity).
    pub fn token(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Br => Some("br"),
            Coding::Zstd => Some("zstd"),
        }
    }

    fn compress(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Coding::Identity => Ok(data.to_vec()),
            // Levels chosen for answers compressed once and sent many
            // times: a year of 15-minute bins (7 MB of JSON) takes tens of
            // milliseconds at these levels, far less than at the maxima.
            Coding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 8),
                    flate2::Compression::new(6),
                );
                e.write_all(data)?;
                e.finish()
            }
            Coding::Br => {
                let mut out = Vec::with_capacity(data.len() / 8);
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 64 << 10, 5, 22);
                    w.write_all(data)?;
                }
                Ok(out)
            }
            Coding::Zstd => zstd::bulk::compress(data, 3),
        }
    }
}

/// An answer as served: its bytes, entity tag and content type, and the
/// compressed forms made so far.
#[derive(Debug)]
pub struct Encoded {
    pub identity: Bytes,
    pub content_type: &'static str,
    /// The entity tag's opaque part (quoted and suffixed per coding by
    /// [`Encoded::etag`]).
    pub tag: Arc<str>,
    gzip: OnceLock<Bytes>,
    br: OnceLock<Bytes>,
    zstd: OnceLock<Bytes>,
}

impl Encoded {
    /// An answer of `identity` bytes tagged `tag`.
    pub fn new(identity: Bytes, content_type: &'static str, tag: Arc<str>) -> Arc<Encoded> {
        Arc::new(Encoded {
            identity,
            content_type,
            tag,
            gzip: OnceLock::new(),
            br: OnceLock::new(),
            zstd: OnceLock::new(),
        })
    }

    /// The coding to send for a client accepting `accepted`: identity for
    /// small answers.
    pub fn coding_for(&self, accepted: Coding) -> Coding {
        if self.identity.len() <= COMPRESS_MIN_BYTES {
            Coding::Identity
        } else {
            accepted
        }
    }

    /// The strong entity tag of the answer in `coding` (a different tag
    /// per coding, as RFC 9110 asks; revalidation compares the opaque part).
    pub fn etag(&self, coding: Coding) -> String {
        match coding.token() {
            None => format!("\"{}\"", self.tag),
            Some(t) => format!("\"{}-{t}\"", self.tag),
        }
    }

    fn slot(&self, coding: Coding) -> Option<&OnceLock<Bytes>> {
        match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(&self.gzip),
            Coding::Br => Some(&self.br),
            Coding::Zstd => Some(&self.zstd),
        }
    }

    /// The answer's bytes in `coding`, compressed on first demand and kept.
    pub async fn body(self: &Arc<Self>, coding: Coding) -> Bytes {
        let Some(slot) = self.slot(coding) else {
            return self.identity.clone();
        };
        if let Some(b) = slot.get() {
            return b.clone();
        }
        let compress = {
            let this = self.clone();
            move || match coding.compress(&this.identity) {
                Ok(c) => Bytes::from(c),
                // Compressing into memory does not fail; should it, send
                // the answer as it is.
                Err(_) => this.identity.clone(),
            }
        };
        let made = if self.identity.len() <= COMPRESS_INLINE_MAX {
            compress()
        } else {
            match tokio::task::spawn_blocking(compress).await {
                Ok(b) => b,
                Err(_) => return self.identity.clone(),
            }
        };
        slot.get_or_init(|| made).clone()
    }

    /// The cache's weight: the answer and room for its compressed forms
    /// (made after it is stored, so counted ahead: the three together take
    /// about half the answer's size on bin answers).
    fn weight(&self) -> usize {
        self.identity.len() + self.identity.len() / 2 + 128
    }
}

/// The opaque part of the entity tag of the answer stored under `key` (or
/// of any content: a digest of it).
pub fn tag_of(key: impl AsRef<[u8]>) -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(key.as_ref());
    let mut tag = String::with_capacity(20);
    for b in &d[..10] {
        tag.push(HEX[usize::from(b >> 4)] as char);
        tag.push(HEX[usize::from(b & 15)] as char);
    }
    tag.into()
}

/// A request answered from the response cache, or by a `304`.
pub struct Held {
    /// `None`: the client holds the answer (a revalidation).
    pub body: Option<Arc<Encoded>>,
    pub tag: Arc<str>,
}

/// Serialized answers.
pub struct Responses {
    cache: moka::sync::Cache<Arc<str>, Arc<Encoded>>,
    metrics: Arc<Metrics>,
}

impl Responses {
    /// A cache of at most `capacity` bytes.
    pub fn new(capacity: u64, metrics: Arc<Metrics>) -> Responses {
        Responses {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|k: &Arc<str>, v: &Arc<Encoded>| {
                    (k.len() + v.weight()).min(u32::MAX as usize) as u32
                })
                .support_invalidation_closures()
                .build(),
            metrics,
        }
    }

    /// The answer stored under `key`, counted as a lookup of the
    /// `response` tier.
    pub fn get(&self, key: &Arc<str>) -> Option<Arc<Encoded>> {
        let found = self.cache.get(key);
        let hot = &self.metrics.hot;
        match found {
            Some(_) => hot.response_hits.inc(),
            None => hot.response_misses.inc(),
        }
        found
    }

    /// The answer stored under `key`, or that the client holds it (it sent
    /// one of `holds` in `If-None-Match`); `None` when it must be made.
    /// The tag is computed only to compare it with what the client holds:
    /// a stored answer carries its own.
    pub fn answer(&self, key: &Arc<str>, holds: &[String]) -> Option<Held> {
        if !holds.is_empty() {
            let tag = tag_of(key.as_bytes());
            if holds_tag(holds, &tag) {
                return Some(Held { body: None, tag });
            }
        }
        self.get(key).map(|body| Held {
            tag: body.tag.clone(),
            body: Some(body),
        })
    }

    /// Stores an answer.
    pub fn insert(&self, key: Arc<str>, answer: Arc<Encoded>) {
        self.cache.insert(key, answer);
    }

    /// Drops every answer of a deleted schedule (keys hold
    /// `|schedule=<id>|`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn every_coding_decodes_to_the_answer_and_is_made_once() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"bin\":{i},\"v\":{}}},", i % 7).into_bytes())
            .collect();
        let e = Encoded::new(Bytes::from(text.clone()), "application/json", tag_of("k"));
        let gz = e.body(Coding::Gzip).await;
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let br = e.body(Coding::Br).await;
        let mut back = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let zs = e.body(Coding::Zstd).await;
        assert_eq!(zstd::decode_all(&zs[..]).unwrap(), text);
        assert!(gz.len() < text.len() / 4 && br.len() < gz.len() + 1_000);
        // The second demand returns the very same bytes.
        assert_eq!(e.body(Coding::Gzip).await.as_ptr(), gz.as_ptr());
        assert_eq!(e.etag(Coding::Br), format!("\"{}-br\"", e.tag));
        let small = Encoded::new(Bytes::from_static(b"[]"), "application/json", tag_of("s"));
        assert_eq!(small.coding_for(Coding::Br), Coding::Identity);
    }
}
