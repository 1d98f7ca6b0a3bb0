//! Test harness: the real app on port 0 over a real store — a fresh
//! Postgres database per test (dropped afterwards) or a SQLite file in a
//! temporary directory — and a few HTTP helpers.
#![allow(dead_code)]

pub mod oracle;

use serde_json::Value;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use visbin::app::Application;
use visbin::config::{Cli, Command, ServeConfig};
use visbin::store::Store;

/// The two stores every conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server Postgres tests create their databases in.
pub fn pg_admin_url() -> String {
    std::env::var("VISBIN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database for one test; dropped (Postgres) or deleted (SQLite) on drop.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh, empty database.
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("visbin.sqlite3").display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("visbin_test_{}", uuid::Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("Postgres must be running for the tests (see README)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').expect("url with a database").0;
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = pg_admin_url();
        // Drop runs inside an async test: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Parses `visbin serve` arguments into a config (explicit flags win over
/// any environment variables).
pub fn serve_config(url: &str, extra: &[&str]) -> ServeConfig {
    let mut args = vec![
        "visbin",
        "serve",
        "--database-url",
        url,
        "--db-max-connections",
        "8",
    ];
    args.extend_from_slice(extra);
    match <Cli as clap::Parser>::try_parse_from(args)
        .expect("valid test flags")
        .command
    {
        Command::Serve(c) => c,
        _ => unreachable!(),
    }
}

/// A running app on a random port.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub app_state: actix_web::web::Data<visbin::api::AppState>,
    handle: actix_web::dev::ServerHandle,
    /// The task serving until stopped (it gives the store's claims up
    /// after the server stops).
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// Starts an app on `db` with extra `visbin serve` flags.
    pub async fn start(db: &TestDb, extra: &[&str]) -> TestApp {
        TestApp::start_url(&db.url, extra).await
    }

    /// Starts an app on the database at `url` (a test's database reached
    /// some other way, such as through a proxy).
    pub async fn start_url(url: &str, extra: &[&str]) -> TestApp {
        let config = serve_config(url, extra);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let app = Application::build(&config, listener)
            .await
            .expect("app builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let app_state = app.state();
        let serving = tokio::spawn(app.run_until_stopped());
        let t = TestApp {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            app_state,
            handle,
            serving,
        };
        t.wait_ready().await;
        t
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the app never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.app_state.store.clone()
    }

    /// POSTs JSON text; returns status, headers and the body as JSON (or
    /// a string).
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        Resp::read(r).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        Resp::read(
            self.client
                .delete(self.url(path))
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    /// Uploads a JSON schedule document, expecting 201; returns the body.
    pub async fn upload(&self, doc: &Value) -> Value {
        let r = self
            .post("/v1/schedules", "application/json", doc.to_string())
            .await;
        assert_eq!(r.status, 201, "upload failed: {}", r.text);
        r.json()
    }

    /// A generated schedule (`visbin gen`) uploaded as NDJSON, expecting
    /// 201; returns its id once its summary job is done.
    pub async fn upload_generated(&self, blocks: usize, periods: usize, seed: u64) -> i64 {
        let config = visbin::gen::GenConfig {
            format: visbin::gen::GenFormat::Ndjson,
            ..visbin::gen::GenConfig::new(blocks, periods, seed)
        };
        let mut body = Vec::new();
        visbin::gen::write(&config, &mut body).unwrap();
        let r = self
            .post("/v1/schedules", "application/x-ndjson", body)
            .await;
        assert_eq!(r.status, 201, "upload failed: {}", r.text);
        let up = r.json();
        self.wait_job(up["job_id"].as_i64().unwrap()).await;
        up["schedule_id"].as_i64().unwrap()
    }

    /// Waits until job `id` is done (or fails the test if it failed).
    pub async fn wait_job(&self, id: i64) -> Value {
        for _ in 0..2400 {
            let j = self.get(&format!("/v1/jobs/{id}")).await.json();
            match j["state"].as_str() {
                Some("done") => return j,
                Some("failed") => panic!("job {id} failed: {j}"),
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        panic!("job {id} did not finish");
    }

    /// Stops the server and waits until it gave up what it held (a
    /// SQLite file's claim, a head lease).
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.serving
            .await
            .expect("the serving task ends")
            .expect("the server ran");
    }
}

/// A response, read whole.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub async fn read(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        Resp {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json refusal with `status` whose detail contains
    /// every one of `needles`.
    pub fn assert_problem(&self, status: u16, needles: &[&str]) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "body: {}",
            self.text
        );
        let detail = self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for n in needles {
            assert!(detail.contains(n), "detail {detail:?} lacks {n:?}");
        }
    }
}

/// MJD of a Unix instant.
pub fn mjd(unix: i64) -> f64 {
    unix as f64 / 86_400.0 + 40_587.0
}

/// A block in the upload format with periods given in Unix seconds.
pub fn block(id: &str, priority: f64, scheduled: bool, periods: &[(i64, i64)]) -> Value {
    let ps: Vec<Value> = periods
        .iter()
        .map(|&(s, e)| serde_json::json!({"start": mjd(s), "stop": mjd(e)}))
        .collect();
    serde_json::json!({
        "original_block_id": id,
        "priority": priority,
        "visibility_periods": ps,
        "scheduled_period": if scheduled { serde_json::json!({"start": mjd(periods.first().map_or(0, |p| p.0)), "stop": mjd(periods.first().map_or(0, |p| p.0))}) } else { Value::Null },
    })
}

/// What the raw tables hold: (schedules, blocks, periods packed in
/// chunks, chunk rows).
pub async fn count_rows(db: &TestDb) -> (i64, i64, i64, i64) {
    const Q: &str = "SELECT (SELECT COUNT(*) FROM schedules), (SELECT COUNT(*) FROM blocks), \
                     (SELECT CAST(COALESCE(SUM(period_count), 0) AS BIGINT) FROM period_chunks), \
                     (SELECT COUNT(*) FROM period_chunks)";
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url)
            .await
            .expect("open sqlite");
        let r: (i64, i64, i64, i64) = sqlx::query_as(Q).fetch_one(&pool).await.expect("count");
        pool.close().await;
        r
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.expect("open postgres");
        let r: (i64, i64, i64, i64) = sqlx::query_as(Q).fetch_one(&pool).await.expect("count");
        pool.close().await;
        r
    }
}

/// The shipped TSI fixture.
pub fn fixture() -> Value {
    let text = include_str!("../fixtures/tsi-example-schedule.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

/// A parsed range-query answer in any format: (bin starts, bin ends, counters).
pub struct Answer {
    pub start_unix: i64,
    pub end_unix: i64,
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    pub counts: Vec<[u32; 7]>,
}

/// The bin field names as DESIGN §5 spells them, written out here rather
/// than taken from the engine so that a renamed field fails the tests.
const FIELDS: [&str; 7] = [
    "visible_count",
    "priority_q1_count",
    "priority_q2_count",
    "priority_q3_count",
    "priority_q4_count",
    "scheduled_visible_count",
    "unscheduled_visible_count",
];

/// Parses a `/bins` response of format `json`, `columnar` or `csv`.
pub fn parse_answer(format: &str, text: &str) -> Answer {
    match format {
        "csv" => {
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().expect("header").split(',').collect();
            assert_eq!(header[0], "bin_start_unix");
            assert_eq!(&header[2..], &FIELDS);
            let rows: Vec<Vec<i64>> = lines
                .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
                .collect();
            Answer {
                start_unix: rows.first().map_or(0, |r| r[0]),
                end_unix: rows.last().map_or(0, |r| r[1]),
                starts: rows.iter().map(|r| r[0]).collect(),
                ends: rows.iter().map(|r| r[1]).collect(),
                counts: rows
                    .iter()
                    .map(|r| std::array::from_fn(|i| r[2 + i] as u32))
                    .collect(),
            }
        }
        "columnar" => {
            let v: Value = serde_json::from_str(text).unwrap();
            let col = |name: &str| -> Vec<i64> {
                v["bins"][name]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            };
            let cols: Vec<Vec<i64>> = FIELDS.iter().map(|f| col(f)).collect();
            let starts = col("bin_start_unix");
            Answer {
                start_unix: v["start_unix"].as_i64().unwrap(),
                end_unix: v["end_unix"].as_i64().unwrap(),
                counts: (0..starts.len())
                    .map(|j| std::array::from_fn(|i| cols[i][j] as u32))
                    .collect(),
                ends: col("bin_end_unix"),
                starts,
            }
        }
        _ => {
            let v: Value = serde_json::from_str(text).unwrap();
            let bins = v["bins"].as_array().unwrap();
            Answer {
                start_unix: v["start_unix"].as_i64().unwrap(),
                end_unix: v["end_unix"].as_i64().unwrap(),
                starts: bins
                    .iter()
                    .map(|b| b["bin_start_unix"].as_i64().unwrap())
                    .collect(),
                ends: bins
                    .iter()
                    .map(|b| b["bin_end_unix"].as_i64().unwrap())
                    .collect(),
                counts: bins
                    .iter()
                    .map(|b| std::array::from_fn(|i| b[FIELDS[i]].as_u64().unwrap() as u32))
                    .collect(),
            }
        }
    }
}
