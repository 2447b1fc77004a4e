//! [`Cluster`]: reading and changing a namespace from outside the scheduling loop,
//! as the API, the CLI, the console and job files do. Every operation is a
//! registry write that instances watch; nothing here talks to an instance directly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::clock::SharedClock;
use shardcron_core::job::JobSpec;
use shardcron_registry::{Compare, RangeRequest, Registry, Txn, TxnOp};

use crate::error::{Error, Result};
use crate::keys;
use crate::model::{
    CancelRequest, Generation, InstanceFlag, InstanceInfo, ItemFlag, LastFire, LeaderInfo,
    RunRecord, ShutdownRequest, TriggerRequest, decode, encode,
};

/// How long an unprocessed request is kept before it expires with its lease.
pub const REQUEST_HORIZON: Duration = Duration::from_secs(3600);

/// What applying one job of a job file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The job did not exist and was created.
    Created,
    /// The registry already held exactly this job.
    Unchanged,
    /// The job differed and the file said `overwrite = true`.
    Overwritten,
    /// The job differed and the file did not say `overwrite = true`: the registry
    /// copy (edited through the API or console) was kept.
    Conflict,
}

/// What the registry holds about one item of a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemState {
    /// Its operator flag, if one was ever set.
    pub flag: Option<ItemFlag>,
    /// Its last decided fire and completion.
    pub last: Option<LastFire>,
    /// Its running execution.
    pub run: Option<RunRecord>,
}

/// A job as stored, with the revision of its last change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    /// The job.
    pub spec: JobSpec,
    /// Its config revision (the key's mod revision).
    pub revision: i64,
    /// The anchor of `every` schedules.
    pub anchor: Option<DateTime<Utc>>,
}

/// A handle on one namespace.
#[derive(Debug, Clone)]
pub struct Cluster {
    registry: Arc<dyn Registry>,
    clock: SharedClock,
}

fn new_id(clock: &SharedClock) -> String {
    format!(
        "{:013x}{:08x}",
        clock.wall().timestamp_millis(),
        rand::random::<u32>()
    )
}

impl Cluster {
    /// A handle on the namespace of `registry`.
    pub fn new(registry: Arc<dyn Registry>, clock: SharedClock) -> Self {
        Cluster { registry, clock }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Read one job.
    pub async fn get_job(&self, name: &str) -> Result<Option<StoredJob>> {
        let Some(kv) = self.registry.get(&keys::job(name)).await? else {
            return Ok(None);
        };
        let spec = decode_job(&kv.key, &kv.value)?;
        let anchor = self
            .registry
            .get(&keys::anchor(name))
            .await?
            .and_then(|a| parse_anchor(&a.value));
        Ok(Some(StoredJob {
            spec,
            revision: kv.mod_revision,
            anchor,
        }))
    }

    /// Every job, by name. Malformed stored jobs are reported in the second list.
    pub async fn list_jobs(&self) -> Result<(Vec<StoredJob>, Vec<Error>)> {
        let resp = self
            .registry
            .range(RangeRequest::prefix(keys::JOBS.as_bytes().to_vec()))
            .await?;
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        for kv in resp.kvs {
            match decode_job(&kv.key, &kv.value) {
                Ok(spec) => jobs.push(StoredJob {
                    spec,
                    revision: kv.mod_revision,
                    anchor: None,
                }),
                Err(e) => bad.push(e),
            }
        }
        Ok((jobs, bad))
    }

    /// Create a job; fails with `Conflict` if one of that name exists.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<i64> {
        let key = keys::job(spec.name.as_str());
        let anchor = keys::anchor(spec.name.as_str());
        // `every` fires at anchor + k * period: a whole-second anchor gives fire
        // times people can read (10:00:05, not 10:00:05.830308145). Rounded up, so
        // that no fire lies before the job existed.
        let wall = self.clock.wall();
        let mut anchor_time = chrono::SubsecRound::trunc_subsecs(wall, 0);
        if anchor_time < wall {
            anchor_time += chrono::Duration::seconds(1);
        }
        let now = anchor_time.to_rfc3339();
        let resp = self
            .registry
            .txn(
                Txn::new()
                    .when(Compare::absent(key.clone()))
                    .and_then(TxnOp::put(key, job_bytes(spec)))
                    .and_then(TxnOp::put(anchor, now.into_bytes())),
            )
            .await?;
        if !resp.succeeded {
            return Err(Error::Conflict(format!(
                "job {:?} already exists",
                spec.name.as_str()
            )));
        }
        Ok(resp.revision)
    }

    /// Replace a job. With `expected_revision`, only if it is still at that
    /// revision (optimistic concurrency for editors).
    pub async fn update_job(&self, spec: &JobSpec, expected_revision: Option<i64>) -> Result<i64> {
        let key = keys::job(spec.name.as_str());
        let cmp = match expected_revision {
            Some(r) => Compare::mod_revision_is(key.clone(), r),
            None => Compare::exists(key.clone()),
        };
        let resp = self
            .registry
            .txn(
                Txn::new()
                    .when(cmp)
                    .and_then(TxnOp::put(key, job_bytes(spec))),
            )
            .await?;
        if !resp.succeeded {
            return Err(match self.get_job(spec.name.as_str()).await? {
                None => Error::NotFound(format!("job {:?}", spec.name.as_str())),
                Some(j) => Error::Conflict(format!(
                    "job {:?} changed (now at revision {}, expected {:?})",
                    spec.name.as_str(),
                    j.revision,
                    expected_revision
                )),
            });
        }
        Ok(resp.revision)
    }

    /// Delete a job with its anchor, item flags and per-item state.
    pub async fn delete_job(&self, name: &str) -> Result<()> {
        let key = keys::job(name);
        let resp = self
            .registry
            .txn(
                Txn::new()
                    .when(Compare::exists(key.clone()))
                    .and_then(TxnOp::delete(key))
                    .and_then(TxnOp::delete(keys::anchor(name)))
                    .and_then(TxnOp::DeletePrefix {
                        prefix: keys::items_of(name),
                    }),
            )
            .await?;
        if !resp.succeeded {
            return Err(Error::NotFound(format!("job {name:?}")));
        }
        Ok(())
    }

    /// Apply one job of a job file as an agent does at start: create if absent;
    /// if present and identical, nothing; if different, overwrite only when the file
    /// says `overwrite = true`, else keep the registry copy and report a conflict.
    pub async fn apply_job(&self, spec: &JobSpec) -> Result<ApplyOutcome> {
        for _ in 0..5 {
            match self.get_job(spec.name.as_str()).await? {
                None => match self.create_job(spec).await {
                    Ok(_) => return Ok(ApplyOutcome::Created),
                    Err(Error::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                },
                Some(stored) if same_job(&stored.spec, spec) => return Ok(ApplyOutcome::Unchanged),
                Some(stored) if spec.overwrite => {
                    match self.update_job(spec, Some(stored.revision)).await {
                        Ok(_) => return Ok(ApplyOutcome::Overwritten),
                        Err(Error::Conflict(_) | Error::NotFound(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(_) => return Ok(ApplyOutcome::Conflict),
            }
        }
        Err(Error::Conflict(format!(
            "job {:?} kept changing while it was applied",
            spec.name.as_str()
        )))
    }

    /// Enable or disable a job (rewrites its `enabled` field).
    pub async fn set_job_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        for _ in 0..5 {
            let Some(mut stored) = self.get_job(name).await? else {
                return Err(Error::NotFound(format!("job {name:?}")));
            };
            if stored.spec.enabled == enabled {
                return Ok(());
            }
            stored.spec.enabled = enabled;
            match self.update_job(&stored.spec, Some(stored.revision)).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!("job {name:?} kept changing")))
    }

    /// Enable or disable one item of a job.
    pub async fn set_item_enabled(&self, job: &str, item: u32, enabled: bool) -> Result<()> {
        let Some(stored) = self.get_job(job).await? else {
            return Err(Error::NotFound(format!("job {job:?}")));
        };
        if item >= stored.spec.shards {
            return Err(Error::Invalid(format!(
                "item: job {job:?} has items 0 to {}, got {item}",
                stored.spec.shards - 1
            )));
        }
        let flag = ItemFlag {
            disabled: !enabled,
            since: self.clock.wall(),
        };
        self.registry
            .put(&keys::item(job, item), &encode(&flag), None)
            .await?;
        Ok(())
    }

    /// Item flags of a job (items without a flag are enabled).
    pub async fn item_flags(&self, job: &str) -> Result<BTreeMap<u32, ItemFlag>> {
        let resp = self
            .registry
            .range(RangeRequest::prefix(keys::items_of(job)))
            .await?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs {
            if let keys::Key::Item(_, i) = keys::Key::parse(&kv.key) {
                out.insert(i, decode::<ItemFlag>(&kv.key, &kv.value)?);
            }
        }
        Ok(out)
    }

    /// What the registry says of each item of `job` that has state: its flag,
    /// its last decided fire and its running execution. Items never fired and
    /// never flagged are absent.
    pub async fn item_states(&self, job: &str) -> Result<BTreeMap<u32, ItemState>> {
        let mut out: BTreeMap<u32, ItemState> = BTreeMap::new();
        for (i, flag) in self.item_flags(job).await? {
            out.entry(i).or_default().flag = Some(flag);
        }
        for (i, last) in self.per_item::<LastFire>(keys::LAST, job).await? {
            out.entry(i).or_default().last = Some(last);
        }
        for (i, run) in self.per_item::<RunRecord>(keys::RUNS, job).await? {
            out.entry(i).or_default().run = Some(run);
        }
        Ok(out)
    }

    async fn per_item<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        job: &str,
    ) -> Result<Vec<(u32, T)>> {
        let p = format!("{prefix}{job}/");
        let resp = self
            .registry
            .range(RangeRequest::prefix(p.clone().into_bytes()))
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs {
            let item = std::str::from_utf8(&kv.key)
                .ok()
                .and_then(|k| k.strip_prefix(p.as_str()))
                .and_then(|i| i.parse::<u32>().ok());
            if let Some(i) = item {
                out.push((i, decode::<T>(&kv.key, &kv.value)?));
            }
        }
        Ok(out)
    }

    /// Every running execution of the namespace: `(job, item, run)`.
    pub async fn running(&self) -> Result<Vec<(String, u32, RunRecord)>> {
        let resp = self
            .registry
            .range(RangeRequest::prefix(keys::RUNS.as_bytes().to_vec()))
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs {
            if let Some((job, item)) = keys::job_item(&kv.key, keys::RUNS) {
                out.push((job, item, decode::<RunRecord>(&kv.key, &kv.value)?));
            }
        }
        Ok(out)
    }

    /// Instance flags by stable name (names without a flag are enabled).
    pub async fn instance_flags(&self) -> Result<BTreeMap<String, InstanceFlag>> {
        let resp = self
            .registry
            .range(RangeRequest::prefix(
                keys::INSTANCE_FLAGS.as_bytes().to_vec(),
            ))
            .await?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs {
            if let keys::Key::InstanceFlag(name) = keys::Key::parse(&kv.key) {
                out.insert(name, decode::<InstanceFlag>(&kv.key, &kv.value)?);
            }
        }
        Ok(out)
    }

    /// Enable or disable every instance of a stable name.
    pub async fn set_instance_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        let flag = InstanceFlag {
            disabled: !enabled,
            since: self.clock.wall(),
        };
        self.registry
            .put(&keys::instance_flag(name), &encode(&flag), None)
            .await?;
        Ok(())
    }

    /// Live instances.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let resp = self
            .registry
            .range(RangeRequest::prefix(keys::INSTANCES.as_bytes().to_vec()))
            .await?;
        resp.kvs
            .iter()
            .map(|kv| decode::<InstanceInfo>(&kv.key, &kv.value))
            .collect()
    }

    /// The leader and its token, if one is elected.
    pub async fn leader(&self) -> Result<Option<(LeaderInfo, i64)>> {
        let Some(kv) = self.registry.get(&keys::leader()).await? else {
            return Ok(None);
        };
        Ok(Some((decode(&kv.key, &kv.value)?, kv.create_revision)))
    }

    /// The current generation.
    pub async fn generation(&self) -> Result<Option<Generation>> {
        let Some(kv) = self.registry.get(&keys::generation()).await? else {
            return Ok(None);
        };
        Ok(Some(decode(&kv.key, &kv.value)?))
    }

    async fn put_request(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        // Each request expires with a lease of its own, so unprocessed requests do
        // not accumulate.
        let lease = self.registry.lease_grant(REQUEST_HORIZON).await?;
        self.registry.put(&key, &value, Some(lease.id)).await?;
        Ok(())
    }

    /// Ask for a job to run now (every item, or the given ones). Returns the
    /// request id, which is also the id of the manual fire.
    pub async fn trigger(&self, job: &str, items: Vec<u32>, by: &str) -> Result<String> {
        let Some(stored) = self.get_job(job).await? else {
            return Err(Error::NotFound(format!("job {job:?}")));
        };
        if let Some(bad) = items.iter().find(|i| **i >= stored.spec.shards) {
            return Err(Error::Invalid(format!(
                "items: job {job:?} has items 0 to {}, got {bad}",
                stored.spec.shards - 1
            )));
        }
        let id = new_id(&self.clock);
        let req = TriggerRequest {
            id: id.clone(),
            job: job.to_string(),
            items,
            requested_by: by.to_string(),
            requested_at: self.clock.wall(),
        };
        self.put_request(keys::trigger_request(&id), encode(&req))
            .await?;
        Ok(id)
    }

    /// Ask for a running execution to be cancelled (its holder carries it out).
    pub async fn cancel(&self, execution: &str, by: &str) -> Result<()> {
        let req = CancelRequest {
            execution: execution.to_string(),
            requested_by: by.to_string(),
            requested_at: self.clock.wall(),
        };
        self.put_request(keys::cancel_request(execution), encode(&req))
            .await
    }

    /// Ask an instance to shut itself down (gracefully; it revokes its own lease).
    pub async fn shutdown_instance(&self, instance: &str, by: &str) -> Result<()> {
        if self
            .registry
            .get(&keys::instance(instance))
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!("instance {instance:?}")));
        }
        let req = ShutdownRequest {
            instance: instance.to_string(),
            requested_by: by.to_string(),
            requested_at: self.clock.wall(),
        };
        self.put_request(keys::shutdown_request(instance), encode(&req))
            .await
    }
}

/// Two specs are "the same job" for job-file application when they are equal
/// ignoring `overwrite` (a file flag, not part of the job).
fn same_job(a: &JobSpec, b: &JobSpec) -> bool {
    let mut a = a.clone();
    a.overwrite = b.overwrite;
    &a == b
}

fn job_bytes(spec: &JobSpec) -> Vec<u8> {
    spec.to_json().to_string().into_bytes()
}

/// Decode a stored job with the same validator as job files and the API.
pub fn decode_job(key: &[u8], value: &[u8]) -> Result<JobSpec> {
    let text = std::str::from_utf8(value).map_err(|e| Error::BadValue {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })?;
    JobSpec::from_json(text).map_err(|e| Error::BadValue {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })
}

/// Parse an `anchors/{job}` value.
pub fn parse_anchor(value: &[u8]) -> Option<DateTime<Utc>> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}
