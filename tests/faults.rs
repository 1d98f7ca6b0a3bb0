//! Faults (hardening issue): Postgres cut off under load through a TCP
//! proxy the test controls; `kill -9` during an upload and during an
//! append; SIGTERM with a slow upload in flight; clients hanging up
//! mid-upload under concurrent load; the database lost between an
//! append's commit and its confirmation by other replicas. Each time: no
//! answer but `503` (with `Retry-After`) for what needed the database,
//! nothing half-written, recovery without a restart, jobs re-created.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const T0: i64 = 1_737_244_800;

/// A TCP proxy in front of Postgres that can be cut: while cut, every
/// connection through it is closed and new ones are dropped at once.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2, target) = (up.clone(), conns.clone(), target.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                // Checked and registered under the lock `cut` takes, so a
                // connection accepted as the cut begins cannot outlive it.
                let mut conns = conns2.lock().unwrap();
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                conns.push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { port, up, conns }
    }

    /// A proxy standing in for the server of `db`'s URL, and the URL that
    /// reaches `db` through it.
    async fn in_front_of(db: &TestDb) -> (Proxy, String) {
        let (prefix, rest) = db.url.split_once("@").unwrap();
        let (server, dbname) = rest.rsplit_once('/').unwrap();
        let proxy = Proxy::start(server).await;
        let url = format!("{prefix}@127.0.0.1:{}/{dbname}", proxy.port);
        (proxy, url)
    }

    fn cut(&self) {
        let mut conns = self.conns.lock().unwrap();
        self.up.store(false, Ordering::SeqCst);
        for c in conns.drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// What the load saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    took: Duration,
    status: u16,
    retry_after: bool,
    kind: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_off_under_load_answers_503_and_recovers_without_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let app = Arc::new(TestApp::start_url(&url, &["--db-timeout", "2"]).await);
    let id = app.upload_generated(600, 30, 3).await;
    let warm = format!(
        "/v1/schedules/{id}/bins?bin=3600&start={T0}&end={}",
        T0 + 7 * 86_400
    );
    assert_eq!(app.get(&warm).await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (app, stop, seen, acked, warm) = (
            app.clone(),
            stop.clone(),
            seen.clone(),
            acked.clone(),
            warm.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let at = Instant::now();
                let (kind, r) = match n % 4 {
                    0 => ("warm", app.get(&warm).await),
                    1 => (
                        "cold",
                        app.get(&format!(
                            "/v1/schedules/{id}/bins?bin=3600&origin={}",
                            w * 100_000 + n
                        ))
                        .await,
                    ),
                    2 => ("schedule", app.get(&format!("/v1/schedules/{id}")).await),
                    _ => {
                        let identity = format!("w{w}-{n}");
                        let body = json!([block(
                            &identity,
                            1.0,
                            false,
                            &[(T0 + n as i64, T0 + n as i64 + 600)]
                        )]);
                        let r = app
                            .post(
                                &format!("/v1/schedules/{id}/blocks"),
                                "application/json",
                                body.to_string(),
                            )
                            .await;
                        if r.status == 200 {
                            acked.lock().unwrap().push(identity);
                        }
                        ("append", r)
                    }
                };
                seen.lock().unwrap().push(Seen {
                    at,
                    took: at.elapsed(),
                    status: r.status,
                    retry_after: !r.header("retry-after").is_empty(),
                    kind,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restored_at = Instant::now();
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    let during: Vec<&Seen> = seen
        .iter()
        // Begun after the cut had taken hold and answered before the
        // restore (one begun just before the restore may succeed after it).
        .filter(|s| s.at > cut_at + Duration::from_millis(200) && s.at + s.took < restored_at)
        .collect();
    let statuses = |v: &[&Seen]| {
        v.iter()
            .map(|s| s.status)
            .collect::<std::collections::BTreeSet<_>>()
    };
    eprintln!(
        "{} requests, {} during the cut ({:?}), slowest during the cut {:?}",
        seen.len(),
        during.len(),
        statuses(&during),
        during.iter().map(|s| s.took).max()
    );
    // Nothing but success or 503 (with Retry-After), ever.
    for s in &seen {
        assert!(matches!(s.status, 200 | 503), "{s:?}");
        if s.status == 503 {
            assert!(s.retry_after, "a 503 without Retry-After: {s:?}");
        }
    }
    // During the cut every request needed the database and was refused
    // within the database timeout plus a second: a warm answer's version
    // cannot be checked, so it is not served — the head lease ended with
    // the listening connection the cut dropped.
    assert!(during.len() > 20);
    for s in &during {
        assert_eq!(s.status, 503, "{s:?}, {:?} after the cut", s.at - cut_at);
        assert!(s.took < Duration::from_secs(3), "{s:?}");
    }
    // Recovery without a restart: everything answers again soon after.
    let recovered = seen
        .iter()
        .filter(|s| s.at > restored_at && s.status == 200)
        .map(|s| s.at - restored_at)
        .min()
        .expect("no success after the restore");
    eprintln!("first success {recovered:?} after the restore");
    assert!(recovered < Duration::from_secs(3));
    let tail: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.at > restored_at + Duration::from_secs(3))
        .collect();
    assert!(
        !tail.is_empty() && tail.iter().all(|s| s.status == 200),
        "{:?}",
        statuses(&tail)
    );

    // Nothing half-written: every acknowledged append is there, the
    // schedule's counts match its rows, and answers equal a fresh
    // computation of them.
    let acked = acked.lock().unwrap().clone();
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    // An append whose COMMIT reached Postgres just as the connection was
    // cut is stored although its client got 503 (the outcome was lost
    // with the connection); appends are whole either way.
    let attempted = seen.iter().filter(|s| s.kind == "append").count();
    let stored = s["blocks"].as_u64().unwrap() as usize - 600;
    assert!(
        stored >= acked.len() && stored <= attempted,
        "{stored} stored, {} acknowledged",
        acked.len()
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (blocks, periods): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM blocks WHERE schedule_id = $1), \
         (SELECT CAST(COALESCE(SUM(period_count), 0) AS BIGINT) FROM period_chunks WHERE schedule_id = $1)",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(blocks, s["blocks"].as_i64().unwrap());
    assert_eq!(periods, s["periods"].as_i64().unwrap());
    let ids = acked.join(",");
    let r = app
        .get(&format!(
            "/v1/schedules/{id}/bins?bin=1d&start={T0}&end={}&block_ids={ids}",
            T0 + 86_400
        ))
        .await;
    let got = parse_answer("json", &r.text);
    assert_eq!(
        got.counts[0][0] as usize,
        acked.len(),
        "every acknowledged block counts"
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("load stopped")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stored_but_not_confirmed_answers_503_unconfirmed() {
    let db = TestDb::new(Backend::Postgres).await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    // Confirmation deadline: 2 x 2 s lease + 2 x 1 s database timeout.
    let app = Arc::new(TestApp::start_url(&url, &["--db-timeout", "1"]).await);
    let id = app.upload_generated(20, 5, 1).await;
    // Another replica holds a lease for 3 s and never acknowledges: the
    // append waits for it after its commit.
    let direct = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO head_leases (replica, epoch, expires_at) \
         VALUES ('silent', 1, now() + interval '3 seconds')",
    )
    .execute(&direct)
    .await
    .unwrap();
    let started = Instant::now();
    let append = {
        let app = app.clone();
        tokio::spawn(async move {
            let body = json!([block("late", 1.0, false, &[(T0, T0 + 600)])]);
            app.post(
                &format!("/v1/schedules/{id}/blocks"),
                "application/json",
                body.to_string(),
            )
            .await
        })
    };
    // Once the append has committed, the database is cut off from visbin:
    // it can neither see that lease end nor hear from it.
    let mut committed = false;
    while started.elapsed() < Duration::from_secs(2) {
        let (v,): (i64,) = sqlx::query_as("SELECT version FROM schedules WHERE id = $1")
            .bind(id)
            .fetch_one(&direct)
            .await
            .unwrap();
        if v == 2 {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(committed, "the append committed within 2 s");
    proxy.cut();
    let r = append.await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["code"], "unconfirmed", "{}", r.text);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("do not repeat it"));
    assert!(!r.header("retry-after").is_empty());
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "answered at the confirmation deadline: {took:?}"
    );
    let stats = app.app_state.store.confirm_stats().unwrap();
    assert_eq!(stats.unconfirmed, 1, "{stats:?}");
    // The write is stored: once the database is back, it is read.
    proxy.restore();
    let mut seen = 0;
    for _ in 0..100 {
        let r = app.get(&format!("/v1/schedules/{id}")).await;
        if r.status == 200 {
            seen = r.json()["version"].as_i64().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 2, "the unconfirmed append is there");
    direct.close().await;
    Arc::try_unwrap(app).ok().expect("append done").stop().await;
}

/// A `visbin serve` process of the test's own.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &TestDb, extra: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_visbin"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db.url,
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("VISBIN_API_TOKEN")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Server { child, base }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` in pieces from a thread, for a slow or interrupted upload.
fn post_slowly(
    base: &str,
    path: &str,
    body: Vec<u8>,
    piece: usize,
    pause: Duration,
) -> std::thread::JoinHandle<String> {
    let addr = base.trim_start_matches("http://").to_string();
    let path = path.to_string();
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return String::new();
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if s.write_all(head.as_bytes()).is_err() {
            return String::new();
        }
        for p in body.chunks(piece) {
            if s.write_all(p).is_err() {
                return String::new();
            }
            std::thread::sleep(pause);
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    })
}

fn ndjson(blocks: usize, seed: u64, header: bool) -> Vec<u8> {
    let config = visbin::gen::GenConfig {
        format: visbin::gen::GenFormat::Ndjson,
        ..visbin::gen::GenConfig::new(blocks, 40, seed)
    };
    let mut body = Vec::new();
    visbin::gen::write(&config, &mut body).unwrap();
    if header {
        body
    } else {
        let first = body.iter().position(|&b| b == b'\n').unwrap();
        body.split_off(first + 1)
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server did not become ready");
}

/// `kill -9` while an upload (or an append) is being received, parsed and
/// written: after a restart each schedule is complete or absent, and
/// every schedule without a summary gets one.
async fn kill_during_writes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let client = reqwest::Client::new();
    let upload = ndjson(12_000, 7, true);
    let append = ndjson(6_000, 8, false);
    let lease = ["--job-lease", "1"];
    // A schedule to append to.
    let mut s = Server::start(&db, &lease);
    wait_ready(&client, &s.base).await;
    let first = ndjson(300, 9, true);
    let r = client
        .post(format!("{}/v1/schedules", s.base))
        .header("content-type", "application/x-ndjson")
        .body(first)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let base_blocks = 300;
    for (k, (path, body, delay)) in [
        ("/v1/schedules", &upload, 150),
        ("/v1/schedules", &upload, 700),
        ("/v1/schedules/1/blocks", &append, 150),
        ("/v1/schedules/1/blocks", &append, 500),
    ]
    .into_iter()
    .enumerate()
    {
        // Named apart so that a complete upload is never a duplicate.
        let mut body = body.clone();
        if path == "/v1/schedules" {
            let name = format!("{{\"name\":\"killed-{k}\"}}");
            let end = body.iter().position(|&b| b == b'\n').unwrap();
            body.splice(..end, name.into_bytes());
        } else {
            let tag = format!("k{k}-");
            body = String::from_utf8(body)
                .unwrap()
                .replace("block-", &format!("block-{tag}"))
                .into_bytes();
        }
        let sender = post_slowly(&s.base, path, body, 1 << 20, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill9();
        let _ = sender.join();
        s = Server::start(&db, &lease);
        wait_ready(&client, &s.base).await;
    }
    // All or nothing.
    let list: serde_json::Value = client
        .get(format!("{}/v1/schedules?limit=100", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for sch in list["schedules"].as_array().unwrap() {
        let blocks = sch["blocks"].as_i64().unwrap();
        if sch["schedule_id"] == 1 {
            assert!(
                blocks == base_blocks || (blocks - base_blocks) % 6_000 == 0,
                "{sch}"
            );
        } else {
            assert_eq!(blocks, 12_000, "{sch}");
        }
    }
    let (schedules, blocks, periods, _) = count_rows(&db).await;
    let claimed: i64 = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["blocks"].as_i64().unwrap())
        .sum();
    let claimed_periods: i64 = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["periods"].as_i64().unwrap())
        .sum();
    assert_eq!(
        schedules as usize,
        list["schedules"].as_array().unwrap().len()
    );
    assert_eq!(
        (blocks, periods),
        (claimed, claimed_periods),
        "rows beyond what the schedules count"
    );
    // Jobs re-created: every schedule ends with a summary.
    for sch in list["schedules"].as_array().unwrap() {
        let id = sch["schedule_id"].as_i64().unwrap();
        let mut done = false;
        for _ in 0..400 {
            let d: serde_json::Value = client
                .get(format!("{}/v1/schedules/{id}", s.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !d["summary"].is_null() {
                assert_eq!(d["summary"]["total_blocks"], d["blocks"]);
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done, "schedule {id} never got its summary back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_and_appends_is_all_or_nothing_postgres() {
    kill_during_writes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_and_appends_is_all_or_nothing_sqlite() {
    kill_during_writes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_uploads_finish_refuses_new_connections_and_exits_0() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut s = Server::start(&db, &["--shutdown-grace", "10"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &s.base).await;
    // An upload that takes about two seconds to send.
    let body = ndjson(2_000, 3, true);
    let piece = body.len() / 20 + 1;
    let sender = post_slowly(
        &s.base,
        "/v1/schedules",
        body,
        piece,
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    let answer = sender.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let code = s.child.wait().unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // It was stored whole.
    let (schedules, blocks, _, _) = count_rows(&db).await;
    assert_eq!((schedules, blocks), (1, 2_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_upload_under_load_store_nothing() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let app = TestApp::start(&db, &[]).await;
        let mut handles = Vec::new();
        let mut complete = 0;
        for k in 0..8 {
            let mut body = ndjson(1_500, 20 + k, true);
            let name = format!("{{\"name\":\"c{k}\"}}");
            let end = body.iter().position(|&b| b == b'\n').unwrap();
            body.splice(..end, name.into_bytes());
            if k % 2 == 0 {
                complete += 1;
                let (base, body) = (app.base.clone(), body);
                handles.push(std::thread::spawn(move || {
                    let r = raw::post(&base, body);
                    assert_eq!(r, 201);
                }));
            } else {
                // Half the body, then hang up.
                let addr = app.base.trim_start_matches("http://").to_string();
                handles.push(std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(&addr).unwrap();
                    write!(s, "POST /v1/schedules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
                    s.write_all(&body[..body.len() / 2]).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    drop(s);
                }));
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (schedules, blocks, _, _) = count_rows(&db).await;
        assert_eq!(
            (schedules, blocks),
            (complete, complete * 1_500),
            "{backend:?}"
        );
        app.stop().await;
    }
}

/// A blocking upload without reqwest's blocking feature: HTTP/1.1 by hand.
mod raw {
    use std::io::{Read, Write};

    /// POSTs an NDJSON upload; returns the status.
    pub fn post(base: &str, body: Vec<u8>) -> u16 {
        let addr = base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /v1/schedules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
