//! Content negotiation and revalidation (DESIGN §5): which coding a client
//! accepts, which answers it holds, and the response of an [`Encoded`]
//! answer with its entity tag, `Cache-Control: no-cache` and `Vary`.

use crate::query::{Coding, Encoded};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use std::sync::Arc;

/// The coding to use for `Accept-Encoding`: the accepted one with the
/// highest weight; among equals brotli, then zstd, then gzip. `*` weighs
/// the codings the header does not name.
pub fn accepted_coding(req: &HttpRequest) -> Coding {
    let Some(value) = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Coding::Identity;
    };
    // Weights of br, zstd, gzip as named, and of `*`.
    let mut named: [Option<f32>; 3] = [None; 3];
    let mut any: Option<f32> = None;
    for part in value.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match name.as_str() {
            "br" => named[0] = Some(q),
            "zstd" => named[1] = Some(q),
            "gzip" | "x-gzip" => named[2] = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    let mut best = (0.0f32, Coding::Identity);
    // In order of preference: a later coding wins only by weight.
    for (i, coding) in [Coding::Br, Coding::Zstd, Coding::Gzip]
        .into_iter()
        .enumerate()
    {
        let q = named[i].or(any).unwrap_or(0.0);
        if q > best.0 {
            best = (q, coding);
        }
    }
    best.1
}

/// The entity tags of `If-None-Match`: each in its strong form (`"…"`, the
/// tag a `200` carries) with its opaque part (no coding suffix). `*` (any
/// answer) is `("*", "*")`. What is not an entity tag (unquoted text) and
/// the literal tag `"*"` are dropped: neither can be a tag this server
/// gave out.
pub fn held_tags(req: &HttpRequest) -> Vec<(String, String)> {
    let Some(value) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return Vec::new();
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            if t == "*" {
                return Some(("*".to_string(), "*".to_string()));
            }
            let quoted = t.strip_prefix("W/").unwrap_or(t);
            let bare = quoted.strip_prefix('"')?.strip_suffix('"')?;
            if bare.is_empty() || bare.contains('"') || bare == "*" {
                return None;
            }
            let opaque = ["-gzip", "-br", "-zstd"]
                .iter()
                .find_map(|s| bare.strip_suffix(s))
                .unwrap_or(bare);
            Some((format!("\"{bare}\""), opaque.to_string()))
        })
        .collect()
}

/// A response made for one request (schedules, jobs, metrics): compressed
/// in the accepted coding when over 1 KiB (DESIGN §5), with no entity tag.
pub async fn compressed(
    req: &HttpRequest,
    content_type: &'static str,
    bytes: bytes::Bytes,
) -> HttpResponse {
    let body = Encoded::new(bytes, content_type, Arc::from(""));
    let coding = body.coding_for(accepted_coding(req));
    let mut r = HttpResponse::Ok();
    r.content_type(content_type)
        .insert_header((header::VARY, "Accept-Encoding"));
    if let Some(token) = coding.token() {
        r.insert_header((header::CONTENT_ENCODING, token));
    }
    r.body(body.body(coding).await)
}

/// [`compressed`] JSON.
pub async fn compressed_json(req: &HttpRequest, value: &serde_json::Value) -> HttpResponse {
    let bytes = serde_json::to_vec(value).expect("a JSON value serializes");
    compressed(req, "application/json", bytes.into()).await
}

/// `304 Not Modified` with entity tag `etag` and the cache headers.
fn not_modified(etag: String, headers: impl FnOnce(&mut HttpResponseBuilder)) -> HttpResponse {
    let mut r = HttpResponse::NotModified();
    r.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::VARY, "Accept-Encoding"));
    headers(&mut r);
    r.finish()
}

/// The answer, or `304 Not Modified` (`body` is `None` when the client
/// holds it, `tag` is its opaque tag; `If-None-Match: *` is answered here);
/// `headers` adds the route's own.
pub async fn respond(
    req: &HttpRequest,
    body: Option<&Arc<Encoded>>,
    tag: &str,
    headers: impl FnOnce(&mut HttpResponseBuilder),
) -> HttpResponse {
    let held = held_tags(req);
    let Some(body) = body else {
        // The client holds the answer: the tag it matched with, strong.
        let etag = held
            .into_iter()
            .find(|(_, opaque)| opaque == tag)
            .map_or_else(|| format!("\"{tag}\""), |(strong, _)| strong);
        return not_modified(etag, headers);
    };
    let coding = body.coding_for(accepted_coding(req));
    // `*` holds any answer: a 304 with the tag a 200 would carry.
    if held.iter().any(|(_, opaque)| opaque == "*") {
        return not_modified(body.etag(coding), headers);
    }
    let bytes = body.body(coding).await;

    let mut r = HttpResponse::Ok();
    r.content_type(body.content_type)
        .insert_header((header::ETAG, body.etag(coding)))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::VARY, "Accept-Encoding"));
    if let Some(token) = coding.token() {
        r.insert_header((header::CONTENT_ENCODING, token));
    }
    headers(&mut r);
    r.body(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_heaviest_accepted_coding_wins_and_brotli_breaks_ties() {
        let coding = |v: &str| {
            accepted_coding(
                &TestRequest::default()
                    .insert_header((header::ACCEPT_ENCODING, v))
                    .to_http_request(),
            )
        };
        assert_eq!(coding("gzip, deflate, br"), Coding::Br);
        assert_eq!(coding("gzip;q=1.0, br;q=0.5"), Coding::Gzip);
        assert_eq!(coding("zstd, gzip"), Coding::Zstd);
        assert_eq!(coding("br;q=0, gzip"), Coding::Gzip);
        assert_eq!(coding("deflate"), Coding::Identity);
        assert_eq!(coding("*"), Coding::Br);
        assert_eq!(coding("br;q=0, *"), Coding::Zstd);
        assert_eq!(coding("gzip, *;q=0.5"), Coding::Gzip);
        assert_eq!(coding("*;q=0"), Coding::Identity);
    }

    #[test]
    fn held_tags_lose_weakness_quotes_and_coding() {
        let req = TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, "W/\"ab-gzip\", \"cd\" , *"))
            .to_http_request();
        let tags = held_tags(&req);
        let opaque: Vec<&str> = tags.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(opaque, vec!["ab", "cd", "*"]);
        assert_eq!(tags[0].0, "\"ab-gzip\"");
    }

    #[test]
    fn what_is_not_an_entity_tag_is_dropped() {
        let req = TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, "ab, \"*\", W/\"*\", \"\", \"x\""))
            .to_http_request();
        assert_eq!(
            held_tags(&req),
            vec![("\"x\"".to_string(), "x".to_string())]
        );
    }
}
