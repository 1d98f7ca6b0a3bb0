//! visbin's engine against two baselines written as the replaced system
//! describes them, in one process, on the same data:
//! (a) per block, per period, per touched bin: insert into that bin's
//!     HashSet (bumping quartile/scheduled counters on first insertion);
//! (b) per bin, every period of every block with the overlap test and a
//!     HashSet.
//! Asserts that all three agree, then prints one JSON line per workload.
//! The baseline (a) and the engine are timed in alternating rounds and
//! each reported as a median, so a machine that slows down or speeds up
//! during the run affects both alike; (b) runs once.
//!
//! Run: `cargo run --release --example engine_vs_naive [workload ...]`

use std::collections::HashSet;
use std::time::Instant;
use visbin::engine::{
    count_bins, BinCounts, BinRange, BlockTable, Filter, Grid, PeriodColumns, Quartile,
};
use visbin::gen::{blocks, GenConfig};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Block {
    priority: f64,
    scheduled: bool,
    periods: Vec<(i64, i64)>,
}

/// Generates `n` blocks × ~`per` periods over 365 days (the `visbin gen` data).
fn schedule(n: usize, per: usize, seed: u64) -> Vec<Block> {
    let config = GenConfig::new(n, per, seed);
    let start_mjd = 1_735_689_600.0 / 86_400.0 + 40_587.0;
    let unix = |mjd: f64| ((mjd - 40_587.0) * 86_400.0).round() as i64;
    blocks(&config, start_mjd)
        .map(|b| Block {
            priority: b.priority,
            scheduled: b.scheduled.is_some(),
            periods: b
                .periods
                .iter()
                .map(|&(s, e)| (unix(s), unix(e)))
                .filter(|(s, e)| e > s)
                .collect(),
        })
        .collect()
}

fn quartiles(bs: &[Block]) -> Vec<usize> {
    let pmin = bs.iter().map(|b| b.priority).fold(f64::INFINITY, f64::min);
    let pmax = bs
        .iter()
        .map(|b| b.priority)
        .fold(f64::NEG_INFINITY, f64::max);
    bs.iter()
        .map(|b| Quartile::of(b.priority, pmin, pmax) as usize)
        .collect()
}

/// Baseline (a): a HashSet per bin.
fn naive_hashset(bs: &[Block], grid: &Grid, bins: BinRange) -> BinCounts {
    let q = quartiles(bs);
    let n = bins.len();
    let (from, to) = (grid.bin_start(bins.first), grid.bin_start(bins.end));
    let mut sets: Vec<HashSet<usize>> = vec![HashSet::new(); n];
    let mut out = BinCounts::zeros(bins);
    for (i, b) in bs.iter().enumerate() {
        for &(s, e) in &b.periods {
            if e <= from || s >= to {
                continue;
            }
            let a = (s.max(from) - grid.bin_start(bins.first)) / grid.width();
            let z = (e.min(to) - 1 - grid.bin_start(bins.first)) / grid.width();
            for k in a..=z {
                let k = k as usize;
                if sets[k].insert(i) {
                    out.columns[0][k] += 1;
                    out.columns[1 + q[i]][k] += 1;
                    out.columns[if b.scheduled { 5 } else { 6 }][k] += 1;
                }
            }
        }
    }
    out
}

/// Baseline (b): for each bin, scan every period.
fn naive_scan(bs: &[Block], grid: &Grid, bins: BinRange) -> Vec<u32> {
    (bins.first..bins.end)
        .map(|k| {
            let (bs_, be) = (grid.bin_start(k), grid.bin_start(k + 1));
            let mut seen = HashSet::new();
            for (i, b) in bs.iter().enumerate() {
                for &(s, e) in &b.periods {
                    if s < be && e > bs_ {
                        seen.insert(i);
                    }
                }
            }
            seen.len() as u32
        })
        .collect()
}

fn ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Times `rounds` alternations of one baseline (a) run and `per_round`
/// engine runs, so that both see the same machine state, and reports the
/// median of each.
#[allow(clippy::too_many_arguments)]
fn workload(
    only: &[String],
    name: &str,
    bs: &[Block],
    width: i64,
    from: i64,
    to: i64,
    run_scan: bool,
    rounds: usize,
    per_round: usize,
) {
    if !only.is_empty() && !only.iter().any(|o| o == name) {
        return;
    }
    let mut table = BlockTable::new();
    let mut rows = Vec::new();
    for (i, b) in bs.iter().enumerate() {
        table.push(
            &format!("b{i}"),
            b.priority,
            b.scheduled,
            b.periods.len() as u32,
        );
        rows.extend(b.periods.iter().map(|&(s, e)| (i as u32, s, e)));
    }
    let periods = PeriodColumns::from_unsorted(rows);
    let cats = table.categories(&Filter::default());
    let grid = Grid::new(width, 0);
    let bins = grid.cover(from, to);

    let mut hashset_times = Vec::new();
    let mut visbin_times = Vec::new();
    let mut ours = None;
    for _ in 0..rounds {
        let mut naive = None;
        hashset_times.push(ms(|| naive = Some(naive_hashset(bs, &grid, bins))));
        for _ in 0..per_round {
            // The previous answer is freed outside the timer, as (a)'s is.
            drop(ours.take());
            visbin_times.push(ms(|| {
                ours = Some(count_bins(&[&periods], &cats, &grid, bins, None))
            }));
        }
        assert_eq!(naive, ours, "{name}: engine and HashSet baseline disagree");
    }
    let ours = ours.expect("ran");
    let (hashset_ms, visbin_ms) = (median(hashset_times), median(visbin_times));

    let scan_ms = run_scan.then(|| {
        let mut scan = Vec::new();
        let t = ms(|| scan = naive_scan(bs, &grid, bins));
        assert_eq!(
            scan, ours.columns[0],
            "{name}: engine and scan baseline disagree"
        );
        t
    });
    let line = serde_json::json!({
        "workload": name,
        "blocks": bs.len(),
        "periods": periods.len(),
        "bins": bins.len(),
        "naive_hashset_ms": (hashset_ms * 1000.0).round() / 1000.0,
        "naive_scan_ms": scan_ms.map(|t| (t * 1000.0).round() / 1000.0),
        "visbin_ms": (visbin_ms * 10000.0).round() / 10000.0,
        "speedup_hashset": (hashset_ms / visbin_ms).round(),
        "speedup_scan": scan_ms.map(|t| (t / visbin_ms).round()),
    });
    println!("{line}");
}

fn main() {
    // Optional arguments name the workloads to run (default: all).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let year_start = 1_735_689_600; // 2025-01-01T00:00:00Z
    let day = 86_400;
    let reference = schedule(1_500, 50, 1);
    workload(
        &only,
        "reference",
        &reference,
        900,
        year_start,
        year_start + 365 * day,
        true,
        7,
        15,
    );
    let mid = year_start + 180 * day;
    workload(
        &only,
        "reference-1d",
        &reference,
        900,
        mid,
        mid + day,
        true,
        21,
        25,
    );
    workload(
        &only,
        "reference-7d",
        &reference,
        900,
        mid,
        mid + 7 * day,
        true,
        21,
        11,
    );
    if !only.is_empty() && !only.iter().any(|o| o.starts_with("large")) {
        return;
    }
    let large = schedule(150_000, 50, 2);
    workload(
        &only,
        "large",
        &large,
        3600,
        year_start,
        year_start + 365 * day,
        false,
        3,
        5,
    );
    workload(
        &only,
        "large-7d",
        &large,
        3600,
        mid,
        mid + 7 * day,
        true,
        7,
        9,
    );
}
