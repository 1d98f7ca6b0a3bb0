//! The bad-input matrix through HTTP on both stores: each refusal has its
//! status, a problem+json body whose detail names the block and field, and
//! leaves every table as it was.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: String,
    status: u16,
    needles: &'static [&'static str],
}

fn good_block(i: usize) -> serde_json::Value {
    block(
        &format!("b{i}"),
        i as f64,
        i.is_multiple_of(3),
        &[(
            1_737_244_800 + i as i64 * 600,
            1_737_248_400 + i as i64 * 600,
        )],
    )
}

fn cases(existing: i64) -> Vec<Case> {
    let path_blocks: &'static str =
        Box::leak(format!("/v1/schedules/{existing}/blocks").into_boxed_str());
    let doc = |blocks: serde_json::Value| json!({"name": "bad", "blocks": blocks}).to_string();
    let mut many: Vec<serde_json::Value> = (0..50).map(good_block).collect();
    many[37]["visibility_periods"][0]["stop"] = json!(60000.0);
    vec![
        Case { name: "malformed JSON", path: "/v1/schedules", content_type: "application/json",
            body: "{\"name\": \"x\",\n  \"blocks\": [ {\"id\": 1,, } ]}".into(), status: 400,
            needles: &["malformed JSON", "line 2", "column"] },
        Case { name: "stop before start", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"id": 7, "priority": 1, "visibility_periods": [{"start": 60001.0, "stop": 60000.0}]}])),
            status: 400, needles: &["block #0 (\"7\")", "visibility_periods[0]", "stop is before start"] },
        Case { name: "non-numeric instant", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"id": 7, "priority": 1, "visibility_periods": [{"start": "soon", "stop": 60000.0}]}])),
            status: 400, needles: &["block #0 (\"7\")", "`start`", "got a string"] },
        Case { name: "absurd instant", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"id": 7, "priority": 1, "visibility_periods": [{"start_mjd": 1.0e7, "end_mjd": 1.0e7}]}])),
            status: 400, needles: &["block #0 (\"7\")", "`start_mjd`", "not a valid MJD"] },
        Case { name: "number out of range", path: "/v1/schedules", content_type: "application/json",
            body: "{\"name\":\"x\",\"blocks\":[{\"id\":1,\"priority\":1e999}]}".into(), status: 400,
            needles: &["number out of range"] },
        Case { name: "missing priority", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"original_block_id": "p", "visibility_periods": []}])), status: 400,
            needles: &["block #0 (\"p\")", "missing `priority`"] },
        Case { name: "NUL in an identity", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"original_block_id": "a\u{0}b", "priority": 1}])), status: 400,
            needles: &["block #0", "NUL character"] },
        Case { name: "NUL in the name", path: "/v1/schedules", content_type: "application/json",
            body: json!({"name": "x\u{0}", "blocks": []}).to_string(), status: 400,
            needles: &["`name`", "NUL character"] },
        Case { name: "a block as a list", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([[5, null, 1]])), status: 400, needles: &["block #0", "expected an object"] },
        Case { name: "missing identity", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([{"priority": 1}])), status: 400, needles: &["block #0", "missing identity"] },
        Case { name: "duplicate identity", path: "/v1/schedules", content_type: "application/json",
            body: doc(json!([good_block(1), good_block(1)])), status: 400,
            needles: &["block #1 (\"b1\")", "duplicate identity"] },
        Case { name: "possible_periods for an unknown block", path: "/v1/schedules", content_type: "application/json",
            body: json!({"name": "x", "blocks": [good_block(1)], "possible_periods": {"ghost": [{"start_mjd": 60000, "end_mjd": 60001}]}}).to_string(),
            status: 400, needles: &["possible_periods[\"ghost\"]", "no block has this identity"] },
        Case { name: "blocks not a list", path: "/v1/schedules", content_type: "application/json",
            body: json!({"name": "x", "blocks": {"id": 1}}).to_string(), status: 400,
            needles: &["`blocks` to be a list"] },
        Case { name: "missing name", path: "/v1/schedules", content_type: "application/json",
            body: json!({"blocks": []}).to_string(), status: 400, needles: &["missing `name`"] },
        Case { name: "one bad block among many good ones", path: "/v1/schedules", content_type: "application/json",
            body: doc(serde_json::Value::Array(many)), status: 400,
            needles: &["block #37 (\"b37\")", "visibility_periods[0]", "stop"] },
        Case { name: "bad NDJSON line", path: "/v1/schedules", content_type: "application/x-ndjson",
            body: format!("{{\"name\":\"nd\"}}\n{}\n{{\"id\": 9, \"priority\": 1, \"visibility_periods\": [{{\"start\": 3, \"stop\": 2}}]}}\n", good_block(1)),
            status: 400, needles: &["line 3", "block #1 (\"9\")", "stop is before start"] },
        Case { name: "NDJSON without header", path: "/v1/schedules", content_type: "application/x-ndjson",
            body: String::new(), status: 400, needles: &["first NDJSON line must be the header"] },
        Case { name: "append repeating an existing identity", path: path_blocks, content_type: "application/json",
            body: json!([good_block(100), block("a", 1.0, false, &[])]).to_string(), status: 409,
            needles: &["\"a\"", "already exists"] },
        Case { name: "append with a bad block", path: path_blocks, content_type: "application/json",
            body: json!([good_block(101), {"id": 5}]).to_string(), status: 400,
            needles: &["block #1 (\"5\")", "missing `priority`"] },
        Case { name: "append to an unknown schedule", path: "/v1/schedules/999999/blocks", content_type: "application/json",
            body: json!([good_block(102)]).to_string(), status: 404, needles: &["999999"] },
        Case { name: "body over the size limit", path: "/v1/schedules", content_type: "application/json",
            body: doc(serde_json::Value::Array((0..400).map(good_block).collect())), status: 413,
            needles: &["limit of 20000 bytes", "VISBIN_MAX_BODY_BYTES"] },
        Case { name: "NDJSON over the size limit", path: "/v1/schedules", content_type: "application/x-ndjson",
            body: std::iter::once("{\"name\":\"big\"}".to_string()).chain((0..400).map(|i| good_block(i).to_string())).collect::<Vec<_>>().join("\n"),
            status: 413, needles: &["limit of 20000 bytes"] },
    ]
}

async fn matrix(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(&db, &["--max-body-bytes", "20000"]).await;
    let existing = app
        .upload(&json!({"name": "existing", "blocks": [block("a", 1.0, false, &[(1_737_244_800, 1_737_248_400)])]}))
        .await;
    app.wait_job(existing["job_id"].as_i64().unwrap()).await;
    for case in cases(existing["schedule_id"].as_i64().unwrap()) {
        let before = count_rows(&db).await;
        let r = app
            .post(case.path, case.content_type, case.body.clone())
            .await;
        eprintln!("{}: {} {}", case.name, r.status, r.text);
        r.assert_problem(case.status, case.needles);
        assert!(
            r.json()["detail"].as_str().unwrap().len() > 20,
            "{}: detail too short",
            case.name
        );
        assert_eq!(
            count_rows(&db).await,
            before,
            "{}: something was stored",
            case.name
        );
    }
    // A histogram bin wider than every supported instant range.
    let id = existing["schedule_id"].as_i64().unwrap();
    app.get(&format!(
        "/v1/schedules/{id}/visibility-histogram?bin_duration_minutes=153722867280912930"
    ))
    .await
    .assert_problem(400, &["bin_duration_minutes", "at most"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_sqlite() {
    matrix(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_postgres() {
    matrix(Backend::Postgres).await;
}

/// Sends headers and half of a large NDJSON body, then hangs up.
fn send_half_and_disconnect(base: &str, body: &[u8]) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/schedules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown(std::net::Shutdown::Both).ok();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

async fn disconnect(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(&db, &[]).await;
    let before = count_rows(&db).await;
    // ~12 MB: several NDJSON chunks are parsed and written before the hang-up.
    let mut body = String::from("{\"name\":\"half\"}\n");
    for i in 0..6000 {
        let periods: Vec<(i64, i64)> = (0..20)
            .map(|k| (1_737_244_800 + k * 7200 + i, 1_737_248_400 + k * 7200 + i))
            .collect();
        body.push_str(&block(&format!("blk{i}"), (i % 10) as f64, false, &periods).to_string());
        body.push('\n');
    }
    let base = app.base.clone();
    let bytes = body.into_bytes();
    tokio::task::spawn_blocking(move || send_half_and_disconnect(&base, &bytes))
        .await
        .unwrap();
    // Give the server time to notice and roll back; the state must be as before.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count_rows(&db).await,
        before,
        "a disconnected upload left rows behind"
    );
    let list = app.get("/v1/schedules").await.json();
    assert_eq!(list["schedules"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_leaves_nothing_sqlite() {
    disconnect(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_leaves_nothing_postgres() {
    disconnect(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_when_one_is_set() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--api-token", "s3cret"]).await;
    let r = app
        .post("/v1/schedules", "application/json", fixture().to_string())
        .await;
    r.assert_problem(401, &["Authorization: Bearer"]);
    let r = app
        .client
        .post(app.url("/v1/schedules"))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .body(fixture().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        app.get("/v1/schedules").await.status,
        200,
        "reads stay open"
    );
    assert_eq!(app.get("/metrics").await.status, 200);
    app.stop().await;
}
