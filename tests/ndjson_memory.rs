//! NDJSON uploads stream with bounded memory: a generated upload of more
//! than 2,000,000 periods (a body of ~100 MB) goes into the real `visbin`
//! binary, whose peak resident memory (VmHWM) must stay below a bound
//! smaller than the body itself.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Peak resident set the server may reach while ingesting the stream.
const PEAK_BOUND_BYTES: u64 = 64 * 1024 * 1024;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_million_period_ndjson_upload_streams_in_bounded_memory() {
    let db = TestDb::new(Backend::Postgres).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_visbin"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db.url,
                // The bound is about the upload: keep the summary job that
                // follows it from loading the schedule into the resident
                // period tier (a separate, configured budget) meanwhile.
                "--period-cache-bytes",
                "1048576",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start visbin"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut ready = false;
    for _ in 0..400 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the server never became ready");

    let config = visbin::gen::GenConfig {
        format: visbin::gen::GenFormat::Ndjson,
        ..visbin::gen::GenConfig::new(45_000, 50, 42)
    };
    let mut body = Vec::new();
    visbin::gen::write(&config, &mut body).unwrap();
    let body_len = body.len() as u64;
    assert!(
        body_len > PEAK_BOUND_BYTES,
        "the body ({body_len} B) must exceed the bound to prove streaming"
    );

    let r = client
        .post(format!("{base}/v1/schedules"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    let up: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(up["periods"].as_i64().unwrap() >= 2_000_000, "{up}");
    let peak = vm_hwm_bytes(server.0.id());
    eprintln!(
        "body {body_len} B, periods {}, server VmHWM {peak} B",
        up["periods"]
    );
    assert!(
        peak < PEAK_BOUND_BYTES,
        "peak RSS {peak} B exceeds the bound {PEAK_BOUND_BYTES} B"
    );
    let rows = count_rows(&db).await;
    assert_eq!(rows.2, up["periods"].as_i64().unwrap());
}
