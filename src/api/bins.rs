//! `GET /v1/schedules/{id}/bins` and the TSI-compatible
//! `GET /v1/schedules/{id}/visibility-histogram`: parse the query string,
//! ask the query service, write the answer with its headers.

use super::error::ApiError;
use super::negotiate::{held_tags, respond};
use super::params::Params;
use super::AppState;
use crate::model::time::{UNIX_MAX, UNIX_MIN};
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

/// Parses a range query's query string (the handler's, and the fuzz
/// target's, one way in).
pub fn bin_query(query_string: &str) -> Result<BinQuery, ApiError> {
    let p = Params::parse(query_string, BIN_PARAMS)?;
    Ok(BinQuery {
        start: p.instant("start")?,
        end: p.instant("end")?,
        width: p.bin_width()?,
        origin: p.instant("origin")?.unwrap_or(0),
        filter: p.filter()?,
        format: format(&p)?,
        holds: Vec::new(),
    })
}

/// Parses a histogram's query string.
pub fn histogram_query(query_string: &str) -> Result<HistogramQuery, ApiError> {
    let p = Params::parse(query_string, HISTOGRAM_PARAMS)?;
    let bin_minutes = p.positive("bin_duration_minutes")?;
    // Wider than every supported instant range would overflow the grid.
    let widest = (UNIX_MAX - UNIX_MIN) / 60;
    if bin_minutes.is_some_and(|m| m > widest) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!(
                "`bin_duration_minutes` must be at most {widest} (the supported instant range)"
            ),
        ));
    }
    Ok(HistogramQuery {
        bin_minutes,
        num_bins: p.positive("num_bins")?.unwrap_or(50),
        filter: p.filter()?,
        holds: Vec::new(),
    })
}

/// The range query.
pub async fn bins(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = BinQuery {
        holds: holds(&req),
        ..bin_query(req.query_string())?
    };
    let answer = state.query.bins(path.into_inner(), &query).await?;
    Ok(answer_response(&req, answer).await)
}

/// The TSI-compatible histogram.
pub async fn histogram(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = HistogramQuery {
        holds: holds(&req),
        ..histogram_query(req.query_string())?
    };
    let answer = state.query.histogram(path.into_inner(), &query).await?;
    Ok(answer_response(&req, answer).await)
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

/// The opaque parts of the tags the client holds.
fn holds(req: &HttpRequest) -> Vec<String> {
    held_tags(req)
        .into_iter()
        .map(|(_, opaque)| opaque)
        .collect()
}

/// The answer (or a `304`) with `X-Cache`, `X-Schedule-Version` (the
/// version the bins are of) and `Server-Timing`.
async fn answer_response(req: &HttpRequest, a: Answer) -> HttpResponse {
    let t = a.timing;
    let timing = format!(
        "cache;dur={:.3}, store;dur={:.3}, compute;dur={:.3}",
        t.cache.as_secs_f64() * 1e3,
        t.store.as_secs_f64() * 1e3,
        t.compute.as_secs_f64() * 1e3
    );
    respond(req, a.body.as_ref(), &a.tag, |r| {
        r.insert_header(("X-Cache", a.cache.as_str()))
            .insert_header(("X-Schedule-Version", a.version.to_string()))
            .insert_header(("Server-Timing", timing));
    })
    .await
}
