//! Tier 2 writes: a bounded queue drained by one background task. A full
//! queue drops the write (counted); a dropped write only costs a future
//! recomputation, never a wrong answer. The queue is bounded in extents and
//! in bytes: a year of 15-minute bins is 700 KB of payload, so a count
//! alone would let it hold hundreds of megabytes outside every budget.

use crate::metrics::Metrics;
use crate::store::{ExtentRow, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Payload bytes the queue holds at most: 32 MiB, or a quarter of the
/// memory tier's budget if that is less. The queued extents are bins the
/// memory tier holds too; when the writer falls behind, a longer queue
/// only holds more memory (the soak in docs/RELIABILITY.md kept it full).
pub fn queue_max_bytes(memory_tier_bytes: u64) -> usize {
    (32usize << 20).min((memory_tier_bytes / 4) as usize)
}

/// Sender side of the persisted-tier write queue.
#[derive(Clone)]
pub struct PersistWriter {
    tx: mpsc::Sender<ExtentRow>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl PersistWriter {
    /// Starts the writer task with a queue of `capacity` extents and at
    /// most `max_bytes` of payload.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        capacity: usize,
        max_bytes: usize,
    ) -> PersistWriter {
        let (tx, mut rx) = mpsc::channel::<ExtentRow>(capacity.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (m, bytes) = (metrics.clone(), queued_bytes.clone());
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
                bytes.fetch_sub(x.payload.len(), Ordering::Relaxed);
                timer.observe_duration();
                m.store_writes.with_label_values(&[outcome]).inc();
            }
        });
        PersistWriter {
            tx,
            queued_bytes,
            max_bytes,
            metrics,
        }
    }

    /// Queues an extent for the persisted tier, or drops it if the queue is
    /// full (in extents or in bytes).
    pub fn submit(&self, extent: ExtentRow) {
        let len = extent.payload.len();
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.metrics.store_writes_dropped.inc();
            return;
        }
        if self.tx.try_send(extent).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.metrics.store_writes_dropped.inc();
        }
    }
}
