//! The command-line client (DESIGN §11): `visbin upload FILE` and `visbin
//! bins ID …` against a running server. `upload` shows progress on stderr
//! (bytes sent, then the summary job) when stderr is a terminal and prints
//! the schedule id as the first line of stdout; `bins` writes the server's
//! answer to stdout byte for byte. A refusal prints the server's `detail`
//! on stderr and exits non-zero.

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the server is and how to write to it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "VISBIN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token for writes (the first of a comma-separated list, so the
    /// server's own VISBIN_API_TOKEN works as it is).
    #[arg(long, env = "VISBIN_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `visbin upload`.
#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// The schedule file: JSON, or NDJSON (`.ndjson`, `.jsonl`: a header
    /// line, then one block per line).
    pub file: PathBuf,
    /// Send the file as NDJSON whatever its name.
    #[arg(long)]
    pub ndjson: bool,
    /// Return once the upload is stored, without waiting for the summary job.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Answer formats of `visbin bins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BinsFormat {
    Json,
    Columnar,
    Csv,
}

/// `visbin bins`.
#[derive(Debug, Clone, Args)]
pub struct BinsArgs {
    /// The schedule id.
    pub id: i64,
    /// Window start: Unix seconds or RFC 3339 (default: the schedule's range).
    #[arg(long, allow_hyphen_values = true)]
    pub start: Option<String>,
    /// Window end: Unix seconds or RFC 3339 (default: the schedule's range).
    #[arg(long, allow_hyphen_values = true)]
    pub end: Option<String>,
    /// Bin width: seconds or a duration (`15m`, `1h`, `1d`); default 900.
    #[arg(long)]
    pub bin: Option<String>,
    /// Grid origin: Unix seconds or RFC 3339 (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub origin: Option<String>,
    /// Only blocks of at least this priority.
    #[arg(long, allow_hyphen_values = true)]
    pub priority_min: Option<f64>,
    /// Only blocks of at most this priority.
    #[arg(long, allow_hyphen_values = true)]
    pub priority_max: Option<f64>,
    /// Only scheduled (`true`) or unscheduled (`false`) blocks.
    #[arg(long)]
    pub scheduled: Option<bool>,
    /// Only these block identities (comma-separated).
    #[arg(long)]
    pub block_ids: Option<String>,
    /// Answer format.
    #[arg(long, value_enum, default_value_t = BinsFormat::Json)]
    pub format: BinsFormat,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A refusal by the server: its status and `detail`.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {status}: {detail}")]
pub struct Refused {
    pub status: u16,
    pub detail: String,
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("Failed to build the HTTP client")
}

fn url(server: &ServerArgs, path: &str) -> String {
    format!("{}{path}", server.server.trim_end_matches('/'))
}

fn with_token(rb: reqwest::RequestBuilder, server: &ServerArgs) -> reqwest::RequestBuilder {
    match server
        .token
        .as_deref()
        .and_then(|t| t.split(',').map(str::trim).find(|t| !t.is_empty()))
    {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

/// The answer's body, or the server's refusal.
async fn read(r: reqwest::Response) -> anyhow::Result<bytes::Bytes> {
    let status = r.status();
    let body = r.bytes().await.context("Failed to read the answer")?;
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(Refused {
        status: status.as_u16(),
        detail,
    }
    .into())
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs `visbin upload`.
pub async fn upload(args: &UploadArgs) -> anyhow::Result<()> {
    let ndjson = args.ndjson
        || matches!(
            args.file.extension().and_then(|e| e.to_str()),
            Some("ndjson" | "jsonl")
        );
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("Failed to open {}", args.file.display()))?;
    let len = file.metadata().await?.len();
    let sent = bar(
        len,
        "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    sent.set_message("upload");
    let counter = sent.clone();
    let chunks = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .inspect(move |c| {
        if let Ok(c) = c {
            counter.inc(c.len() as u64);
        }
    });
    let http = client()?;
    let request = http
        .post(url(&args.server, "/v1/schedules"))
        .header(
            "content-type",
            if ndjson {
                "application/x-ndjson"
            } else {
                "application/json"
            },
        )
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(chunks));
    let answer = with_token(request, &args.server)
        .send()
        .await
        .with_context(|| format!("Failed to reach {}", args.server.server))?;
    let body = read(answer).await;
    sent.finish_and_clear();
    let up: serde_json::Value =
        serde_json::from_slice(&body?).context("Failed to read the answer")?;
    let id = up["schedule_id"]
        .as_i64()
        .context("the answer has no schedule_id")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{id}")?;
    out.flush()?;
    drop(out);
    if up["duplicate"] == true {
        eprintln!("the same content is schedule {id} already (duplicate)");
        return Ok(());
    }
    let Some(job) = up["job_id"].as_i64().filter(|_| !args.no_wait) else {
        return Ok(());
    };
    let progress = bar(1000, "{msg:>8} [{bar:40}] {percent:>3}% {wide_msg}");
    progress.set_message("summary");
    loop {
        let j: serde_json::Value = serde_json::from_slice(
            &read(
                http.get(url(&args.server, &format!("/v1/jobs/{job}")))
                    .send()
                    .await?,
            )
            .await?,
        )?;
        progress.set_position((j["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        match j["state"].as_str() {
            Some("done") => {
                progress.finish_and_clear();
                return Ok(());
            }
            Some("failed") => {
                progress.finish_and_clear();
                anyhow::bail!(
                    "the summary job {job} failed: {}",
                    j["error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `visbin bins`.
pub async fn bins(args: &BinsArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    let text = [
        ("start", &args.start),
        ("end", &args.end),
        ("bin", &args.bin),
        ("origin", &args.origin),
        ("block_ids", &args.block_ids),
    ];
    for (name, value) in text {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    for (name, value) in [
        ("priority_min", args.priority_min),
        ("priority_max", args.priority_max),
    ] {
        if let Some(v) = value {
            query.push((name, v.to_string()));
        }
    }
    if let Some(s) = args.scheduled {
        query.push(("scheduled", s.to_string()));
    }
    let format = match args.format {
        BinsFormat::Json => "json",
        BinsFormat::Columnar => "columnar",
        BinsFormat::Csv => "csv",
    };
    query.push(("format", format.to_string()));
    let answer = client()?
        .get(url(
            &args.server,
            &format!("/v1/schedules/{}/bins", args.id),
        ))
        .query(&query)
        .send()
        .await
        .with_context(|| format!("Failed to reach {}", args.server.server))?;
    let body = read(answer).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    out.flush()?;
    Ok(())
}
