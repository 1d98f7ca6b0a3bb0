//! Schedule heads this replica may answer from without asking the
//! database, for as long as its head lease holds (Postgres), or for as
//! long as it serves the file (SQLite: one process serves a file, every
//! write goes through it and applies its own notice before it is
//! acknowledged).
//!
//! A request must see every append acknowledged before it began. The
//! database round trip that proves it (the head read) is most of what a
//! warm answer costs, so on Postgres a replica holds a *head lease* (see
//! `watch.rs`): while it holds one, every append and delete waits, before
//! it is acknowledged, until this replica has applied its notification
//! ([`KnownHeads::changed`]) — or until the lease has run out. So a head
//! this table hands out is never behind an acknowledged write.
//!
//! Rules that keep it so:
//!
//! - Rows are only *learned* from database reads sent while the lease was
//!   held in the current epoch ([`Ticket`]): any write committed after such
//!   a read's snapshot notifies this replica before it is acknowledged.
//! - A notification of version `v` removes an older row and sets a floor:
//!   a read sent before it, answering with an older row, is not learned.
//!   A delete sets the floor to infinity.
//! - Anything that may have lost a notification (the listening connection
//!   dropped, a renewal failed or came too late) ends the epoch: every row
//!   and floor is forgotten, and nothing is trusted until a new lease is
//!   taken.
//! - The lease is trusted only until a deadline measured from when its
//!   renewal was *sent*, ahead of the expiry the database records, so this
//!   replica has stopped trusting before any writer decides it need not
//!   wait for it.

use super::ScheduleRow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most rows held; past it new rows are not learned (their requests read
/// the database, as without a lease).
const MAX_ROWS: usize = 65_536;

/// Proof that a database read was sent while epoch `epoch` was trusted.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
}

#[derive(Default)]
struct Inner {
    /// Bumped whenever continuity may have been lost.
    epoch: u64,
    /// Trusted until then; `None` while no lease is held.
    deadline: Option<Instant>,
    rows: HashMap<i64, Arc<ScheduleRow>>,
    /// Lowest version a learned row of a schedule may have (`i64::MAX`:
    /// deleted).
    floors: HashMap<i64, i64>,
}

/// What the table has done (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownStats {
    /// 1 while the lease is trusted.
    pub trusted: bool,
    /// Epochs begun (the first one and every one after a break).
    pub epochs: u64,
    /// Notifications applied.
    pub notifications: u64,
    /// Rows held now.
    pub rows: u64,
}

/// The heads this replica knows, and the lease that makes them current.
#[derive(Default)]
pub struct KnownHeads {
    inner: Mutex<Inner>,
    epochs: AtomicU64,
    notifications: AtomicU64,
}

impl KnownHeads {
    /// An empty table with no lease.
    pub fn new() -> Arc<KnownHeads> {
        Arc::new(KnownHeads::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// The current head of schedule `id`, if the lease holds and it is
    /// known.
    pub fn get(&self, id: i64) -> Option<Arc<ScheduleRow>> {
        let inner = self.lock();
        if !trusted(&inner) {
            return None;
        }
        inner.rows.get(&id).cloned()
    }

    /// Taken before a database read is sent; `None` when the lease does
    /// not hold (what the read returns cannot be learned).
    pub fn ticket(&self) -> Option<Ticket> {
        let inner = self.lock();
        trusted(&inner).then_some(Ticket { epoch: inner.epoch })
    }

    /// Learns `row`, read by a query sent after `ticket` was taken, unless
    /// the epoch ended since or a notification says it is old already.
    pub fn learn(&self, ticket: Ticket, row: &Arc<ScheduleRow>) {
        let mut inner = self.lock();
        if inner.epoch != ticket.epoch || !trusted(&inner) {
            return;
        }
        if inner.floors.get(&row.id).is_some_and(|&f| row.version < f) {
            return;
        }
        if inner.rows.len() >= MAX_ROWS && !inner.rows.contains_key(&row.id) {
            return;
        }
        match inner.rows.get(&row.id) {
            Some(held) if held.version >= row.version => {}
            _ => {
                inner.rows.insert(row.id, row.clone());
            }
        }
    }

    /// A committed write moved schedule `id` to `version` (`None`: deleted).
    pub fn changed(&self, id: i64, version: Option<i64>) {
        let floor = version.unwrap_or(i64::MAX);
        let mut inner = self.lock();
        let f = inner.floors.entry(id).or_insert(floor);
        *f = (*f).max(floor);
        if inner.rows.get(&id).is_some_and(|r| r.version < floor) {
            inner.rows.remove(&id);
        }
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets everything and starts a new epoch: nothing is trusted until
    /// [`KnownHeads::extend`] names it. Returns it.
    pub fn begin_epoch(&self) -> u64 {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.deadline = None;
        inner.rows.clear();
        inner.floors.clear();
        self.epochs.fetch_add(1, Ordering::Relaxed);
        inner.epoch
    }

    /// Ends the current epoch (continuity may be lost): forgets
    /// everything, trusts nothing.
    pub fn end_epoch(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.deadline = None;
        inner.rows.clear();
        inner.floors.clear();
    }

    /// The lease of `epoch` holds until `deadline` (no effect if that epoch
    /// ended meanwhile).
    pub fn extend(&self, epoch: u64, deadline: Instant) {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            inner.deadline = Some(deadline);
        }
    }

    /// What the table holds and has done.
    pub fn stats(&self) -> KnownStats {
        let inner = self.lock();
        KnownStats {
            trusted: trusted(&inner),
            epochs: self.epochs.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
            rows: inner.rows.len() as u64,
        }
    }
}

fn trusted(inner: &Inner) -> bool {
    inner.deadline.is_some_and(|d| Instant::now() < d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(id: i64, version: i64) -> Arc<ScheduleRow> {
        Arc::new(ScheduleRow::bare(id, version))
    }

    fn leased() -> (Arc<KnownHeads>, u64) {
        let k = KnownHeads::new();
        let e = k.begin_epoch();
        k.extend(e, Instant::now() + Duration::from_secs(60));
        (k, e)
    }

    #[test]
    fn nothing_is_learned_or_served_without_a_lease() {
        let k = KnownHeads::new();
        assert!(k.ticket().is_none());
        let e = k.begin_epoch();
        assert!(
            k.ticket().is_none(),
            "an epoch is trusted only once extended"
        );
        k.extend(e, Instant::now() + Duration::from_secs(60));
        let t = k.ticket().unwrap();
        k.learn(t, &row(1, 3));
        assert_eq!(k.get(1).unwrap().version, 3);
        // A deadline in the past: nothing is served, nothing learned.
        k.extend(e, Instant::now() - Duration::from_millis(1));
        assert!(k.get(1).is_none());
        assert!(k.ticket().is_none());
        k.learn(t, &row(2, 1));
        k.extend(e, Instant::now() + Duration::from_secs(60));
        assert!(k.get(2).is_none());
    }

    #[test]
    fn a_notification_removes_older_rows_and_bars_older_reads() {
        let (k, _) = leased();
        let before = k.ticket().unwrap();
        k.learn(before, &row(1, 3));
        k.changed(1, Some(4));
        assert!(k.get(1).is_none(), "version 3 is behind the append");
        // A read sent before the notification answers with version 3.
        k.learn(before, &row(1, 3));
        assert!(k.get(1).is_none());
        k.learn(k.ticket().unwrap(), &row(1, 4));
        assert_eq!(k.get(1).unwrap().version, 4);
        // A notification of a version held changes nothing.
        k.changed(1, Some(4));
        assert_eq!(k.get(1).unwrap().version, 4);
        // An older row never replaces a newer one.
        k.learn(k.ticket().unwrap(), &row(1, 2));
        assert_eq!(k.get(1).unwrap().version, 4);
    }

    #[test]
    fn a_delete_bars_the_schedule_for_the_rest_of_the_epoch() {
        let (k, _) = leased();
        k.learn(k.ticket().unwrap(), &row(7, 1));
        k.changed(7, None);
        assert!(k.get(7).is_none());
        k.learn(k.ticket().unwrap(), &row(7, 1_000_000));
        assert!(k.get(7).is_none());
    }

    #[test]
    fn a_new_epoch_forgets_everything_and_old_tickets_learn_nothing() {
        let (k, e) = leased();
        let old = k.ticket().unwrap();
        k.learn(old, &row(1, 1));
        k.end_epoch();
        assert!(k.get(1).is_none());
        // Extending the ended epoch does nothing.
        k.extend(e, Instant::now() + Duration::from_secs(60));
        assert!(k.ticket().is_none());
        let e2 = k.begin_epoch();
        k.extend(e2, Instant::now() + Duration::from_secs(60));
        k.learn(old, &row(1, 1));
        assert!(k.get(1).is_none(), "a read sent in an ended epoch");
        k.learn(k.ticket().unwrap(), &row(1, 1));
        assert_eq!(k.get(1).unwrap().version, 1);
        assert_eq!(k.stats().epochs, 2);
    }
}
