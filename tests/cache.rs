//! The range query and its two-tier cache against the brute-force oracle:
//! a randomized model test on both stores, single-flight, an append racing
//! a computation, two replicas on one Postgres, the memory tier's byte
//! bound, and format parity.

mod common;
use common::oracle::{self, OBlock, OFilter};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Start of the model's time area (a day boundary).
const T0: i64 = 1_737_244_800;
const DAY: i64 = 86_400;

fn to_json(b: &OBlock) -> serde_json::Value {
    let mut v = block(&b.identity, b.priority, b.scheduled, &b.periods);
    if b.scheduled {
        v["scheduled_period"] = json!({"start": mjd(T0), "stop": mjd(T0 + 60)});
    }
    v
}

fn random_block(rng: &mut ChaCha8Rng, identity: String, priorities: &[f64]) -> OBlock {
    let n = rng.gen_range(0..5);
    let periods = (0..n)
        .map(|_| {
            // Starts on minute marks half of the time: edges meet bin edges.
            let s = T0
                + if rng.gen_bool(0.5) {
                    rng.gen_range(0..3 * 1440) * 60
                } else {
                    rng.gen_range(0..3 * DAY)
                };
            (s, s + rng.gen_range(1..8 * 3600))
        })
        .collect();
    OBlock {
        identity,
        priority: priorities[rng.gen_range(0..priorities.len())],
        scheduled: rng.gen_bool(0.3),
        periods,
    }
}

fn random_filter(rng: &mut ChaCha8Rng, blocks: &[OBlock]) -> OFilter {
    match rng.gen_range(0..6) {
        0 => OFilter {
            priority_min: Some(2.0),
            ..OFilter::default()
        },
        1 => OFilter {
            priority_max: Some(5.5),
            scheduled: Some(false),
            ..OFilter::default()
        },
        2 => OFilter {
            scheduled: Some(true),
            ..OFilter::default()
        },
        3 => OFilter {
            block_ids: Some(
                blocks
                    .iter()
                    .take(2)
                    .map(|b| b.identity.clone())
                    .chain(["nobody".to_string()])
                    .collect(),
            ),
            ..OFilter::default()
        },
        4 => OFilter {
            priority_min: Some(9.0),
            priority_max: Some(1.0),
            ..OFilter::default()
        },
        _ => OFilter::default(),
    }
}

struct Query {
    path: String,
    /// The query string's parts other than the window.
    params: String,
    format: &'static str,
    key: String,
    first_start: i64,
    width: i64,
    n: usize,
}

/// A random query; `range` is the schedule's, if it has one (a query
/// without a window covers it).
fn random_query(
    rng: &mut ChaCha8Rng,
    id: i64,
    blocks: &[OBlock],
    range: Option<(i64, i64)>,
) -> Query {
    let width = [60, 300, 900, 3600, 7200, DAY][rng.gen_range(0..6)];
    let origin: i64 = [0, 30, -450, 7][rng.gen_range(0..4)];
    let f = random_filter(rng, blocks);
    let format = ["json", "columnar", "csv"][rng.gen_range(0..3)];
    let (start, end, window) = if let Some(range) = range.filter(|_| rng.gen_bool(0.2)) {
        (range.0, range.1, String::new())
    } else {
        let s = T0 - DAY + rng.gen_range(0..5 * DAY);
        let e = s + rng.gen_range(1..2 * DAY);
        (s, e, format!("&start={s}&end={e}"))
    };
    let o = origin.rem_euclid(width);
    let first = (start - o).div_euclid(width);
    let last = (end - 1 - o).div_euclid(width);
    let params = format!("bin={width}&origin={origin}&format={format}{}", f.query());
    Query {
        path: format!("/v1/schedules/{id}/bins?{params}{window}"),
        params,
        format,
        key: format!("{id}|{width}|{o}|{:?}", f),
        first_start: o + first * width,
        width,
        n: (last - first + 1) as usize,
    }
}

async fn check_query(app: &TestApp, q: &Query, f: &OFilter, blocks: &[OBlock]) -> String {
    let r = app.get(&q.path).await;
    assert_eq!(r.status, 200, "{} -> {}", q.path, r.text);
    let got = parse_answer(q.format, &r.text);
    let want = oracle::bins(blocks, f, q.first_start, q.width, q.n);
    assert_eq!(got.starts.len(), q.n, "{}", q.path);
    assert_eq!(got.starts[0], q.first_start, "{}", q.path);
    assert_eq!(got.end_unix, q.first_start + q.n as i64 * q.width);
    for (j, (g, w)) in got.counts.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{} bin {j} (start {})", q.path, got.starts[j]);
    }
    r.header("x-cache").to_string()
}

/// How much the resident period tier may hold in a model run.
#[derive(Debug, Clone, Copy)]
enum Resident {
    /// The default budget: every schedule stays resident.
    On,
    /// Room for about one small schedule: constant eviction; and the
    /// smallest work budget, so every window read and load runs alone.
    Tiny,
    /// Nothing: every computation reads the chunks of its window.
    Off,
}

async fn model(backend: Backend, seed: u64, steps: usize, resident: Resident) {
    let db = TestDb::new(backend).await;
    let budget = match resident {
        Resident::On => vec![],
        Resident::Tiny => vec![
            "--period-cache-bytes",
            "2000",
            "--period-work-bytes",
            "1024",
        ],
        Resident::Off => vec!["--period-cache-bytes", "0"],
    };
    let app = TestApp::start(&db, &budget).await;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let priorities = [1.0, 2.0, 3.5, 5.5, 7.0];
    let mut schedules: BTreeMap<i64, Vec<OBlock>> = BTreeMap::new();
    let mut seen_keys: HashSet<String> = HashSet::new();
    let mut next_block = 0;
    let (mut hits, mut misses) = (0, 0);
    for step in 0..steps {
        let roll = rng.gen_range(0..100);
        if schedules.is_empty() || roll < 10 {
            let n = rng.gen_range(2..10);
            let blocks: Vec<OBlock> = (0..n)
                .map(|_| {
                    next_block += 1;
                    random_block(&mut rng, format!("b{next_block}"), &priorities)
                })
                .collect();
            let doc = json!({"name": format!("model-{seed}-{step}"), "blocks": blocks.iter().map(to_json).collect::<Vec<_>>()});
            let up = app.upload(&doc).await;
            schedules.insert(up["schedule_id"].as_i64().unwrap(), blocks);
        } else if roll < 25 {
            let id = *schedules
                .keys()
                .nth(rng.gen_range(0..schedules.len()))
                .unwrap();
            // Sometimes outside the priority range: every quartile may move.
            let ps: &[f64] = if rng.gen_bool(0.3) {
                &[0.5, 9.0]
            } else {
                &priorities
            };
            let add: Vec<OBlock> = (0..rng.gen_range(1..3))
                .map(|_| {
                    next_block += 1;
                    random_block(&mut rng, format!("b{next_block}"), ps)
                })
                .collect();
            let body = serde_json::Value::Array(add.iter().map(to_json).collect());
            let r = app
                .post(
                    &format!("/v1/schedules/{id}/blocks"),
                    "application/json",
                    body.to_string(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            schedules.get_mut(&id).unwrap().extend(add);
        } else if roll < 30 {
            // Merge the stored version groups (the background compaction
            // waits for eight of them; forcing it here covers every shape).
            let id = *schedules
                .keys()
                .nth(rng.gen_range(0..schedules.len()))
                .unwrap();
            app.app_state
                .ingest
                .compact(id, 1)
                .await
                .expect("compaction");
        } else if roll < 35 && schedules.len() > 1 {
            let id = *schedules
                .keys()
                .nth(rng.gen_range(0..schedules.len()))
                .unwrap();
            assert_eq!(app.delete(&format!("/v1/schedules/{id}")).await.status, 204);
            schedules.remove(&id);
            app.get(&format!(
                "/v1/schedules/{id}/bins?start={T0}&end={}",
                T0 + DAY
            ))
            .await
            .assert_problem(404, &[]);
        } else {
            let id = *schedules
                .keys()
                .nth(rng.gen_range(0..schedules.len()))
                .unwrap();
            let blocks = schedules[&id].clone();
            let head = app.get(&format!("/v1/schedules/{id}")).await.json();
            let range = match (head["start_unix"].as_i64(), head["end_unix"].as_i64()) {
                (Some(s), Some(e)) if s < e => Some((s, e)),
                _ => None,
            };
            let q = random_query(&mut rng, id, &blocks, range);
            let f = parse_filter(&q.path);
            // The summary job warms (900 s, origin 0, no filter) itself.
            let warmed_by_job = q.key.contains("|900|0|") && f == OFilter::default();
            let fresh = !seen_keys.contains(&q.key) && !warmed_by_job;
            let outcome = check_query(&app, &q, &f, &blocks).await;
            if fresh {
                assert_eq!(outcome, "miss", "a never-seen key must miss: {}", q.path);
                misses += 1;
            }
            seen_keys.insert(q.key.clone());
            // The same query again: every bin is now cached.
            let again = check_query(&app, &q, &f, &blocks).await;
            assert_eq!(again, "hit", "a window just computed must hit: {}", q.path);
            hits += 1;
            // A part of it: served from the cached extents, not recomputed.
            let n = (q.n / 2).max(1);
            let part = Query {
                path: format!(
                    "/v1/schedules/{id}/bins?{}&start={}&end={}",
                    q.params,
                    q.first_start,
                    q.first_start + n as i64 * q.width
                ),
                params: q.params.clone(),
                format: q.format,
                key: q.key.clone(),
                first_start: q.first_start,
                width: q.width,
                n,
            };
            assert_eq!(
                check_query(&app, &part, &f, &blocks).await,
                "hit",
                "{}",
                part.path
            );
        }
    }
    assert!(
        hits > 10 && misses > 3,
        "the model exercised the cache (hits {hits}, misses {misses})"
    );
    let m = &app.app_state.metrics;
    let loads = |kind: &str| m.period_loads.with_label_values(&[kind]).get();
    let lookups = |outcome: &str| m.period_lookups.with_label_values(&[outcome]).get();
    match resident {
        Resident::On => assert!(
            loads("full") > 0 && lookups("hit") > 0,
            "full {} hit {} window {} miss {} stale {}",
            loads("full"),
            lookups("hit"),
            loads("window"),
            lookups("miss"),
            lookups("stale")
        ),
        Resident::Tiny => assert!(lookups("miss") > 2 && loads("full") > 2),
        Resident::Off => assert!(loads("window") > 0 && loads("full") == 0),
    }
    app.stop().await;
}

/// The filter of a query path, parsed back (the path is the source of truth).
fn parse_filter(path: &str) -> OFilter {
    let q = path.split_once('?').unwrap().1;
    let mut f = OFilter::default();
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "priority_min" => f.priority_min = Some(v.parse().unwrap()),
            "priority_max" => f.priority_max = Some(v.parse().unwrap()),
            "scheduled" => f.scheduled = Some(v == "true"),
            "block_ids" => f.block_ids = Some(v.split(',').map(str::to_string).collect()),
            _ => {}
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_sqlite() {
    for seed in 1..=3 {
        model(Backend::Sqlite, seed, 70, Resident::On).await;
    }
    model(Backend::Sqlite, 4, 70, Resident::Tiny).await;
    model(Backend::Sqlite, 5, 70, Resident::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_postgres() {
    for seed in 11..=13 {
        model(Backend::Postgres, seed, 70, Resident::On).await;
    }
    model(Backend::Postgres, 14, 70, Resident::Tiny).await;
    model(Backend::Postgres, 15, 70, Resident::Off).await;
}

async fn count_extents(db: &TestDb, id: i64) -> i64 {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM bin_extents WHERE schedule_id = $1 AND cache_key LIKE '%width=600|%'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_cold_requests_compute_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::start(&db, &[]).await;
    let id = app.upload_generated(1500, 50, 3).await;
    let before = app.app_state.metrics.computations.get();
    let path = format!("/v1/schedules/{id}/bins?bin=1h&origin=120");
    let calls: Vec<_> = (0..32).map(|_| app.get(&path)).collect();
    let answers = futures_util::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.text, answers[0].text);
    }
    assert_eq!(
        app.app_state.metrics.computations.get() - before,
        1,
        "32 identical misses, one computation"
    );
    assert_eq!(app.get(&path).await.header("x-cache"), "hit");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_racing_a_computation_leaves_no_stale_bins() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::start(&db, &[]).await;
    let id = app.upload_generated(8000, 40, 4).await;
    let year = 1_735_689_600;
    let path = format!(
        "/v1/schedules/{id}/bins?bin=300&start={year}&end={}",
        year + 365 * DAY
    );
    let late: Vec<(i64, i64)> = (0..365)
        .map(|d| (year + d * DAY, year + d * DAY + 7200))
        .collect();
    let append = json!([block("racer", 5.0, false, &late)]).to_string();
    let query = app.get(&path);
    let add = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        app.post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            append,
        )
        .await
    };
    let (q, a) = tokio::join!(query, add);
    assert_eq!(q.status, 200);
    assert_eq!(a.status, 200, "{}", a.text);
    // After the append: the cached answer must equal a fresh computation
    // (a filter that selects everything but is another cache key).
    let cached = parse_answer("json", &app.get(&path).await.text);
    let fresh = app.get(&format!("{path}&priority_min=-1e300")).await;
    assert_eq!(fresh.header("x-cache"), "miss");
    let fresh = parse_answer("json", &fresh.text);
    assert_eq!(cached.counts, fresh.counts);
    // And the appended block is visible on every day, by itself.
    let racer = app
        .get(&format!(
            "/v1/schedules/{id}/bins?bin=1d&start={year}&end={}&block_ids=racer",
            year + 365 * DAY
        ))
        .await;
    let racer = parse_answer("json", &racer.text);
    assert_eq!(racer.counts.len(), 365);
    assert!(racer.counts.iter().all(|c| c[0] == 1));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_share_extents_and_never_serve_stale_bins() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestApp::start(&db, &[]).await;
    let b = TestApp::start(&db, &[]).await;
    let blocks = vec![
        OBlock {
            identity: "x".into(),
            priority: 1.0,
            scheduled: false,
            periods: vec![(T0 + 100, T0 + 5000)],
        },
        OBlock {
            identity: "y".into(),
            priority: 5.0,
            scheduled: true,
            periods: vec![(T0 + DAY, T0 + DAY + 900)],
        },
    ];
    let up = a.upload(&json!({"name": "replicated", "blocks": blocks.iter().map(to_json).collect::<Vec<_>>()})).await;
    let id = up["schedule_id"].as_i64().unwrap();
    a.wait_job(up["job_id"].as_i64().unwrap()).await;
    let path = format!(
        "/v1/schedules/{id}/bins?bin=600&start={T0}&end={}",
        T0 + 2 * DAY
    );
    assert_eq!(a.get(&path).await.header("x-cache"), "miss");
    // A's extent reaches the persisted tier asynchronously, within seconds.
    let mut persisted = false;
    for _ in 0..100 {
        if count_extents(&db, id).await > 0 {
            persisted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(persisted, "A's extent never reached the persisted tier");
    // B serves it without computing.
    let computed_before = b.app_state.metrics.computations.get();
    let r = b.get(&path).await;
    assert_eq!(r.header("x-cache"), "hit", "B serves A's persisted extent");
    assert_eq!(
        b.app_state.metrics.computations.get(),
        computed_before,
        "B did not compute"
    );
    let want = oracle::bins(&blocks, &OFilter::default(), T0, 600, 288);
    assert_eq!(parse_answer("json", &r.text).counts, want);
    // A key B never saw makes B load the schedule's periods.
    let fresh = format!("/v1/schedules/{id}/bins?bin=600&origin=60");
    assert_eq!(b.get(&fresh).await.header("x-cache"), "miss");
    assert!(
        b.app_state.query.periods().peek(id, 1).is_some(),
        "B holds the schedule resident"
    );
    let b_loads = |kind: &str| {
        b.app_state
            .metrics
            .period_loads
            .with_label_values(&[kind])
            .get()
    };
    let deltas_before = b_loads("delta");
    // An append acknowledged by A is seen by B's next request.
    let add = OBlock {
        identity: "z".into(),
        priority: 3.0,
        scheduled: false,
        periods: vec![(T0 + 3000, T0 + 4000)],
    };
    let r = a
        .post(
            &format!("/v1/schedules/{id}/blocks"),
            "application/json",
            json!([to_json(&add)]).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut all = blocks.clone();
    all.push(add);
    let got = parse_answer("json", &b.get(&path).await.text);
    assert_eq!(
        got.counts,
        oracle::bins(&all, &OFilter::default(), T0, 600, 288)
    );
    // B's resident copy took the appended version by reading only its
    // chunks, and computes from it.
    let r = b
        .get(&format!(
            "/v1/schedules/{id}/bins?bin=600&origin=120&start={}&end={}",
            T0 + 120,
            T0 + 120 + 2 * DAY
        ))
        .await;
    assert_eq!(r.header("x-cache"), "miss");
    assert_eq!(
        parse_answer("json", &r.text).counts,
        oracle::bins(&all, &OFilter::default(), T0 + 120, 600, 288)
    );
    assert!(
        b_loads("delta") > deltas_before,
        "B extended its resident copy"
    );
    assert!(b.app_state.query.periods().peek(id, 2).is_some());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_stays_within_its_byte_budget() {
    let db = TestDb::new(Backend::Sqlite).await;
    let budget = 300_000u64;
    let app = TestApp::start(&db, &["--cache-bytes", &budget.to_string()]).await;
    let id = app.upload_generated(300, 20, 5).await;
    // 40 keys of ~1,440 bins (~40 KB each): far past the budget.
    for origin in 0..40 {
        let r = app
            .get(&format!(
                "/v1/schedules/{id}/bins?bin=3600&origin={}&start=1735689600&end=1740873600",
                origin * 60
            ))
            .await;
        assert_eq!(r.status, 200);
    }
    let memory = app.app_state.query.memory();
    let size = memory.weighted_size().await;
    assert!(size <= budget, "weighted size {size} exceeds {budget}");
    assert!(size > budget / 4, "the tier holds data ({size} bytes)");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_columnar_and_csv_carry_the_same_numbers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start(&db, &[]).await;
    let id = app.upload_generated(200, 20, 6).await;
    let base = format!("/v1/schedules/{id}/bins?bin=2h&start=2025-02-01T00:00:00Z&end=2025-02-08T00:00:00Z&scheduled=false");
    let mut parsed = Vec::new();
    for f in ["json", "columnar", "csv"] {
        let r = app.get(&format!("{base}&format={f}")).await;
        assert_eq!(r.status, 200);
        parsed.push(parse_answer(f, &r.text));
    }
    assert_eq!(parsed[0].counts.len(), 84);
    assert!(parsed[0].counts.iter().any(|c| c[0] > 0));
    for p in &parsed[1..] {
        assert_eq!(p.starts, parsed[0].starts);
        assert_eq!(p.ends, parsed[0].ends);
        assert_eq!(p.counts, parsed[0].counts);
    }
    app.stop().await;
}

/// Long periods (days) and instants before 1970 reach the windows they
/// overlap on every period path: resident copies, and window reads whose
/// lower bound on chunk starts is the longest period.
async fn long_and_early_periods(backend: Backend, resident: Resident) {
    let db = TestDb::new(backend).await;
    let flags: &[&str] = match resident {
        Resident::Off => &["--period-cache-bytes", "0"],
        _ => &[],
    };
    let app = TestApp::start(&db, flags).await;
    let blocks = vec![
        OBlock {
            identity: "around-1970".into(),
            priority: 1.0,
            scheduled: false,
            periods: vec![(-5 * DAY + 17, 3 * DAY - 5)],
        },
        OBlock {
            identity: "before-1970".into(),
            priority: 2.0,
            scheduled: true,
            periods: vec![
                (-100, 50),
                (-2 * DAY - 30, -2 * DAY + 30),
                (2 * DAY, 2 * DAY + 60),
            ],
        },
        OBlock {
            identity: "a-week".into(),
            priority: 3.0,
            scheduled: false,
            periods: vec![(T0 - 6 * DAY - 11, T0 + DAY + 7)],
        },
        OBlock {
            identity: "short".into(),
            priority: 4.0,
            scheduled: false,
            periods: vec![(T0 - 60, T0 + 60), (T0 + 3 * DAY, T0 + 3 * DAY + 900)],
        },
    ];
    let doc =
        json!({"name": "long and early", "blocks": blocks.iter().map(to_json).collect::<Vec<_>>()});
    let up = app.upload(&doc).await;
    let id = up["schedule_id"].as_i64().unwrap();
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    for (start, days) in [
        (-DAY, 2),
        (-3 * DAY, 1),
        (T0 - DAY, 1),
        (T0 - 5 * DAY, 1),
        (T0, 4),
    ] {
        for width in [600, 3600, DAY] {
            let n = (days * DAY / width) as usize;
            let r = app
                .get(&format!(
                    "/v1/schedules/{id}/bins?bin={width}&start={start}&end={}",
                    start + days * DAY
                ))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let got = parse_answer("json", &r.text);
            let want = oracle::bins(&blocks, &OFilter::default(), start, width, n);
            assert_eq!(
                got.counts, want,
                "{backend:?} {resident:?}: start {start}, {days} d at {width} s"
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_periods_and_instants_before_1970_reach_their_windows() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for resident in [Resident::On, Resident::Off] {
            long_and_early_periods(backend, resident).await;
        }
    }
}
