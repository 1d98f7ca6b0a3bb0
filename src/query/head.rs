//! Coalesced reads of a schedule's row (its version and totals), the one
//! database round trip every range query makes.
//!
//! At most one read per schedule is in flight; requests arriving meanwhile
//! share the *next* read, which starts when the current one ends. A request
//! never joins a read that has already been sent, so its answer reflects
//! every append acknowledged before the request began — as strict as a read
//! per request, with one round trip for a whole burst of requests.

use crate::store::{ScheduleRow, Store, StoreError};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type HeadResult = Result<Option<Arc<ScheduleRow>>, Arc<StoreError>>;
type Read = Shared<BoxFuture<'static, HeadResult>>;

#[derive(Default)]
struct Slot {
    /// A read whose query has not been sent: new requests join it.
    queued: Option<(u64, Read)>,
    /// The read whose query has been sent.
    in_flight: Option<(u64, Read)>,
}

/// Reads schedule rows by primary key, coalescing concurrent requests.
pub struct HeadReader {
    store: Arc<dyn Store>,
    slots: Mutex<HashMap<i64, Slot>>,
    next: AtomicU64,
}

impl HeadReader {
    /// A reader over `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<HeadReader> {
        Arc::new(HeadReader {
            store,
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// The schedule's row as of a moment after this call began.
    pub async fn read(self: &Arc<Self>, id: i64) -> HeadResult {
        let read = {
            let mut slots = self.slots.lock().expect("not poisoned");
            let slot = slots.entry(id).or_default();
            match &slot.queued {
                Some((_, q)) => q.clone(),
                None => {
                    let gen = self.next.fetch_add(1, Ordering::Relaxed);
                    let previous = slot.in_flight.as_ref().map(|(_, r)| r.clone());
                    let this = Arc::clone(self);
                    let read: Read = async move {
                        if let Some(p) = previous {
                            let _ = p.await;
                        }
                        this.start(id, gen);
                        let result = this
                            .store
                            .schedule(id)
                            .await
                            .map(|r| r.map(Arc::new))
                            .map_err(Arc::new);
                        this.finish(id, gen);
                        result
                    }
                    .boxed()
                    .shared();
                    slot.queued = Some((gen, read.clone()));
                    read
                }
            }
        };
        read.await
    }

    /// Read `gen` is about to send its query: later requests queue anew.
    fn start(&self, id: i64, gen: u64) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(slot) = slots.get_mut(&id) {
            if slot.queued.as_ref().is_some_and(|(g, _)| *g == gen) {
                slot.in_flight = slot.queued.take();
            }
        }
    }

    /// Read `gen` is done: forget the slot when nothing else uses it.
    fn finish(&self, id: i64, gen: u64) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(slot) = slots.get_mut(&id) {
            if slot.in_flight.as_ref().is_some_and(|(g, _)| *g == gen) {
                slot.in_flight = None;
            }
            if slot.in_flight.is_none() && slot.queued.is_none() {
                slots.remove(&id);
            }
        }
    }
}
