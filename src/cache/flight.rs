//! Single-flight: concurrent identical misses share one computation.
//!
//! The map holds only weak handles: when every waiter of a flight is
//! cancelled the computation is dropped with them (storing nothing) and
//! the next identical request starts afresh.

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Flight<T> = Shared<BoxFuture<'static, T>>;

/// A flight's id (to tell it from a later flight of the same key) and a
/// weak handle to its shared future.
type Entry<T> = (u64, WeakShared<BoxFuture<'static, T>>);

/// In-flight computations by key.
pub struct Flights<K, T: Clone> {
    map: Mutex<HashMap<K, Entry<T>>>,
    next_id: AtomicU64,
}

impl<K, T> Flights<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// An empty set of flights.
    pub fn new() -> Arc<Flights<K, T>> {
        Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Joins the flight for `key`, or starts `make()` as a new one.
    /// Returns the result and whether this call started the flight.
    pub async fn run(
        self: &Arc<Self>,
        key: K,
        make: impl FnOnce() -> BoxFuture<'static, T>,
    ) -> (T, bool) {
        let (flight, leader) = {
            let mut map = self.map.lock().expect("not poisoned");
            match map.get(&key).and_then(|(_, weak)| weak.upgrade()) {
                Some(f) => (f, false),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let guard = Landing {
                        flights: Arc::clone(self),
                        key: key.clone(),
                        id,
                    };
                    let inner = make();
                    let f: Flight<T> = async move {
                        let _guard = guard;
                        inner.await
                    }
                    .boxed()
                    .shared();
                    let weak = f.downgrade().expect("not yet polled");
                    map.insert(key, (id, weak));
                    (f, true)
                }
            }
        };
        (flight.await, leader)
    }
}

/// Removes a flight's entry when it completes or is dropped.
struct Landing<K: Hash + Eq, T: Clone> {
    flights: Arc<Flights<K, T>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, T: Clone> Drop for Landing<K, T> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.flights.map.lock() {
            if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_identical_calls_run_once() {
        let flights: Arc<Flights<u32, u32>> = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (f, runs) = (flights.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                f.run(7, || {
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        42
                    }
                    .boxed()
                })
                .await
            }));
        }
        let mut leaders = 0;
        for h in handles {
            let (v, leader) = h.await.unwrap();
            assert_eq!(v, 42);
            leaders += usize::from(leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flights.map.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_flight_is_forgotten() {
        let flights: Arc<Flights<u32, u32>> = Flights::new();
        let f = flights.clone();
        let h =
            tokio::spawn(async move { f.run(1, || futures_util::future::pending().boxed()).await });
        tokio::task::yield_now().await;
        h.abort();
        let _ = h.await;
        let (v, leader) = flights.run(1, || async { 5 }.boxed()).await;
        assert_eq!((v, leader), (5, true));
    }
}
