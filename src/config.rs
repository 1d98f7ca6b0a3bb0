//! Command line and environment configuration: one clap struct per
//! subcommand, an environment variable behind every flag.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// visbin — exact, cached visibility bins for telescope schedules.
#[derive(Debug, Parser)]
#[command(name = "visbin", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the `visbin` binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies migrations first).
    Serve(ServeConfig),
    /// Apply database migrations and exit.
    Migrate(DatabaseConfig),
    /// Write a synthetic schedule in the upload format to stdout or a file.
    Gen(crate::gen::GenConfig),
    /// Upload a schedule file (JSON or NDJSON) to a server; prints its id.
    Upload(crate::cli::UploadArgs),
    /// Ask a server for a schedule's bins; writes the answer to stdout.
    Bins(crate::cli::BinsArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…`; unset: an embedded SQLite file at
    /// `./data/visbin.sqlite3` (created on first start).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum database connections in the pool.
    #[arg(long, env = "VISBIN_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Everything `visbin serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "VISBIN_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Byte budget of the in-memory bin cache: 7/8 for computed bins (tier
    /// 1), 1/8 for serialized answers.
    #[arg(long, env = "VISBIN_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_bytes: u64,

    /// Byte budget of the resident period tier: decoded periods of recently
    /// used schedules (20 bytes a period), least recently used out first.
    /// A schedule larger than all of it is served from window reads.
    #[arg(long, env = "VISBIN_PERIOD_CACHE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub period_cache_bytes: u64,

    /// Byte budget of periods decoded outside the resident tier at a time
    /// (20 bytes a period): window reads while their computation runs,
    /// loads until the tier holds them. A read beyond it waits; one larger
    /// than all of it runs alone.
    #[arg(long, env = "VISBIN_PERIOD_WORK_BYTES", value_parser = clap::value_parser!(u64).range(1024..), default_value_t = 256 * 1024 * 1024)]
    pub period_work_bytes: u64,

    /// Byte budget of the block tables the read path keeps (identity,
    /// priority and flag per block, ~64 bytes each).
    #[arg(long, env = "VISBIN_BLOCK_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub block_cache_bytes: u64,

    /// Most bins one range query may ask for; more is refused with a width
    /// that fits.
    #[arg(long, env = "VISBIN_MAX_BINS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 200_000)]
    pub max_bins: u64,

    /// Largest accepted request body (uploads and appends, JSON or NDJSON).
    #[arg(long, env = "VISBIN_MAX_BODY_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Longest accepted NDJSON line (one block).
    #[arg(long, env = "VISBIN_MAX_LINE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_line_bytes: u64,

    /// Most blocks one schedule may hold (an upload, or a schedule and its
    /// appends); more is refused with 413.
    #[arg(long, env = "VISBIN_MAX_BLOCKS", default_value_t = 2_000_000)]
    pub max_blocks: u64,

    /// Most periods one schedule may hold; more is refused with 413.
    #[arg(long, env = "VISBIN_MAX_PERIODS", default_value_t = 100_000_000)]
    pub max_periods: u64,

    /// Longest accepted query string, in bytes; longer is refused with 414.
    #[arg(long, env = "VISBIN_MAX_QUERY_BYTES", default_value_t = 8192)]
    pub max_query_bytes: usize,

    /// Seconds a request may take in all before it is answered 503 (and
    /// whatever it was writing rolled back; an append or delete that had
    /// committed and was waiting for other replicas' confirmations is
    /// stored, and answered 503 `unconfirmed`).
    #[arg(long, env = "VISBIN_REQUEST_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 300)]
    pub request_timeout: u64,

    /// Seconds an upload's body may pause between two pieces before it is
    /// answered 408 (a slow client cannot hold an upload open).
    #[arg(long, env = "VISBIN_BODY_READ_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 30)]
    pub body_read_timeout: u64,

    /// Bin computations that may run at once (loading periods and counting
    /// bins no cache tier holds); beyond it up to four times as many wait,
    /// and more are answered 503 with Retry-After. Summary jobs wait.
    #[arg(long, env = "VISBIN_MAX_COMPUTATIONS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), default_value_t = 8)]
    pub max_computations: usize,

    /// Seconds a request waits for a database connection before it is
    /// answered 503 (the database is unreachable or saturated).
    #[arg(long, env = "VISBIN_DB_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 3)]
    pub db_timeout: u64,

    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT
    /// (new connections are refused at once); then the process exits 0.
    #[arg(long, env = "VISBIN_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// When set, POST and DELETE need `Authorization: Bearer <token>`;
    /// several tokens separated by commas are all accepted (rotation).
    #[arg(long, env = "VISBIN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Log format.
    #[arg(long, env = "VISBIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Capacity of the queue of asynchronous writes to the persisted cache
    /// tier, in extents (and at most 32 MiB of them, or a quarter of the
    /// cache budget if less); writes beyond it are dropped (and counted),
    /// never wrong.
    #[arg(long, env = "VISBIN_CACHE_WRITE_QUEUE", default_value_t = 1024)]
    pub cache_write_queue: usize,

    /// Summary jobs that may run at the same time.
    #[arg(long, env = "VISBIN_JOB_CONCURRENCY", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), default_value_t = 2)]
    pub job_concurrency: usize,

    /// Seconds a replica's claim on a summary job lasts without its
    /// heartbeat (renewed every third of it); a job whose replica died is
    /// taken over by another (or the restarted one) after that.
    #[arg(long, env = "VISBIN_JOB_LEASE", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 30)]
    pub job_lease: u64,

    /// Seconds a replica's head lease lasts (Postgres). While it holds one
    /// (renewed every quarter of it), warm answers need no database round
    /// trip, and every append or delete waits until each replica holding
    /// a lease has applied it; a replica that died delays writes elsewhere
    /// by at most this once. 0: hold none (every burst of requests reads
    /// its schedule's head from the database).
    #[arg(long, env = "VISBIN_HEAD_LEASE", value_parser = clap::value_parser!(u64).range(0..=600), default_value_t = 2)]
    pub head_lease: u64,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "VISBIN_WORKERS")]
    pub workers: Option<usize>,
}

impl DatabaseConfig {
    /// The database URL in effect, with the embedded default filled in.
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", default_sqlite_path().display()))
    }
}

/// The embedded default database file.
pub fn default_sqlite_path() -> PathBuf {
    PathBuf::from("data").join("visbin.sqlite3")
}
