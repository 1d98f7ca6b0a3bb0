//! Metrics against a real Prometheus: the server and `prometheus` (temporary
//! data dir, loopback port, 1 s scrapes, the project's rule files) run
//! together under traffic; every PromQL expression of the dashboard and
//! every recording rule must evaluate without error to at least one series.
//! Also: `/metrics` passes `promtool check metrics`, and route labels stay
//! bounded under random unknown paths.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tools must exist in CI; elsewhere a missing tool skips loudly.
fn require(name: &str) -> Option<String> {
    match tool(name) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("{name} is required in CI (.ci/run installs it)")
        }
        None => {
            eprintln!("SKIPPED: `{name}` is not installed (apt-get install prometheus); CI runs this test");
            None
        }
    }
}

fn repo(path: &str) -> String {
    format!("{}/{}", env!("CARGO_MANIFEST_DIR"), path)
}

/// Every `expr` in the dashboard, with Grafana's interval variable replaced.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.replace("$__rate_interval", "30s"));
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/visbin.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    walk(&d, &mut out);
    out.sort();
    out.dedup();
    out
}

fn recording_rules() -> Vec<String> {
    std::fs::read_to_string(repo("dashboards/rules/visbin-recording.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- record:")
                .or_else(|| l.trim().strip_prefix("record:"))
        })
        .map(|r| r.trim().trim_matches('"').to_string())
        .collect()
}

async fn traffic(app: Arc<TestApp>, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let doc = json!({"name": format!("traffic-{n}"), "blocks": [
            block(&format!("a{n}"), 1.0, true, &[(1_737_244_800 + n * 60, 1_737_252_000 + n * 60)]),
            block(&format!("b{n}"), 4.0, false, &[(1_737_250_000, 1_737_260_000 + n)]),
        ]});
        let up = app.upload(&doc).await;
        let id = up["schedule_id"].as_i64().unwrap();
        let nd = format!(
            "{{\"name\":\"nd-{n}\"}}\n{}\n",
            block(
                &format!("c{n}"),
                2.0,
                false,
                &[(1_737_244_800, 1_737_250_000 + n)]
            )
        );
        app.post("/v1/schedules", "application/x-ndjson", nd).await;
        for _ in 0..2 {
            app.get(&format!(
                "/v1/schedules/{id}/bins?bin=600&start=1737244800&end=1737331200"
            ))
            .await;
        }
        app.get(&format!("/v1/schedules/{id}/visibility-histogram"))
            .await;
        app.get("/v1/schedules/999999").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn prom_query(client: &reqwest::Client, base: &str, expr: &str) -> (String, usize) {
    let r: Value = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = r["status"].as_str().unwrap_or("?").to_string();
    let n = r["data"]["result"].as_array().map_or(0, |a| a.len());
    if status != "success" {
        return (format!("{status}: {}", r["error"]), 0);
    }
    (status, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_evaluate_against_a_live_prometheus() {
    let (Some(prometheus), Some(promtool)) = (require("prometheus"), require("promtool")) else {
        return;
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let app = Arc::new(TestApp::start(&db, &[]).await);
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();

    // Route labels stay bounded under random unknown paths.
    for i in 0..30 {
        app.get(&format!("/nope/{i}/{}", uuid::Uuid::new_v4()))
            .await;
    }
    let metrics = app.get("/metrics").await.text;
    assert!(metrics.contains("route=\"unmatched\""));
    assert!(
        !metrics.contains("/nope/"),
        "a raw path leaked into a label"
    );

    // promtool check metrics on the live exposition.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\nscrape_configs:\n  - job_name: visbin\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
        repo("dashboards/rules/visbin-recording.yml"),
        repo("dashboards/rules/visbin-alerts.yml"),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(app.clone(), stop.clone()));

    let base = format!("http://127.0.0.1:{prom_port}");
    let client = reqwest::Client::new();
    let mut pending: Vec<String> = dashboard_exprs();
    assert!(pending.len() > 20, "the dashboard has its queries");
    pending.extend(recording_rules());
    assert!(
        pending.iter().any(|e| e.starts_with("visbin:")),
        "recording rules found"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        last.clear();
        let mut still = Vec::new();
        for e in pending {
            let (status, n) = prom_query(&client, &base, &e).await;
            if status != "success" {
                panic!("Prometheus refused `{e}`: {status}");
            }
            if n == 0 {
                last.push(e.clone());
                still.push(e);
            }
        }
        pending = still;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        pending.is_empty(),
        "expressions without series after 90 s: {last:#?}"
    );
}
