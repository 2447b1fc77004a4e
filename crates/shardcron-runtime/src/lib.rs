//! A shardcron instance: membership, leader election, membership generations,
//! assignments and operations, over any [`shardcron_registry::Registry`] (the
//! embedded one or etcd), so that it behaves the same on both.
//!
//! - [`Instance`] joins a cluster: it registers under a per-start identity bound to
//!   its own lease, heartbeats, mirrors the namespace, campaigns for leadership and,
//!   as leader, publishes membership generations from which every instance computes
//!   every job's assignment locally.
//! - [`Cluster`] reads and changes a namespace as the API, CLI and job files do:
//!   jobs, item and instance flags, trigger/cancel/shutdown requests.
//! - [`keys`] is the key layout, in one place.

pub mod cluster;
pub mod dataflow;
mod error;
pub mod execute;
pub mod failpoints;
pub mod http_job;
pub mod instance;
pub mod keys;
mod listeners;
pub mod mirror;
pub mod misfire;
pub mod model;
pub mod scheduler;
pub mod script;
pub mod skew;
mod tail;

pub use cluster::{ApplyOutcome, Cluster, ItemState, StoredJob};
pub use dataflow::DataflowJob;
pub use error::{Error, Result};
pub use execute::{
    FireSummary, Handlers, HistorySink, JobContext, JobError, Listener, ListenerEvent,
    MemoryHistory, Outcome, SimpleJob,
};
pub use http_job::{HttpJob, HttpOptions};
pub use instance::{
    Instance, InstanceConfig, InstanceEvent, JobPlacement, JobReader, Runner, placement_in,
};
pub use scheduler::SchedulerOptions;
pub use script::{ScriptJob, ScriptOptions, Supervisor};
pub use skew::SkewStatus;
