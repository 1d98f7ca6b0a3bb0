//! Reads racing appends: range queries (each a new grid, so each computes),
//! TSI histograms and summary jobs run while a stream of appends lands on
//! a schedule of more than 100,000 periods. No read may fail; the race must
//! be real (appends acknowledged while computations were in flight); once
//! the appends stop, answers equal the brute-force oracle and every
//! acknowledged block is there. The appends also trigger background
//! compactions of the schedule's version groups. On both stores.

mod common;
use common::oracle::{self, OBlock, OFilter};
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const YEAR: i64 = 1_735_689_600; // 2025-01-01
const DAY: i64 = 86_400;
const APPENDS: usize = 24;

/// The oracle's blocks of an NDJSON upload, parsed here from the text (not
/// by visbin's parser): identity, priority, scheduled flag, periods in
/// Unix seconds by DESIGN §2's rounding, empty ones dropped.
fn oracle_blocks(ndjson: &[u8]) -> Vec<OBlock> {
    let unix = |mjd: f64| ((mjd - 40_587.0) * 86_400.0).round() as i64;
    std::str::from_utf8(ndjson)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            OBlock {
                identity: v["original_block_id"].as_str().unwrap().to_string(),
                priority: v["priority"].as_f64().unwrap(),
                scheduled: !v["scheduled_period"].is_null(),
                periods: v["visibility_periods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            unix(p["start"].as_f64().unwrap()),
                            unix(p["stop"].as_f64().unwrap()),
                        )
                    })
                    .filter(|(s, e)| e > s)
                    .collect(),
            }
        })
        .collect()
}

/// One read made during the race.
struct Read {
    started: Instant,
    finished: Instant,
    status: u16,
    computed: bool,
    what: String,
    /// The version the answer says its bins are of, and the answer.
    version: Option<usize>,
    body: String,
}

async fn race(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = Arc::new(TestApp::start(&db, &[]).await);
    let config = visbin::gen::GenConfig {
        format: visbin::gen::GenFormat::Ndjson,
        ..visbin::gen::GenConfig::new(2_400, 50, 21)
    };
    let mut body = Vec::new();
    visbin::gen::write(&config, &mut body).unwrap();
    let mut blocks = oracle_blocks(&body);
    let r = app
        .post("/v1/schedules", "application/x-ndjson", body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let up = r.json();
    let id = up["schedule_id"].as_i64().unwrap();
    assert!(up["periods"].as_i64().unwrap() >= 100_000, "{up}");
    app.wait_job(up["job_id"].as_i64().unwrap()).await;

    let appending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let mut readers = Vec::new();
    for reader in 0..3u64 {
        let (app, appending, reads) = (app.clone(), appending.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(reader);
            let mut n = 0u64;
            while appending.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                // A new origin makes a new cache key: every range query
                // computes.
                let origin = reader * 1_000_000 + n;
                let what = match rng.gen_range(0..4) {
                    0 => format!("/v1/schedules/{id}/bins?bin=1h&origin={origin}&format=columnar"),
                    1 => format!(
                        "/v1/schedules/{id}/bins?bin=900&origin={origin}&start={}&end={}",
                        YEAR + 100 * DAY,
                        YEAR + 107 * DAY
                    ),
                    2 => format!(
                        "/v1/schedules/{id}/visibility-histogram?num_bins={}",
                        20 + n % 60
                    ),
                    _ => format!("/v1/schedules/{id}"),
                };
                let started = Instant::now();
                let r = app.get(&what).await;
                let computed = r.header("x-cache") == "miss" || what.contains("histogram");
                reads.lock().unwrap().push(Read {
                    started,
                    finished: Instant::now(),
                    status: r.status,
                    computed,
                    version: r.header("x-schedule-version").parse().ok(),
                    body: if what.contains("start=") {
                        r.text
                    } else {
                        String::new()
                    },
                    what,
                });
            }
        }));
    }

    // The appends: new blocks with periods all over the year, some with
    // priorities outside the range so far (every quartile moves).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut acks = Vec::new();
    // The number of blocks at each version: version v holds the first
    // `blocks_at[v]` of `blocks`.
    let mut blocks_at = vec![0, blocks.len()];
    let mut last_job = 0;
    for i in 0..APPENDS {
        let add: Vec<OBlock> = (0..rng.gen_range(1..4))
            .map(|k| OBlock {
                identity: format!("race-{i}-{k}"),
                priority: if rng.gen_bool(0.2) {
                    -1.0 - i as f64
                } else {
                    rng.gen_range(0.0..10.0)
                },
                scheduled: rng.gen_bool(0.3),
                periods: (0..rng.gen_range(1..6))
                    .map(|_| {
                        let s = YEAR + rng.gen_range(0..365 * DAY);
                        (s, s + rng.gen_range(60..6 * 3600))
                    })
                    .collect(),
            })
            .collect();
        let doc: Vec<Value> = add
            .iter()
            .map(|b| block(&b.identity, b.priority, b.scheduled, &b.periods))
            .collect();
        let r = app
            .post(
                &format!("/v1/schedules/{id}/blocks"),
                "application/json",
                json!(doc).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "append {i}: {}", r.text);
        acks.push(Instant::now());
        last_job = r.json()["job_id"].as_i64().unwrap();
        blocks.extend(add);
        blocks_at.push(blocks.len());
        // Let the readers start new computations between appends.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    appending.store(false, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }

    let reads = std::mem::take(&mut *reads.lock().unwrap());
    for r in reads.iter() {
        assert_eq!(
            r.status, 200,
            "{} answered {} while appends ran",
            r.what, r.status
        );
    }
    // The race is real: appends were acknowledged while computations ran.
    let overlapped = reads
        .iter()
        .filter(|r| r.computed && acks.iter().any(|&a| r.started < a && a < r.finished))
        .count();
    eprintln!(
        "{} reads, {} computations, {overlapped} overlapped an acknowledged append",
        reads.len(),
        reads.iter().filter(|r| r.computed).count()
    );
    assert!(
        overlapped >= 3,
        "only {overlapped} computations overlapped an append"
    );
    // Answers made while appends landed are those of the version they
    // name: the 7-day window of a sample of them against the oracle of
    // exactly that version.
    let windowed: Vec<&Read> = reads.iter().filter(|r| !r.body.is_empty()).collect();
    let versions: std::collections::BTreeSet<usize> =
        windowed.iter().filter_map(|r| r.version).collect();
    assert!(
        versions.len() >= 3,
        "answers of only {versions:?} during the race"
    );
    for r in windowed.iter().step_by((windowed.len() / 12).max(1)) {
        let v = r.version.expect("a bins answer names its version");
        let at_v = &blocks[..blocks_at[v]];
        let origin: i64 = r
            .what
            .split("origin=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let got = parse_answer("json", &r.body);
        let want = oracle::bins(
            at_v,
            &OFilter::default(),
            got.start_unix,
            900,
            got.counts.len(),
        );
        assert_eq!(got.start_unix.rem_euclid(900), origin.rem_euclid(900));
        assert_eq!(got.counts, want, "{} answered as version {v}", r.what);
    }

    // Appends past eight version groups compact in the background: the
    // reads raced compactions too.
    let m = &app.app_state.metrics;
    assert!(
        m.compactions.with_label_values(&["store"]).get() > 0,
        "no compaction ran"
    );

    // After the appends: every acknowledged block is there …
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(s["blocks"].as_u64().unwrap() as usize, blocks.len());
    assert_eq!(s["version"].as_u64().unwrap() as usize, 1 + APPENDS);
    // … the last summary job describes the last version …
    app.wait_job(last_job).await;
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(
        s["summary"]["total_blocks"].as_u64().unwrap() as usize,
        blocks.len()
    );
    let pmin = blocks
        .iter()
        .map(|b| b.priority)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(s["summary"]["priority_min"].as_f64().unwrap(), pmin);
    // … and answers equal the oracle: windows at 900 s around appended
    // periods, the appended blocks alone over the year, the histogram.
    let appended: Vec<&OBlock> = blocks
        .iter()
        .filter(|b| b.identity.starts_with("race-"))
        .collect();
    for b in appended.iter().take(4) {
        let day = (b.periods[0].0 - YEAR) / DAY * DAY + YEAR;
        let r = app
            .get(&format!(
                "/v1/schedules/{id}/bins?bin=900&start={day}&end={}",
                day + DAY
            ))
            .await;
        assert_eq!(r.status, 200);
        let got = parse_answer("json", &r.text);
        assert_eq!(
            got.counts,
            oracle::bins(&blocks, &OFilter::default(), day, 900, 96)
        );
    }
    let ids: Vec<String> = appended.iter().map(|b| b.identity.clone()).collect();
    let f = OFilter {
        block_ids: Some(ids.clone()),
        ..OFilter::default()
    };
    let r = app
        .get(&format!(
            "/v1/schedules/{id}/bins?bin=1d&start={YEAR}&end={}&block_ids={}",
            YEAR + 365 * DAY,
            ids.join(",")
        ))
        .await;
    let got = parse_answer("json", &r.text);
    assert_eq!(got.counts, oracle::bins(&blocks, &f, YEAR, DAY, 365));
    let (start, end) = (
        s["start_unix"].as_i64().unwrap(),
        s["end_unix"].as_i64().unwrap(),
    );
    let hist = app
        .get(&format!(
            "/v1/schedules/{id}/visibility-histogram?num_bins=40"
        ))
        .await
        .json();
    let d = ((end - start) / 40).max(1);
    let n = ((end - start) + d - 1) / d;
    assert_eq!(hist.as_array().unwrap().len() as i64, n);
    for (i, bin) in hist.as_array().unwrap().iter().enumerate() {
        let bs = start + i as i64 * d;
        let be = (bs + d).min(end);
        assert_eq!(bin["bin_start_unix"].as_i64().unwrap(), bs);
        let want = oracle::bin(&blocks, &OFilter::default(), bs, be)[0];
        assert_eq!(
            bin["visible_count"].as_u64().unwrap() as u32,
            want,
            "histogram bin {i}"
        );
    }
    Arc::try_unwrap(app)
        .ok()
        .expect("readers are done")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_appends_postgres() {
    race(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_appends_sqlite() {
    race(Backend::Sqlite).await;
}
