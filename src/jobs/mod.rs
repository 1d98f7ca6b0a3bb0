//! Background summary jobs (DESIGN §7): after an upload or append is
//! durable, a tokio task computes the schedule summary through the query
//! service — which also warms both extent tiers with the whole range at
//! 900 s and loads the schedule's periods — reporting progress as it goes.
//!
//! A job is owned through a lease: the replica that runs it claims it and
//! keeps the lease ahead of the clock with a heartbeat. At start and at
//! every heartbeat a replica re-creates the jobs whose lease expired (their
//! replica died) for schedules still without a summary — never the live
//! jobs of another replica. A runner whose job was taken over (its own
//! heartbeat stalled past the lease) stops at its next progress report. A
//! job that failed of an error is retried only when a replica starts, not
//! at every heartbeat.

use crate::engine::{BinRange, Grid, VisibleTally, SUMMARY_BIN_SECONDS};
use crate::metrics::Metrics;
use crate::query::QueryService;
use crate::store::{JobRow, ScheduleRow, Store};
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The range is computed in this many steps so progress moves visibly.
const STEPS: i64 = 10;

/// Why a runner stops when its job is no longer running: its lease
/// expired (a stalled heartbeat) and another replica re-created it.
const TAKEN_OVER: &str = "the job was taken over by another replica after its lease expired";

/// Runs summary jobs on the main runtime, a few at a time.
pub struct Jobs {
    store: Arc<dyn Store>,
    query: Arc<QueryService>,
    /// This replica's name on the leases it holds.
    owner: String,
    /// How long a claim lasts without a heartbeat (one every third of it).
    lease: std::time::Duration,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl Jobs {
    /// A runner allowing `concurrency` jobs at once, claiming them for
    /// `lease`, spawning on `runtime`.
    pub fn new(
        store: Arc<dyn Store>,
        query: Arc<QueryService>,
        metrics: Arc<Metrics>,
        concurrency: usize,
        lease: std::time::Duration,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Jobs> {
        let lease = lease.max(std::time::Duration::from_millis(300));
        let jobs = Arc::new(Jobs {
            store,
            query,
            owner: uuid::Uuid::new_v4().to_string(),
            lease,
            metrics,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            runtime,
        });
        // The heartbeat lives as long as the runner (a weak handle).
        let weak = Arc::downgrade(&jobs);
        jobs.runtime.spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            loop {
                tick.tick().await;
                let Some(jobs) = weak.upgrade() else { return };
                let until = crate::store::now_ms() + jobs.lease.as_millis() as i64;
                if let Err(e) = jobs.store.renew_leases(&jobs.owner, until).await {
                    tracing::warn!(error = %e, "renewing job leases failed");
                }
                // Jobs of a replica that died (this one's previous life
                // included) are taken over once their lease runs out.
                match jobs.resume(false).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "took over summary jobs whose lease expired"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "re-creating jobs failed"),
                }
            }
        });
        jobs
    }

    /// Starts job `job_id` in the background.
    pub fn spawn(self: &Arc<Self>, job_id: i64) {
        let this = Arc::clone(self);
        self.metrics.jobs.with_label_values(&["queued"]).inc();
        self.runtime.spawn(async move {
            let until = crate::store::now_ms() + this.lease.as_millis() as i64;
            match this.store.claim_job(job_id, &this.owner, until).await {
                Ok(true) => {}
                // Finished or failed meanwhile: nothing to run.
                Ok(false) => {
                    this.metrics.jobs.with_label_values(&["queued"]).dec();
                    return;
                }
                // Unclaimed, it is re-created by the next heartbeat of any
                // replica once its lease (counted from its creation) runs out.
                Err(e) => {
                    tracing::warn!(job_id, error = %e, "claiming a job failed");
                    this.metrics.jobs.with_label_values(&["queued"]).dec();
                    return;
                }
            }
            let permit = this.permits.clone().acquire_owned().await;
            this.metrics.jobs.with_label_values(&["queued"]).dec();
            this.metrics.jobs.with_label_values(&["running"]).inc();
            let started = std::time::Instant::now();
            let outcome = this.run(job_id).await;
            this.metrics.jobs.with_label_values(&["running"]).dec();
            this.metrics
                .job_duration
                .with_label_values(&["summary"])
                .observe(started.elapsed().as_secs_f64());
            let state = match outcome {
                Ok(()) => "done",
                Err(e) => {
                    tracing::warn!(job_id, error = format!("{e:#}"), "summary job failed");
                    if let Err(e2) = this.store.job_failed(job_id, &format!("{e:#}")).await {
                        tracing::error!(job_id, error = %e2, "could not record the job failure");
                    }
                    "failed"
                }
            };
            this.metrics.jobs_finished.with_label_values(&[state]).inc();
            drop(permit);
        });
    }

    async fn run(&self, job_id: i64) -> anyhow::Result<()> {
        let job = self
            .store
            .job(job_id)
            .await?
            .context("the job row is missing")?;
        let Some(head) = self.store.schedule(job.schedule_id).await? else {
            anyhow::bail!("schedule {} was deleted", job.schedule_id);
        };
        if head.version != job.schedule_version {
            // A later append started a newer job; this one has nothing to add.
            return Ok(self.store.job_done(&job, "null").await?);
        }
        if !self
            .store
            .job_progress(job.id, 0.0, "loading periods")
            .await?
        {
            anyhow::bail!(TAKEN_OVER);
        }
        // The job covers the whole range: load the periods once up front
        // rather than reading windows while a load runs behind.
        self.query.preload(&head).await?;
        let head = Arc::new(head);
        let summary = match self.range_tally(&job, &head).await? {
            Some(tally) => self.query.summary(&head, &tally).await?,
            None => None,
        };
        // `None`: an append while the job ran supersedes it; the newer job
        // writes the summary, so this one ends without one.
        let json = match summary {
            Some(s) => serde_json::to_string(&s).context("Failed to encode the summary")?,
            None => "null".into(),
        };
        self.store.job_done(&job, &json).await?;
        Ok(())
    }

    /// The tally of the default range query's bins (`bin=900`, `origin=0`,
    /// the range) at the job's version, computed step by step through the
    /// cache tiers (which it warms), each step at most `VISBIN_MAX_BINS`
    /// bins, so that even a range no query may ask for whole is summarised
    /// in bounded memory; empty without a range, `None` when the schedule
    /// moved past the job's version.
    async fn range_tally(
        &self,
        job: &JobRow,
        head: &Arc<ScheduleRow>,
    ) -> anyhow::Result<Option<VisibleTally>> {
        let mut tally = VisibleTally::default();
        let (Some(s), Some(e)) = (head.range_start, head.range_end) else {
            return Ok(Some(tally));
        };
        if s >= e {
            return Ok(Some(tally));
        }
        let grid = Grid::new(SUMMARY_BIN_SECONDS, 0);
        let all = grid.cover(s, e);
        let step = ((all.len() as i64 + STEPS - 1) / STEPS)
            .min(self.query.max_bins() as i64)
            .max(1);
        let mut first = all.first;
        while first < all.end {
            let end = (first + step).min(all.end);
            let Some(counts) = self
                .query
                .summary_bins(head, BinRange { first, end })
                .await?
            else {
                return Ok(None);
            };
            tally.add(&counts);
            let done = (end - all.first) as f64 / all.len() as f64;
            let still_ours = self
                .store
                .job_progress(
                    job.id,
                    done * 0.99,
                    &format!("computed {} of {} bins", end - all.first, all.len()),
                )
                .await?;
            if !still_ours {
                anyhow::bail!(TAKEN_OVER);
            }
            first = end;
        }
        Ok(Some(tally))
    }

    /// Re-creates the jobs whose lease expired, for schedules whose
    /// summary is missing; `retry_failed` (at start) also retries versions
    /// whose job failed of an error.
    pub async fn resume(self: &Arc<Self>, retry_failed: bool) -> anyhow::Result<usize> {
        let lease = self.lease.as_millis() as i64;
        let jobs = self
            .store
            .recreate_jobs(&self.owner, crate::store::now_ms(), lease, retry_failed)
            .await
            .context("Failed to re-create jobs")?;
        for j in &jobs {
            self.spawn(j.id);
        }
        Ok(jobs.len())
    }
}
