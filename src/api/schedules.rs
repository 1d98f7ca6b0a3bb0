//! Schedules and jobs: upload, append, list, get, delete, job status.

use super::body::{is_ndjson, read_all, LineChunks};
use super::error::ApiError;
use super::AppState;
use crate::model::{
    parse_document, parse_ndjson_chunk, schedule_checksum, Block, BlockDigest, Header, IdentitySet,
    InvalidUpload, ParsedDocument, SpanSet, UploadStats,
};
use crate::store::{AppendTotals, Committed, Ingest, JobRow, ScheduleRow, UploadTotals};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::time::Instant;

/// Appended periods are summarised into at most this many changed spans.
const CHANGED_SPANS: usize = 64;

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

fn blocking_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(anyhow::anyhow!("parser task failed: {e}"))
}

/// Accumulates what an upload or append adds, off the async executor.
struct Accumulator {
    stats: UploadStats,
    ids: IdentitySet,
    spans: SpanSet,
}

impl Accumulator {
    fn new() -> Accumulator {
        Accumulator {
            stats: UploadStats::default(),
            ids: IdentitySet::default(),
            spans: SpanSet::new(CHANGED_SPANS),
        }
    }

    fn add(&mut self, blocks: &[Block], first_index: u64) -> Result<(), InvalidUpload> {
        for (i, b) in blocks.iter().enumerate() {
            if !self.ids.insert(&b.identity) {
                return Err(InvalidUpload::new(format!(
                    "block #{} (\"{}\"): duplicate identity; an earlier block has the same",
                    first_index + i as u64,
                    b.identity
                )));
            }
            self.stats.add(b);
            for &(s, e) in &b.periods {
                self.spans.add(s, e);
            }
        }
        Ok(())
    }
}

/// What was received, however it was sent.
struct Received {
    header: Option<Header>,
    ingest: Box<dyn Ingest>,
    acc: Accumulator,
}

/// Streams NDJSON into `ingest` (opened lazily by `open`) batch by batch.
async fn receive_ndjson<F, Fut>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    expect_header: bool,
    open: F,
) -> Result<Received, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Box<dyn Ingest>, ApiError>>,
{
    let mut chunks = LineChunks::new(
        req,
        payload,
        state.limits.max_body_bytes,
        state.limits.max_line_bytes,
    )?;
    let mut acc = Accumulator::new();
    let mut header = None;
    let mut line = 1;
    let mut open = Some(open);
    let mut ingest: Option<Box<dyn Ingest>> = None;
    while let Some(chunk) = chunks.next().await? {
        let want_header = expect_header && header.is_none();
        let first_block = acc.stats.blocks;
        let (parsed, back) = tokio::task::spawn_blocking(move || {
            let mut acc = acc;
            let parsed = parse_ndjson_chunk(&chunk, line, first_block as usize, want_header)
                .and_then(|p| acc.add(&p.blocks, first_block).map(|_| p));
            (parsed, acc)
        })
        .await
        .map_err(blocking_error)?;
        acc = back;
        let parsed = parsed?;
        line += parsed.lines;
        acc.stats.empty_periods_dropped += parsed.empty_periods_dropped;
        if parsed.header.is_some() {
            header = parsed.header;
        }
        if ingest.is_none() && (header.is_some() || !expect_header) {
            ingest = Some(open.take().expect("opened once")().await?);
        }
        if let Some(ing) = ingest.as_mut() {
            ing.add_blocks(&parsed.blocks).await?;
        }
    }
    if expect_header && header.is_none() {
        return Err(InvalidUpload::new(
            "the body is empty: the first NDJSON line must be the header {\"name\": …}",
        )
        .into());
    }
    let ingest = match ingest {
        Some(i) => i,
        None => open.take().expect("opened once")().await?,
    };
    Ok(Received {
        header,
        ingest,
        acc,
    })
}

/// Reads and parses a JSON body off the executor.
async fn parse_json(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(ParsedDocument, Accumulator), ApiError> {
    let body = read_all(req, payload, state.limits.max_body_bytes).await?;
    let parsed = tokio::task::spawn_blocking(move || {
        let doc = parse_document(&body)?;
        drop(body);
        let mut acc = Accumulator::new();
        acc.add(&doc.blocks, 0)?;
        acc.stats.empty_periods_dropped = doc.empty_periods_dropped;
        Ok::<_, InvalidUpload>((doc, acc))
    })
    .await
    .map_err(blocking_error)??;
    Ok(parsed)
}

/// Writes a parsed JSON body's blocks to a newly opened `ingest`.
async fn receive_json<F, Fut>(
    doc: ParsedDocument,
    acc: Accumulator,
    open: F,
) -> Result<Received, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Box<dyn Ingest>, ApiError>>,
{
    let mut ingest = open().await?;
    ingest.add_blocks(&doc.blocks).await?;
    Ok(Received {
        header: doc.header,
        ingest,
        acc,
    })
}

/// `POST /v1/schedules`.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let format = if is_ndjson(&req) { "ndjson" } else { "json" };
    let result = upload_inner(&state, &req, payload, format == "ndjson").await;
    let outcome = match &result {
        Ok((_, Some(_))) => "duplicate",
        Ok((_, None)) => "created",
        Err(_) => "rejected",
    };
    state
        .metrics
        .upload_duration
        .with_label_values(&[format, outcome])
        .observe(started.elapsed().as_secs_f64());
    let (resp, _) = result?;
    Ok(resp)
}

async fn upload_inner(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    ndjson: bool,
) -> Result<(HttpResponse, Option<i64>), ApiError> {
    let store = state.store.clone();
    let open = || async move { Ok::<_, ApiError>(store.begin_upload().await?) };
    let received = if ndjson {
        receive_ndjson(state, req, payload, true, open).await?
    } else {
        let (doc, acc) = parse_json(state, req, payload).await?;
        // The whole content is known: answer a duplicate before writing.
        if let Some(h) = &doc.header {
            let checksum = schedule_checksum(h, &acc.stats.digest);
            if let Some(existing) = state.store.find_by_checksum(&checksum).await? {
                let mut body = schedule_fields(&existing);
                body.insert("duplicate".into(), json!(true));
                return Ok((
                    HttpResponse::Ok().json(Value::Object(body)),
                    Some(existing.id),
                ));
            }
        }
        receive_json(doc, acc, open).await?
    };
    let header = received.header.ok_or_else(|| {
        ApiError::from(InvalidUpload::new(
            "missing `name`: an upload is a schedule object {\"name\": …, \"blocks\": […]}",
        ))
    })?;
    let stats = received.acc.stats;
    state
        .metrics
        .upload_periods
        .with_label_values(&[if ndjson { "ndjson" } else { "json" }])
        .observe(stats.periods as f64);
    let checksum = schedule_checksum(&header, &stats.digest);
    let totals = UploadTotals {
        header,
        checksum,
        blocks_digest: stats.digest.to_hex(),
        stats,
    };
    match received.ingest.commit_upload(totals).await? {
        Committed::Stored { schedule, job_id } => {
            state.jobs.spawn(job_id);
            let mut body = schedule_fields(&schedule);
            body.insert("job_id".into(), json!(job_id));
            Ok((
                HttpResponse::Created()
                    .insert_header(("Location", format!("/v1/schedules/{}", schedule.id)))
                    .json(Value::Object(body)),
                None,
            ))
        }
        Committed::Duplicate(existing) => {
            let mut body = schedule_fields(&existing);
            body.insert("duplicate".into(), json!(true));
            Ok((
                HttpResponse::Ok().json(Value::Object(body)),
                Some(existing.id),
            ))
        }
    }
}

/// `POST /v1/schedules/{id}/blocks`.
pub async fn append(
    state: web::Data<AppState>,
    path: web::Path<i64>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let ndjson = is_ndjson(&req);
    let format = if ndjson { "ndjson" } else { "json" };
    let result = append_inner(&state, path.into_inner(), &req, payload, ndjson).await;
    let outcome = if result.is_ok() {
        "appended"
    } else {
        "rejected"
    };
    state
        .metrics
        .upload_duration
        .with_label_values(&[format, outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn append_inner(
    state: &AppState,
    id: i64,
    req: &HttpRequest,
    payload: web::Payload,
    ndjson: bool,
) -> Result<HttpResponse, ApiError> {
    // Refuse an unknown schedule before reading the body.
    super::bins::schedule_head(state, id).await?;
    let store = state.store.clone();
    let open = || async move {
        store.begin_append(id).await.map_err(|e| match e {
            crate::store::StoreError::NotFound => {
                ApiError::not_found(format!("schedule {id} does not exist"))
            }
            e => e.into(),
        })
    };
    let received = if ndjson {
        receive_ndjson(state, req, payload, false, open).await?
    } else {
        let (doc, acc) = parse_json(state, req, payload).await?;
        receive_json(doc, acc, open).await?
    };
    let acc = received.acc;
    if acc.stats.blocks == 0 {
        return Err(InvalidUpload::new(
            "no blocks to append: send a JSON array of blocks or NDJSON lines",
        )
        .into());
    }
    state
        .metrics
        .upload_periods
        .with_label_values(&[if ndjson { "ndjson" } else { "json" }])
        .observe(acc.stats.periods as f64);
    let existing =
        received.ingest.schedule().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("append without a locked schedule"))
        })?;
    let mut digest = BlockDigest::from_hex(&existing.blocks_digest).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("schedule {id} has a corrupt blocks digest"))
    })?;
    digest.combine(&acc.stats.digest);
    let totals = AppendTotals {
        checksum: schedule_checksum(&existing.header(), &digest),
        blocks_digest: digest.to_hex(),
        changed_spans: acc.spans.into_spans(),
        stats: acc.stats.clone(),
    };
    match received.ingest.commit_append(totals).await? {
        Committed::Stored { schedule, job_id } => {
            state.jobs.spawn(job_id);
            let mut body = schedule_fields(&schedule);
            body.insert("job_id".into(), json!(job_id));
            body.insert("version".into(), json!(schedule.version));
            body.insert("appended_blocks".into(), json!(acc.stats.blocks));
            body.insert("appended_periods".into(), json!(acc.stats.periods));
            Ok(HttpResponse::Ok().json(Value::Object(body)))
        }
        Committed::Duplicate(_) => Err(ApiError::internal(anyhow::anyhow!(
            "append reported a duplicate"
        ))),
    }
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
    Ok(HttpResponse::Ok().json(json!({
        "schedules": rows.iter().map(schedule_detail).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

/// `GET /v1/schedules/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let s = super::bins::schedule_head(&state, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(schedule_detail(&s)))
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
    state.service.forget_schedule(id);
    Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish())
}

/// `GET /v1/jobs/{id}`.
pub async fn job(
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let j = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(job_body(&j)))
}
