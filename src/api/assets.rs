//! The viewer page (DESIGN §10): the files of `assets/viewer/`, compiled
//! into the binary. `GET /` is the page, `GET /assets/{name}` its scripts,
//! styles and icon; nothing is fetched from another host. Served like
//! answers: an entity tag of the content, `Cache-Control: no-cache`
//! (browsers revalidate and get `304`), compressed once on first demand.

use super::negotiate::{held_tags, respond};
use crate::query::{tag_of, Encoded};
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::{Arc, OnceLock};

macro_rules! asset {
    ($name:literal, $type:literal) => {
        (
            $name,
            $type,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/viewer/",
                $name
            )) as &[u8],
        )
    };
}

/// Every file of the page: name, content type, bytes.
const FILES: [(&str, &str, &[u8]); 7] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("viewer.js", "text/javascript; charset=utf-8"),
    asset!("viewer.css", "text/css; charset=utf-8"),
    asset!("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("uPlot.min.css", "text/css; charset=utf-8"),
    asset!("uPlot.LICENSE.txt", "text/plain; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The files as answers (tagged by content, compressed forms kept).
fn encoded() -> &'static [Arc<Encoded>] {
    static ENCODED: OnceLock<Vec<Arc<Encoded>>> = OnceLock::new();
    ENCODED.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, content_type, bytes)| {
                Encoded::new(
                    bytes::Bytes::from_static(bytes),
                    content_type,
                    tag_of(bytes),
                )
            })
            .collect()
    })
}

async fn serve(req: &HttpRequest, name: &str) -> HttpResponse {
    let Some(i) = FILES.iter().position(|f| f.0 == name) else {
        return actix_web::ResponseError::error_response(&super::error::ApiError::not_found(
            format!("no asset `{name}`; the page is at /"),
        ));
    };
    let file = &encoded()[i];
    let held = held_tags(req)
        .iter()
        .any(|(_, opaque)| *opaque == *file.tag);
    respond(req, (!held).then_some(file), &file.tag, |r| {
        r.insert_header(("X-Content-Type-Options", "nosniff"));
    })
    .await
}

/// `GET /`.
pub async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html").await
}

/// `GET /assets/{name}`.
pub async fn file(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    serve(&req, &name).await
}
