//! Compaction: merging consecutive version groups, in memory (resident
//! segments) and in the store (chunk rows), so a stream of small appends
//! does not leave a schedule with thousands of tiny groups.
//!
//! The policy works like a binary counter: starting from the newest
//! group, it takes older groups while each is no larger than what it has
//! taken so far, and stops at the first much larger one (the big upload,
//! usually). Each period is therefore rewritten about log2(appends) times
//! in all, and the base of a schedule is rewritten only when the appends
//! together have grown as large as it.

use super::codec::{self, decode_to, CorruptChunk};
use crate::model::PackedChunk;
use crate::store::{ChunkRow, GroupInfo, Store, StoreError, VersionGroup};
use std::ops::Range;

/// More groups than this trigger a compaction.
pub const MAX_GROUPS: usize = 8;

/// The consecutive groups to merge, given their sizes oldest first; `None`
/// while there are at most `max_groups` (normally [`MAX_GROUPS`]).
pub fn plan(sizes: &[i64], max_groups: usize) -> Option<Range<usize>> {
    if sizes.len() <= max_groups.max(1) {
        return None;
    }
    let mut start = sizes.len() - 1;
    let mut taken = sizes[start];
    while start > 0 && sizes[start - 1] <= taken {
        start -= 1;
        taken += sizes[start];
    }
    // Always merge at least two groups, so every compaction makes progress.
    Some(start.min(sizes.len() - 2)..sizes.len())
}

/// What a store compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub merged: VersionGroup,
    pub groups: usize,
    pub periods: i64,
}

/// Compacts the stored groups of schedule `id` if it has more than
/// `max_groups`. `None` when nothing needed merging or another writer
/// changed the groups first (a concurrent compaction, a delete): nothing
/// was written then.
pub async fn compact_stored(
    store: &dyn Store,
    id: i64,
    max_groups: usize,
) -> Result<Option<Compacted>, StoreError> {
    let groups = store.chunk_groups(id).await?;
    let sizes: Vec<i64> = groups.iter().map(|g| g.periods).collect();
    let Some(range) = plan(&sizes, max_groups) else {
        return Ok(None);
    };
    let old: Vec<GroupInfo> = groups[range].to_vec();
    let merged = VersionGroup {
        first: old[0].group.first,
        last: old[old.len() - 1].group.last,
    };
    let base = old.iter().map(|g| g.block_base).min().unwrap_or(0);
    let rows = store.group_chunks(id, merged).await?;
    let chunks = tokio::task::spawn_blocking(move || merge_rows(&rows, base))
        .await
        .map_err(|e| StoreError::Corrupt(format!("compaction task failed: {e}")))?
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if !store
        .replace_groups(id, &old, merged, base, &chunks)
        .await?
    {
        return Ok(None);
    }
    Ok(Some(Compacted {
        merged,
        groups: old.len(),
        periods: old.iter().map(|g| g.periods).sum(),
    }))
}

/// Re-packs rows (ordered by chunk start) of several groups as chunks of
/// one group whose blocks are relative to `base`.
fn merge_rows(rows: &[ChunkRow], base: i64) -> Result<Vec<PackedChunk>, CorruptChunk> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let day = rows[i].chunk.chunk_start;
        let j = i + rows[i..]
            .iter()
            .take_while(|r| r.chunk.chunk_start == day)
            .count();
        let mut periods = Vec::new();
        for r in &rows[i..j] {
            let n = r.chunk.period_count.max(0) as usize;
            let (mut s, mut e, mut b) = (vec![0; n], vec![0; n], vec![0; n]);
            decode_to(
                day,
                r.block_base - base,
                &r.chunk.payload,
                &mut s,
                &mut e,
                &mut b,
            )?;
            periods.extend((0..n).map(|k| (s[k], e[k], b[k])));
        }
        periods.sort_unstable();
        out.push(codec::encode(day, &periods));
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_merges_small_tails_like_a_binary_counter() {
        assert_eq!(plan(&[100; MAX_GROUPS], MAX_GROUPS), None);
        assert_eq!(plan(&[5, 1], 1), Some(0..2));
        let mut sizes = vec![1_000_000];
        sizes.extend([100; 8]);
        assert_eq!(plan(&sizes, MAX_GROUPS), Some(1..9));
        // The merged tail of 800 absorbs the next 8 appends of 100 …
        let mut next = vec![1_000_000, 800];
        next.extend([100; 8]);
        assert_eq!(plan(&next, MAX_GROUPS), Some(1..10));
        // … but a tail of 1,600 waits until the newer ones add up to it.
        let mut later = vec![1_000_000, 1_600];
        later.extend([100; 8]);
        assert_eq!(plan(&later, MAX_GROUPS), Some(2..10));
        // Halving sizes still merge the newest two; doubling ones all.
        let halving: Vec<i64> = (0..10).map(|k| 1024 >> k).collect();
        assert_eq!(plan(&halving, MAX_GROUPS), Some(8..10));
        let doubling: Vec<i64> = (0..10).map(|k| 1 << k).collect();
        assert_eq!(plan(&doubling, MAX_GROUPS), Some(0..10));
    }

    #[test]
    fn merged_rows_keep_every_period_with_rebased_blocks() {
        let day = 86_400;
        let rows = vec![
            ChunkRow {
                group: VersionGroup { first: 2, last: 2 },
                block_base: 10,
                chunk: codec::encode(0, &[(5, 9, 0)]),
            },
            ChunkRow {
                group: VersionGroup { first: 3, last: 3 },
                block_base: 11,
                chunk: codec::encode(0, &[(1, 2, 0), (7, 8, 1)]),
            },
            ChunkRow {
                group: VersionGroup { first: 3, last: 3 },
                block_base: 11,
                chunk: codec::encode(day, &[(day, day + 1, 0)]),
            },
        ];
        let merged = merge_rows(&rows, 10).unwrap();
        assert_eq!(merged.len(), 2);
        let p = codec::decode_all(&[codec::ChunkRef {
            chunk_start: 0,
            block_base: 10,
            period_count: 3,
            max_end: merged[0].max_end,
            payload: &merged[0].payload,
        }])
        .unwrap();
        assert_eq!(p.starts(), &[1, 5, 7]);
        assert_eq!(p.blocks(), &[11, 10, 12]);
    }
}
