//! The read path when the version a request read can no longer be told
//! apart (a compaction merged it with a later one), and the store's refusal
//! of a chunk feed that ends early. On a real SQLite file.

use super::*;
use crate::cache::CacheKey;
use crate::model::{BlockMeta, Header, UploadStats};
use crate::periods::compact::compact_stored;
use crate::periods::pack::Packer;
use crate::store::{ChunkFeed, Inserted, NewBlocks, NewSchedule, Store};

const T0: i64 = 1_737_244_800;

fn budgets() -> QueryBudgets {
    QueryBudgets {
        extent_bytes: 1 << 20,
        response_bytes: 1 << 20,
        period_bytes: 1 << 20,
        period_work_bytes: 1 << 20,
        block_bytes: 1 << 20,
        write_queue: 16,
    }
}

/// Blocks `first..first + n`, each with one period an hour long.
fn blocks(first: usize, n: usize) -> (Vec<BlockMeta>, UploadStats, ChunkFeed) {
    let mut stats = UploadStats::default();
    let mut packer = Packer::new();
    let mut metas = Vec::new();
    for i in 0..n {
        let b = crate::model::Block {
            identity: format!("b{}", first + i),
            priority: (first + i) as f64,
            scheduled: false,
            periods: vec![(
                T0 + (first + i) as i64 * 600,
                T0 + (first + i) as i64 * 600 + 3600,
            )],
        };
        stats.add(&b);
        packer.add(i as u32, &b.periods).unwrap();
        metas.push(BlockMeta::of(&b));
    }
    (metas, stats, feed(packer.finish().unwrap()))
}

fn feed(chunks: Vec<crate::model::PackedChunk>) -> ChunkFeed {
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(Ok(c)).unwrap();
    }
    rx
}

async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("t.sqlite3").display());
    crate::store::connect(
        &url,
        crate::store::PoolConfig::new(2, std::time::Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_request_whose_version_was_merged_away_moves_on_to_the_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let (metas, stats, chunks) = blocks(0, 3);
    let new = NewSchedule {
        header: Header {
            name: "m".into(),
            schedule_period: None,
        },
        checksum: "c".into(),
        stats,
        blocks: metas,
        chunks,
    };
    let Inserted::Created { schedule, .. } = store.insert_schedule(new).await.unwrap() else {
        panic!("a new schedule");
    };
    let id = schedule.id;
    let mut heads = vec![schedule];
    for k in 0..3 {
        let (metas, stats, chunks) = blocks(3 + k, 1);
        let new = NewBlocks {
            stats,
            changed_spans: vec![],
            blocks: metas,
            chunks,
            max_totals: (u64::MAX, u64::MAX),
        };
        heads.push(store.append_blocks(id, new).await.unwrap().schedule);
    }
    // Versions 1..=4, then one group holding all of them.
    while compact_stored(store.as_ref(), id, 1)
        .await
        .unwrap()
        .is_some()
    {}
    assert_eq!(store.chunk_groups(id).await.unwrap().len(), 1);

    let service = QueryService::new(
        store,
        Arc::new(Metrics::new()),
        QueryLimits {
            max_bins: 1000,
            max_computations: 2,
        },
        budgets(),
    );
    let old = Arc::new(heads[1].clone());
    assert_eq!(old.version, 2);
    match service.periods_at(&old, T0, T0 + 86_400).await.unwrap() {
        Step::MoveTo(newer) => assert_eq!(newer.version, 4),
        Step::Done(_) => panic!("version 2 cannot be told apart from 1..=4"),
    }
    let grid = Grid::new(3600, 0);
    let req = BinRequest {
        grid,
        bins: grid.cover(T0, T0 + 86_400),
        filter: Filter::default(),
    };
    let key = CacheKey::new(id, &grid, &req.filter);
    match service.range(&old, &key, &req, false).await.unwrap() {
        Step::MoveTo(newer) => assert_eq!(newer.version, 4),
        Step::Done(_) => panic!("bins of version 2 from periods of 1..=4"),
    }
    // Nothing was cached for version 2 on the way.
    assert!(service.memory().get(&key).await.is_none());
    // At the newer version it answers: all six blocks count.
    let Step::Done(c) = service
        .range(&Arc::new(heads[3].clone()), &key, &req, false)
        .await
        .unwrap()
    else {
        panic!("version 4 is what the periods hold");
    };
    assert_eq!(c.head.version, 4);
    assert_eq!(
        c.counts.column(crate::engine::Column::Visible).iter().max(),
        Some(&6)
    );
}

#[tokio::test]
async fn a_feed_that_ends_short_of_the_periods_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let (metas, stats, _) = blocks(0, 4);
    // The producer died after the first chunk: fewer periods than counted.
    let mut packer = Packer::new();
    packer.add(0, &[(T0, T0 + 60)]).unwrap();
    let new = NewSchedule {
        header: Header {
            name: "short".into(),
            schedule_period: None,
        },
        checksum: "s".into(),
        stats,
        blocks: metas,
        chunks: feed(packer.finish().unwrap()),
    };
    let err = store.insert_schedule(new).await.unwrap_err();
    assert!(
        err.to_string().contains("1 of the body's 4 periods"),
        "{err}"
    );
    assert!(store.list_schedules(10, None).await.unwrap().is_empty());
}
