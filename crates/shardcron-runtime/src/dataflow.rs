//! Dataflow jobs: fetch a batch of data for the item, then process it.
//!
//! A [`DataflowJob`] is registered with [`crate::Handlers::dataflow`]. Each run of
//! an item calls [`DataflowJob::fetch`] and, when the batch is not empty,
//! [`DataflowJob::process`]. With `streaming = true` in the job, the run keeps
//! going, fetch after process, until
//!
//! - a fetch comes back empty (the item's work is done for this fire),
//! - the item is about to move: a reshard, or the job or item disabled
//!   ([`JobContext::should_wind_down`]),
//! - the instance is stopping (also `should_wind_down`), or the run is cancelled
//!   or times out.
//!
//! A wind-down is checked between batches: the batch in hand is processed first,
//! so a streaming run ends with no fetched data left unprocessed. The run's
//! output says how many items and batches it handled and why it stopped. An error
//! from `fetch` or `process` fails the run (the retry policy applies; batches
//! processed before the error stay processed, so `process` should be idempotent or
//! fetch only what is still to do, as with any at-least-once consumer).

use crate::execute::{JobContext, JobError, SimpleJob};

/// A job that fetches data for its item and processes it.
#[async_trait::async_trait]
pub trait DataflowJob: Send + Sync + 'static {
    /// One unit of data.
    type Item: Send + 'static;

    /// The next batch for this item (for example the rows whose id modulo
    /// `ctx.sharding.total` is `ctx.sharding.item`). Empty means nothing to do.
    async fn fetch(&self, ctx: &JobContext) -> Result<Vec<Self::Item>, JobError>;

    /// Process a batch returned by `fetch`.
    async fn process(&self, ctx: &JobContext, data: Vec<Self::Item>) -> Result<(), JobError>;
}

/// Runs a [`DataflowJob`] as a [`SimpleJob`].
#[derive(Debug)]
pub struct Dataflow<J> {
    job: J,
}

impl<J: DataflowJob> Dataflow<J> {
    /// Wrap a dataflow job.
    pub fn new(job: J) -> Self {
        Dataflow { job }
    }
}

#[async_trait::async_trait]
impl<J: DataflowJob> SimpleJob for Dataflow<J> {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        let streaming = ctx.spec.streaming;
        let mut items = 0usize;
        let mut batches = 0usize;
        let stopped = loop {
            if ctx.is_cancelled() {
                return Err(JobError(format!(
                    "cancelled after {items} item(s) in {batches} batch(es)"
                )));
            }
            let data = self.job.fetch(&ctx).await?;
            if data.is_empty() {
                break "a fetch came back empty";
            }
            items += data.len();
            batches += 1;
            self.job.process(&ctx, data).await?;
            if !streaming {
                break "not streaming";
            }
            if ctx.is_cancelled() {
                return Err(JobError(format!(
                    "cancelled after {items} item(s) in {batches} batch(es)"
                )));
            }
            if ctx.should_wind_down() {
                break "the item is moving or the instance is stopping";
            }
        };
        Ok(Some(format!(
            "processed {items} item(s) in {batches} batch(es); stopped: {stopped}"
        )))
    }
}
