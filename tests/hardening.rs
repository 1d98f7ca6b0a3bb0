//! Refusals at the edges (DESIGN §5, §9): write tokens with rotation, 405
//! with `Allow`, 414, the limits on blocks and periods per schedule, the
//! body-read timeout, the request timeout, the bound on concurrent bin
//! computations, a slow client on SQLite not holding the writer, and job
//! leases across replicas. Every refusal stores nothing.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use visbin::api::ROUTES;

const T0: i64 = 1_737_244_800;

fn small_doc(name: &str, blocks: usize) -> serde_json::Value {
    let blocks: Vec<serde_json::Value> = (0..blocks)
        .map(|i| {
            block(
                &format!("{name}-{i}"),
                i as f64,
                false,
                &[(T0 + i as i64 * 60, T0 + i as i64 * 60 + 3600)],
            )
        })
        .collect();
    json!({"name": name, "blocks": blocks})
}

async fn post_with(app: &TestApp, path: &str, token: Option<&str>, body: String) -> Resp {
    let mut rb = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    Resp::read(rb.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_all_open_writes_and_401_says_how() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--api-token", "old-token,new-token"]).await;
    let r = post_with(&app, "/v1/schedules", None, small_doc("a", 2).to_string()).await;
    r.assert_problem(401, &["Authorization: Bearer"]);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"visbin\"");
    let r = post_with(
        &app,
        "/v1/schedules",
        Some("old-token,new-token"),
        small_doc("a", 2).to_string(),
    )
    .await;
    assert_eq!(r.status, 401, "the list itself is not a token");
    for (i, token) in ["old-token", "new-token"].iter().enumerate() {
        let r = post_with(
            &app,
            "/v1/schedules",
            Some(token),
            small_doc(&format!("t{i}"), 2).to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{token}: {}", r.text);
    }
    let r = Resp::read(
        app.client
            .delete(app.url("/v1/schedules/1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(count_rows(&db).await.0, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_route_answers_its_methods_and_405_the_others() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    let up = app.upload(&small_doc("routes", 3)).await;
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    // Schedule 2 is the one DELETE takes; every other request uses 1.
    app.upload(&small_doc("deleted", 1)).await;
    let all = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
    ];
    for (template, methods) in ROUTES {
        // A read route also answers HEAD.
        let mut methods = methods.to_vec();
        if let Some(i) = methods.iter().position(|m| *m == "GET") {
            methods.insert(i + 1, "HEAD");
        }
        for method in all {
            let id = if method == "DELETE" { "2" } else { "1" };
            let path = template.replace("{id}", id).replace("{name}", "viewer.js");
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            // Bodies that a handler refuses fast: the point is the routing.
            let r = Resp::read(
                app.client
                    .request(m, app.url(&path))
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            if methods.contains(&method) {
                assert!(
                    r.status != 404 && r.status != 405,
                    "{method} {path}: {} {}",
                    r.status,
                    r.text
                );
            } else {
                if method == "HEAD" {
                    assert_eq!(r.status, 405, "{method} {path}"); // no body to read
                } else {
                    r.assert_problem(405, &[template]);
                }
                assert_eq!(r.header("allow"), methods.join(", "), "{method} {path}");
            }
        }
    }
    app.get("/v1/nothing-here")
        .await
        .assert_problem(404, &["no such route"]);
    // A trailing slash is another path.
    for path in ["/v1/schedules/", "/healthz/", "/v1/schedules/1/"] {
        app.get(path).await.assert_problem(404, &["no such route"]);
    }
    // HEAD: the GET answer's headers, no body.
    let head = app
        .client
        .head(app.url("/v1/schedules/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key("x-request-id"));
    assert!(head.bytes().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_query_strings_are_refused_with_414() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--max-query-bytes", "200"]).await;
    let ids = (0..100)
        .map(|i| format!("b{i}"))
        .collect::<Vec<_>>()
        .join(",");
    app.get(&format!("/v1/schedules/1/bins?block_ids={ids}"))
        .await
        .assert_problem(414, &["VISBIN_MAX_QUERY_BYTES", "200"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_periods_per_schedule_are_bounded() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let app = TestApp::start(&db, &["--max-blocks", "10", "--max-periods", "12"]).await;
        app.post(
            "/v1/schedules",
            "application/json",
            small_doc("eleven", 11).to_string(),
        )
        .await
        .assert_problem(
            413,
            &["10 blocks", "VISBIN_MAX_BLOCKS", "nothing was stored"],
        );
        let nd = std::iter::once("{\"name\":\"nd\"}".to_string())
            .chain(
                small_doc("nd", 11)["blocks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.to_string()),
            )
            .collect::<Vec<_>>()
            .join("\n");
        app.post("/v1/schedules", "application/x-ndjson", nd)
            .await
            .assert_problem(413, &["10 blocks"]);
        let up = app.upload(&small_doc("eight", 8)).await;
        let id = up["schedule_id"].as_i64().unwrap();
        let before = count_rows(&db).await;
        // Three more blocks would make 11.
        let more: Vec<serde_json::Value> = (0..3)
            .map(|i| block(&format!("more-{i}"), 1.0, false, &[(T0, T0 + 60)]))
            .collect();
        app.post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            json!(more).to_string(),
        )
        .await
        .assert_problem(413, &["10 blocks"]);
        // Two blocks fit, but with five periods the schedule would hold 13.
        let many: Vec<(i64, i64)> = (0..4)
            .map(|k| (T0 + k * 7200, T0 + k * 7200 + 60))
            .collect();
        let two = json!([
            block("p-0", 1.0, false, &many),
            block("p-1", 1.0, false, &[(T0, T0 + 5)])
        ]);
        app.post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            two.to_string(),
        )
        .await
        .assert_problem(413, &["12 periods", "VISBIN_MAX_PERIODS"]);
        assert_eq!(
            count_rows(&db).await,
            before,
            "{backend:?}: a refused append stored rows"
        );
        app.stop().await;
    }
}

/// Sends the head and the first half of a body, pauses, then the rest;
/// returns the whole answer (status line, headers, body) and the time it took.
fn trickle(
    base: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    pause: Duration,
) -> (String, Duration) {
    let addr = base.trim_start_matches("http://");
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    s.write_all(&body[..half]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(pause);
    let _ = s.write_all(&body[half..]);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_pauses_too_long_is_refused_with_408() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--body-read-timeout", "1"]).await;
    let body = small_doc("slow", 50).to_string().into_bytes();
    let base = app.base.clone();
    // The whole body does arrive, after a pause longer than allowed: the
    // answer is 408, not the 201 it would be without the timeout.
    let (status, _) = tokio::task::spawn_blocking(move || {
        trickle(
            &base,
            "/v1/schedules",
            "application/json",
            &body,
            Duration::from_millis(2500),
        )
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert_eq!(count_rows(&db).await.0, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_hold_the_sqlite_writer() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    let id = app.upload(&small_doc("base", 3)).await["schedule_id"]
        .as_i64()
        .unwrap();
    let body = small_doc("slow", 200).to_string().into_bytes();
    let base = app.base.clone();
    let slow = tokio::task::spawn_blocking(move || {
        trickle(
            &base,
            "/v1/schedules",
            "application/json",
            &body,
            Duration::from_secs(3),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the slow body is half-sent, other writes go through at once.
    let started = Instant::now();
    let r = app
        .post(
            "/v1/schedules",
            "application/json",
            small_doc("quick", 20).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            json!([block("late", 1.0, false, &[(T0, T0 + 60)])]).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "writes waited {:?}",
        started.elapsed()
    );
    let (status, _) = slow.await.unwrap();
    assert!(status.starts_with("HTTP/1.1 201"), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_is_answered_503_and_stores_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(
        &db,
        &["--request-timeout", "1", "--body-read-timeout", "10"],
    )
    .await;
    let body = small_doc("late", 50).to_string().into_bytes();
    let base = app.base.clone();
    let (status, _) = tokio::task::spawn_blocking(move || {
        trickle(
            &base,
            "/v1/schedules",
            "application/json",
            &body,
            Duration::from_millis(2000),
        )
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    // Answered like any other response: with its request id.
    assert!(
        status.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{status}"
    );
    assert_eq!(count_rows(&db).await.0, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computations_beyond_the_bound_are_refused_with_retry_after() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::start(&db, &["--max-computations", "1"]).await;
    let id = app.upload_generated(3000, 40, 5).await;
    // One computes, four wait, the rest of 24 distinct cold requests are
    // refused at once; nothing else.
    let paths: Vec<String> = (0..24)
        .map(|k| format!("/v1/schedules/{id}/bins?bin=300&origin={}", k + 1))
        .collect();
    let calls: Vec<_> = paths.iter().map(|p| app.get(p)).collect();
    let answers = futures_util::future::join_all(calls).await;
    let (mut ok, mut refused) = (0, 0);
    for r in &answers {
        match r.status {
            200 => ok += 1,
            503 => {
                r.assert_problem(503, &["VISBIN_MAX_COMPUTATIONS"]);
                assert_eq!(r.header("retry-after"), "1");
                refused += 1;
            }
            s => panic!("{s}: {}", r.text),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    // Once the burst is over, the refused ones answer, and answers held
    // are hits.
    let path = format!("/v1/schedules/{id}/bins?bin=300&origin=1");
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(app.get(&path).await.header("x-cache"), "hit");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_takes_over_only_jobs_whose_lease_expired() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        // A long lease: the app's own heartbeat stays out of the way.
        let app = TestApp::start(&db, &["--job-lease", "3600"]).await;
        let store = app.store();
        let up = app.upload(&small_doc("lease", 3)).await;
        let id = up["schedule_id"].as_i64().unwrap();
        app.wait_job(up["job_id"].as_i64().unwrap()).await;
        // Two unfinished jobs of the schedule's next version, as another
        // replica left them: one with a live lease, one long expired.
        let r = app
            .post(
                &format!("/v1/schedules/{id}/blocks"),
                "application/json",
                json!([block("x", 1.0, false, &[(T0, T0 + 60)])]).to_string(),
            )
            .await;
        let job = r.json()["job_id"].as_i64().unwrap();
        app.wait_job(job).await;
        let now = visbin::store::now_ms();
        let lease = 30_000;
        let raw = |sql: String| {
            let url = db.url.clone();
            async move {
                if url.starts_with("sqlite:") {
                    let p = sqlx::SqlitePool::connect(&url).await.unwrap();
                    sqlx::raw_sql(&sql).execute(&p).await.unwrap();
                    p.close().await;
                } else {
                    let p = sqlx::PgPool::connect(&url).await.unwrap();
                    sqlx::raw_sql(&sql).execute(&p).await.unwrap();
                    p.close().await;
                }
            }
        };
        raw(format!(
            "UPDATE schedules SET summary = NULL WHERE id = {id}"
        ))
        .await;
        raw(format!(
            "INSERT INTO jobs (kind, schedule_id, schedule_version, state, created_at_ms, owner, lease_expires_ms) \
             VALUES ('summary', {id}, 2, 'running', {now}, 'replica-a', {})",
            now + lease
        ))
        .await;
        // Another replica starting now leaves the live job alone …
        assert!(store
            .recreate_jobs("replica-b", now, lease, false)
            .await
            .unwrap()
            .is_empty());
        // … and once its lease has run out, fails it and makes a new one.
        let later = now + lease + 1;
        let made = store
            .recreate_jobs("replica-b", later, lease, false)
            .await
            .unwrap();
        assert_eq!(made.len(), 1, "{backend:?}");
        assert_eq!(made[0].schedule_version, 2);
        let jobs = app.get(&format!("/v1/schedules/{id}")).await.json();
        assert_eq!(jobs["job_id"], made[0].id);
        // A claim holds it against a third replica; renewals extend it.
        assert!(store
            .claim_job(made[0].id, "replica-b", later + lease)
            .await
            .unwrap());
        assert_eq!(
            store
                .renew_leases("replica-b", later + 2 * lease)
                .await
                .unwrap(),
            1
        );
        assert!(store
            .recreate_jobs("replica-c", later + lease + 1, lease, false)
            .await
            .unwrap()
            .is_empty());
        // A job that failed of an error: a finished job reports no
        // progress, a heartbeat does not retry it, a start does.
        store.job_failed(made[0].id, "boom").await.unwrap();
        assert!(!store.job_progress(made[0].id, 0.5, "late").await.unwrap());
        let far = later + 10 * lease;
        assert!(store
            .recreate_jobs("replica-c", far, lease, false)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .recreate_jobs("replica-c", far, lease, true)
                .await
                .unwrap()
                .len(),
            1
        );
        app.stop().await;
    }
}

/// A summary's range may hold more bins than one query may ask for: the job
/// computes it in steps of at most `VISBIN_MAX_BINS` bins, and the figures
/// are those of the whole range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_beyond_the_bin_limit_is_computed_in_bounded_steps() {
    use common::oracle::{bins, OBlock, OFilter};
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--max-bins", "500"]).await;
    // 30 days of 900 s bins: 2880, more than a query may ask for.
    let (start, end) = (T0, T0 + 30 * 86_400);
    let blocks: Vec<OBlock> = (0..40i64)
        .map(|i| OBlock {
            identity: format!("b{i}"),
            priority: i as f64,
            scheduled: i % 3 == 0,
            periods: vec![
                (start + i * 20_000, start + i * 20_000 + 900),
                (
                    start + i * 50_000 + 7,
                    start + i * 50_000 + 7 + 3_600 * (1 + i % 5),
                ),
            ],
        })
        .collect();
    let doc = json!({
        "name": "long",
        "schedule_period": {"start": mjd(start), "stop": mjd(end)},
        "blocks": blocks
            .iter()
            .map(|b| block(&b.identity, b.priority, b.scheduled, &b.periods))
            .collect::<Vec<_>>(),
    });
    let up = app.upload(&doc).await;
    let id = up["schedule_id"].as_i64().unwrap();
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    app.get(&format!("/v1/schedules/{id}/bins?bin=900"))
        .await
        .assert_problem(400, &["VISBIN_MAX_BINS"]);
    let summary = app.get(&format!("/v1/schedules/{id}")).await.json()["summary"].clone();
    let visible: Vec<u32> = bins(&blocks, &OFilter::default(), start, 900, 2880)
        .iter()
        .map(|c| c[0])
        .collect();
    assert_eq!(summary["total_bins"], 2880, "{summary}");
    assert_eq!(
        summary["max_visible_in_bin"],
        *visible.iter().max().unwrap()
    );
    let mean = visible.iter().map(|&v| f64::from(v)).sum::<f64>() / 2880.0;
    let got = summary["mean_visible_per_bin"].as_f64().unwrap();
    assert!((got - mean).abs() < 1e-9, "{got} vs {mean}");
    app.stop().await;
}
