//! The values stored under the keys of [`crate::keys`], as JSON.
//!
//! Every value read from the registry is decoded with [`decode`], which names the
//! key and the problem when a value is malformed (written by another tool, or a
//! newer version with an incompatible change): bad registry values give a clear
//! error and are skipped, never a panic and never a silent default.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Decode a registry value, naming the key on failure.
pub fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::BadValue {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })
}

/// Encode a registry value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys,
    // no custom serializers that error); an empty value would fail decoding loudly.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `schema`: the key layout version of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
}

/// `instances/{id}`: a live instance, bound to its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Per-start identity: `{name}-{lease id in hex}`.
    pub id: String,
    /// Stable name (default: the host name); flags such as "disabled" attach to it.
    pub name: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Labels that jobs select on.
    pub labels: BTreeMap<String, String>,
    /// Job kinds and handler names it can run (`script`, `http`, handler names).
    pub capabilities: Vec<String>,
    /// Relative capacity for the `weighted` strategy, at least 1.
    pub weight: u32,
    /// shardcron version.
    pub version: String,
    /// Wall-clock time of its last heartbeat (for the clock-skew guard).
    pub heartbeat: DateTime<Utc>,
    /// When this identity registered.
    pub started: DateTime<Utc>,
    /// Its clock-skew guard refuses to fire (its clock is off the cluster's by
    /// more than the bound): the leader leaves it out of generations, so its
    /// items move to instances that can fire them. Absent in older values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_skewed: bool,
}

/// `leader`: the elected leader, bound to its lease. The key's create revision is
/// the leader's fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's instance id.
    pub instance: String,
    /// When it was elected.
    pub elected: DateTime<Utc>,
}

/// One instance as the generation lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Instance id.
    pub id: String,
    /// Weight.
    pub weight: u32,
    /// Labels (for job targeting).
    pub labels: BTreeMap<String, String>,
    /// Capabilities (for job targeting by kind).
    pub capabilities: Vec<String>,
}

/// `generation`: the membership every instance computes assignments from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Increases by one with every publication.
    pub number: u64,
    /// The create revision of the leader key of the leader that published it.
    pub leader_token: i64,
    /// Eligible (live and enabled) instances, in join order: a new instance is
    /// appended, a departed one removed, the others keep their order.
    pub members: Vec<Member>,
    /// For each job selector in use (`kind|label=value,...`), the ids of the
    /// members eligible for it in *slot order*: a joining instance is appended; a
    /// departing one is replaced by the last (`swap_remove`). Order-dependent
    /// strategies (notably `consistent`) then move the minimum on a join.
    #[serde(default)]
    pub orders: BTreeMap<String, Vec<String>>,
    /// When it was published.
    pub published: DateTime<Utc>,
}

/// `items/{job}/{item}`: an item's operator state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFlag {
    /// Whether the item is disabled.
    pub disabled: bool,
    /// Since when it has been in this state.
    pub since: DateTime<Utc>,
}

/// `instance-flags/{name}`: an instance's operator state, by stable name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFlag {
    /// Whether instances of this name are disabled.
    pub disabled: bool,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// `requests/trigger/{id}`: run a job now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// Request id (also the fire id of the manual fire).
    pub id: String,
    /// The job.
    pub job: String,
    /// Items to run; empty means every item.
    pub items: Vec<u32>,
    /// Who asked (user or token name), for the audit trail.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// `requests/cancel/{execution}`: stop a running execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The execution.
    pub execution: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// `requests/shutdown/{instance}`: the target instance shuts itself down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownRequest {
    /// The instance.
    pub instance: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// `last/{job}/{item}`: what the item has decided so far. Misfire decisions are made
/// from this persisted state, never from memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFire {
    /// The last scheduled fire that was claimed or recorded as skipped.
    pub fire: Option<DateTime<Utc>>,
    /// When the item's last run completed (for `delay` schedules).
    pub completed: Option<DateTime<Utc>>,
    /// When the item started being scheduled (fires before it are not due).
    pub since: DateTime<Utc>,
    /// Set by the item's owner when it sees the item (or its job) disabled: fires
    /// from then until it is enabled again are recorded SKIPPED (`disabled`), not
    /// treated as missed.
    #[serde(default)]
    pub disabled_since: Option<DateTime<Utc>>,
}

/// `run/{job}/{item}`: the running execution of an item. Not bound to the holder's
/// lease: it must outlive the holder so that its fire can be failed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Instance id of the holder.
    pub holder: String,
    /// The holder's registration revision (create revision of its instance key).
    pub holder_rev: i64,
    /// The fire id (`t{millis}` for scheduled fires, `m{request}` for manual ones).
    pub fire: String,
    /// The scheduled fire time.
    pub fire_time: DateTime<Utc>,
    /// The execution id.
    pub execution: String,
    /// Attempt number.
    pub attempt: u32,
    /// Why it runs.
    pub source: shardcron_core::ExecutionSource,
    /// Items of the job at claim time.
    pub total: u32,
    /// When it was claimed.
    pub claimed_at: DateTime<Utc>,
}

/// `fire/{job}/{item}/{fire}`: who claimed a fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireClaim {
    /// Instance id.
    pub holder: String,
    /// Execution id.
    pub execution: String,
}

/// `failover/{job}/{item}`: a run whose holder is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEntry {
    /// The dead holder's run.
    pub run: RunRecord,
    /// The run key's mod revision when the entry was made.
    pub run_revision: i64,
    /// When the leader made the entry.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_key() {
        let err = decode::<Schema>(b"schema", b"{\"major\":\"x\"}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("schema"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }
}
