//! A database of the old layout (one `periods` row per period, migration
//! 0001 only), filled, then migrated by `visbin migrate`: the schedules
//! answer exactly as before (the brute-force oracle, which the old layout
//! was pinned to), the old table is gone, and the migrated schedules take
//! appends. On both stores.

mod common;
use common::oracle::{self, OBlock, OFilter};
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;
use visbin::model::{schedule_checksum, Block, BlockDigest, Header};

const T0: i64 = 1_737_244_800;
const DAY: i64 = 86_400;

/// A pool of either dialect, for raw SQL.
enum Raw {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

impl Raw {
    async fn open(db: &TestDb) -> Raw {
        if db.url.starts_with("sqlite:") {
            let opts: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
            Raw::Lite(
                sqlx::SqlitePool::connect_with(opts.create_if_missing(true))
                    .await
                    .unwrap(),
            )
        } else {
            Raw::Pg(sqlx::PgPool::connect(&db.url).await.unwrap())
        }
    }

    /// Applies only the first migration, as the old server did.
    async fn old_schema(&self) {
        let dir = tempfile::tempdir().unwrap();
        let dialect = match self {
            Raw::Pg(_) => "postgres",
            Raw::Lite(_) => "sqlite",
        };
        let src = format!(
            "{}/migrations/{dialect}/0001_init.sql",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::copy(src, dir.path().join("0001_init.sql")).unwrap();
        let m = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        match self {
            Raw::Pg(p) => m.run(p).await.unwrap(),
            Raw::Lite(p) => m.run(p).await.unwrap(),
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Raw::Pg(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Raw::Lite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{e}: {}", &sql[..sql.len().min(300)]));
    }

    async fn has_table(&self, name: &str) -> bool {
        match self {
            Raw::Pg(p) => sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(p)
                .await
                .unwrap(),
            Raw::Lite(p) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
                )
                .bind(name)
                .fetch_one(p)
                .await
                .unwrap()
                    > 0
            }
        }
    }

    async fn close(self) {
        match self {
            Raw::Pg(p) => p.close().await,
            Raw::Lite(p) => p.close().await,
        }
    }
}

/// A schedule as the old server stored it.
struct Old {
    id: i64,
    name: String,
    version: i64,
    fixed: Option<(i64, i64)>,
    blocks: Vec<OBlock>,
}

impl Old {
    fn random(id: i64, rng: &mut rand_chacha::ChaCha8Rng, n: usize, version: i64) -> Old {
        let blocks = (0..n)
            .map(|i| OBlock {
                identity: format!("s{id}-b{i}"),
                priority: f64::from(rng.gen_range(0..40)) / 4.0,
                scheduled: rng.gen_bool(0.3),
                periods: (0..rng.gen_range(0..12))
                    .map(|_| {
                        let s = T0 + rng.gen_range(0..20 * DAY);
                        (s, s + rng.gen_range(60..10 * 3600))
                    })
                    .collect(),
            })
            .collect();
        Old {
            id,
            name: format!("old-{id}"),
            version,
            fixed: (id == 2).then_some((T0, T0 + 21 * DAY)),
            blocks,
        }
    }

    fn range(&self) -> Option<(i64, i64)> {
        self.fixed.or_else(|| {
            let ps = self.blocks.iter().flat_map(|b| b.periods.iter());
            let s = ps.clone().map(|p| p.0).min()?;
            Some((s, ps.map(|p| p.1).max()?))
        })
    }

    /// The SQL the old server's writes amount to.
    fn sql(&self) -> Vec<String> {
        let mut digest = BlockDigest::default();
        for b in &self.blocks {
            let mut periods = b.periods.clone();
            periods.sort_unstable();
            digest.add_block(&Block {
                identity: b.identity.clone(),
                priority: b.priority,
                scheduled: b.scheduled,
                periods,
            });
        }
        let header = Header {
            name: self.name.clone(),
            schedule_period: self.fixed,
        };
        let checksum = schedule_checksum(&header, &digest);
        let periods: Vec<(usize, i64, i64)> = self
            .blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.periods.iter().map(move |&(s, e)| (i, s, e)))
            .collect();
        let opt = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
        let (lo, hi) = self
            .blocks
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), b| {
                (lo.min(b.priority), hi.max(b.priority))
            });
        let longest = periods.iter().map(|p| p.2 - p.1).max().unwrap_or(0);
        let range = self.range();
        let mut out =
            vec![format!(
            "INSERT INTO schedules (id, name, checksum, blocks_digest, range_start, range_end, \
             range_fixed, version, created_at_ms, block_count, period_count, \
             empty_periods_dropped, priority_min, priority_max, max_period_seconds) VALUES \
             ({}, '{}', '{checksum}', '{}', {}, {}, {}, {}, 1700000000000, {}, {}, 0, {lo:?}, \
             {hi:?}, {longest})",
            self.id,
            self.name,
            digest.to_hex(),
            opt(range.map(|r| r.0)),
            opt(range.map(|r| r.1)),
            if self.fixed.is_some() { "TRUE" } else { "FALSE" },
            self.version,
            self.blocks.len(),
            periods.len(),
        )];
        for (k, rows) in self.blocks.chunks(200).enumerate() {
            let values: Vec<String> = rows
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    format!(
                        "({}, {}, '{}', {:?}, {}, {})",
                        self.id,
                        k * 200 + i,
                        b.identity,
                        b.priority,
                        if b.scheduled { "TRUE" } else { "FALSE" },
                        b.periods.len()
                    )
                })
                .collect();
            out.push(format!(
                "INSERT INTO blocks (schedule_id, block_idx, identity, priority, scheduled, \
                 period_count) VALUES {}",
                values.join(", ")
            ));
        }
        for rows in periods.chunks(500) {
            let values: Vec<String> = rows
                .iter()
                .map(|&(i, s, e)| format!("({}, {i}, {s}, {e})", self.id))
                .collect();
            out.push(format!(
                "INSERT INTO periods (schedule_id, block_idx, start_unix, end_unix) VALUES {}",
                values.join(", ")
            ));
        }
        out
    }
}

async fn check_answers(app: &TestApp, old: &Old) {
    let id = old.id;
    let s = app.get(&format!("/v1/schedules/{id}")).await.json();
    assert_eq!(s["name"], old.name.as_str());
    assert_eq!(s["version"], old.version);
    assert_eq!(s["blocks"].as_u64().unwrap() as usize, old.blocks.len());
    let range = old.range().unwrap();
    assert_eq!(
        (
            s["start_unix"].as_i64().unwrap(),
            s["end_unix"].as_i64().unwrap()
        ),
        range
    );
    for (width, start, days, filter) in [
        (900, T0 + 3 * DAY, 2, OFilter::default()),
        (3600, T0 - DAY, 23, OFilter::default()),
        (
            7200,
            T0,
            10,
            OFilter {
                scheduled: Some(true),
                ..OFilter::default()
            },
        ),
        (
            DAY,
            T0,
            21,
            OFilter {
                priority_min: Some(4.0),
                ..OFilter::default()
            },
        ),
    ] {
        let n = (days * DAY / width) as usize;
        let r = app
            .get(&format!(
                "/v1/schedules/{id}/bins?bin={width}&start={start}&end={}{}",
                start + n as i64 * width,
                filter.query()
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let got = parse_answer("json", &r.text);
        assert_eq!(
            got.counts,
            oracle::bins(&old.blocks, &filter, start, width, n),
            "width {width}"
        );
    }
    let hist = app
        .get(&format!(
            "/v1/schedules/{id}/visibility-histogram?num_bins=7"
        ))
        .await
        .json();
    let d = ((range.1 - range.0) / 7).max(1);
    assert_eq!(
        hist.as_array().unwrap().len() as i64,
        (range.1 - range.0 + d - 1) / d
    );
    for (i, bin) in hist.as_array().unwrap().iter().enumerate() {
        let bs = range.0 + i as i64 * d;
        let want = oracle::bin(&old.blocks, &OFilter::default(), bs, (bs + d).min(range.1))[0];
        assert_eq!(bin["visible_count"].as_u64().unwrap() as u32, want);
    }
}

async fn migrate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let raw = Raw::open(&db).await;
    raw.old_schema().await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut olds = vec![
        Old::random(1, &mut rng, 300, 1),
        // Appended to twice under the old layout; its range is fixed.
        Old::random(2, &mut rng, 60, 3),
    ];
    for old in &olds {
        for sql in old.sql() {
            raw.exec(&sql).await;
        }
    }
    // Rows a delete left behind would have been removed with it; rows of a
    // schedule that does not exist must not stop the move.
    raw.exec(
        "INSERT INTO periods (schedule_id, block_idx, start_unix, end_unix) VALUES (77, 0, 10, 20)",
    )
    .await;
    if let Raw::Pg(_) = raw {
        // Keep Postgres's sequence past the ids written by hand.
        raw.exec("SELECT setval('schedules_id_seq', 2)").await;
    }
    raw.close().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_visbin"))
        .args(["migrate", "--database-url", &db.url])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 schedules moved to packed period chunks"),
        "{stdout}"
    );

    let raw = Raw::open(&db).await;
    assert!(!raw.has_table("periods").await, "the old table is dropped");
    assert!(raw.has_table("period_chunks").await);
    raw.close().await;
    let (_, _, periods, _) = count_rows(&db).await;
    let total: usize = olds
        .iter()
        .map(|o| o.blocks.iter().map(|b| b.periods.len()).sum::<usize>())
        .sum();
    assert_eq!(periods as usize, total);

    let app = TestApp::start(&db, &[]).await;
    for old in &olds {
        check_answers(&app, old).await;
    }
    // The migrated schedules take appends (a new version group beside the
    // moved one).
    let add = OBlock {
        identity: "late".into(),
        priority: 20.0,
        scheduled: false,
        periods: vec![(T0 + 5 * DAY, T0 + 5 * DAY + 7200)],
    };
    let r = app
        .post(
            "/v1/schedules/2/blocks",
            "application/json",
            json!([block(
                &add.identity,
                add.priority,
                add.scheduled,
                &add.periods
            )])
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    olds[1].blocks.push(add);
    olds[1].version += 1;
    check_answers(&app, &olds[1]).await;
    // And a new upload gets a fresh id.
    let up = app
        .upload(&json!({"name": "after", "blocks": [block("x", 1.0, false, &[(T0, T0 + 60)])]}))
        .await;
    assert_eq!(up["schedule_id"], 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_layout_postgres_database_migrates_and_answers_as_before() {
    migrate(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_layout_sqlite_database_migrates_and_answers_as_before() {
    migrate(Backend::Sqlite).await;
}
