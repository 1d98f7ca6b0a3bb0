//! Measures the chunk span: the same schedule packed into chunk rows of
//! 1 h, 6 h, 1 day and 7 days (by period start), stored in Postgres in the
//! layout of `period_chunks`, then read back as the read path reads it: the
//! rows that can hold a 1-day window, and every row. Prints one JSON line
//! per span.
//!
//!   cargo run --release --example chunk_span [-- BLOCKS]   (default 150000)
//!
//! Needs Postgres at VISBIN_TEST_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres); it creates and drops a
//! scratch database.

use sqlx::{Connection, PgConnection, PgPool};
use std::time::Instant;
use visbin::gen::{blocks, GenConfig};
use visbin::model::time::mjd_to_unix;
use visbin::periods::codec::encode;

const SPANS: [i64; 4] = [3_600, 21_600, 86_400, 604_800];
const YEAR: i64 = 1_735_689_600;
const DAY: i64 = 86_400;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        anyhow::bail!("run it with --release: the codec checks day-sized chunks in debug builds");
    }
    let n: usize = std::env::args().nth(1).map_or(Ok(150_000), |a| a.parse())?;
    let mut periods: Vec<(i64, i64, u32)> = Vec::new();
    let start_mjd = YEAR as f64 / 86_400.0 + 40_587.0;
    let config = GenConfig::new(n, 50, 1);
    for (i, b) in blocks(&config, start_mjd).enumerate() {
        for &(s, e) in &b.periods {
            let (s, e) = (mjd_to_unix(s).unwrap(), mjd_to_unix(e).unwrap());
            if e > s {
                periods.push((s, e, i as u32));
            }
        }
    }
    periods.sort_unstable();
    let max_len = periods.iter().map(|p| p.1 - p.0).max().unwrap_or(0);
    eprintln!("{} periods, longest {max_len} s", periods.len());

    let admin = std::env::var("VISBIN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = "visbin_chunk_span";
    let mut conn = PgConnection::connect(&admin).await?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::raw_sql(&sql).execute(&mut conn).await?;
    }
    let url = format!("{}/{db}", admin.rsplit_once('/').unwrap().0);
    let pool = PgPool::connect(&url).await?;
    let (from, to) = (YEAR + 180 * DAY, YEAR + 181 * DAY);
    for span in SPANS {
        let table = format!("span_{span}");
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (schedule_id BIGINT, chunk_start BIGINT, first_version BIGINT, \
             version BIGINT, block_base BIGINT, period_count BIGINT, max_end BIGINT, payload BYTEA, \
             PRIMARY KEY (schedule_id, chunk_start, version)); \
             ALTER TABLE {table} ALTER COLUMN payload SET STORAGE EXTERNAL;"
        ))
        .execute(&pool)
        .await?;
        let mut chunks = Vec::new();
        let mut rest = &periods[..];
        while let Some(&(s, _, _)) = rest.first() {
            let c = s.div_euclid(span) * span;
            let k = rest.partition_point(|p| p.0 < c + span);
            chunks.push(encode(c, &rest[..k]));
            rest = &rest[k..];
        }
        for batch in chunks.chunks(64) {
            sqlx::query(&format!(
                "INSERT INTO {table} SELECT 1, s, 1, 1, 0, n, m, p FROM UNNEST($1::BIGINT[], \
                 $2::BIGINT[], $3::BIGINT[], $4::BYTEA[]) AS t(s, n, m, p)"
            ))
            .bind(batch.iter().map(|c| c.chunk_start).collect::<Vec<_>>())
            .bind(batch.iter().map(|c| c.period_count).collect::<Vec<_>>())
            .bind(batch.iter().map(|c| c.max_end).collect::<Vec<_>>())
            .bind(
                batch
                    .iter()
                    .map(|c| c.payload.as_slice())
                    .collect::<Vec<_>>(),
            )
            .execute(&pool)
            .await?;
        }
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
            .execute(&pool)
            .await?;
        let bytes: i64 = sqlx::query_scalar(&format!("SELECT pg_total_relation_size('{table}')"))
            .fetch_one(&pool)
            .await?;
        let window_sql = format!(
            "SELECT chunk_start, period_count, max_end, payload FROM {table} WHERE schedule_id = 1 \
             AND chunk_start > $1 AND chunk_start < $2 AND max_end > $3 ORDER BY chunk_start"
        );
        let mut window_ms = Vec::new();
        let mut window_periods = 0;
        for _ in 0..15 {
            let t = Instant::now();
            let rows: Vec<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(&window_sql)
                .bind(from - max_len - span)
                .bind(to)
                .bind(from)
                .fetch_all(&pool)
                .await?;
            window_ms.push(t.elapsed().as_secs_f64() * 1e3);
            window_periods = rows.iter().map(|r| r.1).sum::<i64>();
        }
        let mut all_ms = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
                "SELECT chunk_start, payload FROM {table} WHERE schedule_id = 1 ORDER BY chunk_start"
            ))
            .fetch_all(&pool)
            .await?;
            all_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(rows.len(), chunks.len());
        }
        println!(
            "{}",
            serde_json::json!({
                "span_s": span,
                "rows": chunks.len(),
                "bytes_per_period": (bytes as f64 / periods.len() as f64 * 100.0).round() / 100.0,
                "window_1d_rows_periods": window_periods,
                "window_1d_ms": (median(window_ms) * 100.0).round() / 100.0,
                "all_ms": (median(all_ms) * 10.0).round() / 10.0,
            })
        );
    }
    pool.close().await;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}
