//! Head leases on Postgres: how a replica answers warm requests without a
//! database round trip and still sees every write acknowledged before a
//! request began (see `known.rs` for the rules of the table it feeds).
//!
//! Each replica keeps one connection that `LISTEN`s on two channels and
//! holds a row in `head_leases` (replica, epoch, expiry by the database's
//! clock), renewed every quarter of `VISBIN_HEAD_LEASE`:
//!
//! - An append or a delete sends `NOTIFY visbin_heads '<token> <id>
//!   <version|d>'` inside its transaction, so the notice goes out exactly
//!   when the write commits. After the commit the writer applies the
//!   notice to its own table, reads which leases are live and waits until
//!   each other replica's lease has acknowledged the token (`NOTIFY
//!   visbin_head_acks '<replica> <epoch> <token>…'`, sent by a replica
//!   after it applied the notice), has moved to another epoch (it forgot
//!   everything), or has expired. Only then is the write acknowledged to
//!   its client. Notices are sent again every quarter lease to replicas
//!   that have not answered (an acknowledgement lost with a connection).
//! - A replica trusts its lease until the renewal's send time plus seven
//!   eighths of the lease: the database's expiry is later than that, so a
//!   writer that finds a lease expired knows its replica stopped trusting.
//! - A dropped connection, a failed or late renewal, or a failed
//!   acknowledgement ends the epoch: the replica forgets every head and
//!   takes a new lease (a new epoch) once it listens again.
//!
//! Expiries are kept by the database's clock and trust by the replica's
//! monotonic clock, so the margin of an eighth of the lease also covers
//! the database host's clock running fast or being stepped forward by
//! less than that while a lease runs.

use super::known::KnownHeads;
use super::{StoreError, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPool, PgPoolOptions};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Channel of head notices (writes committed).
const HEADS: &str = "visbin_heads";
/// Channel of acknowledgements.
const ACKS: &str = "visbin_head_acks";
/// NOTIFY payloads must stay under 8,000 bytes.
const MAX_PAYLOAD: usize = 7_000;
/// The listening connection's `application_name` (`pg_stat_activity`).
pub const APPLICATION_NAME: &str = "visbin head watch";
/// Longest pause between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set once a write of the request polled in this scope has committed
    /// and waits for confirmations (see [`noting_stored_writes`]).
    static STORED: Arc<AtomicBool>;
}

/// Polls `request`, setting `stored` once a write it makes has committed
/// and starts waiting for the other replicas: a request timeout during
/// that wait must say the write is stored, not that nothing was.
pub async fn noting_stored_writes<F: std::future::Future>(
    stored: Arc<AtomicBool>,
    request: F,
) -> F::Output {
    STORED.scope(stored, request).await
}

/// A lease held by a replica in one epoch.
type Holder = (String, i64);

/// The leases live at a moment, and how long the longest still runs.
struct Live {
    holders: HashSet<Holder>,
    longest: Duration,
}

/// Acknowledgements received for one announcement.
#[derive(Default)]
struct Waiter {
    acked: Mutex<HashSet<Holder>>,
    wake: tokio::sync::Notify,
}

/// A write's notice, sent inside its transaction, to confirm after commit.
/// Dropping it (the transaction failed) stops waiting for its token.
pub struct Announcement {
    watch: Arc<HeadWatch>,
    token: String,
    payload: String,
    waiter: Arc<Waiter>,
    /// The schedule and its new version (`None`: deleted).
    id: i64,
    version: Option<i64>,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.watch
            .waiters
            .lock()
            .expect("not poisoned")
            .remove(&self.token);
    }
}

/// Counters of the writer's side (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfirmStats {
    /// Writes confirmed, and how many leases they waited for in all.
    pub confirmed: u64,
    pub waited_for: u64,
    /// Writes that could not be confirmed in time (answered 503).
    pub unconfirmed: u64,
    /// Notices sent again.
    pub resent: u64,
}

/// A confirmation's outcome for the stats: unconfirmed when dropped
/// before [`Outcome::confirmed`] (at the deadline, or when the request
/// was dropped while it waited: its timeout).
struct Outcome<'a> {
    stats: &'a Mutex<ConfirmStats>,
    confirmed: bool,
}

impl Outcome<'_> {
    fn confirmed(&mut self, waited_for: u64) {
        let mut s = self.stats.lock().expect("not poisoned");
        s.confirmed += 1;
        s.waited_for += waited_for;
        self.confirmed = true;
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.confirmed {
            self.stats.lock().expect("not poisoned").unconfirmed += 1;
        }
    }
}

/// One replica's side of head leases.
pub struct HeadWatch {
    replica: String,
    known: Arc<KnownHeads>,
    /// Zero: take no lease (still listen, so this replica's writes hear
    /// acknowledgements).
    lease: Duration,
    /// Longest wait for one statement, and for a connection.
    timeout: Duration,
    opts: PgConnectOptions,
    pool: PgPool,
    tokens: AtomicU64,
    waiters: Mutex<HashMap<String, Arc<Waiter>>>,
    started: OnceLock<()>,
    /// The listening task, until [`HeadWatch::release`] stops it.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stats: Mutex<ConfirmStats>,
}

impl HeadWatch {
    /// A watch over the database of `pool`; nothing runs until first use.
    pub fn new(
        pool: PgPool,
        opts: PgConnectOptions,
        lease: Duration,
        timeout: Duration,
    ) -> Arc<HeadWatch> {
        Arc::new(HeadWatch {
            replica: uuid::Uuid::new_v4().simple().to_string(),
            known: KnownHeads::new(),
            lease,
            timeout,
            opts,
            pool,
            tokens: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            started: OnceLock::new(),
            task: Mutex::new(None),
            stats: Mutex::new(ConfirmStats::default()),
        })
    }

    /// The heads this replica may answer from (served only under a lease).
    pub fn known(self: &Arc<Self>) -> Arc<KnownHeads> {
        self.start();
        self.known.clone()
    }

    /// The writer's counters.
    pub fn stats(&self) -> ConfirmStats {
        *self.stats.lock().expect("not poisoned")
    }

    /// Starts the listening task once (on the runtime of the first caller).
    fn start(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            let me = self.clone();
            let task = tokio::spawn(async move { me.run().await });
            *self.task.lock().expect("not poisoned") = Some(task);
        });
    }

    /// Sends the notice of schedule `id` moving to `version` (`None`:
    /// deleted) on `conn`, inside the write's transaction.
    pub async fn announce(
        self: &Arc<Self>,
        conn: &mut sqlx::PgConnection,
        id: i64,
        version: Option<i64>,
    ) -> Result<Announcement, sqlx::Error> {
        self.start();
        let token = format!(
            "{}.{}",
            self.replica,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let payload = match version {
            Some(v) => format!("{token} {id} {v}"),
            None => format!("{token} {id} d"),
        };
        let waiter = Arc::new(Waiter::default());
        self.waiters
            .lock()
            .expect("not poisoned")
            .insert(token.clone(), waiter.clone());
        let a = Announcement {
            watch: self.clone(),
            token,
            payload,
            waiter,
            id,
            version,
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(HEADS)
            .bind(a.payload.as_str())
            .execute(conn)
            .await?;
        Ok(a)
    }

    /// Waits, after the write of `a` committed, until every replica that
    /// holds a lease has applied it, or its lease ended. Fails
    /// ([`StoreError::Unconfirmed`]) if that cannot be known in time — the
    /// write is stored all the same.
    pub async fn confirm(&self, a: Announcement) -> StoreResult<()> {
        let _ = STORED.try_with(|s| s.store(true, Ordering::SeqCst));
        // This replica applies its own notice at once rather than through
        // the database (its own lease, in whatever epoch, is then done).
        self.known.changed(a.id, a.version);
        let resend = (self.lease / 4).max(Duration::from_millis(100));
        let started = Instant::now();
        // Extended while the database says a pending lease runs longer
        // (replicas may have longer leases than this one).
        let mut deadline = started + 2 * self.lease + 2 * self.timeout;
        let mut pending: Option<HashSet<Holder>> = None;
        let mut waited_for = 0;
        let mut outcome = Outcome {
            stats: &self.stats,
            confirmed: false,
        };
        loop {
            if pending.is_none() {
                // The leases live now, after the commit: a replica whose
                // lease starts later reads the write's result.
                if let Ok(Ok(live)) = tokio::time::timeout(self.timeout, self.live(None)).await {
                    let others: HashSet<Holder> = live
                        .holders
                        .into_iter()
                        .filter(|(r, _)| *r != self.replica)
                        .collect();
                    waited_for = others.len() as u64;
                    deadline = deadline.max(Instant::now() + live.longest + self.timeout);
                    pending = Some(others);
                }
            }
            if let Some(p) = pending.as_mut() {
                let acked = a.waiter.acked.lock().expect("not poisoned");
                p.retain(|h| !acked.contains(h));
                if p.is_empty() {
                    outcome.confirmed(waited_for);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unconfirmed(format!(
                    "not every replica confirmed it within {} ms (the database became \
                     unreachable)",
                    started.elapsed().as_millis()
                )));
            }
            if tokio::time::timeout(resend, a.waiter.wake.notified())
                .await
                .is_ok()
            {
                continue;
            }
            // No acknowledgement for a while: leave out the leases that
            // ended or moved on, and send the notice again to the rest.
            let Some(p) = pending.as_mut() else { continue };
            let asked: Vec<String> = p.iter().map(|(r, _)| r.clone()).collect();
            if let Ok(Ok(still)) = tokio::time::timeout(self.timeout, self.live(Some(&asked))).await
            {
                p.retain(|h| still.holders.contains(h));
                deadline = deadline.max(Instant::now() + still.longest + self.timeout);
                if !p.is_empty() {
                    let sent = tokio::time::timeout(
                        self.timeout,
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(HEADS)
                            .bind(a.payload.as_str())
                            .execute(&self.pool),
                    )
                    .await;
                    if matches!(sent, Ok(Ok(_))) {
                        self.stats.lock().expect("not poisoned").resent += 1;
                    }
                }
            }
        }
    }

    /// Leases live by the database's clock (of `replicas` only, if given).
    async fn live(&self, replicas: Option<&[String]>) -> Result<Live, sqlx::Error> {
        const COLUMNS: &str = "replica, epoch, \
            CAST(EXTRACT(EPOCH FROM expires_at - now()) * 1000 AS BIGINT)";
        let rows: Vec<(String, i64, i64)> = match replicas {
            None => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM head_leases WHERE expires_at > now()"
                ))
                .fetch_all(&self.pool)
                .await?
            }
            Some(r) => {
                sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM head_leases WHERE expires_at > now() AND replica = ANY($1)"
            ))
                .bind(r)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let longest = rows.iter().map(|r| r.2.max(0) as u64).max().unwrap_or(0);
        Ok(Live {
            holders: rows.into_iter().map(|(r, e, _)| (r, e)).collect(),
            longest: Duration::from_millis(longest),
        })
    }

    /// Gives up this replica's lease (at shutdown): it stops listening and
    /// trusting first, so that nothing renews the lease, then deletes it,
    /// so writers need not wait for it any more.
    pub async fn release(&self) {
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.known.end_epoch();
        let _ = tokio::time::timeout(
            self.timeout,
            sqlx::query("DELETE FROM head_leases WHERE replica = $1")
                .bind(self.replica.as_str())
                .execute(&self.pool),
        )
        .await;
    }

    /// Listens, holds the lease and applies notices, for as long as the
    /// process runs; every break starts a new epoch.
    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let epoch = self.known.begin_epoch();
            let began = Instant::now();
            let why = self.session(epoch).await;
            self.known.end_epoch();
            tracing::warn!(epoch, reason = %why, "head lease lost; answering from database reads until it is taken again");
            if began.elapsed() > MAX_BACKOFF * 4 {
                backoff = Duration::from_millis(50);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One epoch: connect, listen, take the lease, then apply notices and
    /// renew until something breaks; returns why it ended.
    async fn session(&self, epoch: u64) -> String {
        let t = self.timeout;
        let pool = match tokio::time::timeout(
            t,
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(t)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(self.opts.clone().application_name(APPLICATION_NAME)),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return format!("connect: {e}"),
            Err(_) => return "connect: timed out".into(),
        };
        let mut listener = match tokio::time::timeout(t, PgListener::connect_with(&pool)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return format!("connect: {e}"),
            Err(_) => return "connect: timed out".into(),
        };
        // A lost connection ends the session here; never reconnect inside
        // the listener, where a break could go unnoticed.
        listener.eager_reconnect(false);
        if let Err(e) = bounded(t, listener.listen_all([HEADS, ACKS])).await {
            return format!("listen: {e}");
        }
        let leased = !self.lease.is_zero();
        let quarter = self.lease / 4;
        let lease_ms = self.lease.as_millis() as f64;
        let mut renew_at = tokio::time::Instant::now();
        if leased {
            let sent = Instant::now();
            let taken = bounded(
                t,
                sqlx::query(
                    "INSERT INTO head_leases (replica, epoch, expires_at) \
                     VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
                     ON CONFLICT (replica) DO UPDATE SET epoch = EXCLUDED.epoch, \
                     expires_at = EXCLUDED.expires_at",
                )
                .bind(self.replica.as_str())
                .bind(epoch as i64)
                .bind(lease_ms)
                .execute(&mut listener),
            )
            .await;
            if let Err(e) = taken {
                return format!("take lease: {e}");
            }
            self.known.extend(epoch, sent + self.lease * 7 / 8);
            renew_at = tokio::time::Instant::from_std(sent + quarter);
            // Leases of replicas gone for an hour are of no use to anyone.
            let _ = bounded(
                t,
                sqlx::query("DELETE FROM head_leases WHERE expires_at < now() - interval '1 hour'")
                    .execute(&mut listener),
            )
            .await;
        }
        tracing::debug!(epoch, replica = %self.replica, leased, "listening for head notices");
        loop {
            // The renewal first: a stream of notices must not starve it.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(renew_at), if leased => {
                    let sent = Instant::now();
                    let renewed = bounded(
                        t,
                        sqlx::query(
                            "UPDATE head_leases SET expires_at = now() + $3 * interval '1 millisecond' \
                             WHERE replica = $1 AND epoch = $2 AND expires_at > now()",
                        )
                        .bind(self.replica.as_str())
                        .bind(epoch as i64)
                        .bind(lease_ms)
                        .execute(&mut listener),
                    )
                    .await;
                    match renewed {
                        Ok(r) if r.rows_affected() == 1 => {
                            self.known.extend(epoch, sent + self.lease * 7 / 8);
                            renew_at = tokio::time::Instant::from_std(sent + quarter);
                        }
                        Ok(_) => return "the lease had expired before its renewal".into(),
                        Err(e) => return format!("renew: {e}"),
                    }
                }
                n = listener.try_recv() => {
                    let first = match n {
                        Ok(Some(n)) => n,
                        Ok(None) => return "the connection was lost".into(),
                        Err(e) => return format!("receive: {e}"),
                    };
                    let mut tokens = Vec::new();
                    self.apply(&first, &mut tokens);
                    while let Some(n) = listener.next_buffered() {
                        self.apply(&n, &mut tokens);
                    }
                    if leased && !tokens.is_empty() {
                        for payload in ack_payloads(&self.replica, epoch, &tokens) {
                            let sent = bounded(
                                t,
                                sqlx::query("SELECT pg_notify($1, $2)")
                                    .bind(ACKS)
                                    .bind(payload.as_str())
                                    .execute(&mut listener),
                            )
                            .await;
                            if let Err(e) = sent {
                                return format!("acknowledge: {e}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies one notification: a head notice updates the table (and its
    /// token is to be acknowledged), an acknowledgement wakes its writer.
    fn apply(&self, n: &PgNotification, tokens: &mut Vec<String>) {
        let mut parts = n.payload().split(' ');
        match n.channel() {
            HEADS => {
                let (Some(token), Some(id), Some(version)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let Ok(id) = id.parse::<i64>() else { return };
                let version = match version {
                    "d" => None,
                    v => match v.parse::<i64>() {
                        Ok(v) => Some(v),
                        Err(_) => return,
                    },
                };
                self.known.changed(id, version);
                tokens.push(token.to_string());
            }
            ACKS => {
                let (Some(replica), Some(Ok(epoch))) =
                    (parts.next(), parts.next().map(|e| e.parse::<i64>()))
                else {
                    return;
                };
                let waiters = self.waiters.lock().expect("not poisoned");
                for token in parts {
                    if let Some(w) = waiters.get(token) {
                        w.acked
                            .lock()
                            .expect("not poisoned")
                            .insert((replica.to_string(), epoch));
                        w.wake.notify_one();
                    }
                }
            }
            _ => {}
        }
    }
}

/// Acknowledgements of `tokens`, in payloads under the NOTIFY limit.
fn ack_payloads(replica: &str, epoch: u64, tokens: &[String]) -> Vec<String> {
    let head = format!("{replica} {epoch}");
    let mut out = vec![head.clone()];
    for t in tokens {
        if out.last().expect("one at least").len() + t.len() + 1 > MAX_PAYLOAD {
            out.push(head.clone());
        }
        let last = out.last_mut().expect("one at least");
        last.push(' ');
        last.push_str(t);
    }
    out
}

/// `fut` within `t`; a timeout is an error like any other.
async fn bounded<T>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(t, fut)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

#[cfg(test)]
mod tests {
    use super::ack_payloads;

    #[test]
    fn acknowledgements_are_split_under_the_notify_limit() {
        let tokens: Vec<String> = (0..1000).map(|i| format!("{:032x}.{i}", i)).collect();
        let payloads = ack_payloads("r", 3, &tokens);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(p.len() <= super::MAX_PAYLOAD);
            let mut parts = p.split(' ');
            assert_eq!(parts.next(), Some("r"));
            assert_eq!(parts.next(), Some("3"));
            seen.extend(parts.map(str::to_string));
        }
        assert_eq!(seen, tokens);
    }
}
