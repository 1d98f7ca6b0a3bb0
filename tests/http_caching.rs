//! HTTP caching and compression (DESIGN §5): entity tags, `304` on a
//! matching `If-None-Match`, a new tag after an append, compressed bodies
//! that decode to the uncompressed answer, and the viewer page's files
//! served the same way.

mod common;
use common::*;
use serde_json::json;
use std::io::Read;

const T0: i64 = 1_737_244_800;

/// A client that neither decompresses nor adds `Accept-Encoding` itself.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .build()
        .unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut rb = raw_client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_revalidate_and_compress() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    let blocks: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            block(
                &format!("b{i}"),
                i as f64,
                i % 3 == 0,
                &[(T0 + i * 600, T0 + i * 600 + 7200)],
            )
        })
        .collect();
    let up = app.upload(&json!({"name": "http", "blocks": blocks})).await;
    let id = up["schedule_id"].as_i64().unwrap();
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    let url = app.url(&format!(
        "/v1/schedules/{id}/bins?bin=60&start={T0}&end={}",
        T0 + 86_400
    ));

    // The plain answer: a tag, no-cache, varies by coding.
    let (status, h, plain) = get(&url, &[]).await;
    assert_eq!(status, 200);
    let etag = header(&h, "etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(header(&h, "cache-control"), "no-cache");
    assert_eq!(header(&h, "vary"), "Accept-Encoding");
    assert_eq!(header(&h, "content-encoding"), "");
    assert!(plain.len() > 100_000);

    // A matching If-None-Match: 304, no body, the cache headers still there.
    let (status, h, body) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&h, "etag"), etag);
    assert_eq!(header(&h, "x-cache"), "hit");
    assert!(header(&h, "server-timing").contains("cache;dur="));
    // A tag of another answer does not match.
    let (status, _, _) = get(&url, &[("if-none-match", "\"0000\"")]).await;
    assert_eq!(status, 200);
    // A weak form of the tag matches; the 304 carries the strong one.
    let weak = format!("W/{etag}");
    let (status, h, _) = get(&url, &[("if-none-match", &weak)]).await;
    assert_eq!((status, header(&h, "etag")), (304, etag.as_str()));
    // `*` holds any answer; the 304 carries the tag a 200 would.
    let (status, h, _) = get(&url, &[("if-none-match", "*")]).await;
    assert_eq!((status, header(&h, "etag")), (304, etag.as_str()));
    // Not entity tags of this answer: a quoted `*`, unquoted text.
    let bare = etag.trim_matches('"').to_string();
    for held in ["\"*\"", "W/\"*\"", bare.as_str()] {
        let (status, _, _) = get(&url, &[("if-none-match", held)]).await;
        assert_eq!(status, 200, "{held}");
    }

    // Each coding decodes to the plain answer; its tag is its own, and
    // revalidates the same answer.
    for coding in ["gzip", "br", "zstd"] {
        let (status, h, body) = get(&url, &[("accept-encoding", coding)]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-encoding"), coding);
        assert!(
            body.len() < plain.len() / 4,
            "{coding}: {} of {}",
            body.len(),
            plain.len()
        );
        assert_eq!(decode(coding, &body), plain, "{coding}");
        let tag = header(&h, "etag").to_string();
        assert_ne!(tag, etag);
        let (status, _, _) = get(
            &url,
            &[("accept-encoding", coding), ("if-none-match", &tag)],
        )
        .await;
        assert_eq!(status, 304, "{coding}");
    }
    // A browser's list of codings: brotli wins.
    let (_, h, _) = get(&url, &[("accept-encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(header(&h, "content-encoding"), "br");

    // An append changes the tag; the old one no longer revalidates.
    let r = app
        .post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            json!([block("late", 3.0, false, &[(T0 + 100, T0 + 200)])]).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (status, h, _) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 200);
    assert_ne!(header(&h, "etag"), etag);

    // The histogram has tags too; small answers go uncompressed.
    let hist = app.url(&format!(
        "/v1/schedules/{id}/visibility-histogram?num_bins=3"
    ));
    let (status, h, body) = get(&hist, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert!(body.len() < 1024);
    assert_eq!(header(&h, "content-encoding"), "");
    let tag = header(&h, "etag").to_string();
    let (status, _, _) = get(&hist, &[("if-none-match", &tag)]).await;
    assert_eq!(status, 304);
    // `*` on a small answer: the 304's tag is the uncompressed one a 200
    // carries, whatever the client accepts.
    let (status, h, _) = get(
        &hist,
        &[("accept-encoding", "gzip"), ("if-none-match", "*")],
    )
    .await;
    assert_eq!((status, header(&h, "etag")), (304, tag.as_str()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_page_is_served_from_the_binary() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    let (status, h, page) = get(&app.url("/"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("assets/viewer.js") && page.contains("assets/uPlot.iife.min.js"));
    // Every file the page names is there, and nothing points elsewhere.
    for name in [
        "viewer.js",
        "viewer.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "favicon.svg",
    ] {
        assert!(page.contains(&format!("assets/{name}")), "{name}");
        let (status, h, body) = get(
            &app.url(&format!("/assets/{name}")),
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        let plain = std::fs::read(format!(
            "{}/assets/viewer/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let got = match header(&h, "content-encoding") {
            "" => body,
            c => decode(c, &body),
        };
        assert_eq!(got, plain, "{name}");
        let tag = header(&h, "etag").to_string();
        let (status, _, _) = get(
            &app.url(&format!("/assets/{name}")),
            &[("if-none-match", &tag)],
        )
        .await;
        assert_eq!(status, 304, "{name}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no other host"
    );
    let (status, _, _) = get(&app.url("/assets/nope.js"), &[]).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// DESIGN §5: every response over 1 KiB is compressed when the client
/// accepts it, not only the cached answers; small ones are sent as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_responses_over_a_kibibyte_are_compressed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    for i in 0..4 {
        let doc =
            json!({"name": format!("s{i}"), "blocks": [block("a", 1.0, false, &[(T0, T0 + 60)])]});
        let up = app.upload(&doc).await;
        app.wait_job(up["job_id"].as_i64().unwrap()).await;
    }
    for path in ["/openapi.json", "/metrics", "/v1/schedules"] {
        let url = app.url(path);
        let (status, h, plain) = get(&url, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(plain.len() > 1024, "{path}: {} bytes", plain.len());
        assert_eq!(header(&h, "content-encoding"), "", "{path}");
        for coding in ["gzip", "br", "zstd"] {
            let (status, h, body) = get(&url, &[("accept-encoding", coding)]).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(header(&h, "content-encoding"), coding, "{path}");
            assert_eq!(header(&h, "vary"), "Accept-Encoding", "{path}");
            let got = decode(coding, &body);
            if path != "/metrics" {
                // Metrics move between two scrapes; the others do not.
                assert_eq!(got, plain, "{path} {coding}");
            } else {
                assert!(String::from_utf8(got)
                    .unwrap()
                    .contains("visbin_build_info"));
            }
        }
    }
    // The document revalidates like the page's files.
    let (_, h, _) = get(&app.url("/openapi.json"), &[]).await;
    let tag = header(&h, "etag").to_string();
    let (status, _, _) = get(&app.url("/openapi.json"), &[("if-none-match", &tag)]).await;
    assert_eq!(status, 304);
    // A small answer stays uncompressed.
    let (status, h, body) = get(&app.url("/v1/jobs/1"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert!(body.len() < 1024);
    assert_eq!(header(&h, "content-encoding"), "");
    app.stop().await;
}
