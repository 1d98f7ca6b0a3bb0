//! Engine throughput on the reference schedule (1,500 blocks × ~50 periods,
//! one year): windows of 1 day, 7 days and the full year at 900 s.
//! Run: `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use visbin::engine::{count_bins, BlockTable, Filter, Grid, PeriodColumns};
use visbin::gen::{blocks, GenConfig};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn reference() -> (BlockTable, PeriodColumns) {
    let config = GenConfig::new(1_500, 50, 1);
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
    (table, PeriodColumns::from_unsorted(rows))
}

fn windows(c: &mut Criterion) {
    let (table, periods) = reference();
    let cats = table.categories(&Filter::default());
    let grid = Grid::new(900, 0);
    let year = 1_735_689_600;
    let mid = year + 180 * 86_400;
    let mut group = c.benchmark_group("reference-900s");
    for (name, from, to) in [
        ("1d", mid, mid + 86_400),
        ("7d", mid, mid + 7 * 86_400),
        ("365d", year, year + 365 * 86_400),
    ] {
        let bins = grid.cover(from, to);
        group.bench_with_input(BenchmarkId::from_parameter(name), &bins, |b, &bins| {
            b.iter(|| count_bins(&[&periods], &cats, &grid, bins, None))
        });
    }
    group.finish();
}

criterion_group!(benches, windows);
criterion_main!(benches);
