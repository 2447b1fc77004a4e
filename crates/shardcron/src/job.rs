//! [`Job`]: a builder for job definitions in code, with the same fields, defaults
//! and validation as a `[[job]]` table of a job file (see
//! [`shardcron_core::job`]). Problems are reported when the job is built, each
//! naming its field, exactly as for a job file.
//!
//! ```
//! use std::time::Duration;
//! use shardcron::Job;
//!
//! let spec = Job::cron("nightly-report", "0 30 2 * * *")
//!     .tz("Europe/Paris")
//!     .shards(4)
//!     .kind("report")
//!     .timeout(Duration::from_secs(600))
//!     .retries(3)
//!     .build()
//!     .unwrap();
//! assert_eq!(spec.shards, 4);
//!
//! let err = Job::every("bad", Duration::from_secs(5)).kind("x").shards(0).build().unwrap_err();
//! assert!(err.to_string().contains("shards: must be between 1 and 10000, got 0"));
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use shardcron_core::duration::HumanDuration;
use shardcron_core::job::{JobErrors, JobSpec, ListenerAction, ListenerSpec, ListenerWhen};

/// A job definition being built; [`Job::build`] validates it.
#[derive(Debug, Clone)]
pub struct Job {
    fields: Map<String, Value>,
    listeners: Vec<Value>,
}

fn human(d: Duration) -> Value {
    Value::String(HumanDuration(d).to_string())
}

impl Job {
    fn with(name: &str, key: &str, value: Value) -> Job {
        let mut fields = Map::new();
        fields.insert("name".into(), name.into());
        fields.insert(key.into(), value);
        Job {
            fields,
            listeners: Vec::new(),
        }
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Job {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// A job on a cron schedule with seconds (`"0 */5 * * * *"`) or without
    /// (`"*/5 * * * *"`), in UTC unless [`Job::tz`] says otherwise.
    pub fn cron(name: &str, expr: &str) -> Job {
        Job::with(name, "cron", expr.into())
    }

    /// A job that fires at a fixed rate.
    pub fn every(name: &str, interval: Duration) -> Job {
        Job::with(name, "every", human(interval))
    }

    /// A job that fires `delay` after the previous run of each item ended.
    pub fn delay(name: &str, delay: Duration) -> Job {
        Job::with(name, "delay", human(delay))
    }

    /// A job that fires once, at `at`.
    pub fn at(name: &str, at: DateTime<Utc>) -> Job {
        Job::with(
            name,
            "at",
            at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                .into(),
        )
    }

    /// A job that fires only when triggered (API, CLI, console).
    pub fn manual(name: &str) -> Job {
        Job::with(name, "manual", true.into())
    }

    /// The time zone of a cron schedule (IANA name, e.g. `"Asia/Shanghai"`).
    pub fn tz(self, tz: &str) -> Job {
        self.set("tz", tz)
    }

    /// Free text for people.
    pub fn description(self, text: &str) -> Job {
        self.set("description", text)
    }

    /// What runs: a handler name registered on the nodes (a Rust [`crate::SimpleJob`]
    /// or [`crate::DataflowJob`]).
    pub fn kind(self, handler: &str) -> Job {
        self.set("kind", handler)
    }

    /// Run a program (argv, no shell) instead of a handler.
    pub fn command<S: AsRef<str>>(self, argv: &[S]) -> Job {
        let argv: Vec<Value> = argv.iter().map(|a| a.as_ref().into()).collect();
        self.set("kind", "script").set("command", argv)
    }

    /// Make an HTTP request instead: `http` has the fields of the job file's
    /// `http` table, e.g. `json!({"url": "https://example.com/hook", "method": "POST"})`.
    pub fn http(self, http: Value) -> Job {
        self.set("kind", "http").set("http", http)
    }

    /// Number of sharding items (default 1).
    pub fn shards(self, n: u32) -> Job {
        self.set("shards", n)
    }

    /// Per-item parameters, `"0=north,1=south"`.
    pub fn shard_params(self, params: &str) -> Job {
        self.set("shard_params", params)
    }

    /// The job-wide parameter.
    pub fn param(self, param: &str) -> Job {
        self.set("param", param)
    }

    /// Longest a run may take.
    pub fn timeout(self, timeout: Duration) -> Job {
        self.set("timeout", human(timeout))
    }

    /// Further attempts after a failed one, with the default backoff.
    pub fn retries(self, max: u32) -> Job {
        self.set("retries", max)
    }

    /// Further attempts with this backoff: first delay `initial`, growing
    /// exponentially (with jitter) up to `max_delay`.
    pub fn retries_with_backoff(self, max: u32, initial: Duration, max_delay: Duration) -> Job {
        self.set(
            "retries",
            json!({"max": max, "initial": human(initial), "max_delay": human(max_delay)}),
        )
    }

    /// Whether a fire is re-run elsewhere when its instance dies (default true).
    pub fn failover(self, on: bool) -> Job {
        self.set("failover", on)
    }

    /// Misfire policy: `"fire_once"` (default), `"skip"` or `"catch_up"`.
    pub fn misfire(self, policy: &str) -> Job {
        self.set("misfire", policy)
    }

    /// Sharding strategy: `"average"` (default), `"odevity"`, `"round_robin"`,
    /// `"consistent"`, `"weighted"`.
    pub fn strategy(self, strategy: &str) -> Job {
        self.set("strategy", strategy)
    }

    /// An instance label the job requires.
    pub fn label(mut self, key: &str, value: &str) -> Job {
        let labels = self
            .fields
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = labels {
            m.insert(key.into(), value.into());
        }
        self
    }

    /// Most runs of this job at once on one instance.
    pub fn max_concurrent(self, n: u32) -> Job {
        self.set("max_concurrent", n)
    }

    /// Dataflow jobs: keep fetching until a fetch comes back empty.
    pub fn streaming(self, on: bool) -> Job {
        self.set("streaming", on)
    }

    /// Whether the job fires (default true).
    pub fn enabled(self, on: bool) -> Job {
        self.set("enabled", on)
    }

    /// Whether this definition replaces a different copy already in the registry.
    pub fn overwrite(self, on: bool) -> Job {
        self.set("overwrite", on)
    }

    /// The alert channels (names) that hear about this job; default every channel.
    pub fn alerts<S: AsRef<str>>(self, channels: &[S]) -> Job {
        let names: Vec<Value> = channels.iter().map(|c| c.as_ref().into()).collect();
        self.set("alerts", names)
    }

    /// A listener (see [`ListenerSpec`]; [`Job::before`], [`Job::after`] and
    /// [`Job::after_all`] are shorter).
    pub fn listener(mut self, l: ListenerSpec) -> Job {
        let mut v = json!({"on": l.on.as_str(), "timeout": human(l.timeout)});
        match l.action {
            ListenerAction::Command(c) => v["command"] = c.into(),
            ListenerAction::Handler(h) => v["handler"] = h.into(),
        }
        if l.on == ListenerWhen::AfterAll {
            v["wait"] = human(l.wait);
        }
        self.listeners.push(v);
        self
    }

    /// Run the Rust listener `handler` before each execution.
    pub fn before(self, handler: &str) -> Job {
        self.listener(ListenerSpec::new(
            ListenerWhen::Before,
            ListenerAction::Handler(handler.into()),
        ))
    }

    /// Run the Rust listener `handler` after each execution.
    pub fn after(self, handler: &str) -> Job {
        self.listener(ListenerSpec::new(
            ListenerWhen::After,
            ListenerAction::Handler(handler.into()),
        ))
    }

    /// Run the Rust listener `handler` once per fire, after all items finished
    /// (or `wait` after the fire time).
    pub fn after_all(self, handler: &str, wait: Duration) -> Job {
        let mut l = ListenerSpec::new(
            ListenerWhen::AfterAll,
            ListenerAction::Handler(handler.into()),
        );
        l.wait = wait;
        self.listener(l)
    }

    /// The job as its JSON form (unvalidated).
    pub fn to_json(&self) -> Value {
        let mut fields = self.fields.clone();
        if !self.listeners.is_empty() {
            fields.insert("listeners".into(), Value::Array(self.listeners.clone()));
        }
        Value::Object(fields)
    }

    /// Validate the job, reporting every problem with its field.
    pub fn build(&self) -> Result<JobSpec, JobErrors> {
        JobSpec::from_json_value(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcron_core::job::JobKind;

    #[test]
    fn every_builder_method_reaches_its_field() {
        let spec = Job::every("orders", Duration::from_millis(1500))
            .description("sync orders")
            .kind("orders.sync")
            .shards(4)
            .shard_params("0=a,3=d")
            .param("p")
            .timeout(Duration::from_secs(90))
            .retries_with_backoff(3, Duration::from_millis(200), Duration::from_secs(5))
            .failover(false)
            .misfire("catch_up")
            .strategy("round_robin")
            .label("zone", "eu")
            .max_concurrent(2)
            .streaming(true)
            .enabled(false)
            .overwrite(true)
            .alerts(&["pager"])
            .before("prep")
            .after_all("summary", Duration::from_secs(30))
            .build()
            .unwrap();
        assert_eq!(spec.name.as_str(), "orders");
        assert_eq!(spec.kind, JobKind::Handler("orders.sync".into()));
        assert_eq!(spec.shards, 4);
        assert_eq!(spec.shard_params.get(&3).map(String::as_str), Some("d"));
        assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
        assert_eq!(spec.retries.max, 3);
        assert_eq!(spec.retries.initial, Duration::from_millis(200));
        assert!(!spec.failover && !spec.enabled && spec.overwrite && spec.streaming);
        assert_eq!(spec.labels.get("zone").map(String::as_str), Some("eu"));
        assert_eq!(spec.max_concurrent, Some(2));
        assert_eq!(spec.alerts, Some(vec!["pager".to_owned()]));
        assert_eq!(spec.listeners.len(), 2);
        assert_eq!(spec.listeners[1].on, ListenerWhen::AfterAll);
        assert_eq!(spec.listeners[1].wait, Duration::from_secs(30));
    }

    #[test]
    fn problems_name_the_field_like_a_job_file() {
        let err = Job::cron("x", "0 0 25 * * *")
            .tz("Mars/Olympus")
            .kind("h")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("job \"x\": cron:"), "{err}");
        assert!(err.contains("job \"x\": tz:"), "{err}");
        let err = Job::manual("bad name!").kind("h").build().unwrap_err();
        assert!(err.to_string().contains("name:"), "{err}");
        let err = Job::every("y", Duration::from_secs(1))
            .command(&["./a.sh"])
            .streaming(true)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("streaming: only applies"), "{err}");
    }

    #[test]
    fn command_and_http_jobs() {
        let spec = Job::at("once", chrono::Utc::now() + chrono::Duration::hours(1))
            .command(&["/bin/true", "x"])
            .build()
            .unwrap();
        assert!(matches!(spec.kind, JobKind::Script { ref command } if command[1] == "x"));
        let spec = Job::manual("hook")
            .http(json!({"url": "http://127.0.0.1:9/x", "method": "POST"}))
            .build()
            .unwrap();
        assert!(matches!(spec.kind, JobKind::Http(_)));
    }
}
