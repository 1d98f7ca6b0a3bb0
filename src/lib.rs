//! visbin — exact, cached visibility bins for telescope schedules.
//!
//! Map of the components (data flows one way: `api` → {`query`, `ingest`}
//! → {`cache`, `periods`, `store`, `engine`}):
//!
//! - [`config`]: the command line and environment (one clap struct).
//! - [`model`]: schedules, blocks, periods; parsing and validation of
//!   uploads (TSI JSON, NDJSON), MJD/Unix time, checksums, the packed
//!   chunk as stored.
//! - [`engine`]: the pure binning engine — grid, filters, exact counts
//!   over block-disjoint period segments, summary. No I/O.
//! - [`periods`]: the packed chunk codec, version groups decoded into
//!   segments, the resident period tier (bounded in bytes, per replica),
//!   compaction, and the move from the old one-row-per-period layout.
//! - [`cache`]: bin extents — gap arithmetic, validity by change log, the
//!   memory tier (moka), the persisted tier's writer, single-flight.
//! - [`query`]: the one read path — head (from the lease, or read),
//!   resident periods, extent tiers, compute the gaps, response cache — for
//!   range queries, the TSI histogram and summary jobs, each answered from
//!   one version.
//! - [`ingest`]: uploads and appends — body limits, parse, pack, checksum,
//!   duplicate check, one write transaction, summary job.
//! - [`store`]: the `Store` trait, the SQL both dialects share, and the
//!   Postgres and SQLite dialects; the only module that speaks SQL. On
//!   Postgres also head leases: the heads a replica may answer from without
//!   a round trip, kept current by notices every append and delete waits
//!   on before it is acknowledged. On SQLite the serving process claims
//!   its file, so its own writes keep its known heads current.
//! - [`jobs`]: background summary jobs and their progress.
//! - [`api`]: actix routes, middleware, problem+json errors, OpenAPI; it
//!   parses requests, calls `query`/`ingest`, and formats responses.
//! - [`metrics`]: the Prometheus registry and every metric.
//! - [`allocator`]: what the memory allocator holds (for `/metrics`).
//! - [`app`]: builds the server from a config and a listener.
//! - [`gen`]: the synthetic schedule generator (`visbin gen`).
//! - [`cli`]: the command-line client (`visbin upload`, `visbin bins`).

pub mod allocator;
pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gen;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod periods;
pub mod query;
pub mod store;
pub mod telemetry;
