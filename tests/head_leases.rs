//! Head leases (Postgres): a replica answers warm requests from the heads
//! it knows, without a database round trip, and still never misses a
//! write acknowledged before a request began — appends and deletes wait
//! for every other live lease, and the writer applies its own notice
//! without waiting for the database to deliver it. A replica that died
//! holding a lease delays writes by at most that lease (and a request
//! timeout while a write waits says the write is stored); a dropped
//! listening connection ends the epoch and the lease is taken again. On
//! SQLite one process serves a file and answers from the heads its own
//! writes keep current.

mod common;
use common::oracle::{self, OBlock, OFilter};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T0: i64 = 1_737_244_800;
const DAY: i64 = 86_400;

fn blocks(n: usize) -> Vec<OBlock> {
    (0..n)
        .map(|i| {
            let s = T0 + (i as i64 * 7_919) % (6 * DAY);
            OBlock {
                identity: format!("b{i}"),
                priority: (i % 10) as f64,
                scheduled: i % 3 == 0,
                periods: vec![(s, s + 3_600 + (i as i64 % 5) * 600)],
            }
        })
        .collect()
}

fn to_json(b: &OBlock) -> serde_json::Value {
    block(&b.identity, b.priority, b.scheduled, &b.periods)
}

/// Uploads `blocks` as schedule `name` through `app` and waits for its
/// summary job; returns the schedule's id.
async fn upload(app: &TestApp, name: &str, blocks: &[OBlock]) -> i64 {
    let up = app
        .upload(&json!({"name": name, "blocks": blocks.iter().map(to_json).collect::<Vec<_>>()}))
        .await;
    app.wait_job(up["job_id"].as_i64().unwrap()).await;
    up["schedule_id"].as_i64().unwrap()
}

/// The 7-day range query at 1 h that the tests repeat (warm after once).
fn week(id: i64) -> String {
    format!(
        "/v1/schedules/{id}/bins?bin=3600&start={T0}&end={}",
        T0 + 7 * DAY
    )
}

/// Appends `b` to schedule `id` through `app`.
async fn append(app: &TestApp, id: i64, b: &OBlock) -> Resp {
    app.post(
        &format!("/v1/schedules/{id}/blocks"),
        "application/json",
        json!([to_json(b)]).to_string(),
    )
    .await
}

fn known_reads(app: &TestApp) -> u64 {
    app.app_state
        .metrics
        .head_reads
        .with_label_values(&["known"])
        .get()
}

/// Writes the lease of a replica that took one for `ms` and died: it
/// never acknowledges a notice.
async fn ghost_lease(db: &TestDb, ms: i64) {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO head_leases (replica, epoch, expires_at) \
         VALUES ('ghost', 1, now() + $1 * interval '1 millisecond')",
    )
    .bind(ms as f64)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// Waits until `app` trusts a head lease in epoch `epochs` or later.
async fn wait_lease(app: &TestApp, epochs: u64) {
    let known = app
        .store()
        .known_heads()
        .expect("Postgres keeps head leases");
    for _ in 0..200 {
        let s = known.stats();
        if s.trusted && s.epochs >= epochs {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no head lease in epoch {epochs}: {:?}", known.stats());
}

fn version(r: &Resp) -> i64 {
    r.header("x-schedule-version").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_answers_come_from_the_lease_and_never_miss_an_acknowledged_write() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Arc::new(TestApp::start(&db, &[]).await);
    let b = Arc::new(TestApp::start(&db, &[]).await);
    let mut all = blocks(60);
    let id = upload(&a, "leased", &all).await;
    wait_lease(&b, 1).await;
    let warm = week(id);
    assert_eq!(b.get(&warm).await.status, 200);
    let before = known_reads(&b);
    let r = b.get(&warm).await;
    assert_eq!((r.status, r.header("x-cache")), (200, "hit"));
    assert_eq!(
        known_reads(&b),
        before + 1,
        "a warm answer reads no head from the database"
    );

    // Appends through A while B answers: every answer of B is of a version
    // at least as new as the last append acknowledged before it was asked.
    let acked = Arc::new(AtomicI64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let lease_before = known_reads(&b);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (b, acked, done, warm) = (b.clone(), acked.clone(), done.clone(), warm.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                let floor = acked.load(Ordering::SeqCst);
                let r = b.get(&warm).await;
                assert_eq!(r.status, 200, "{}", r.text);
                let v = version(&r);
                assert!(
                    v >= floor,
                    "B answered version {v} after version {floor} was acknowledged"
                );
                seen.insert(v);
            }
            seen
        }));
    }
    let mut added = Vec::new();
    for i in 0..30i64 {
        let s = T0 + i * 4 * 3_600;
        let block = OBlock {
            identity: format!("r{i}"),
            priority: 4.0,
            scheduled: false,
            periods: vec![(s, s + 1_800)],
        };
        let r = append(&a, id, &block).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json()["version"].as_i64().unwrap();
        acked.store(v, Ordering::SeqCst);
        added.push(block);
        // The writing replica answers with its own append at once.
        assert_eq!(
            version(&a.get(&warm).await),
            v,
            "A's answer after its append"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut versions = std::collections::BTreeSet::new();
    for r in readers {
        versions.extend(r.await.unwrap());
    }
    assert!(
        versions.len() > 5,
        "B's answers moved with the appends: {versions:?}"
    );
    assert!(
        known_reads(&b) > lease_before,
        "B answered from its lease while the appends ran"
    );
    let confirmations = a
        .app_state
        .store
        .confirm_stats()
        .expect("Postgres confirms writes");
    assert_eq!(confirmations.confirmed, 30);
    assert!(
        confirmations.waited_for >= 30,
        "each append waited for B's lease: {confirmations:?}"
    );

    // After the appends, B's answer is the oracle's.
    all.extend(added);
    let r = b.get(&warm).await;
    assert_eq!(version(&r), 31);
    assert_eq!(
        parse_answer("json", &r.text).counts,
        oracle::bins(&all, &OFilter::default(), T0, 3_600, 7 * 24)
    );

    // A delete through A is seen by B's next request.
    assert_eq!(b.get(&warm).await.status, 200);
    assert_eq!(a.delete(&format!("/v1/schedules/{id}")).await.status, 204);
    assert_eq!(b.get(&warm).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_answers_with_its_own_write_while_its_listener_is_stalled() {
    let db = TestDb::new(Backend::Postgres).await;
    // A long lease and database timeout: the stalled renewal below neither
    // ends the epoch nor outlasts the trust while the test runs.
    let a = TestApp::start(&db, &["--head-lease", "8", "--db-timeout", "10"]).await;
    let mut all = blocks(10);
    let id = upload(&a, "own", &all).await;
    wait_lease(&a, 1).await;
    let warm = week(id);
    assert_eq!(version(&a.get(&warm).await), 1);

    // Lock A's lease row: its next renewal, sent on the listening
    // connection, waits for the lock, and with it every notice A would
    // receive from the database. A's lease is still trusted meanwhile.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM head_leases FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let dbname = db.url.rsplit('/').next().unwrap();
    let mut stalled = false;
    for _ in 0..400 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'visbin head watch' \
             AND datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(dbname)
        .fetch_one(&pool)
        .await
        .unwrap();
        if n == 1 {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stalled, "A's renewal waits for the lock");

    // A's own append is in its next answer although no notice reached it:
    // the writer forgot its copy of the head before it answered, so the
    // next request reads the head again (a trusted lease would otherwise
    // have answered from the old one) and A knows the new head from then on.
    let add = OBlock {
        identity: "own".into(),
        priority: 3.0,
        scheduled: false,
        periods: vec![(T0 + 3_600, T0 + 5_400)],
    };
    let r = append(&a, id, &add).await;
    assert_eq!(r.status, 200, "{}", r.text);
    all.push(add);
    let known = a.store().known_heads().unwrap();
    assert!(known.stats().trusted, "A still trusts its lease");
    let r = a.get(&warm).await;
    assert_eq!(version(&r), 2, "A's answer after its own append");
    assert_eq!(
        parse_answer("json", &r.text).counts,
        oracle::bins(&all, &OFilter::default(), T0, 3_600, 7 * 24)
    );
    let before = known_reads(&a);
    assert_eq!(version(&a.get(&warm).await), 2);
    assert_eq!(
        known_reads(&a),
        before + 1,
        "answered from the lease while the listener was stalled"
    );
    assert!(known.stats().trusted, "the lease held throughout");
    lock.rollback().await.unwrap();
    pool.close().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_died_holding_a_lease_delays_writes_by_at_most_that_lease() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestApp::start(&db, &[]).await;
    let id = upload(&a, "ghost", &blocks(5)).await;
    wait_lease(&a, 1).await;
    // A replica that took a lease and died: it never acknowledges.
    ghost_lease(&db, 1_500).await;
    let one = |name: &str| OBlock {
        identity: name.into(),
        priority: 1.0,
        scheduled: false,
        periods: vec![(T0, T0 + 600)],
    };
    let started = Instant::now();
    let r = append(&a, id, &one("late")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        took >= Duration::from_millis(1_000) && took < Duration::from_secs(4),
        "the append waited for the dead replica's lease to run out: {took:?}"
    );
    let stats = a.app_state.store.confirm_stats().unwrap();
    assert!(stats.resent > 0, "the notice was sent again: {stats:?}");
    // Its lease is over: the next append waits for A alone.
    let started = Instant::now();
    let r = append(&a, id, &one("prompt")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // (Waiting for a lease would last until the confirmation's deadline,
    // 2 × 2 s + 2 × 3 s.)
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_while_replicas_confirm_says_the_write_is_stored() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestApp::start(&db, &["--request-timeout", "1"]).await;
    let id = upload(&a, "slow", &blocks(5)).await;
    ghost_lease(&db, 3_000).await;
    let late = OBlock {
        identity: "late".into(),
        priority: 1.0,
        scheduled: false,
        periods: vec![(T0, T0 + 600)],
    };
    let r = append(&a, id, &late).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let problem = r.json();
    assert_eq!(problem["code"], "unconfirmed", "{}", r.text);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("the write is stored")
            && detail.contains("VISBIN_REQUEST_TIMEOUT")
            && detail.contains("do not repeat it"),
        "{detail}"
    );
    let stats = a.app_state.store.confirm_stats().unwrap();
    assert_eq!(stats.unconfirmed, 1, "{stats:?}");
    let schedule = a.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(
        (schedule["version"].as_i64(), schedule["blocks"].as_i64()),
        (Some(2), Some(6)),
        "the append is stored: {schedule}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listening_connection_ends_the_epoch_and_the_lease_is_taken_again() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestApp::start(&db, &[]).await;
    let b = TestApp::start(&db, &[]).await;
    let mut all = blocks(20);
    let id = upload(&a, "dropped", &all).await;
    wait_lease(&b, 1).await;
    let warm = week(id);
    b.get(&warm).await;
    let known = b.store().known_heads().unwrap();
    assert_eq!(known.stats().rows, 1, "B knows the head");

    // Postgres drops both replicas' listening connections.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let dbname = db.url.rsplit('/').next().unwrap();
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'visbin head watch' AND datname = $1",
    )
    .bind(dbname)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(killed, 2);
    // An append right away is confirmed: B's old epoch no longer counts
    // once its new one is written (or its lease has run out).
    let add = OBlock {
        identity: "after-drop".into(),
        priority: 9.0,
        scheduled: true,
        periods: vec![(T0 + 600, T0 + 4_200)],
    };
    let r = append(&a, id, &add).await;
    assert_eq!(r.status, 200, "{}", r.text);
    all.push(add);
    // B's next request sees it, whatever state its lease is in.
    let r = b.get(&warm).await;
    assert_eq!(version(&r), 2);
    assert_eq!(
        parse_answer("json", &r.text).counts,
        oracle::bins(&all, &OFilter::default(), T0, 3_600, 7 * 24)
    );
    // B listens again in a new epoch and answers from its lease again.
    wait_lease(&b, 2).await;
    b.get(&warm).await;
    let before = known_reads(&b);
    assert_eq!(version(&b.get(&warm).await), 2);
    assert_eq!(known_reads(&b), before + 1);
    // Stopped replicas give their leases up, and nothing takes them again
    // (two renewal periods later).
    a.stop().await;
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (leases,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM head_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(leases, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_has_one_server_which_answers_from_the_heads_it_knows() {
    let db = TestDb::new(Backend::Sqlite).await;
    let a = TestApp::start(&db, &[]).await;
    // A second server on the same file is refused, saying what to do.
    let second = visbin::app::Application::build(
        &serve_config(&db.url, &[]),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await;
    let e = format!("{:#}", second.err().expect("a second server is refused"));
    assert!(
        e.contains("another visbin process serves") && e.contains("use Postgres"),
        "{e}"
    );
    // The one server answers warm requests without reading the head, and
    // its own appends and deletes keep what it knows current.
    let mut all = blocks(10);
    let id = upload(&a, "lite", &all).await;
    let warm = week(id);
    a.get(&warm).await;
    let before = known_reads(&a);
    assert_eq!(a.get(&warm).await.header("x-cache"), "hit");
    assert_eq!(known_reads(&a), before + 1);
    let add = OBlock {
        identity: "appended".into(),
        priority: 2.0,
        scheduled: false,
        periods: vec![(T0 + 7_200, T0 + 9_000)],
    };
    let r = append(&a, id, &add).await;
    assert_eq!(r.status, 200, "{}", r.text);
    all.push(add);
    let r = a.get(&warm).await;
    assert_eq!(version(&r), 2);
    assert_eq!(
        parse_answer("json", &r.text).counts,
        oracle::bins(&all, &OFilter::default(), T0, 3_600, 7 * 24)
    );
    assert_eq!(a.delete(&format!("/v1/schedules/{id}")).await.status, 204);
    assert_eq!(a.get(&warm).await.status, 404);
    // Once it stops, the file may be served again.
    a.stop().await;
    let b = TestApp::start(&db, &[]).await;
    assert_eq!(b.get(&warm).await.status, 404);
    b.stop().await;
}
