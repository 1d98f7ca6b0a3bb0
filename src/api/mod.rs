//! HTTP: routes, the request middleware (request id, tracing span, metrics,
//! write authorization), health and metrics endpoints. Only this module
//! knows actix; handlers parse, delegate to `query` (reads), `ingest`
//! (uploads, appends) or `store` (plain rows), and format.

mod assets;
pub mod auth;
mod bins;
pub mod error;
mod negotiate;
mod params;
mod schedules;

pub use bins::{bin_query, histogram_query};

use crate::ingest::IngestService;
use crate::metrics::Metrics;
use crate::query::QueryService;
use crate::store::{self, Store, StoreError};
use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpResponse};
use error::ApiError;
use futures_util::future::{Either, LocalBoxFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The OpenAPI 3 description of the API, served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Limits the middleware enforces on every request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest query string (414 beyond).
    pub max_query_bytes: usize,
    /// Longest a request may take (503 beyond, its work dropped).
    pub request_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The read path: range queries, histograms.
    pub query: Arc<QueryService>,
    /// Uploads and appends.
    pub ingest: Arc<IngestService>,
    pub metrics: Arc<Metrics>,
    /// Tokens accepted for writes; `None`: writes are open.
    pub write_tokens: Option<auth::WriteTokens>,
    pub limits: HttpLimits,
}

/// A read route: `GET`, and `HEAD` (the same answer without its body,
/// which actix leaves out).
fn read() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The router tries patterns in order and each `{id}` pattern costs a
    // regex match: the hot read route comes first.
    cfg.route("/v1/schedules/{id}/bins", read().to(bins::bins))
        .route("/healthz", read().to(healthz))
        .route("/readyz", read().to(readyz))
        .route("/metrics", read().to(metrics))
        .route("/openapi.json", read().to(openapi))
        .route("/v1/schedules", web::post().to(schedules::upload))
        .route("/v1/schedules", read().to(schedules::list))
        .route("/v1/schedules/{id}", read().to(schedules::get))
        .route("/v1/schedules/{id}", web::delete().to(schedules::delete))
        .route(
            "/v1/schedules/{id}/blocks",
            web::post().to(schedules::append),
        )
        .route(
            "/v1/schedules/{id}/visibility-histogram",
            read().to(bins::histogram),
        )
        .route("/v1/jobs/{id}", read().to(schedules::job))
        .route("/", read().to(assets::index))
        .route("/assets/{name}", read().to(assets::file))
        .app_data(web::PathConfig::default().error_handler(|e, _| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("bad path: {e}; ids are integers"),
            )
            .into()
        }))
        .default_service(web::to(unrouted));
}

/// Every route template and the methods it takes: the `route` label, the
/// `Allow` of a 405, and what `openapi.json` must describe (a test holds
/// the two, and the registrations above, to this table). Every request's
/// path is matched against it in order: the read routes come first.
pub const ROUTES: [(&str, &[&str]); 12] = [
    ("/v1/schedules/{id}/bins", &["GET"]),
    ("/v1/schedules/{id}/visibility-histogram", &["GET"]),
    ("/", &["GET"]),
    ("/assets/{name}", &["GET"]),
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/v1/schedules", &["GET", "POST"]),
    ("/v1/schedules/{id}", &["GET", "DELETE"]),
    ("/v1/schedules/{id}/blocks", &["POST"]),
    ("/v1/jobs/{id}", &["GET"]),
];

/// Requests no route took: 405 with `Allow` on a known path, else 404.
async fn unrouted(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    let template = route_template(req.path());
    match ROUTES.iter().find(|(t, _)| *t == template) {
        Some((_, methods)) => {
            let mut allowed = methods.to_vec();
            if allowed.contains(&"GET") {
                allowed.insert(
                    allowed.iter().position(|m| *m == "GET").unwrap() + 1,
                    "HEAD",
                );
            }
            let methods = allowed;
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} does not take {}; it takes {}",
                    template,
                    req.method(),
                    methods.join(", ")
                ),
            )
            .with_header("Allow", methods.join(", ")))
        }
        None => Err(ApiError::not_found("no such route; see /openapi.json")),
    }
}

/// The route template a path falls under (`unmatched` for any other path,
/// so that label values stay bounded). A segment match, not actix's
/// `match_pattern`, which runs the router's regexes a second time. A
/// trailing slash is another path, as it is to the router: `404`, not `405`.
fn route_template(path: &str) -> &'static str {
    ROUTES
        .iter()
        .map(|(t, _)| t)
        .find(|t| {
            let (mut a, mut b) = (t.split('/'), path.split('/'));
            loop {
                match (a.next(), b.next()) {
                    (None, None) => return true,
                    (Some(t), Some(seg)) if t.starts_with('{') && !seg.is_empty() => {}
                    (Some(x), Some(y)) if x == y => {}
                    _ => return false,
                }
            }
        })
        .copied()
        .unwrap_or("unmatched")
}

/// A refusal the middleware answers before any handler runs: a query
/// string past the limit (414), a write without an accepted token (401).
fn refusal(req: &ServiceRequest, state: &AppState) -> Option<ApiError> {
    let limit = state.limits.max_query_bytes;
    if req.query_string().len() > limit {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "query_too_long",
            format!(
                "the query string is {} bytes, more than the limit of {limit} \
                 (VISBIN_MAX_QUERY_BYTES); ask for fewer block_ids at once",
                req.query_string().len()
            ),
        ));
    }
    let tokens = state.write_tokens.as_ref()?;
    if req.method() != Method::POST && req.method() != Method::DELETE {
        return None;
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    (!tokens.accepts(given)).then(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need `Authorization: Bearer <token>` with one of the server's tokens \
             (VISBIN_API_TOKEN)",
        )
    })
}

/// The `method` label: the standard methods, else `other` (any token is a
/// method to HTTP, and label values must stay bounded).
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// The route of warm answers: the series of its `GET … 200 hit` requests
/// is resolved once ([`crate::metrics::HotCounters::warm_answers`]).
pub const WARM_ROUTE: &str = "/v1/schedules/{id}/bins";

/// Routes whose requests are logged at debug level only.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Request middleware: request id, span, write authorization, metrics.
pub fn middleware<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let route = route_template(req.path());
    let method = req.method().clone();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        // A v4 UUID from the thread's generator: `new_v4` asks the kernel
        // for every one, a system call on every request.
        .unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        });
    let span = if QUIET_ROUTES.contains(&route) {
        tracing::debug_span!("request", request_id = %request_id, method = %method, route = %route)
    } else {
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route)
    };
    let refused = state.as_ref().and_then(|s| refusal(&req, s));
    let fut = if let Some(err) = refused {
        let resp = req.into_response(actix_web::ResponseError::error_response(&err));
        Box::pin(async move { Ok(resp.map_into_right_body()) }) as LocalBoxFuture<'static, _>
    } else {
        let timeout = state
            .as_ref()
            .map_or(Duration::MAX, |s| s.limits.request_timeout);
        // Only writes wait for confirmations; reads skip the noting.
        let stored = (!matches!(*req.method(), Method::GET | Method::HEAD))
            .then(|| Arc::new(AtomicBool::new(false)));
        let call = match &stored {
            Some(s) => Either::Left(store::noting_stored_writes(s.clone(), srv.call(req))),
            None => Either::Right(srv.call(req)),
        };
        let id = request_id.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(res) => res.map(ServiceResponse::map_into_left_body),
                // A write committed while it waited for the other
                // replicas' confirmations: it is stored.
                Err(_) if stored.is_some_and(|s| s.load(Ordering::SeqCst)) => {
                    Err(ApiError::from(StoreError::Unconfirmed(format!(
                        "the request took longer than {} s (VISBIN_REQUEST_TIMEOUT) while \
                         replicas confirmed it",
                        timeout.as_secs()
                    )))
                    .with_header("X-Request-Id", id)
                    .into())
                }
                // Dropping the handler's future rolls back what it was
                // writing; actix answers the error as its response.
                Err(_) => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!(
                        "the request took longer than {} s (VISBIN_REQUEST_TIMEOUT); nothing it \
                         was writing was stored; retry, or ask for less at once",
                        timeout.as_secs()
                    ),
                )
                // Actix answers an error without passing back here.
                .with_header("X-Request-Id", id)
                .into()),
            }
        })
    };
    Box::pin(
        async move {
            let mut res = match fut.await {
                Ok(res) => res,
                Err(e) => {
                    let status = e.as_response_error().status_code();
                    if let Some(s) = &state {
                        s.metrics
                            .http_duration
                            .with_label_values(&[method_label(&method), route, status.as_str(), "none"])
                            .observe(started.elapsed().as_secs_f64());
                        s.metrics.http_latency.observe(route, started.elapsed());
                    }
                    return Err(e);
                }
            };
            let status = res.status();
            let cache = match res.headers().get("x-cache").map(|v| v.as_bytes()) {
                Some(b"hit") => "hit",
                Some(b"partial") => "partial",
                Some(b"miss") => "miss",
                _ => "none",
            };
            if let Ok(v) = request_id.parse() {
                res.headers_mut().insert(actix_web::http::header::HeaderName::from_static("x-request-id"), v);
            }
            let elapsed = started.elapsed();
            if let Some(s) = state {
                let m = &s.metrics;
                let method = method_label(&method);
                if (method, route, status, cache) == ("GET", WARM_ROUTE, StatusCode::OK, "hit") {
                    m.hot.warm_answers.observe(elapsed.as_secs_f64());
                } else {
                    m.http_duration
                        .with_label_values(&[method, route, status.as_str(), cache])
                        .observe(elapsed.as_secs_f64());
                }
                m.http_latency.observe(route, elapsed);
            }
            tracing::debug!(status = status.as_u16(), cache = %cache, elapsed_ms = elapsed.as_secs_f64() * 1e3, "response");
            Ok(res)
        }
        .instrument(span),
    )
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ready()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::unavailable(e.into())),
        Err(_) => Err(ApiError::unavailable(anyhow::anyhow!(
            "readiness probe timed out"
        ))),
    }
}

async fn metrics(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    let m = &state.metrics;
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(1), state.store.ready()).await,
        Ok(Ok(()))
    );
    m.database_up.set(i64::from(up));
    let (idle, active) = state.store.pool_connections();
    m.pool_connections
        .with_label_values(&["idle"])
        .set(i64::from(idle));
    m.pool_connections
        .with_label_values(&["active"])
        .set(i64::from(active));
    let memory = state.query.memory();
    m.cache_bytes.set(memory.weighted_size().await as i64);
    m.cache_entries.set(memory.entry_count() as i64);
    m.period_bytes
        .set(state.query.periods().weighted_size() as i64);
    m.period_work_bytes
        .set(state.query.periods().work_bytes() as i64);
    m.response_bytes.set(state.query.response_bytes() as i64);
    m.observe_head_leases(
        state.store.known_heads().map(|k| k.stats()),
        state.store.confirm_stats(),
    );
    if let Some(a) = crate::allocator::bytes() {
        let set = |kind: &str, v: u64| m.allocator_bytes.with_label_values(&[kind]).set(v as i64);
        set("allocated", a.allocated);
        set("resident", a.resident);
    }
    negotiate::compressed(
        &req,
        "text/plain; version=0.0.4; charset=utf-8",
        m.render().into(),
    )
    .await
}

/// `GET /openapi.json`: a file like the page's, with its tag and its
/// compressed forms made once.
async fn openapi(req: actix_web::HttpRequest) -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<Arc<crate::query::Encoded>> = std::sync::OnceLock::new();
    let doc = DOCUMENT.get_or_init(|| {
        crate::query::Encoded::new(
            bytes::Bytes::from_static(OPENAPI.as_bytes()),
            "application/json",
            crate::query::tag_of(OPENAPI),
        )
    });
    let held = negotiate::held_tags(&req)
        .iter()
        .any(|(_, opaque)| *opaque == *doc.tag);
    negotiate::respond(&req, (!held).then_some(doc), &doc.tag, |_| {}).await
}

#[cfg(test)]
mod tests {
    use super::{method_label, route_template};
    use actix_web::http::Method;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"RANDOM123").unwrap()),
            "other"
        );
    }

    #[test]
    fn paths_map_to_their_route_templates_and_nothing_else() {
        assert_eq!(
            route_template("/v1/schedules/7/bins"),
            "/v1/schedules/{id}/bins"
        );
        assert_eq!(
            route_template("/v1/schedules/x/bins"),
            "/v1/schedules/{id}/bins"
        );
        assert_eq!(route_template("/v1/schedules"), "/v1/schedules");
        assert_eq!(route_template("/v1/schedules/7"), "/v1/schedules/{id}");
        assert_eq!(route_template("/v1/jobs/3"), "/v1/jobs/{id}");
        assert_eq!(route_template("/healthz"), "/healthz");
        assert_eq!(route_template("/v1/schedules//bins"), "unmatched");
        assert_eq!(route_template("/v1/schedules/7/bins/extra"), "unmatched");
        assert_eq!(route_template("/nope/1"), "unmatched");
        assert_eq!(route_template("/"), "/");
        assert_eq!(route_template("/assets/viewer.js"), "/assets/{name}");
        assert_eq!(route_template("/assets/"), "unmatched");
        assert_eq!(route_template("/v1/schedules/"), "unmatched");
        assert_eq!(route_template("/healthz/"), "unmatched");
    }
}
