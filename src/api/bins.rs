//! `GET /v1/schedules/{id}/bins` and the TSI-compatible
//! `GET /v1/schedules/{id}/visibility-histogram`.

use super::error::ApiError;
use super::format::{self, Envelope};
use super::params::{Format, Params};
use super::AppState;
use crate::cache::{BinRequest, CacheKey};
use crate::engine::Grid;
use crate::store::ScheduleRow;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

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

pub(super) async fn schedule_head(state: &AppState, id: i64) -> Result<ScheduleRow, ApiError> {
    let timer = state.metrics.store_timer("schedule_head");
    let head = state.store.schedule(id).await?;
    timer.observe_duration();
    head.ok_or_else(|| ApiError::not_found(format!("schedule {id} does not exist")))
}

/// The schedule row for a read, through the coalescing reader.
async fn read_head(state: &AppState, id: i64) -> Result<ScheduleRow, ApiError> {
    let timer = state.metrics.store_timer("schedule_head");
    let head = state
        .heads
        .read(id)
        .await
        .map_err(|e| match Arc::try_unwrap(e) {
            Ok(e) => ApiError::from(e),
            Err(shared) => ApiError::from(crate::cache::ServiceError::Store(shared)),
        })?;
    timer.observe_duration();
    let head = head.ok_or_else(|| ApiError::not_found(format!("schedule {id} does not exist")))?;
    Ok((*head).clone())
}

/// The range query.
pub async fn bins(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let p = Params::parse(req.query_string(), BIN_PARAMS)?;
    let width = p.bin_width()?;
    let origin = p.instant("origin")?.unwrap_or(0);
    let filter = p.filter()?;
    let fmt = Format::parse(&p)?;
    let (start, end) = (p.instant("start")?, p.instant("end")?);
    let head = read_head(&state, id).await?;
    let (start, end) = match (start.or(head.range_start), end.or(head.range_end)) {
        (Some(s), Some(e)) => (s, e),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("schedule {id} has no range yet (no periods, no schedule_period); give both `start` and `end`"),
            ))
        }
    };
    if start >= end {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("`start` ({start}) must be before `end` ({end})"),
        ));
    }
    let grid = Grid::new(width, origin);
    let bins = grid.cover(start, end);
    check_bin_count(bins.len() as u64, state.limits.max_bins, end - start)?;
    // A repeated request for the same version is answered with the bytes
    // already written for it (the version is part of the key).
    let started = std::time::Instant::now();
    let response_key: Arc<str> = format!(
        "{}|{}|{}|{}|{}|{:?}|{}",
        head.version,
        origin,
        bins.first,
        bins.end,
        width,
        fmt,
        CacheKey::new(id, &grid, &filter).text
    )
    .into();
    let content_type = match fmt {
        Format::Json | Format::Columnar => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    if let Some(body) = state.responses.get(&response_key) {
        state
            .metrics
            .cache_lookups
            .with_label_values(&["memory", "hit"])
            .inc();
        state
            .metrics
            .bins_served
            .with_label_values(&["memory"])
            .inc_by(bins.len() as u64);
        return Ok(HttpResponse::Ok()
            .content_type(content_type)
            .insert_header(("X-Cache", "hit"))
            .insert_header((
                "Server-Timing",
                format!(
                    "cache;dur={:.3}, store;dur=0.000, compute;dur=0.000",
                    started.elapsed().as_secs_f64() * 1e3
                ),
            ))
            .body(body));
    }
    let answer = state
        .service
        .bins(&head, &BinRequest { grid, bins, filter })
        .await?;
    let env = Envelope {
        schedule_id: id,
        bin_seconds: width,
        origin,
    };
    let body = bytes::Bytes::from(match fmt {
        Format::Json => format::json(&env, &grid, &answer.counts),
        Format::Columnar => format::columnar(&env, &grid, &answer.counts),
        Format::Csv => format::csv(&grid, &answer.counts),
    });
    if answer.version == head.version {
        state.responses.insert(response_key, body.clone());
    }
    let t = answer.timing;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("X-Cache", answer.outcome.as_str()))
        .insert_header((
            "Server-Timing",
            format!(
                "cache;dur={:.3}, store;dur={:.3}, compute;dur={:.3}",
                t.cache.as_secs_f64() * 1e3,
                t.store.as_secs_f64() * 1e3,
                t.compute.as_secs_f64() * 1e3
            ),
        ))
        .body(body))
}

/// Refuses more bins than the limit, suggesting a width that fits.
fn check_bin_count(count: u64, limit: u64, span: i64) -> Result<(), ApiError> {
    if count <= limit {
        return Ok(());
    }
    // Widening adds at most one bin, so span / (limit - 1) always fits.
    let fits = (span as u64)
        .div_ceil(limit.saturating_sub(1).max(1))
        .max(1);
    Err(ApiError::bad_request(
        "too_many_bins",
        format!(
            "this query needs {count} bins, more than the limit of {limit} (VISBIN_MAX_BINS); \
             use a bin width of at least {fits} s, or a shorter window"
        ),
    ))
}

/// The TSI-compatible histogram.
pub async fn histogram(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let p = Params::parse(req.query_string(), HISTOGRAM_PARAMS)?;
    let minutes = p.positive("bin_duration_minutes")?;
    let num_bins = p.positive("num_bins")?.unwrap_or(50);
    let filter = p.filter()?;
    let head = read_head(&state, id).await?;
    let (Some(s), Some(e)) = (head.range_start, head.range_end) else {
        return Ok(HttpResponse::Ok().json(Vec::<serde_json::Value>::new()));
    };
    if s >= e {
        return Ok(HttpResponse::Ok().json(Vec::<serde_json::Value>::new()));
    }
    let d = match minutes {
        Some(m) => m.checked_mul(60).ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", "`bin_duration_minutes` is too large")
        })?,
        None => ((e - s) / num_bins).max(1),
    };
    let n = (e - s).div_euclid(d) + i64::from((e - s) % d != 0);
    check_bin_count(n as u64, state.limits.max_bins, e - s)?;
    let rows = state.service.histogram(&head, s, e, d, &filter).await?;
    let mut out = Vec::with_capacity(rows.len() * 64 + 2);
    out.push(b'[');
    for (i, (a, b, v)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!("{{\"bin_start_unix\":{a},\"bin_end_unix\":{b},\"visible_count\":{v}}}")
                .as_bytes(),
        );
    }
    out.push(b']');
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(out))
}
