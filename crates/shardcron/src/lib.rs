//! shardcron: a distributed job scheduler. This crate is what a Rust application
//! depends on (and the `shardcron` command, with the default `cli` feature).
//!
//! - [`Node`]: start an instance with your handlers and jobs, standalone (embedded
//!   registry, SQLite) or on etcd; see [`node`] for an example.
//! - [`Job`]: define jobs in code, validated like job files.
//! - [`SimpleJob`], [`DataflowJob`] and [`Listener`]: what you implement.
//! - [`alerting`]: turns an instance's execution history into alerts.
//! - The layers underneath: [`core`] (jobs, schedules, sharding), [`registry`],
//!   [`runtime`], [`store`] (history), [`alert`].

pub mod alerting;
pub mod job;
pub mod node;

pub use async_trait::async_trait;
pub use job::Job;
pub use node::{ConsoleOptions, JobDefinition, Node, NodeBuilder, NodeError};
pub use shardcron_alert as alert;
pub use shardcron_console as console;
pub use shardcron_core as core;
pub use shardcron_registry as registry;
pub use shardcron_runtime as runtime;
pub use shardcron_runtime::{
    Cluster, DataflowJob, FireSummary, Instance, JobContext, JobError, Listener, ListenerEvent,
    Outcome, SimpleJob,
};
pub use shardcron_store as store;
