//! visbin — exact, cached visibility bins for telescope schedules.
//!
//! Map of the components (data flows one way: `api` → `cache` →
//! `store`/`engine`):
//!
//! - [`config`]: the command line and environment (one clap struct).
//! - [`model`]: schedules, blocks, periods; parsing and validation of
//!   uploads (TSI JSON, NDJSON), MJD/Unix time, checksums.
//! - [`engine`]: the pure binning engine — grid, filters, exact counts,
//!   summary. No I/O.
//! - [`store`]: the `Store` trait with Postgres and SQLite dialects; the
//!   only module that speaks SQL.
//! - [`cache`]: the two-tier bin cache (moka + persisted extents), gap
//!   planning, invalidation by change log, single-flight.
//! - [`jobs`]: background summary jobs and their progress.
//! - [`api`]: actix routes, middleware, problem+json errors, OpenAPI.
//! - [`metrics`]: the Prometheus registry and every metric.
//! - [`app`]: builds the server from a config and a listener.
//! - [`gen`]: the synthetic schedule generator (`visbin gen`).

pub mod api;
pub mod app;
pub mod cache;
pub mod config;
pub mod engine;
pub mod gen;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod store;
pub mod telemetry;
