//! The command-line client against a running server (DESIGN §11): `visbin
//! upload` prints the schedule id first, `visbin bins` writes the server's
//! answer byte for byte, a refusal prints the server's `detail` on stderr
//! and exits non-zero.

mod common;
use common::*;
use std::process::Command;

fn visbin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_visbin"))
        .args(args)
        .env_remove("VISBIN_API_TOKEN")
        .env_remove("VISBIN_SERVER")
        .output()
        .expect("run visbin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_bins_round_trip_and_refusals_say_why() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &["--api-token", "sesame"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.ndjson");
    let config = visbin::gen::GenConfig {
        format: visbin::gen::GenFormat::Ndjson,
        ..visbin::gen::GenConfig::new(200, 20, 9)
    };
    visbin::gen::write(&config, std::fs::File::create(&file).unwrap()).unwrap();
    let path = file.to_str().unwrap();

    // Writes need the token.
    let out = visbin(&["upload", path, "--server", &app.base]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Authorization: Bearer"), "{stderr}");

    let out = visbin(&["upload", path, "--server", &app.base, "--token", "sesame"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let id: i64 = stdout.lines().next().unwrap().parse().unwrap();
    // It waited for the summary job.
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert!(!s["summary"].is_null(), "{s}");
    assert_eq!(s["blocks"], 200);

    // `bins` writes exactly what the API answers.
    let query =
        "start=2025-02-01T00:00:00Z&end=2025-02-03T00:00:00Z&bin=1h&scheduled=false&format=csv";
    let api = app.get(&format!("/v1/schedules/{id}/bins?{query}")).await;
    assert_eq!(api.status, 200);
    let out = visbin(&[
        "bins",
        &id.to_string(),
        "--server",
        &app.base,
        "--start",
        "2025-02-01T00:00:00Z",
        "--end",
        "2025-02-03T00:00:00Z",
        "--bin",
        "1h",
        "--scheduled",
        "false",
        "--format",
        "csv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, api.text.as_bytes());
    assert_eq!(api.text.lines().count(), 49);

    // A bad file: the server's detail on stderr, exit 1, nothing stored.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "bad", "blocks": [{"id": 7, "visibility_periods": []}]}"#,
    )
    .unwrap();
    let out = visbin(&[
        "upload",
        bad.to_str().unwrap(),
        "--server",
        &app.base,
        "--token",
        "sesame",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("block #0 (\"7\")") && stderr.contains("missing `priority`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // A refused query too.
    let out = visbin(&[
        "bins",
        &id.to_string(),
        "--server",
        &app.base,
        "--bin",
        "0s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`bin`"));
    app.stop().await;
}
