//! How a job's items are split across instances.
//!
//! SKELETON: the public API below is fixed; bodies are being implemented.

use std::collections::BTreeMap;

/// One instance as a strategy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingInstance {
    /// Instance identity.
    pub id: String,
    /// Relative capacity, at least 1.
    pub weight: u32,
}

/// The sharding strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// ElasticJob's AVG_ALLOCATION.
    Average,
    /// Reverse the instance order when the job-name hash is even, then average.
    Odevity,
    /// Rotate the instance order by the job-name hash, then average.
    RoundRobin,
    /// Items proportional to instance weight.
    Weighted,
    /// Rendezvous hashing with bounded load.
    Consistent,
}

/// Items per instance id. Every instance given appears as a key (possibly with no
/// items); item lists are sorted ascending.
pub type Assignment = BTreeMap<String, Vec<u32>>;

impl Strategy {
    /// Every strategy's name as written in job files.
    pub const NAMES: &'static [&'static str] = &[
        "average",
        "odevity",
        "round_robin",
        "weighted",
        "consistent",
    ];

    /// Parse a strategy name; the error lists the valid names.
    pub fn parse(name: &str) -> Result<Strategy, String> {
        let _ = name;
        todo!()
    }

    /// The name as written in job files.
    pub fn name(self) -> &'static str {
        todo!()
    }

    /// Assign items `0..items` of job `job` to `instances` (in their stable order).
    /// With no instances the result is empty.
    pub fn assign(self, job: &str, items: u32, instances: &[ShardingInstance]) -> Assignment {
        let _ = (job, items, instances);
        todo!()
    }
}
