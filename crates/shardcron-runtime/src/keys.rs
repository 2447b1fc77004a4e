//! The registry key layout: every key the runtime reads or writes is built here,
//! and nowhere else.
//!
//! Keys are relative to the namespace (the etcd backend adds its prefix; the
//! embedded registry holds one namespace). Job names never contain `/` (see
//! `JobName`), instance ids are `[A-Za-z0-9._-]`, so every segment is unambiguous.
//!
//! | key | value | lease | written by |
//! |---|---|---|---|
//! | `schema` | [`crate::model::Schema`] | — | the first instance (create-if-absent) |
//! | `instances/{id}` | [`crate::model::InstanceInfo`] | the instance's | the instance |
//! | `leader` | [`crate::model::LeaderInfo`] | the leader's | candidates (create-if-absent) |
//! | `generation` | [`crate::model::Generation`] | — | the leader (compares its token) |
//! | `jobs/{job}` | the job's JSON (`JobSpec::to_json`) | — | API, CLI, job files |
//! | `anchors/{job}` | RFC 3339 start instant of `every` schedules | — | whoever creates the job |
//! | `items/{job}/{item}` | [`crate::model::ItemFlag`] | — | operations |
//! | `instance-flags/{name}` | [`crate::model::InstanceFlag`] | — | operations |
//! | `requests/trigger/{id}` | [`crate::model::TriggerRequest`] | — | operations |
//! | `requests/cancel/{execution}` | [`crate::model::CancelRequest`] | — | operations |
//! | `requests/shutdown/{instance}` | [`crate::model::ShutdownRequest`] | — | operations |
//! | `last/{job}/{item}` | [`crate::model::LastFire`] | — | claims, skips, releases |
//! | `run/{job}/{item}` | [`crate::model::RunRecord`] | — (survives its holder) | claims |
//! | `fire/{job}/{item}/{fire}` | [`crate::model::FireClaim`] | the hour's horizon lease | claims |
//! | `failover/{job}/{item}` | [`crate::model::FailoverEntry`] | — | the leader |
//! | `horizon/{bucket}` | lease id | that lease | whoever claims first in the hour |
//! | `after-all/{job}/{fire}/items/{item}` | the item's final status | a horizon lease | the instance that ran it (jobs with `after_all` listeners) |
//! | `after-all/{job}/{fire}/claim` | instance id | a horizon lease | the one instance that runs the fire's `after_all` listeners (create-if-absent) |
//! | `console/bootstrap` | how the first console login was set up (`generated`, `config`, `existing`) | — | the first console start (create-if-absent, with `console/users/admin` when generated) |
//! | `console/users/{name}` | console user: role, argon2id PHC hash of the password | — | the console (config password, API) |
//! | `console/tokens/{id}` | API token: name, role, SHA-256 of the token (never the token) | — | the console API; `env-admin` from `SHARDCRON_ADMIN_TOKEN` |
//! | `console/sessions/{sha256 of the session id}` | console session: user, expiry | the session's (12 h) | console logins (deleted at logout) |

/// Major version of this layout. An instance refuses a namespace whose major
/// version is newer than the one it knows.
pub const SCHEMA_MAJOR: u32 = 1;
/// Minor version: additions that older instances can ignore.
pub const SCHEMA_MINOR: u32 = 0;

/// Prefix of the `after_all` listeners' per-fire keys (see `crate::listeners`).
pub const AFTER_ALL: &str = "after-all/";

/// `schema`
pub fn schema() -> Vec<u8> {
    b"schema".to_vec()
}

/// Prefix of every instance key.
pub const INSTANCES: &str = "instances/";

/// `instances/{id}`
pub fn instance(id: &str) -> Vec<u8> {
    format!("{INSTANCES}{id}").into_bytes()
}

/// `leader`
pub fn leader() -> Vec<u8> {
    b"leader".to_vec()
}

/// `generation`
pub fn generation() -> Vec<u8> {
    b"generation".to_vec()
}

/// Prefix of every job key.
pub const JOBS: &str = "jobs/";

/// `jobs/{job}`
pub fn job(name: &str) -> Vec<u8> {
    format!("{JOBS}{name}").into_bytes()
}

/// `anchors/{job}`
pub fn anchor(name: &str) -> Vec<u8> {
    format!("anchors/{name}").into_bytes()
}

/// Prefix of every item flag.
pub const ITEMS: &str = "items/";

/// `items/{job}/{item}`
pub fn item(job: &str, item: u32) -> Vec<u8> {
    format!("{ITEMS}{job}/{item}").into_bytes()
}

/// `items/{job}/` (every item flag of one job)
pub fn items_of(job: &str) -> Vec<u8> {
    format!("{ITEMS}{job}/").into_bytes()
}

/// Prefix of every instance flag.
pub const INSTANCE_FLAGS: &str = "instance-flags/";

/// `instance-flags/{name}`
pub fn instance_flag(name: &str) -> Vec<u8> {
    format!("{INSTANCE_FLAGS}{name}").into_bytes()
}

/// Prefix of every request.
pub const REQUESTS: &str = "requests/";

/// `requests/trigger/{id}`
pub fn trigger_request(id: &str) -> Vec<u8> {
    format!("{REQUESTS}trigger/{id}").into_bytes()
}

/// `requests/cancel/{execution}`
pub fn cancel_request(execution: &str) -> Vec<u8> {
    format!("{REQUESTS}cancel/{execution}").into_bytes()
}

/// `requests/shutdown/{instance}`
pub fn shutdown_request(instance: &str) -> Vec<u8> {
    format!("{REQUESTS}shutdown/{instance}").into_bytes()
}

/// Prefix of the per-item last-fire state.
pub const LAST: &str = "last/";

/// `last/{job}/{item}`: the item's last decided fire and last completion.
pub fn last(job: &str, item: u32) -> Vec<u8> {
    format!("{LAST}{job}/{item}").into_bytes()
}

/// Prefix of run keys.
pub const RUNS: &str = "run/";

/// `run/{job}/{item}`: the item's running execution (one at a time).
pub fn run(job: &str, item: u32) -> Vec<u8> {
    format!("{RUNS}{job}/{item}").into_bytes()
}

/// `fire/{job}/{item}/{fire}`: the claim of one fire (one claim per fire).
pub fn fire(job: &str, item: u32, fire: &str) -> Vec<u8> {
    format!("fire/{job}/{item}/{fire}").into_bytes()
}

/// Prefix of failover entries.
pub const FAILOVERS: &str = "failover/";

/// `failover/{job}/{item}`: a run whose holder died, waiting for a new holder.
pub fn failover(job: &str, item: u32) -> Vec<u8> {
    format!("{FAILOVERS}{job}/{item}").into_bytes()
}

/// `horizon/{bucket}`: the shared lease that fire keys of one hour are bound to.
pub fn horizon(bucket: i64) -> Vec<u8> {
    format!("horizon/{bucket}").into_bytes()
}

/// Parse `{job}/{item}` after a prefix.
pub fn job_item(key: &[u8], prefix: &str) -> Option<(String, u32)> {
    let k = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let (job, item) = k.split_once('/')?;
    if job.is_empty() || item.contains('/') {
        return None;
    }
    Some((job.to_string(), item.parse().ok()?))
}

/// What a key under the watched namespace is, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `schema`
    Schema,
    /// `instances/{id}`
    Instance(String),
    /// `leader`
    Leader,
    /// `generation`
    Generation,
    /// `jobs/{job}`
    Job(String),
    /// `anchors/{job}`
    Anchor(String),
    /// `items/{job}/{item}`
    Item(String, u32),
    /// `instance-flags/{name}`
    InstanceFlag(String),
    /// `requests/trigger/{id}`
    TriggerRequest(String),
    /// `requests/cancel/{execution}`
    CancelRequest(String),
    /// `requests/shutdown/{instance}`
    ShutdownRequest(String),
    /// Anything else (a newer minor version's keys, or another tool's).
    Other,
}

impl Key {
    /// Parse a key of this layout.
    pub fn parse(key: &[u8]) -> Key {
        let Ok(k) = std::str::from_utf8(key) else {
            return Key::Other;
        };
        let seg = |p: &str| {
            k.strip_prefix(p)
                .filter(|r| !r.is_empty() && !r.contains('/'))
        };
        match k {
            "schema" => return Key::Schema,
            "leader" => return Key::Leader,
            "generation" => return Key::Generation,
            _ => {}
        }
        if let Some(id) = seg(INSTANCES) {
            return Key::Instance(id.to_string());
        }
        if let Some(j) = seg(JOBS) {
            return Key::Job(j.to_string());
        }
        if let Some(j) = seg("anchors/") {
            return Key::Anchor(j.to_string());
        }
        if let Some(n) = seg(INSTANCE_FLAGS) {
            return Key::InstanceFlag(n.to_string());
        }
        if let Some(rest) = k.strip_prefix(ITEMS) {
            if let Some((job, item)) = rest.split_once('/')
                && let Ok(i) = item.parse::<u32>()
                && !job.is_empty()
            {
                return Key::Item(job.to_string(), i);
            }
            return Key::Other;
        }
        if let Some(id) = seg("requests/trigger/") {
            return Key::TriggerRequest(id.to_string());
        }
        if let Some(id) = seg("requests/cancel/") {
            return Key::CancelRequest(id.to_string());
        }
        if let Some(id) = seg("requests/shutdown/") {
            return Key::ShutdownRequest(id.to_string());
        }
        Key::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_parses_back() {
        assert_eq!(Key::parse(&schema()), Key::Schema);
        assert_eq!(Key::parse(&instance("h-1a")), Key::Instance("h-1a".into()));
        assert_eq!(Key::parse(&leader()), Key::Leader);
        assert_eq!(Key::parse(&generation()), Key::Generation);
        assert_eq!(Key::parse(&job("orders")), Key::Job("orders".into()));
        assert_eq!(Key::parse(&anchor("orders")), Key::Anchor("orders".into()));
        assert_eq!(
            Key::parse(&item("orders", 7)),
            Key::Item("orders".into(), 7)
        );
        assert_eq!(
            Key::parse(&instance_flag("web-1")),
            Key::InstanceFlag("web-1".into())
        );
        assert_eq!(
            Key::parse(&trigger_request("r1")),
            Key::TriggerRequest("r1".into())
        );
        assert_eq!(
            Key::parse(&cancel_request("e1")),
            Key::CancelRequest("e1".into())
        );
        assert_eq!(
            Key::parse(&shutdown_request("i1")),
            Key::ShutdownRequest("i1".into())
        );
        assert_eq!(Key::parse(b"items/orders/x"), Key::Other);
        assert_eq!(Key::parse(b"jobs/"), Key::Other);
        assert_eq!(Key::parse(b"jobs/a/b"), Key::Other);
        assert_eq!(Key::parse(&[0xff, 0xfe]), Key::Other);
    }
}
