//! Job specifications: the `[[job]]` tables of a job file (DESIGN.md section 9),
//! their defaults, parsing from TOML and JSON, and validation.
//!
//! SKELETON: types are fixed; parsing and validation bodies are being implemented.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::schedule::Schedule;
use crate::sharding::Strategy;

/// A validated job name: 1-128 characters of ASCII letters, digits, `.`, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobName(String);

impl JobName {
    /// Validate a job name.
    pub fn new(name: &str) -> Result<JobName, String> {
        let _ = name;
        todo!()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What runs when the job fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// An executable with arguments, no shell (`kind = "script"`, `command = [...]`).
    Script {
        /// argv; the first element is the program.
        command: Vec<String>,
    },
    /// An HTTP call (`kind = "http"`); its fields arrive with the HTTP issue.
    Http,
    /// A Rust handler registered under this name through the SDK.
    Handler(String),
}

/// Retries of a failed attempt, with exponential backoff and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first (0: no retry).
    pub max: u32,
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max: 0,
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// What to do with fires that could not run on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MisfirePolicy {
    /// Run once for all missed fires, as soon as possible (default).
    #[default]
    FireOnce,
    /// Drop missed fires and wait for the next one.
    Skip,
    /// Run every missed fire, up to `max` of them.
    CatchUp {
        /// Most missed fires to run.
        max: u32,
    },
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Unique name in its namespace.
    pub name: JobName,
    /// Free text for people.
    pub description: String,
    /// When it fires. Written in files as `cron` (+ `tz`), `every`, `delay`, `at`
    /// or `manual = true`.
    pub schedule: Schedule,
    /// Number of sharding items, 1-10000 (default 1).
    pub shards: u32,
    /// Per-item parameters, from `shard_params = "0=a,1=b"`.
    pub shard_params: BTreeMap<u32, String>,
    /// Job-wide parameter.
    pub param: String,
    /// What runs.
    pub kind: JobKind,
    /// Longest a run may take.
    pub timeout: Option<Duration>,
    /// Retries of failed attempts.
    pub retries: RetryPolicy,
    /// Re-run a fire on another instance when its holder dies (default true).
    pub failover: bool,
    /// Misfire policy.
    pub misfire: MisfirePolicy,
    /// Sharding strategy (default average).
    pub strategy: Strategy,
    /// Instance labels required to run the job.
    pub labels: BTreeMap<String, String>,
    /// Whether an agent's job file overwrites the registry copy.
    pub overwrite: bool,
    /// Whether the job fires (default true).
    pub enabled: bool,
    /// Most concurrent executions of this job on one instance (None: unbounded).
    pub max_concurrent: Option<u32>,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Cron(a), Schedule::Cron(b)) => a.expr() == b.expr() && a.tz() == b.tz(),
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Delay(a), Schedule::Delay(b)) => a == b,
            (Schedule::At(a), Schedule::At(b)) => a == b,
            (Schedule::Manual, Schedule::Manual) => true,
            _ => false,
        }
    }
}

/// One problem found in a job file or job document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The job's name as written (or `#N` for the N-th job when it has no usable name).
    pub job: Option<String>,
    /// The field, e.g. `shards` or `retries.initial`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.job {
            Some(job) => write!(f, "job {job:?}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct JobErrors(pub Vec<Problem>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A parsed job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    /// The jobs, in file order.
    pub jobs: Vec<JobSpec>,
}

impl JobFile {
    /// Parse and validate a TOML job file.
    pub fn from_toml(text: &str) -> Result<JobFile, JobErrors> {
        let _ = text;
        todo!()
    }

    /// Parse and validate the JSON form (`{"job": [ ... ]}`).
    pub fn from_json(text: &str) -> Result<JobFile, JobErrors> {
        let _ = text;
        todo!()
    }
}

impl JobSpec {
    /// Parse and validate one job from its JSON form (as stored in the registry and
    /// sent to the API).
    pub fn from_json(text: &str) -> Result<JobSpec, JobErrors> {
        let _ = text;
        todo!()
    }

    /// The JSON form, with the same field names as the job file.
    pub fn to_json(&self) -> serde_json::Value {
        todo!()
    }
}
