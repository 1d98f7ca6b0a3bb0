//! Building and running the server: the one function the binary and the
//! tests share. It takes its listener (port 0 in tests) from the caller.

use crate::api::auth::WriteTokens;
use crate::api::{self, AppState, HttpLimits};
use crate::config::ServeConfig;
use crate::ingest::{IngestLimits, IngestService};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::query::{QueryBudgets, QueryLimits, QueryService};
use crate::store::{self, Store};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// A built, not yet running, server.
pub struct Application {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
}

impl Application {
    /// Connects the store (applying migrations), resumes missing summary
    /// jobs, and binds the HTTP server to `listener`.
    pub async fn build(config: &ServeConfig, listener: TcpListener) -> anyhow::Result<Application> {
        let pool = store::PoolConfig::new(
            config.database.db_max_connections,
            Duration::from_secs(config.db_timeout),
        )
        .with_head_lease(Duration::from_secs(config.head_lease))
        .serving();
        let store = store::connect(&config.database.url(), pool).await?;
        Self::build_with_store(config, listener, store).await
    }

    /// Like [`Application::build`] with an already opened store.
    pub async fn build_with_store(
        config: &ServeConfig,
        listener: TcpListener,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Application> {
        let moved = crate::periods::legacy::move_legacy_periods(store.as_ref())
            .await
            .context("Failed to move periods to packed chunks")?;
        if moved > 0 {
            tracing::info!(
                moved,
                "moved schedules from one row per period to packed chunks"
            );
        }
        let metrics = Arc::new(Metrics::new());
        // VISBIN_CACHE_BYTES is shared: 7/8 for computed bins, 1/8 for
        // serialized answers.
        let response_bytes = config.cache_bytes / 8;
        let query = QueryService::new(
            store.clone(),
            metrics.clone(),
            QueryLimits {
                max_bins: config.max_bins,
                max_computations: config.max_computations,
            },
            QueryBudgets {
                extent_bytes: config.cache_bytes - response_bytes,
                response_bytes,
                period_bytes: config.period_cache_bytes,
                period_work_bytes: config.period_work_bytes,
                block_bytes: config.block_cache_bytes,
                write_queue: config.cache_write_queue,
            },
        );
        let jobs = Jobs::new(
            store.clone(),
            query.clone(),
            metrics.clone(),
            config.job_concurrency,
            Duration::from_secs(config.job_lease),
            tokio::runtime::Handle::current(),
        );
        let resumed = jobs.resume(true).await?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "re-created summary jobs for schedules without a summary"
            );
        }
        let ingest = IngestService::new(
            store.clone(),
            jobs,
            metrics.clone(),
            IngestLimits {
                max_body_bytes: config.max_body_bytes,
                max_line_bytes: config.max_line_bytes,
                max_blocks: config.max_blocks,
                max_periods: config.max_periods,
                body_read_timeout: Duration::from_secs(config.body_read_timeout),
            },
        );
        let state = web::Data::new(AppState {
            store,
            query,
            ingest,
            metrics,
            write_tokens: WriteTokens::parse(config.api_token.as_deref()),
            limits: HttpLimits {
                max_query_bytes: config.max_query_bytes,
                request_timeout: Duration::from_secs(config.request_timeout),
            },
        });
        if state.write_tokens.is_none() {
            tracing::warn!(
                "VISBIN_API_TOKEN is not set: anyone who reaches this server can upload, append \
                 and delete; set it to one or more comma-separated tokens"
            );
        }
        let port = listener
            .local_addr()
            .context("Failed to read the listener address")?
            .port();
        let data = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap_fn(api::middleware)
                .configure(api::routes)
        })
        .shutdown_timeout(config.shutdown_grace);
        if let Some(w) = config.workers {
            server = server.workers(w.max(1));
        }
        let server = server.listen(listener).context("Failed to listen")?.run();
        Ok(Application {
            server,
            port,
            state,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Shared state (tests inspect metrics and the cache through it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until stopped (SIGINT/SIGTERM or [`ServerHandle::stop`]);
    /// in-flight requests get `VISBIN_SHUTDOWN_GRACE` to finish while new
    /// connections are refused.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        // Writers on other replicas need not wait for this one any more.
        self.state.store.release().await;
        served
    }
}
