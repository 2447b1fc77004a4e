//! The pure domain of shardcron: what a job is, when it fires, how its items are
//! split across instances, and what an execution looks like.
//!
//! Nothing in this crate performs I/O or depends on an async runtime; time comes from
//! the [`clock::Clock`] trait so that callers can pause and skew it in tests.

pub mod clock;
pub mod duration;
pub mod execution;
pub mod hash;
pub mod job;
pub mod schedule;
pub mod sharding;
pub mod value;

pub use clock::{Clock, ManualClock, MonoTime, SkewedClock, SystemClock};
pub use execution::{ExecutionRecord, ExecutionSource, ExecutionStatus, ShardingContext};
pub use job::{JobName, JobSpec};
pub use schedule::Schedule;
