//! The one mapping from errors to HTTP: every refusal is an RFC 9457
//! `application/problem+json` body with a `detail` that says what to do.
//! Clients get an opaque 500 for internal failures; the log gets the cause.

use crate::ingest::IngestError;
use crate::model::InvalidUpload;
use crate::query::QueryError;
use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use std::fmt;

/// Seconds a `503` asks the client to wait: the database coming back or a
/// computation slot freeing takes about that long.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable code (the problem's `code` member).
    pub code: &'static str,
    pub detail: String,
    /// The cause, logged, never sent.
    pub cause: Option<anyhow::Error>,
    /// Headers the refusal carries besides those every refusal of its
    /// status gets (`Allow` of a 405).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// 400 with a code and a detail.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404 for a missing schedule or job.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            cause: None,
            headers: Vec::new(),
        }
    }

    /// The same refusal with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// 500; the cause goes to the log only.
    pub fn internal(cause: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            detail: "internal error; the server log has the cause (search for the X-Request-Id)"
                .into(),
            cause: Some(cause),
            headers: Vec::new(),
        }
    }

    /// 503 while the database cannot be reached.
    pub fn unavailable(cause: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            detail: "the database is unavailable; retry shortly".into(),
            cause: Some(cause),
            headers: Vec::new(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            tracing::error!(
                status = self.status.as_u16(),
                error = format!("{cause:#}"),
                "request failed"
            );
        }
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/problem+json");
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 says when to come back (DESIGN §5).
            r.insert_header(("Retry-After", RETRY_AFTER_SECONDS.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header(("WWW-Authenticate", "Bearer realm=\"visbin\""));
        }
        for (name, value) in &self.headers {
            r.insert_header((*name, value.as_str()));
        }
        r.body(body.to_string())
    }
}

impl From<InvalidUpload> for ApiError {
    fn from(e: InvalidUpload) -> ApiError {
        ApiError::bad_request(
            "invalid_upload",
            format!("{}; nothing was stored", e.detail),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("no such schedule"),
            StoreError::IdentityExists(id) => identity_exists(&id),
            StoreError::TooMany { what, limit } => IngestError::TooMany { what, limit }.into(),
            StoreError::Unavailable(_) => ApiError::unavailable(e.into()),
            StoreError::Unconfirmed(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unconfirmed",
                format!(
                    "the write is stored, but {m}; every replica sees it within \
                     VISBIN_HEAD_LEASE at the latest; do not repeat it: read the schedule to \
                     see it"
                ),
            ),
            e => ApiError::internal(e.into()),
        }
    }
}

fn identity_exists(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "identity_exists",
        format!(
            "block identity \"{id}\" already exists in this schedule; nothing of this \
             append was stored — append only new identities"
        ),
    )
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::NotFound(id) => {
                ApiError::not_found(format!("schedule {id} does not exist"))
            }
            QueryError::Invalid { code, detail } => ApiError::bad_request(code, detail),
            QueryError::Store(s) => match &*s {
                StoreError::Unavailable(_) => ApiError::unavailable(anyhow::anyhow!("{s}")),
                _ => ApiError::internal(anyhow::anyhow!("{s}")),
            },
            QueryError::Overloaded { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
            }
            QueryError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            QueryError::Internal(m) => ApiError::internal(anyhow::anyhow!(m)),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Invalid(e) => e.into(),
            IngestError::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than the limit of {limit} bytes \
                     (VISBIN_MAX_BODY_BYTES); split it into an upload and appends, or raise the \
                     limit; nothing was stored"
                ),
            ),
            IngestError::LineTooLong { limit } => ApiError::bad_request(
                "invalid_upload",
                format!(
                    "an NDJSON line is longer than {limit} bytes (VISBIN_MAX_LINE_BYTES); put one \
                     block per line; nothing was stored"
                ),
            ),
            IngestError::TooMany { what, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many",
                format!(
                    "the schedule would hold more than {limit} {what} (VISBIN_MAX_{}); split it \
                     into several schedules, or raise the limit; nothing was stored",
                    what.to_ascii_uppercase()
                ),
            ),
            IngestError::BodyTimeout { seconds } => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body paused for more than {seconds} s \
                     (VISBIN_BODY_READ_TIMEOUT); send it without pauses; nothing was stored"
                ),
            ),
            IngestError::Unreadable(m) => ApiError::bad_request(
                "invalid_upload",
                format!("the request body could not be read ({m}); nothing was stored"),
            ),
            IngestError::NotFound(id) => {
                ApiError::not_found(format!("schedule {id} does not exist"))
            }
            IngestError::IdentityExists(id) => identity_exists(&id),
            IngestError::Store(s) => s.into(),
            IngestError::Spool(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                detail: "the server could not buffer the upload; retry shortly; nothing was stored"
                    .into(),
                cause: Some(anyhow::anyhow!(m)),
                headers: Vec::new(),
            },
            IngestError::Internal(m) => ApiError::internal(anyhow::anyhow!(m)),
        }
    }
}
