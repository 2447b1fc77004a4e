//! shardcron: a distributed job scheduler.
//!
//! This crate is the facade a Rust application depends on. Today it re-exports the
//! domain model ([`core`]) and the registry ([`registry`]); the runtime and the SDK
//! for job handlers join it as they land.

pub use shardcron_core as core;
pub use shardcron_registry as registry;
