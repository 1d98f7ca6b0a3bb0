//! Moving a database of the old layout (one `periods` row per period) to
//! packed chunks. Runs after the SQL migrations, at `visbin migrate` and
//! at every start until nothing is left to move: one schedule per
//! transaction (its chunks written and its rows deleted together), so an
//! interrupted move resumes where it stopped. The old rows of a schedule
//! become one version group covering all its versions.

use super::pack::Packer;
use crate::store::{Store, StoreError};

fn spool_failed(e: std::io::Error) -> StoreError {
    StoreError::Feed(format!("packing periods failed: {e}"))
}

/// Moves every legacy schedule; returns how many moved.
pub async fn move_legacy_periods(store: &dyn Store) -> Result<usize, StoreError> {
    let Some(ids) = store.legacy_schedules().await? else {
        return Ok(0);
    };
    for &id in &ids {
        // A schedule appended to meanwhile (by a replica still running)
        // is read again.
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
                break;
            }
        }
        tracing::info!(schedule_id = id, "moved periods to packed chunks");
    }
    store.drop_legacy().await?;
    Ok(ids.len())
}
