//! Uploads and appends (DESIGN §3, §5): read the body within its limits,
//! parse and validate it into blocks, pack their periods into chunks,
//! checksum, refuse duplicates, write it all in one transaction, start the
//! summary job. The whole body is parsed — held in packed form, a few bytes
//! a period — before the write transaction opens, so a slow client never
//! holds the database's writer.

mod body;

pub use body::{Body, BodyFormat};

use crate::cache::flight::Flights;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::model::{
    parse_document, parse_ndjson_chunk, schedule_checksum, Block, BlockMeta, Header, IdentitySet,
    InvalidUpload, SpanSet, UploadStats,
};
use crate::periods::compact::{compact_stored, Compacted, MAX_GROUPS};
use crate::periods::pack::Packer;
use crate::store::{ChunkFeed, Inserted, NewBlocks, NewSchedule, ScheduleRow, Store, StoreError};
use body::{read_all, LineChunks};
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Instant;

/// Appended periods are summarised into at most this many changed spans.
const CHANGED_SPANS: usize = 64;

/// Chunks packed ahead of the writer (each ~150 KB for a large schedule).
const FEED_DEPTH: usize = 16;

/// Chunks merged in parallel at a time while feeding the writer.
const MERGE_BATCH: usize = 8;

/// Why an upload or append was refused or failed. Nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The content is invalid; the detail names the block and field.
    #[error(transparent)]
    Invalid(#[from] InvalidUpload),
    /// The body is larger than `VISBIN_MAX_BODY_BYTES`.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// An NDJSON line is longer than `VISBIN_MAX_LINE_BYTES`.
    #[error("an NDJSON line is longer than {limit} bytes")]
    LineTooLong { limit: u64 },
    /// The schedule would hold more blocks or periods than allowed.
    #[error("the schedule would hold more than {limit} {what}")]
    TooMany { what: &'static str, limit: u64 },
    /// The body paused longer than `VISBIN_BODY_READ_TIMEOUT`.
    #[error("the body paused for more than {seconds} s")]
    BodyTimeout { seconds: u64 },
    /// The body could not be read (the client went away, bad encoding).
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    /// The schedule to append to does not exist.
    #[error("schedule {0} does not exist")]
    NotFound(i64),
    /// An appended block repeats an identity the schedule has.
    #[error("block identity \"{0}\" already exists in this schedule")]
    IdentityExists(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The packer's temporary file failed (a full disk): nothing is wrong
    /// with the body, and retrying later may succeed.
    #[error("buffering the periods failed: {0}")]
    Spool(String),
    /// A parsing task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> IngestError {
        match e {
            StoreError::IdentityExists(id) => IngestError::IdentityExists(id),
            StoreError::TooMany { what, limit } => IngestError::TooMany { what, limit },
            e => IngestError::Store(e),
        }
    }
}

/// Limits on what one request may send.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_body_bytes: u64,
    pub max_line_bytes: u64,
    /// Most blocks and periods one schedule may hold.
    pub max_blocks: u64,
    pub max_periods: u64,
    /// Longest pause between two pieces of a body.
    pub body_read_timeout: std::time::Duration,
}

/// A finished upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The schedule as it is now.
    pub schedule: ScheduleRow,
    /// The new summary job; `None` for a duplicate.
    pub job_id: Option<i64>,
}

/// A finished append.
#[derive(Debug, Clone)]
pub struct AppendedBlocks {
    pub schedule: ScheduleRow,
    pub job_id: i64,
    pub blocks: u64,
    pub periods: u64,
}

/// Blocks parsed so far, packed: the rows to write and the totals.
struct Accumulator {
    /// Blocks and periods the body may still add to its schedule.
    room: (u64, u64),
    limits: (u64, u64),
    stats: UploadStats,
    ids: IdentitySet,
    spans: SpanSet,
    blocks: Vec<BlockMeta>,
    packer: Packer,
}

impl Accumulator {
    /// An accumulator for a schedule that holds `held` blocks and periods
    /// already and may hold `limits` in all.
    fn new(held: (u64, u64), limits: (u64, u64)) -> Accumulator {
        Accumulator {
            room: (
                limits.0.saturating_sub(held.0),
                limits.1.saturating_sub(held.1),
            ),
            limits,
            stats: UploadStats::default(),
            ids: IdentitySet::default(),
            spans: SpanSet::new(CHANGED_SPANS),
            blocks: Vec::new(),
            packer: Packer::new(),
        }
    }

    /// Takes the next blocks (their indices follow those taken so far).
    fn add(&mut self, blocks: Vec<Block>) -> Result<(), Refused> {
        for b in blocks {
            let index = self.blocks.len();
            let relative = u32::try_from(index)
                .map_err(|_| InvalidUpload::new("more than 2^32 blocks in one body"))?;
            let metas = &self.blocks;
            if !self
                .ids
                .insert(&b.identity, relative, |i| &metas[i as usize].identity)
            {
                return Err(InvalidUpload::new(format!(
                    "block #{index} (\"{}\"): duplicate identity; an earlier block has the same",
                    b.identity
                ))
                .into());
            }
            self.stats.add(&b);
            if self.stats.blocks > self.room.0 {
                return Err(Refused::TooMany("blocks", self.limits.0));
            }
            if self.stats.periods > self.room.1 {
                return Err(Refused::TooMany("periods", self.limits.1));
            }
            for &(s, e) in &b.periods {
                self.spans.add(s, e);
            }
            self.packer
                .add(relative, &b.periods)
                .map_err(Refused::Spool)?;
            self.blocks.push(BlockMeta {
                period_count: b.periods.len() as i64,
                identity: b.identity,
                priority: b.priority,
                scheduled: b.scheduled,
            });
        }
        // Pack this batch now: what waits for the end of the body stays
        // packed.
        self.packer.seal().map_err(Refused::Spool)?;
        Ok(())
    }
}

/// Why a batch could not be taken: a bad block, a limit, or the spool file
/// failed.
enum Refused {
    Invalid(InvalidUpload),
    TooMany(&'static str, u64),
    Spool(std::io::Error),
}

impl From<InvalidUpload> for Refused {
    fn from(e: InvalidUpload) -> Refused {
        Refused::Invalid(e)
    }
}

impl From<Refused> for IngestError {
    fn from(r: Refused) -> IngestError {
        match r {
            Refused::Invalid(e) => IngestError::Invalid(e),
            Refused::TooMany(what, limit) => IngestError::TooMany { what, limit },
            Refused::Spool(e) => IngestError::Spool(e.to_string()),
        }
    }
}

/// A body parsed and packed.
struct Parsed {
    header: Option<Header>,
    stats: UploadStats,
    spans: Vec<(i64, i64)>,
    blocks: Vec<BlockMeta>,
    packer: Packer,
}

/// Feeds the packer's chunks to the writer from the blocking pool, a few
/// merged in parallel at a time; stops when the writer hangs up.
fn feed(packer: Packer) -> ChunkFeed {
    let (tx, rx) = tokio::sync::mpsc::channel(FEED_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut chunks = match packer.into_chunks() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        loop {
            match chunks.next_batch(MERGE_BATCH) {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => {
                    for chunk in batch {
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    rx
}

/// The one ingest path of an app.
pub struct IngestService {
    store: Arc<dyn Store>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    limits: IngestLimits,
    compactions: Arc<Flights<i64, ()>>,
}

fn task_failed(e: tokio::task::JoinError) -> IngestError {
    IngestError::Internal(format!("parser task failed: {e}"))
}

impl IngestService {
    /// A service writing to `store` and starting jobs on `jobs`.
    pub fn new(
        store: Arc<dyn Store>,
        jobs: Arc<Jobs>,
        metrics: Arc<Metrics>,
        limits: IngestLimits,
    ) -> Arc<IngestService> {
        Arc::new(IngestService {
            store,
            jobs,
            metrics,
            limits,
            compactions: Flights::new(),
        })
    }

    /// Stores a new schedule (or finds the one with the same content).
    pub async fn upload(&self, body: Body) -> Result<Uploaded, IngestError> {
        let started = Instant::now();
        let format = body.format;
        let result = self.upload_inner(body).await;
        let outcome = match &result {
            Ok(u) if u.job_id.is_none() => "duplicate",
            Ok(_) => "created",
            Err(_) => "rejected",
        };
        self.observe(format, outcome, started);
        result
    }

    async fn upload_inner(&self, body: Body) -> Result<Uploaded, IngestError> {
        let parsed = self.parse(body, true, (0, 0)).await?;
        let header = parsed.header.ok_or_else(|| {
            InvalidUpload::new(
                "missing `name`: an upload is a schedule object {\"name\": …, \"blocks\": […]}",
            )
        })?;
        let checksum = schedule_checksum(&header, &parsed.stats.digest);
        // The content is known: answer a duplicate without writing (the
        // insert checks again under its lock).
        if let Some(existing) = self.store.find_by_checksum(&checksum).await? {
            return Ok(Uploaded {
                schedule: existing,
                job_id: None,
            });
        }
        let new = NewSchedule {
            header,
            checksum,
            stats: parsed.stats,
            blocks: parsed.blocks,
            chunks: feed(parsed.packer),
        };
        match self.store.insert_schedule(new).await? {
            Inserted::Created { schedule, job_id } => {
                self.jobs.spawn(job_id);
                Ok(Uploaded {
                    schedule,
                    job_id: Some(job_id),
                })
            }
            Inserted::Duplicate(existing) => Ok(Uploaded {
                schedule: existing,
                job_id: None,
            }),
        }
    }

    /// Appends blocks to schedule `id`.
    pub async fn append(&self, id: i64, body: Body) -> Result<AppendedBlocks, IngestError> {
        let started = Instant::now();
        let format = body.format;
        let result = self.append_inner(id, body).await;
        self.observe(
            format,
            if result.is_ok() {
                "appended"
            } else {
                "rejected"
            },
            started,
        );
        result
    }

    async fn append_inner(&self, id: i64, body: Body) -> Result<AppendedBlocks, IngestError> {
        // Refuse an unknown schedule before reading the body.
        let Some(head) = self.store.schedule(id).await? else {
            return Err(IngestError::NotFound(id));
        };
        let held = (head.block_count as u64, head.period_count as u64);
        let parsed = self.parse(body, false, held).await?;
        if parsed.stats.blocks == 0 {
            return Err(InvalidUpload::new(
                "no blocks to append: send a JSON array of blocks or NDJSON lines",
            )
            .into());
        }
        let (blocks, periods) = (parsed.stats.blocks, parsed.stats.periods);
        let new = NewBlocks {
            stats: parsed.stats,
            changed_spans: parsed.spans,
            blocks: parsed.blocks,
            chunks: feed(parsed.packer),
            max_totals: (self.limits.max_blocks, self.limits.max_periods),
        };
        let appended = self
            .store
            .append_blocks(id, new)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => IngestError::NotFound(id),
                e => e.into(),
            })?;
        self.jobs.spawn(appended.job_id);
        self.compact_behind(id);
        // Acknowledged only once every replica holding a head lease has
        // applied it (it is stored and its job runs either way).
        self.store.confirm(appended.notice).await?;
        Ok(AppendedBlocks {
            schedule: appended.schedule,
            job_id: appended.job_id,
            blocks,
            periods,
        })
    }

    /// Compacts schedule `id`'s stored chunks if appends left it more than
    /// `max_groups` version groups (after appends this runs by itself with
    /// `periods::compact::MAX_GROUPS`); `None` if nothing needed it.
    pub async fn compact(
        &self,
        id: i64,
        max_groups: usize,
    ) -> Result<Option<Compacted>, StoreError> {
        let done = compact_stored(self.store.as_ref(), id, max_groups).await?;
        if done.is_some() {
            self.metrics.compactions.with_label_values(&["store"]).inc();
        }
        Ok(done)
    }

    /// Starts a compaction check in the background (one per schedule at a
    /// time on this replica; a concurrent one elsewhere makes ours a no-op).
    /// An append that arrives while it runs joins it rather than starting
    /// another; each run merges up to four rounds, so the groups such
    /// appends add are merged by it or by the next append's run.
    fn compact_behind(&self, id: i64) {
        let (store, metrics, flights) = (
            self.store.clone(),
            self.metrics.clone(),
            self.compactions.clone(),
        );
        tokio::spawn(async move {
            flights
                .run(id, move || {
                    async move {
                        for _ in 0..4 {
                            match compact_stored(store.as_ref(), id, MAX_GROUPS).await {
                                Ok(Some(c)) => {
                                    metrics.compactions.with_label_values(&["store"]).inc();
                                    tracing::info!(schedule_id = id, groups = c.groups, periods = c.periods, "compacted period chunks");
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(schedule_id = id, error = %e, "compacting period chunks failed");
                                    break;
                                }
                            }
                        }
                    }
                    .boxed()
                })
                .await;
        });
    }

    fn observe(&self, format: BodyFormat, outcome: &str, started: Instant) {
        self.metrics
            .upload_duration
            .with_label_values(&[format.as_str(), outcome])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Reads, parses and packs a body; `expect_header` for uploads; `held`
    /// are the blocks and periods the schedule has already.
    async fn parse(
        &self,
        body: Body,
        expect_header: bool,
        held: (u64, u64),
    ) -> Result<Parsed, IngestError> {
        let format = body.format;
        let acc = Accumulator::new(held, (self.limits.max_blocks, self.limits.max_periods));
        let (header, acc) = match format {
            BodyFormat::Json => self.parse_json(body, expect_header, acc).await?,
            BodyFormat::Ndjson => self.parse_ndjson(body, expect_header, acc).await?,
        };
        self.metrics
            .upload_periods
            .with_label_values(&[format.as_str()])
            .observe(acc.stats.periods as f64);
        Ok(Parsed {
            header,
            stats: acc.stats,
            spans: acc.spans.into_spans(),
            blocks: acc.blocks,
            packer: acc.packer,
        })
    }

    /// A whole JSON document, parsed off the executor.
    async fn parse_json(
        &self,
        body: Body,
        with_header: bool,
        mut acc: Accumulator,
    ) -> Result<(Option<Header>, Accumulator), IngestError> {
        let bytes = read_all(
            body,
            self.limits.max_body_bytes,
            self.limits.body_read_timeout,
        )
        .await?;
        let parsed = tokio::task::spawn_blocking(move || {
            let doc = parse_document(&bytes, with_header)?;
            drop(bytes);
            acc.stats.empty_periods_dropped = doc.empty_periods_dropped;
            acc.add(doc.blocks)?;
            Ok::<_, Refused>((doc.header, acc))
        })
        .await
        .map_err(task_failed)??;
        Ok(parsed)
    }

    /// NDJSON, run by run of lines, each parsed off the executor.
    async fn parse_ndjson(
        &self,
        body: Body,
        expect_header: bool,
        mut acc: Accumulator,
    ) -> Result<(Option<Header>, Accumulator), IngestError> {
        let mut chunks = LineChunks::new(
            body,
            self.limits.max_body_bytes,
            self.limits.max_line_bytes,
            self.limits.body_read_timeout,
        )?;
        let mut header = None;
        let mut line = 1;
        while let Some(chunk) = chunks.next().await? {
            let want_header = expect_header && header.is_none();
            let (parsed, back) = tokio::task::spawn_blocking(move || {
                let mut acc = acc;
                let first_block = acc.blocks.len();
                let parsed = parse_ndjson_chunk(&chunk, line, first_block, want_header)
                    .map_err(Refused::from)
                    .and_then(|p| {
                        let (h, lines, dropped) = (p.header, p.lines, p.empty_periods_dropped);
                        acc.add(p.blocks).map(|_| (h, lines, dropped))
                    });
                (parsed, acc)
            })
            .await
            .map_err(task_failed)?;
            acc = back;
            let (h, lines, dropped) = parsed?;
            line += lines;
            acc.stats.empty_periods_dropped += dropped;
            if h.is_some() {
                header = h;
            }
        }
        if expect_header && header.is_none() {
            return Err(InvalidUpload::new(
                "the body is empty: the first NDJSON line must be the header {\"name\": …}",
            )
            .into());
        }
        Ok((header, acc))
    }
}
