//! Tier 2 writes: a bounded queue drained by one background task. A full
//! queue drops the write (counted); a dropped write only costs a future
//! recomputation, never a wrong answer.

use crate::metrics::Metrics;
use crate::store::{ExtentRow, Store};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Sender side of the persisted-tier write queue.
#[derive(Clone)]
pub struct PersistWriter {
    tx: mpsc::Sender<ExtentRow>,
    metrics: Arc<Metrics>,
}

impl PersistWriter {
    /// Starts the writer task with a queue of `capacity` extents.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>, capacity: usize) -> PersistWriter {
        let (tx, mut rx) = mpsc::channel::<ExtentRow>(capacity.max(1));
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(x) = rx.recv().await {
                let timer = m.store_timer("extents_write");
                let outcome = match store.write_extent(&x).await {
                    Ok(()) => "written",
                    Err(e) => {
                        tracing::warn!(error = %e, schedule_id = x.schedule_id, "persisting a cache extent failed");
                        "failed"
                    }
                };
                timer.observe_duration();
                m.store_writes.with_label_values(&[outcome]).inc();
            }
        });
        PersistWriter { tx, metrics }
    }

    /// Queues an extent for the persisted tier, or drops it if the queue is full.
    pub fn submit(&self, extent: ExtentRow) {
        if self.tx.try_send(extent).is_err() {
            self.metrics.store_writes_dropped.inc();
        }
    }
}
