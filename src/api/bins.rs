//! `GET /v1/schedules/{id}/bins` and the TSI-compatible
//! `GET /v1/schedules/{id}/visibility-histogram`: parse the query string,
//! ask the query service, write the answer with its headers.

use super::error::ApiError;
use super::params::Params;
use super::AppState;
use crate::query::{Answer, BinQuery, Format, HistogramQuery};
use actix_web::{web, HttpRequest, HttpResponse};

const BIN_PARAMS: &[&str] = &[
    "start",
    "end",
    "bin",
    "origin",
    "priority_min",
    "priority_max",
    "scheduled",
    "block_ids",
    "format",
];

const HISTOGRAM_PARAMS: &[&str] = &[
    "bin_duration_minutes",
    "num_bins",
    "priority_min",
    "priority_max",
    "scheduled",
    "block_ids",
];

/// The range query.
pub async fn bins(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let p = Params::parse(req.query_string(), BIN_PARAMS)?;
    let query = BinQuery {
        start: p.instant("start")?,
        end: p.instant("end")?,
        width: p.bin_width()?,
        origin: p.instant("origin")?.unwrap_or(0),
        filter: p.filter()?,
        format: format(&p)?,
    };
    let answer = state.query.bins(path.into_inner(), &query).await?;
    Ok(respond(answer))
}

/// The TSI-compatible histogram.
pub async fn histogram(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let p = Params::parse(req.query_string(), HISTOGRAM_PARAMS)?;
    let query = HistogramQuery {
        bin_minutes: p.positive("bin_duration_minutes")?,
        num_bins: p.positive("num_bins")?.unwrap_or(50),
        filter: p.filter()?,
    };
    let answer = state.query.histogram(path.into_inner(), &query).await?;
    Ok(respond(answer))
}

/// `format` (default `json`).
fn format(p: &Params) -> Result<Format, ApiError> {
    match p.get("format") {
        None | Some("json") => Ok(Format::Json),
        Some("columnar") => Ok(Format::Columnar),
        Some("csv") => Ok(Format::Csv),
        Some(v) => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("`format` = `{v}` must be json, columnar or csv"),
        )),
    }
}

/// The answer's bytes with `X-Cache` and `Server-Timing`.
fn respond(a: Answer) -> HttpResponse {
    let t = a.timing;
    HttpResponse::Ok()
        .content_type(a.content_type)
        .insert_header(("X-Cache", a.cache.as_str()))
        .insert_header((
            "Server-Timing",
            format!(
                "cache;dur={:.3}, store;dur={:.3}, compute;dur={:.3}",
                t.cache.as_secs_f64() * 1e3,
                t.store.as_secs_f64() * 1e3,
                t.compute.as_secs_f64() * 1e3
            ),
        ))
        .body(a.body)
}
