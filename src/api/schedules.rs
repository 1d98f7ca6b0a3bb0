//! Schedules and jobs: upload, append, list, get, delete, job status.

use super::error::ApiError;
use super::negotiate::compressed_json;
use super::AppState;
use crate::ingest::{Body, BodyFormat};
use crate::store::{JobRow, ScheduleRow};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// The upload response's fields of a schedule as it is now.
fn schedule_fields(s: &ScheduleRow) -> serde_json::Map<String, Value> {
    let v = json!({
        "schedule_id": s.id,
        "name": s.name,
        "checksum": s.checksum,
        "blocks": s.block_count,
        "periods": s.period_count,
        "empty_periods_dropped": s.empty_periods_dropped,
        "start_unix": s.range_start,
        "end_unix": s.range_end,
        "job_id": s.latest_job_id,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a json object"),
    }
}

/// `GET /v1/schedules/{id}`'s body.
fn schedule_detail(s: &ScheduleRow) -> Value {
    let mut m = schedule_fields(s);
    m.insert("version".into(), json!(s.version));
    m.insert("created_at".into(), rfc3339(s.created_at_ms));
    let summary = s
        .summary
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .unwrap_or(Value::Null);
    m.insert("summary".into(), summary);
    Value::Object(m)
}

fn job_body(j: &JobRow) -> Value {
    json!({
        "job_id": j.id,
        "kind": j.kind,
        "schedule_id": j.schedule_id,
        "state": j.state,
        "progress": j.progress,
        "message": j.message,
        "error": j.error,
        "created_at": rfc3339(j.created_at_ms),
        "started_at": j.started_at_ms.map(rfc3339).unwrap_or(Value::Null),
        "finished_at": j.finished_at_ms.map(rfc3339).unwrap_or(Value::Null),
    })
}

/// The request body as the ingest path reads it.
fn body(req: &HttpRequest, payload: web::Payload) -> Body {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let media = header(actix_web::http::header::CONTENT_TYPE)
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match media.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => BodyFormat::Ndjson,
        _ => BodyFormat::Json,
    };
    Body {
        chunks: payload.map(|c| c.map_err(|e| e.to_string())).boxed_local(),
        length: header(actix_web::http::header::CONTENT_LENGTH).parse().ok(),
        format,
    }
}

/// `POST /v1/schedules`.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let up = state.ingest.upload(body(&req, payload)).await?;
    let mut fields = schedule_fields(&up.schedule);
    Ok(match up.job_id {
        Some(job_id) => {
            fields.insert("job_id".into(), json!(job_id));
            HttpResponse::Created()
                .insert_header(("Location", format!("/v1/schedules/{}", up.schedule.id)))
                .json(Value::Object(fields))
        }
        None => {
            fields.insert("duplicate".into(), json!(true));
            HttpResponse::Ok().json(Value::Object(fields))
        }
    })
}

/// `POST /v1/schedules/{id}/blocks`.
pub async fn append(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let a = state
        .ingest
        .append(path.into_inner(), body(&req, payload))
        .await?;
    let mut fields = schedule_fields(&a.schedule);
    fields.insert("job_id".into(), json!(a.job_id));
    fields.insert("version".into(), json!(a.schedule.version));
    fields.insert("appended_blocks".into(), json!(a.blocks));
    fields.insert("appended_periods".into(), json!(a.periods));
    Ok(HttpResponse::Ok().json(Value::Object(fields)))
}

/// `GET /v1/schedules`.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let p = super::params::Params::parse(req.query_string(), &["limit", "after"])?;
    let limit = p.positive("limit")?.unwrap_or(50);
    if limit > 1000 {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "`limit` must be at most 1000",
        ));
    }
    let after = p.positive("after")?;
    let rows = state.store.list_schedules(limit, after).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let page = json!({
        "schedules": rows.iter().map(schedule_detail).collect::<Vec<_>>(),
        "next_after": next,
    });
    Ok(compressed_json(&req, &page).await)
}

/// `GET /v1/schedules/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let s = state
        .store
        .schedule(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule {id} does not exist")))?;
    Ok(compressed_json(&req, &schedule_detail(&s)).await)
}

/// `DELETE /v1/schedules/{id}`.
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if !state.store.delete_schedule(id).await? {
        return Err(ApiError::not_found(format!("schedule {id} does not exist")));
    }
    state.query.forget_schedule(id).await;
    Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish())
}

/// `GET /v1/jobs/{id}`.
pub async fn job(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let j = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    Ok(compressed_json(&req, &job_body(&j)).await)
}
