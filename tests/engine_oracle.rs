//! The engine pinned to a brute-force oracle: for every bin, every period of
//! every block, the strict-overlap rule, a set of block identities.

mod common;

use common::oracle::{self, OBlock, OFilter};
use proptest::prelude::*;
use visbin::engine::{count_bins, BinRange, BlockTable, Filter, Grid, PeriodColumns};

#[derive(Debug, Clone)]
struct B {
    priority: f64,
    scheduled: bool,
    periods: Vec<(i64, i64)>,
}

fn table(blocks: &[B]) -> (BlockTable, PeriodColumns) {
    let mut t = BlockTable::new();
    let mut rows = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        t.push(
            &format!("id{i}"),
            b.priority,
            b.scheduled,
            b.periods.len() as u32,
        );
        rows.extend(b.periods.iter().map(|&(s, e)| (i as u32, s, e)));
    }
    (t, PeriodColumns::from_unsorted(rows))
}

/// The oracle's view of the blocks (identities `id0`, `id1`, …).
fn oblocks(blocks: &[B]) -> Vec<OBlock> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| OBlock {
            identity: format!("id{i}"),
            priority: b.priority,
            scheduled: b.scheduled,
            periods: b.periods.clone(),
        })
        .collect()
}

fn ofilter(f: &Filter) -> OFilter {
    OFilter {
        priority_min: f.priority_min,
        priority_max: f.priority_max,
        scheduled: f.scheduled,
        block_ids: f
            .block_ids
            .as_ref()
            .map(|ids| ids.iter().cloned().collect()),
    }
}

fn oracle_bin(blocks: &[B], f: &Filter, bs: i64, be: i64) -> [u32; 7] {
    oracle::bin(&oblocks(blocks), &ofilter(f), bs, be)
}

fn block_strategy() -> impl Strategy<Value = B> {
    (
        prop::sample::select(vec![0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 4.0, 7.25]),
        any::<bool>(),
        prop::collection::vec((-120i64..120, 1i64..60), 0..5),
    )
        .prop_map(|(priority, scheduled, ps)| B {
            priority,
            scheduled,
            periods: ps.into_iter().map(|(s, len)| (s, s + len)).collect(),
        })
}

fn filter_strategy(n: usize) -> impl Strategy<Value = Filter> {
    (
        prop::option::of(prop::sample::select(vec![0.0, 2.5, 5.0, 11.0])),
        prop::option::of(prop::sample::select(vec![-1.0, 2.5, 7.25, 10.0])),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::btree_set(0..n + 2, 0..3)),
    )
        .prop_map(|(pmin, pmax, sched, ids)| Filter {
            priority_min: pmin,
            priority_max: pmax,
            scheduled: sched,
            // Indices past the last block name identities the schedule lacks.
            block_ids: ids.map(|s| s.into_iter().map(|i| format!("id{i}")).collect()),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn engine_equals_oracle(
        (blocks, f) in prop::collection::vec(block_strategy(), 1..8)
            .prop_flat_map(|b| { let n = b.len(); (Just(b), filter_strategy(n)) }),
        width in prop::sample::select(vec![1i64, 2, 3, 7, 15, 60, 500]),
        origin in -50i64..50,
        start in -150i64..150,
        len in 1i64..200,
    ) {
        let (t, p) = table(&blocks);
        let grid = Grid::new(width, origin);
        let bins = grid.cover(start, start + len);
        let got = count_bins(&[&p], &t.categories(&f), &grid, bins, None);
        prop_assert_eq!(got.range, bins);
        for j in 0..bins.len() {
            let k = bins.first + j as i64;
            let want = oracle_bin(&blocks, &f, grid.bin_start(k), grid.bin_start(k + 1));
            let have: Vec<u32> = got.columns.iter().map(|c| c[j]).collect();
            prop_assert_eq!(&have[..], &want[..], "bin {} of {:?}", k, bins);
        }
    }

    #[test]
    fn block_disjoint_segments_count_like_one(
        (blocks, f) in prop::collection::vec(block_strategy(), 1..10)
            .prop_flat_map(|b| { let n = b.len(); (Just(b), filter_strategy(n)) }),
        cuts in prop::collection::vec(any::<bool>(), 10),
        width in prop::sample::select(vec![1i64, 7, 60, 500]),
        start in -150i64..150,
        len in 1i64..200,
    ) {
        // Blocks split into consecutive groups, as the versions of a
        // schedule split them: each group's periods form one segment.
        let (t, whole) = table(&blocks);
        let mut segments: Vec<Vec<(u32, i64, i64)>> = vec![Vec::new()];
        for (i, b) in blocks.iter().enumerate() {
            if i > 0 && cuts[i] {
                segments.push(Vec::new());
            }
            let seg = segments.last_mut().unwrap();
            seg.extend(b.periods.iter().map(|&(s, e)| (i as u32, s, e)));
        }
        let segments: Vec<PeriodColumns> = segments.into_iter().map(PeriodColumns::from_unsorted).collect();
        let refs: Vec<&PeriodColumns> = segments.iter().collect();
        let grid = Grid::new(width, 0);
        let bins = grid.cover(start, start + len);
        let cats = t.categories(&f);
        prop_assert_eq!(count_bins(&refs, &cats, &grid, bins, None), count_bins(&[&whole], &cats, &grid, bins, None));
        // Merged back into one segment (the resident tier's compaction).
        let merged = PeriodColumns::merge(&refs);
        prop_assert_eq!(merged.len(), whole.len());
        prop_assert_eq!(count_bins(&[&merged], &cats, &grid, bins, None), count_bins(&[&whole], &cats, &grid, bins, None));
    }

    #[test]
    fn tsi_histogram_equals_oracle(
        blocks in prop::collection::vec(block_strategy(), 1..8),
        s in -150i64..100,
        span in 1i64..250,
        d in 1i64..80,
    ) {
        let e = s + span;
        let (t, p) = table(&blocks);
        let grid = Grid::new(d, s);
        let n = (span + d - 1) / d;
        let first = grid.bin_of(s);
        let bins = BinRange { first, end: first + n };
        let got = count_bins(&[&p], &t.categories(&Filter::default()), &grid, bins, Some(e));
        for i in 0..n {
            let bs = s + i * d;
            let be = (bs + d).min(e);
            let want = oracle_bin(&blocks, &Filter::default(), bs, be);
            prop_assert_eq!(got.columns[0][i as usize], want[0], "bin {} [{}, {})", i, bs, be);
        }
    }
}

fn one(priority: f64, scheduled: bool, periods: &[(i64, i64)]) -> B {
    B {
        priority,
        scheduled,
        periods: periods.to_vec(),
    }
}

fn visible(blocks: &[B], width: i64, start: i64, end: i64) -> Vec<u32> {
    let (t, p) = table(blocks);
    let grid = Grid::new(width, 0);
    count_bins(
        &[&p],
        &t.categories(&Filter::default()),
        &grid,
        grid.cover(start, end),
        None,
    )
    .columns[0]
        .clone()
}

#[test]
fn a_period_ending_exactly_on_a_bin_edge_does_not_count_in_the_next_bin() {
    assert_eq!(
        visible(&[one(1.0, false, &[(0, 900)])], 900, 0, 1800),
        vec![1, 0]
    );
    assert_eq!(
        visible(&[one(1.0, false, &[(900, 901)])], 900, 0, 1800),
        vec![0, 1]
    );
}

#[test]
fn two_periods_of_one_block_in_one_bin_count_once() {
    assert_eq!(
        visible(
            &[one(1.0, false, &[(10, 20), (30, 40), (35, 50)])],
            900,
            0,
            900
        ),
        vec![1]
    );
}

#[test]
fn a_day_bin_counts_a_block_once_however_many_quarter_hours_it_spans() {
    let periods: Vec<(i64, i64)> = (0..20).map(|k| (k * 3600, k * 3600 + 900)).collect();
    let blocks = [one(1.0, false, &periods), one(2.0, true, &[(100, 200)])];
    assert_eq!(visible(&blocks, 86_400, 0, 86_400), vec![2]);
    let quarter = visible(&blocks, 900, 0, 86_400);
    assert_eq!(quarter.iter().max(), Some(&2));
    assert_eq!(quarter.iter().filter(|&&v| v > 0).count(), 20);
}

#[test]
fn all_equal_priorities_put_every_block_in_q2() {
    let blocks = [one(3.0, false, &[(0, 10)]), one(3.0, true, &[(0, 10)])];
    let (t, p) = table(&blocks);
    let grid = Grid::new(60, 0);
    let c = count_bins(
        &[&p],
        &t.categories(&Filter::default()),
        &grid,
        grid.cover(0, 60),
        None,
    );
    assert_eq!(
        [
            c.columns[1][0],
            c.columns[2][0],
            c.columns[3][0],
            c.columns[4][0]
        ],
        [0, 2, 0, 0]
    );
}

/// A schedule of `blocks` × 4 random periods over ~35 days: enough
/// candidate periods to take the multi-threaded path.
fn large_schedule(blocks: u32) -> (BlockTable, PeriodColumns) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut t = BlockTable::new();
    let mut rows = Vec::new();
    for b in 0..blocks {
        t.push(
            &format!("b{b}"),
            rng.gen_range(0.0..10.0),
            rng.gen_bool(0.3),
            4,
        );
        for _ in 0..4 {
            let s = rng.gen_range(0..3_000_000i64);
            rows.push((b, s, s + rng.gen_range(1..30_000)));
        }
    }
    (t, PeriodColumns::from_unsorted(rows))
}

/// The whole window (split across threads) equals the same bins counted
/// as many small windows (each on one thread).
fn assert_parallel_split_equals_serial_windows(blocks: u32) {
    let (t, p) = large_schedule(blocks);
    let cats = t.categories(&Filter::default());
    let grid = Grid::new(3600, 0);
    let all = grid.cover(0, 3_100_000);
    let whole = count_bins(&[&p], &cats, &grid, all, None);
    let mut first = all.first;
    while first < all.end {
        let end = (first + 17).min(all.end);
        let part = count_bins(&[&p], &cats, &grid, BinRange { first, end }, None);
        assert_eq!(part, whole.slice(BinRange { first, end }));
        first = end;
    }
}

#[test]
fn parallel_split_equals_serial_windows_with_narrow_counters() {
    // Fewer than 65,535 blocks: 16-bit difference cells.
    assert_parallel_split_equals_serial_windows(20_000);
}

#[test]
fn parallel_split_equals_serial_windows_with_wide_counters() {
    // More than 65,535 blocks: 32-bit difference cells.
    assert_parallel_split_equals_serial_windows(70_000);
}

#[test]
fn windows_wider_than_2_pow_31_seconds_equal_the_oracle() {
    // Bins of ~95 years make the window span exceed 2^31 s, which takes
    // the general 64-bit division instead of the short multiply-shift.
    let w = 3_000_000_000i64;
    let blocks = [
        one(1.0, false, &[(-5, 5), (w - 1, w + 1)]),
        one(2.0, true, &[(w, 2 * w), (2 * w + 10, 2 * w + 20)]),
        one(3.0, false, &[(2 * w - 1, 3 * w + 1)]),
    ];
    let (t, p) = table(&blocks);
    let grid = Grid::new(w, 0);
    let bins = grid.cover(-w, 4 * w);
    let got = count_bins(&[&p], &t.categories(&Filter::default()), &grid, bins, None);
    for j in 0..bins.len() {
        let k = bins.first + j as i64;
        let want = oracle_bin(
            &blocks,
            &Filter::default(),
            grid.bin_start(k),
            grid.bin_start(k + 1),
        );
        let have: Vec<u32> = got.columns.iter().map(|c| c[j]).collect();
        assert_eq!(&have[..], &want[..], "bin {k}");
    }
}
