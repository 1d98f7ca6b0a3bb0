//! Runs the engine alone on the reference workload many times (for
//! profilers). Run: `cargo run --release --example engine_profile`
use std::time::Instant;
use visbin::engine::{count_bins, BlockTable, Filter, Grid, PeriodColumns};
use visbin::gen::{blocks, GenConfig, GenFormat};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let config = GenConfig {
        blocks: 1_500,
        periods: 50,
        days: 365,
        start: "2025-01-01T00:00:00Z".into(),
        seed: 1,
        format: GenFormat::Json,
        name: None,
        output: None,
        with_schedule_period: false,
    };
    let unix = |mjd: f64| ((mjd - 40_587.0) * 86_400.0).round() as i64;
    let mut table = BlockTable::new();
    let mut rows = Vec::new();
    for (i, b) in blocks(&config, 1_735_689_600.0 / 86_400.0 + 40_587.0).enumerate() {
        table.push(
            &format!("b{i}"),
            b.priority,
            b.scheduled.is_some(),
            b.periods.len() as u32,
        );
        rows.extend(b.periods.iter().map(|&(s, e)| (i as u32, unix(s), unix(e))));
    }
    let periods = PeriodColumns::from_unsorted(rows);
    let cats = table.categories(&Filter::default());
    let grid = Grid::new(900, 0);
    let bins = grid.cover(1_735_689_600, 1_735_689_600 + 365 * 86_400);
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let t = Instant::now();
    let mut total = 0u64;
    for _ in 0..runs {
        let c = count_bins(&periods, periods.max_len(), &cats, &grid, bins, None);
        total += u64::from(c.columns[0][1000]);
    }
    println!(
        "{:.4} ms per call ({total})",
        t.elapsed().as_secs_f64() * 1e3 / runs as f64
    );
}
