//! The `visbin` binary: parse the command line, set up logging, run the
//! chosen subcommand. Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use visbin::config::{Cli, Command, LogFormat};

// glibc's allocator returns and re-faults large buffers on every request;
// jemalloc keeps them (see docs/BENCHMARKS.md). Its options are compiled in
// from `.cargo/config.toml` (how fast freed pages go back, arenas).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            visbin::telemetry::init(config.log_format);
            if let Some(o) = visbin::allocator::options() {
                tracing::info!(
                    background_thread = o.background_thread,
                    arenas = o.arenas,
                    "allocator options"
                );
            }
            let listener = std::net::TcpListener::bind(&config.bind)
                .with_context(|| format!("Failed to bind {}", config.bind))?;
            let app = visbin::app::Application::build(&config, listener).await?;
            tracing::info!(bind = %config.bind, database = redact(&config.database.url()), "visbin listening");
            app.run_until_stopped().await?;
            tracing::info!("visbin stopped");
        }
        Command::Migrate(db) => {
            visbin::telemetry::init(LogFormat::Pretty);
            let pool = visbin::store::PoolConfig::new(1, std::time::Duration::from_secs(30));
            let store = visbin::store::connect(&db.url(), pool).await?;
            let moved = visbin::periods::legacy::move_legacy_periods(store.as_ref())
                .await
                .context("Failed to move periods to packed chunks")?;
            println!("migrations applied to {}", redact(&db.url()));
            if moved > 0 {
                println!("{moved} schedules moved to packed period chunks");
            }
        }
        Command::Gen(config) => visbin::gen::run(&config)?,
        Command::Upload(args) => refusal_exits(visbin::cli::upload(&args).await),
        Command::Bins(args) => refusal_exits(visbin::cli::bins(&args).await),
    }
    Ok(())
}

/// Ends the process: a server's refusal prints its `detail` (exit 1), any
/// other error its cause chain (exit 2).
fn refusal_exits(result: anyhow::Result<()>) {
    if let Err(e) = result {
        match e.downcast_ref::<visbin::cli::Refused>() {
            Some(r) => {
                eprintln!("visbin: refused ({}): {}", r.status, r.detail);
                std::process::exit(1);
            }
            None => {
                eprintln!("visbin: {e:#}");
                std::process::exit(2);
            }
        }
    }
}

/// Hides a password in a database URL before logging it.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => match url[a + 3..b].find(':') {
            Some(c) => format!("{}:***{}", &url[..a + 3 + c], &url[b..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}
