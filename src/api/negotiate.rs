//! Content negotiation and revalidation (DESIGN §5): which coding a client
//! accepts, which answers it holds, and the response of an [`Encoded`]
//! answer with its entity tag, `Cache-Control: no-cache` and `Vary`.

use crate::query::{Coding, Encoded};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use std::sync::Arc;

/// The coding to use for `Accept-Encoding`: the accepted one with the
/// highest weight; among equals brotli, then zstd, then gzip.
pub fn accepted_coding(req: &HttpRequest) -> Coding {
    let Some(value) = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Coding::Identity;
    };
    let mut best = (0.0f32, 0u8, Coding::Identity);
    for part in value.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let (coding, rank) = match name.as_str() {
            "br" | "*" => (Coding::Br, 3),
            "zstd" => (Coding::Zstd, 2),
            "gzip" | "x-gzip" => (Coding::Gzip, 1),
            _ => continue,
        };
        if q > 0.0 && (q, rank) > (best.0, best.1) {
            best = (q, rank, coding);
        }
    }
    best.2
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

/// The answer, or `304 Not Modified` (`body` is `None` when the client
/// holds it, `tag` is its opaque tag); `headers` adds the route's own.
pub async fn respond(
    req: &HttpRequest,
    body: Option<&Arc<Encoded>>,
    tag: &str,
    headers: impl FnOnce(&mut HttpResponseBuilder),
) -> HttpResponse {
    let Some(body) = body else {
        // The tag a 200 would carry: the one the client matched with, or
        // for `*` the tag in the coding it accepts (the body, which alone
        // tells whether it is worth compressing, is not at hand).
        let held = held_tags(req);
        let etag = match held.into_iter().find(|(_, opaque)| opaque == tag) {
            Some((strong, _)) => strong,
            None => match accepted_coding(req).token() {
                None => format!("\"{tag}\""),
                Some(t) => format!("\"{tag}-{t}\""),
            },
        };
        let mut r = HttpResponse::NotModified();
        r.insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::VARY, "Accept-Encoding"));
        headers(&mut r);
        return r.finish();
    };
    let coding = body.coding_for(accepted_coding(req));
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
