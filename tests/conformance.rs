//! The conformance story (upload, duplicate, append, list, get, delete, job
//! completes) through HTTP, on both stores.

mod common;
use common::*;
use serde_json::json;

async fn story(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(&db, &[]).await;

    // Upload the TSI fixture as it is.
    let r = app
        .post("/v1/schedules", "application/json", fixture().to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let up = r.json();
    let id = up["schedule_id"].as_i64().unwrap();
    assert_eq!(r.header("location"), format!("/v1/schedules/{id}"));
    assert_eq!(up["blocks"], 2);
    assert_eq!(up["periods"], 3);
    assert_eq!(up["empty_periods_dropped"], 0);
    assert_eq!(
        up["start_unix"], 1_737_244_800i64,
        "range = schedule_period"
    );
    assert_eq!(up["end_unix"], 1_737_849_600i64);
    let job = app.wait_job(up["job_id"].as_i64().unwrap()).await;
    assert_eq!(job["progress"], 1.0);

    // The same content again: 200, the existing schedule, duplicate.
    let r = app
        .post("/v1/schedules", "application/json", fixture().to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dup = r.json();
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["schedule_id"], id);
    assert_eq!(dup["checksum"], up["checksum"]);

    // The summary once the job is done.
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(s["version"], 1);
    let summary = &s["summary"];
    assert_eq!(summary["total_blocks"], 2);
    assert_eq!(summary["blocks_with_visibility"], 2);
    assert_eq!(summary["scheduled_blocks"], 1);
    assert_eq!(summary["bin_seconds"], 900);
    assert_eq!(summary["total_bins"], 672, "7 days of 15-minute bins");
    assert_eq!(summary["max_visible_in_bin"], 1);
    assert_eq!(summary["priority_q1_blocks"], 1);
    assert_eq!(summary["priority_q4_blocks"], 1);

    // Append a block: version, counts and range change; a new job runs.
    let extra = json!([block("late", 8.0, false, &[(1_737_900_000, 1_737_903_600)])]);
    let r = app
        .post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            extra.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ap = r.json();
    assert_eq!(ap["appended_blocks"], 1);
    assert_eq!(ap["appended_periods"], 1);
    assert_eq!(ap["blocks"], 3);
    assert_eq!(ap["periods"], 4);
    assert_eq!(ap["version"], 2);
    assert_eq!(
        ap["end_unix"], 1_737_849_600i64,
        "a schedule_period range stays fixed"
    );
    assert_ne!(ap["checksum"], up["checksum"]);
    assert_ne!(ap["job_id"], up["job_id"]);
    app.wait_job(ap["job_id"].as_i64().unwrap()).await;
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(s["blocks"], 3);
    assert_eq!(s["job_id"], ap["job_id"]);
    assert_eq!(s["summary"]["total_blocks"], 3);

    // An append repeating an identity: 409 and nothing stored.
    let before = count_rows(&db).await;
    let again = json!([
        block("late", 1.0, false, &[(1_737_900_000, 1_737_903_600)]),
        block("new", 1.0, false, &[])
    ]);
    app.post(
        &format!("/v1/schedules/{id}/blocks"),
        "application/json",
        again.to_string(),
    )
    .await
    .assert_problem(409, &["\"late\"", "nothing"]);
    assert_eq!(count_rows(&db).await, before);

    // NDJSON upload; list newest first, paged.
    let nd = "{\"name\":\"nd\"}\n{\"id\":1,\"priority\":1.5,\"visibility_periods\":[{\"start\":60000.5,\"stop\":60000.75}]}\n\n{\"id\":2,\"priority\":2,\"visibility_periods\":[{\"start\":60001,\"stop\":60001}]}\n";
    let r = app.post("/v1/schedules", "application/x-ndjson", nd).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let nd_up = r.json();
    assert_eq!(nd_up["blocks"], 2);
    assert_eq!(nd_up["periods"], 1);
    assert_eq!(nd_up["empty_periods_dropped"], 1);
    let nd_id = nd_up["schedule_id"].as_i64().unwrap();
    let page = app.get("/v1/schedules?limit=1").await.json();
    assert_eq!(page["schedules"][0]["schedule_id"], nd_id);
    let after = page["next_after"].as_i64().unwrap();
    let page2 = app
        .get(&format!("/v1/schedules?limit=1&after={after}"))
        .await
        .json();
    assert_eq!(page2["schedules"][0]["schedule_id"], id);

    // Delete; the id is gone, the same content uploads as new with a new id.
    assert_eq!(app.delete(&format!("/v1/schedules/{id}")).await.status, 204);
    app.get(&format!("/v1/schedules/{id}"))
        .await
        .assert_problem(404, &["does not exist"]);
    app.get(&format!("/v1/schedules/{id}/bins"))
        .await
        .assert_problem(404, &[]);
    assert_eq!(app.delete(&format!("/v1/schedules/{id}")).await.status, 404);
    let re = app.upload(&fixture()).await;
    assert!(
        re["schedule_id"].as_i64().unwrap() > nd_id,
        "ids are never reused"
    );
    app.wait_job(re["job_id"].as_i64().unwrap()).await;
    app.wait_job(nd_up["job_id"].as_i64().unwrap()).await;

    // The API describes itself: exactly the routes and methods it serves.
    let spec = app.get("/openapi.json").await.json();
    let described: Vec<(String, Vec<String>)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let mut methods: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            methods.sort();
            (path.clone(), methods)
        })
        .collect();
    let mut served: Vec<(String, Vec<String>)> = visbin::api::ROUTES
        .iter()
        .map(|(path, methods)| {
            let mut methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            methods.sort();
            (path.to_string(), methods)
        })
        .collect();
    let mut described = described;
    described.sort();
    served.sort();
    assert_eq!(
        described, served,
        "openapi.json and the routes table differ"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_story_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_story_postgres() {
    story(Backend::Postgres).await;
}

async fn restart_recreates_missing_summaries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(&db, &[]).await;
    let up = app.upload(&fixture()).await;
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    app.stop().await;
    // Forget the summary as if the process had died before its job ended.
    let id = up["schedule_id"].as_i64().unwrap();
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE schedules SET summary = NULL WHERE id = ?")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE schedules SET summary = NULL WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let app = TestApp::start(&db, &[]).await;
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_ne!(s["job_id"], up["job_id"], "a new job was created at start");
    app.wait_job(s["job_id"].as_i64().unwrap()).await;
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(s["summary"]["total_bins"], 672);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recreates_missing_summaries_sqlite() {
    restart_recreates_missing_summaries(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recreates_missing_summaries_postgres() {
    restart_recreates_missing_summaries(Backend::Postgres).await;
}
