//! Moving a database of the old layout (one `periods` row per period) to
//! packed chunks. Runs after the SQL migrations, at `visbin migrate` and
//! at every start until nothing is left to move: one schedule per
//! transaction (its chunks written and its rows deleted together), so an
//! interrupted move resumes where it stopped. The old rows of a schedule
//! become one version group covering all its versions. It assumes no
//! server of the old layout still writes (README: stop them first); two new
//! replicas starting together may both run it, and the one that finds a
//! schedule (or the whole table) moved already leaves it be.

use super::pack::Packer;
use crate::store::{Store, StoreError};

fn spool_failed(e: std::io::Error) -> StoreError {
    StoreError::Feed(format!("packing periods failed: {e}"))
}

/// Moves every legacy schedule; returns how many schedules moved.
pub async fn move_legacy_periods(store: &dyn Store) -> Result<usize, StoreError> {
    match move_all(store).await {
        Ok(n) => Ok(n),
        // Another replica finished the move (and dropped the table) while
        // this one was at it.
        Err(_) if store.legacy_schedules().await?.is_none() => Ok(0),
        Err(e) => Err(e),
    }
}

async fn move_all(store: &dyn Store) -> Result<usize, StoreError> {
    let Some(ids) = store.legacy_schedules().await? else {
        return Ok(0);
    };
    let mut moved = 0;
    for &id in &ids {
        // Read again if the version moved (nothing should append to a
        // schedule of the old layout, but a stale read must not be adopted).
        loop {
            let Some((version, rows)) = store.legacy_periods(id).await? else {
                // Rows of a deleted schedule: dropped with the table.
                store.adopt_legacy(id, 0, &[]).await?;
                break;
            };
            let chunks = tokio::task::spawn_blocking(move || {
                let mut packer = Packer::new();
                for (block, s, e) in rows {
                    let block = u32::try_from(block)
                        .map_err(|_| StoreError::Corrupt(format!("block index {block}")))?;
                    if e > s {
                        packer.add_period(block, s, e).map_err(spool_failed)?;
                    }
                }
                packer.finish().map_err(spool_failed)
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("packing task failed: {e}")))??;
            if store.adopt_legacy(id, version, &chunks).await? {
                moved += 1;
                tracing::info!(schedule_id = id, "moved periods to packed chunks");
                break;
            }
        }
    }
    store.drop_legacy().await?;
    Ok(moved)
}
