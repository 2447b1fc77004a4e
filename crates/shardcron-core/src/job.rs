//! Job specifications: the `[[job]]` tables of a job file, their defaults, and how
//! they are read from TOML and JSON and validated.
//!
//! This documentation is the reference for the job file format. A commented example
//! to start from is `examples/jobs.toml` in the repository.
//!
//! # The job file
//!
//! A job file is TOML holding one `[[job]]` table per job, in any order:
//!
//! ```toml
//! [[job]]
//! name = "sync-orders"
//! every = "5s"
//! shards = 4
//! shard_params = "0=north,1=south,2=east,3=west"
//! command = ["./scripts/sync-orders.sh", "--batch", "500"]
//! timeout = "30s"
//! retries = { max = 3, initial = "1s", max_delay = "30s" }
//!
//! [[job]]
//! name = "nightly-report"
//! cron = "30 2 * * *"
//! tz = "Europe/Berlin"
//! kind = "reports.nightly"   # a Rust handler registered through the SDK
//! ```
//!
//! `job` is the only top-level key a job file may have. A file that is empty, or that
//! has no `[[job]]` table, is valid and defines no jobs. Two jobs of one file may not
//! share a name.
//!
//! # Fields of a `[[job]]` table
//!
//! Only `name`, a schedule, and what to run (`kind` and/or `command`) are required.
//! Every other field has the default shown.
//!
//! ## Identity
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `name` | string | required | 1-128 characters of ASCII letters, digits, `.`, `_` and `-`; unique in its namespace |
//! | `description` | string | `""` | free text for people |
//!
//! ## Schedule: exactly one of
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `cron` | string | a cron expression: 5 fields `minute hour day-of-month month day-of-week` (e.g. `"*/10 * * * *"`), 6 with a leading second, or 7 with a trailing year; syntax in [`crate::schedule`] |
//! | `tz` | string | only with `cron`: the IANA time zone the expression is read in, e.g. `"Europe/Berlin"`; default `"UTC"` |
//! | `every` | duration | fixed rate: fires every interval, whatever the runs take; must be greater than zero |
//! | `delay` | duration | fixed delay: fires this long after the item's previous run completed; must be greater than zero |
//! | `at` | RFC 3339 string or TOML offset datetime | once, at this instant, e.g. `at = 2030-01-01T03:00:00Z` or `at = "2030-01-01T04:00:00+01:00"`; the UTC offset is required |
//! | `manual` | boolean | `manual = true`: never fires by itself, only when triggered through the API, the CLI or the console (`manual = false` sets nothing) |
//!
//! Setting none of them, or more than one, is an error; so is `tz` without `cron`.
//!
//! ## Sharding
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `shards` | integer | `1` | number of sharding items, 1 to 10000; each fire runs items `0` to `shards - 1` |
//! | `shard_params` | string | `""` | per-item parameters, `"0=north,1=south"`; see below |
//! | `param` | string | `""` | job-wide parameter, given to every item |
//! | `strategy` | string | `"average"` | how items are split across instances: `average`, `odevity`, `round_robin`, `weighted`, `consistent` |
//! | `labels` | table of strings | `{}` | instance labels required to run the job, e.g. `labels = { region = "eu", role = "worker" }`; keys are one or more of `A-Z a-z 0-9 . _ / -`, values are not empty |
//!
//! `shard_params` is a comma-separated list of `N=value` entries. `N` is an item
//! number below `shards`, given at most once; the value is everything after the first
//! `=` (it may itself contain `=`, but not `,`). Spaces around entries, item numbers
//! and values are ignored. Items without an entry get an empty item parameter. An
//! empty string means no entries.
//!
//! ## What runs
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `kind` | string | `"script"` when `command` is given, `"http"` when `http` is given, else required | `"script"`, `"http"`, or the name of a Rust handler registered through the SDK (1-128 of `A-Z a-z 0-9 . _ - :`) |
//! | `command` | array of strings | required for scripts | the program and its arguments, run without a shell, e.g. `["./scripts/sync.sh", "--fast"]`; the first element may not be empty; only for `kind = "script"` |
//! | `http` | table | required for HTTP jobs | the request an HTTP job sends; see below; only for `kind = "http"` |
//!
//! ## HTTP jobs
//!
//! A job `kind = "http"` sends one HTTP request per item and fire, described by its
//! `http` table (inline, or as a `[job.http]` sub-table after the job's fields):
//!
//! ```toml
//! [[job]]
//! name = "ping"
//! every = "10s"
//! kind = "http"
//! http = { method = "POST", url = "https://example.com/hook", headers = { Authorization = "Bearer x" }, body = '{"item": {{item}}, "fire": "{{fire_time}}"}', timeout = "5s", accept = [200, 204] }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `method` | string | `"GET"` | `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD` (any letter case) |
//! | `url` | string | required | an absolute `http://` or `https://` URL with a host; it may not hold credentials (`user:password@`): put those in a header |
//! | `headers` | table of strings | `{}` | request headers, e.g. `{ Authorization = "Bearer x" }`; names are HTTP tokens, given once whatever their letter case; values have no control characters other than tab. `X-Shardcron-Context`, `X-Shardcron-Token`, `Content-Length` and `Transfer-Encoding` are set by shardcron and may not be given |
//! | `body` | string | none | the request body, with `{{name}}` placeholders (see below); not allowed with `HEAD` |
//! | `timeout` | duration | `"30s"` | longest one request may take, from sending to the end of the response; greater than zero, at most `"1h"` (the job's own `timeout` still bounds the whole run) |
//! | `accept` | array | `["2xx"]` | the status codes that mean success: codes (`200`, or `"200"`), classes (`"2xx"`) or inclusive ranges (`"200-299"`), all within 100-599; not empty |
//!
//! A placeholder `{{name}}` (spaces inside the braces are allowed) in `body` is
//! replaced by a field of the run's sharding context, the same values a script gets
//! as `SHARDCRON_*` variables: `job`, `item`, `total`, `item_param`, `param`,
//! `fire_time` (RFC 3339, the scheduled time), `execution_id`, `instance`, `token`
//! (the fencing token), `source` (`NORMAL`, `MISFIRE`, `FAILOVER`, `RETRY`,
//! `MANUAL`) and `attempt`. Values are inserted as they are, not escaped: quote
//! them in a JSON body (`"{{param}}"`) and keep `param` and `shard_params` free of
//! characters that would need escaping. Every `{{` must open a known placeholder
//! closed by `}}`; an unknown name or an unclosed `{{` is an error, and there is no
//! way to send a literal `{{`.
//!
//! Every request also carries the whole context as one compact JSON object in the
//! header `X-Shardcron-Context`, and the fencing token in `X-Shardcron-Token`, so
//! that the receiver can reject a stale run. A request whose status is outside
//! `accept` fails the run; what the executor records is described in the runtime's
//! `http_job` module.
//!
//! Header values are secrets (tokens, API keys): they are never written by `Debug`,
//! and whatever shows a job to people (REST API, console, logs) must show
//! [`JobSpec::redacted`], which replaces them with [`REDACTED`]. The URL and the
//! body are not redacted: keep secrets in headers.
//!
//! ## Running
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `timeout` | duration | none | longest a run may take before it is stopped; greater than zero |
//! | `retries` | integer or table | `0` | further attempts after a failed one; see below |
//! | `failover` | boolean | `true` | re-run a fire on another instance when the instance running it dies |
//! | `misfire` | string or table | `"fire_once"` | what to do with fires that could not run on time; see below |
//! | `catch_up_max` | integer | `10` | with `misfire = "catch_up"` only: most missed fires to run, 1 to 10000 |
//! | `max_concurrent` | integer | none (unbounded) | most runs of this job at once on one instance, at least 1 |
//! | `enabled` | boolean | `true` | whether the job fires; a disabled job can still be triggered by hand |
//! | `overwrite` | boolean | `false` | whether an agent starting with this file replaces the copy of the job already in the registry (edits made through the API or console) |
//! | `streaming` | boolean | `false` | Rust dataflow handlers only: keep fetching and processing until a fetch comes back empty, the item is about to move to another instance, or the instance stops |
//! | `listeners` | array of tables | none | at most 16; see below |
//! | `alerts` | array of strings | every channel | the names of the node's `[[alert]]` channels that hear about this job; `[]` for none |
//!
//! Listeners (`[[job.listeners]]`) run programs or Rust listeners around the job's
//! executions:
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `on` | string | required | `"before"` each execution, `"after"` each execution (both on the instance that runs it), or `"after_all"`: once per fire across the cluster, when every item of the fire has finished (or `wait` has passed); not for `delay` jobs with several shards, whose items do not share fires |
//! | `command` | array of strings | | a program and its arguments, run like a script job (same allow-list, same `SHARDCRON_*` variables, plus `SHARDCRON_LISTENER`, after a run `SHARDCRON_STATUS` and `SHARDCRON_CAUSE`, and for `after_all` `SHARDCRON_ITEMS` (`0=SUCCEEDED,1=FAILED`) and `SHARDCRON_COMPLETE`) |
//! | `handler` | string | | or the name of a Rust listener registered on the instances; exactly one of `command` and `handler` |
//! | `timeout` | duration | `"1m"` | longest the listener may run |
//! | `wait` | duration | `"10m"` | `after_all` only, at most `"1h"`: longest wait for all items to finish, from the fire time (from the start, for a fire that ran late); the listener then runs with the items finished so far |
//!
//! A `before` listener that fails (or times out) fails the attempt, which the retry
//! policy may then repeat; an `after` or `after_all` listener that fails is logged
//! and changes no status.
//!
//! `retries` is either the number of further attempts, 0 to 100 (`retries = 3`), or a
//! table `retries = { max = 3, initial = "1s", max_delay = "1m" }`:
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `max` | integer | required in the table form | further attempts, 0 to 100 |
//! | `initial` | duration | `"1s"` | delay before the first retry, greater than zero; later delays grow exponentially, with jitter |
//! | `max_delay` | duration | `"1m"`, or `initial` when that is longer | upper bound of a delay; at least `initial` |
//!
//! `misfire` is one of
//!
//! - `"fire_once"` (default): all fires missed while the job could not run become one
//!   run, as soon as possible;
//! - `"skip"`: missed fires are dropped, the job waits for its next fire;
//! - `"catch_up"`: every missed fire runs, at most `catch_up_max` of them (default 10).
//!
//! The table form `misfire = { policy = "catch_up", max = 5 }` says the same as
//! `misfire = "catch_up"` with `catch_up_max = 5`; `max` is only allowed with
//! `catch_up`, and only one of `misfire.max` and `catch_up_max` may be given. The
//! policy also governs a fire that arrives while the previous run of the same item is
//! still going.
//!
//! ## Durations
//!
//! A duration is a string of number-and-unit pairs: `"500ms"`, `"30s"`, `"5m"`,
//! `"1h30m"`, `"1d"` (units `ms`, `s`, `m`, `h`, `d`). A bare number such as
//! `timeout = 30` is refused, so that it cannot be misread.
//!
//! # Validation
//!
//! Reading a file checks every field of every job and reports all problems at once
//! ([`JobErrors`]), one per line, each naming the job, the field and what is wrong:
//!
//! ```text
//! job "orders": shards: must be between 1 and 10000, got 0
//! job "orders": colour: unknown field
//! job "orders": timeout: expected a duration string such as "30s", got an integer
//! job "#3": name: missing
//! ```
//!
//! A job whose name is missing or invalid is called `#N`, its position in the file
//! counting from 1. Unknown fields are errors, so that a typo does not silently fall
//! back to a default; a close known field is suggested when there is one. A TOML
//! syntax error is reported alone, as field `(file)`, with its line and column.
//!
//! # JSON form
//!
//! Jobs are stored in the registry and exchanged over the REST API as JSON objects
//! with the same fields as a `[[job]]` table ([`JobSpec::to_json`],
//! [`JobSpec::from_json`]); a whole file is `{"job": [ ... ]}` ([`JobFile::from_json`]).
//! The JSON written by [`JobSpec::to_json`] is deterministic and reads back to the
//! same spec:
//!
//! - keys in alphabetical order; every field is written, except the schedule fields
//!   that do not apply, `command` (scripts only), `http` (HTTP jobs only; all its
//!   keys are written except `body` when there is none), `catch_up_max` (only with
//!   `"catch_up"`), and `timeout` and `max_concurrent` when not set;
//! - the schedule as its one field; `tz` is always written with `cron` (`"UTC"` by
//!   default); `at` as RFC 3339 in UTC, e.g. `"2030-01-01T03:00:00Z"`;
//! - durations as strings in their shortest form (`"1m30s"`);
//! - `shard_params` as its string form (`""` when there are none), `retries` as a
//!   table with all three keys, `misfire` as a string, `labels` as an object;
//! - `http.method` in capitals, `http.accept` entries as integers for single codes
//!   and strings for classes (`"2xx"`) and ranges (`"200-204"`).
//!
//! This form holds the HTTP header values in clear: it is for the registry. API
//! responses and anything else shown to people must use the form of
//! [`JobSpec::redacted`]; a job sent back with [`REDACTED`] header values (an edit
//! in the console) gets its stored values back with [`JobSpec::restore_redacted`].
//!
//! When reading JSON, `null` is the same as an absent field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::duration::{HumanDuration, parse_duration};
use crate::execution::ShardingContext;
use crate::schedule::{CronSchedule, Schedule, ScheduleError, parse_tz};
use crate::sharding::Strategy;
use crate::value::{Table, Val, closest};

/// Most sharding items a job may have.
pub const MAX_SHARDS: u32 = 10_000;
/// Most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Most missed fires a `catch_up` misfire policy may run.
pub const MAX_CATCH_UP: u32 = 10_000;
/// Missed fires run by `misfire = "catch_up"` when `catch_up_max` is not given.
pub const DEFAULT_CATCH_UP_MAX: u32 = 10;

/// Longest job or handler name, in characters.
const MAX_NAME_LEN: usize = 128;

/// The fields of a `[[job]]` table, in the order [`JobSpec::to_toml`] writes them.
const JOB_FIELDS: &[&str] = &[
    "name",
    "description",
    "cron",
    "tz",
    "every",
    "delay",
    "at",
    "manual",
    "shards",
    "shard_params",
    "param",
    "kind",
    "command",
    "http",
    "timeout",
    "retries",
    "failover",
    "misfire",
    "catch_up_max",
    "strategy",
    "labels",
    "overwrite",
    "enabled",
    "max_concurrent",
    "streaming",
    "listeners",
    "alerts",
];
const LISTENER_FIELDS: &[&str] = &["on", "command", "handler", "timeout", "wait"];
const RETRY_FIELDS: &[&str] = &["max", "initial", "max_delay"];
const HTTP_FIELDS: &[&str] = &["method", "url", "headers", "body", "timeout", "accept"];
const MISFIRE_FIELDS: &[&str] = &["policy", "max"];
/// Top-level keys of a job file. `settings` and `scripts` belong to the `shardcron`
/// binary's configuration (a config file is a job file with those two tables); the
/// job reader skips them and the binary validates them.
const FILE_FIELDS: &[&str] = &["job", "settings", "scripts", "alert"];

/// A validated job name: 1-128 characters of ASCII letters, digits, `.`, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobName(String);

impl JobName {
    /// Validate a job name.
    pub fn new(name: &str) -> Result<JobName, String> {
        let valid = (1..=MAX_NAME_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(JobName(name.to_owned()))
        } else {
            Err(format!(
                "must be 1-128 characters of letters, digits, '.', '_' and '-', got {name:?}"
            ))
        }
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
    /// An HTTP request (`kind = "http"`, `http = { ... }`).
    Http(HttpSpec),
    /// A Rust handler registered under this name through the SDK.
    Handler(String),
}

/// Default of [`HttpSpec::timeout`]: 30 seconds per request.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest [`HttpSpec::timeout`]: one hour.
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(3600);
/// What [`JobSpec::redacted`] and the `Debug` of [`HttpSpec`] show instead of a
/// header value.
pub const REDACTED: &str = "<redacted>";
/// The header that carries the sharding context of an HTTP job's run, as JSON.
pub const CONTEXT_HEADER: &str = "X-Shardcron-Context";
/// The header that carries the fencing token of an HTTP job's run.
pub const TOKEN_HEADER: &str = "X-Shardcron-Token";
/// The `{{name}}` placeholders an HTTP body may use: the fields of
/// [`ShardingContext`].
pub const HTTP_PLACEHOLDERS: &[&str] = &[
    "job",
    "item",
    "total",
    "item_param",
    "param",
    "fire_time",
    "execution_id",
    "instance",
    "token",
    "source",
    "attempt",
];
/// Headers shardcron sets itself, which a job may not give (compared ignoring case).
const RESERVED_HEADERS: &[&str] = &[
    CONTEXT_HEADER,
    TOKEN_HEADER,
    "Content-Length",
    "Transfer-Encoding",
];

/// The method of an HTTP job's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HttpMethod {
    /// `GET` (default).
    #[default]
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `HEAD`.
    Head,
}

impl HttpMethod {
    /// Every method, in the order the documentation lists them.
    pub const ALL: [HttpMethod; 6] = [
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
        HttpMethod::Head,
    ];

    /// The method's name in capitals, as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Head => "HEAD",
        }
    }

    /// The method of this name, in any letter case.
    pub fn parse(name: &str) -> Option<HttpMethod> {
        HttpMethod::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of HTTP status codes, within 100-599: one code (`204`), a
/// class (`"2xx"`) or a range (`"200-204"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    /// Lowest code of the range.
    pub first: u16,
    /// Highest code of the range (equal to `first` for a single code).
    pub last: u16,
}

impl StatusRange {
    /// `2xx`, the default of [`HttpSpec::accept`].
    pub const SUCCESS: StatusRange = StatusRange {
        first: 200,
        last: 299,
    };

    /// Whether `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.first..=self.last).contains(&status)
    }

    /// Parse `"204"`, `"2xx"` (or `"2XX"`) or `"200-204"`.
    pub fn parse(text: &str) -> Result<StatusRange, String> {
        const FORM: &str =
            "a status code such as 200, a class such as \"2xx\" or a range such as \"200-204\"";
        let code = |t: &str| -> Option<u16> {
            let t = t.trim();
            if t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse().ok()
            } else {
                None
            }
        };
        let t = text.trim();
        let range = if let Some(class) = t
            .strip_suffix("xx")
            .or_else(|| t.strip_suffix("XX"))
            .filter(|c| c.len() == 1)
            .and_then(|c| c.parse::<u16>().ok())
        {
            Some((class * 100, class * 100 + 99))
        } else if let Some((a, b)) = t.split_once('-') {
            code(a).zip(code(b))
        } else {
            code(t).map(|c| (c, c))
        };
        let Some((first, last)) = range else {
            return Err(format!("expected {FORM}, got {text:?}"));
        };
        StatusRange::new(first, last)
    }

    /// The range `first..=last`, checked to be within 100-599 and not reversed.
    pub fn new(first: u16, last: u16) -> Result<StatusRange, String> {
        if !(100..=599).contains(&first) || !(100..=599).contains(&last) {
            let shown = StatusRange { first, last };
            return Err(format!("status codes are between 100 and 599, got {shown}"));
        }
        if first > last {
            return Err(format!("range {first}-{last} is reversed"));
        }
        Ok(StatusRange { first, last })
    }
}

impl fmt::Display for StatusRange {
    /// `204`, `2xx` or `200-204`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else if self.first.is_multiple_of(100) && self.last == self.first + 99 {
            write!(f, "{}xx", self.first / 100)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The request of an HTTP job (`kind = "http"`); see "HTTP jobs" in the module
/// documentation.
///
/// Its `Debug` shows header names but not their values.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// Request method (default `GET`).
    pub method: HttpMethod,
    /// Absolute `http://` or `https://` URL, without credentials.
    pub url: String,
    /// Request headers, names as written. The values are secrets.
    pub headers: BTreeMap<String, String>,
    /// Body template with `{{name}}` placeholders ([`HTTP_PLACEHOLDERS`]).
    pub body: Option<String>,
    /// Longest one request may take ([`DEFAULT_HTTP_TIMEOUT`]).
    pub timeout: Duration,
    /// Status codes that mean success (default `2xx`); never empty.
    pub accept: Vec<StatusRange>,
}

impl fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Names<'a>(&'a BTreeMap<String, String>);
        impl fmt::Debug for Names<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.keys().map(|k| (k, REDACTED)))
                    .finish()
            }
        }
        f.debug_struct("HttpSpec")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &Names(&self.headers))
            .field("body", &self.body)
            .field("timeout", &self.timeout)
            .field("accept", &self.accept)
            .finish()
    }
}

/// A piece of a body template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits a body template into text and placeholders, or says what is wrong.
fn template_pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "\"{{{{\" at character {} is not closed by \"}}}}\"",
                template[..template.len() - rest.len() + open]
                    .chars()
                    .count()
                    + 1
            ));
        };
        let name = after[..close].trim();
        if !HTTP_PLACEHOLDERS.contains(&name) {
            let hint = match closest(name, HTTP_PLACEHOLDERS) {
                Some(near) => format!("did you mean {{{{{near}}}}}? "),
                None => String::new(),
            };
            return Err(format!(
                "unknown placeholder {{{{{name}}}}} ({hint}known: {})",
                HTTP_PLACEHOLDERS.join(", ")
            ));
        }
        pieces.push(Piece::Placeholder(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

impl HttpSpec {
    /// A request with no headers, no body, the default timeout and `accept = ["2xx"]`.
    pub fn new(method: HttpMethod, url: impl Into<String>) -> HttpSpec {
        HttpSpec {
            method,
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            timeout: DEFAULT_HTTP_TIMEOUT,
            accept: vec![StatusRange::SUCCESS],
        }
    }

    /// Whether a response with `status` is a success.
    pub fn accepts(&self, status: u16) -> bool {
        self.accept.iter().any(|r| r.contains(status))
    }

    /// The body to send for the run described by `ctx`, placeholders filled in;
    /// `Ok(None)` when there is no body. Fails only for a spec that was not
    /// validated (an unknown or unclosed placeholder).
    pub fn render_body(&self, ctx: &ShardingContext) -> Result<Option<String>, String> {
        let Some(template) = &self.body else {
            return Ok(None);
        };
        let vars = ctx.env_vars();
        let mut out = String::with_capacity(template.len());
        for piece in template_pieces(template)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Placeholder(name) => {
                    let var = format!("SHARDCRON_{}", name.to_ascii_uppercase());
                    let value = vars
                        .iter()
                        .find(|(k, _)| *k == var)
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| format!("placeholder {{{{{name}}}}} has no value"))?;
                    out.push_str(value);
                }
            }
        }
        Ok(Some(out))
    }

    /// The same request with every header value replaced by [`REDACTED`].
    pub fn redacted(&self) -> HttpSpec {
        HttpSpec {
            headers: self
                .headers
                .keys()
                .map(|k| (k.clone(), REDACTED.to_owned()))
                .collect(),
            ..self.clone()
        }
    }

    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        // Sorted keys whatever serde_json's map preserves, as in `JobSpec::to_json`.
        let mut m = BTreeMap::new();
        m.insert("method", Value::String(self.method.as_str().into()));
        m.insert("url", Value::String(self.url.clone()));
        m.insert(
            "headers",
            Value::Object(
                self.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        if let Some(body) = &self.body {
            m.insert("body", Value::String(body.clone()));
        }
        m.insert(
            "timeout",
            Value::String(HumanDuration(self.timeout).to_string()),
        );
        m.insert(
            "accept",
            Value::Array(
                self.accept
                    .iter()
                    .map(|r| {
                        if r.first == r.last {
                            Value::from(r.first)
                        } else {
                            Value::String(r.to_string())
                        }
                    })
                    .collect(),
            ),
        );
        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
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
    /// For Rust dataflow handlers: keep fetching and processing until a fetch
    /// comes back empty, the item is about to move, or the instance stops.
    pub streaming: bool,
    /// Listeners: before and after each execution, and once per fire after all
    /// its items (in the order written).
    pub listeners: Vec<ListenerSpec>,
    /// The alert channels (by name, configured on the nodes) that hear about
    /// this job; `None` means every channel of the node, an empty list none.
    pub alerts: Option<Vec<String>>,
}

/// Most listeners a job may have.
pub const MAX_LISTENERS: usize = 16;
/// How long a listener may run when its `timeout` is not given.
pub const DEFAULT_LISTENER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `wait` of an `after_all` listener (its per-fire markers live at least
/// this long).
pub const MAX_LISTENER_WAIT: Duration = Duration::from_secs(3600);
/// How long an `after_all` listener waits for the items of a fire when its `wait`
/// is not given (counted from the scheduled fire time).
pub const DEFAULT_LISTENER_WAIT: Duration = Duration::from_secs(600);

/// When a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerWhen {
    /// Before each execution, on the instance that runs it; a failure fails the
    /// attempt (and the retry policy applies).
    Before,
    /// After each execution, on the instance that ran it, with its status.
    After,
    /// Once per fire across the cluster (distribute-once), after every item of the
    /// fire has finished, or when `wait` has passed since the fire time.
    AfterAll,
}

impl ListenerWhen {
    /// The name used in job files: `before`, `after`, `after_all`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerWhen::Before => "before",
            ListenerWhen::After => "after",
            ListenerWhen::AfterAll => "after_all",
        }
    }

    /// Parse a job-file name.
    pub fn parse(name: &str) -> Option<ListenerWhen> {
        match name {
            "before" => Some(ListenerWhen::Before),
            "after" => Some(ListenerWhen::After),
            "after_all" => Some(ListenerWhen::AfterAll),
            _ => None,
        }
    }
}

/// What a listener runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerAction {
    /// A program (argv, no shell), run like a script job.
    Command(Vec<String>),
    /// A Rust listener registered under this name on the instances.
    Handler(String),
}

/// One `[[job.listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// When it runs.
    pub on: ListenerWhen,
    /// What it runs.
    pub action: ListenerAction,
    /// Longest it may run (default one minute).
    pub timeout: Duration,
    /// `after_all` only: longest wait for the fire's items, from the fire time.
    pub wait: Duration,
}

impl ListenerSpec {
    /// A listener with the default timeout and wait.
    pub fn new(on: ListenerWhen, action: ListenerAction) -> ListenerSpec {
        ListenerSpec {
            on,
            action,
            timeout: DEFAULT_LISTENER_TIMEOUT,
            wait: DEFAULT_LISTENER_WAIT,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("on".into(), self.on.as_str().into());
        match &self.action {
            ListenerAction::Command(c) => {
                m.insert("command".into(), c.clone().into());
            }
            ListenerAction::Handler(h) => {
                m.insert("handler".into(), h.clone().into());
            }
        }
        m.insert(
            "timeout".into(),
            HumanDuration(self.timeout).to_string().into(),
        );
        if self.on == ListenerWhen::AfterAll {
            m.insert("wait".into(), HumanDuration(self.wait).to_string().into());
        }
        serde_json::Value::Object(m)
    }
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
        let root = text
            .parse::<toml::Table>()
            .map_err(|e| JobErrors(vec![toml_syntax_problem(text, &e)]))?;
        let root = Val::from_toml(toml::Value::Table(root));
        JobFile::from_val(&root, "a TOML document")
    }

    /// Parse and validate the JSON form (`{"job": [ ... ]}`).
    pub fn from_json(text: &str) -> Result<JobFile, JobErrors> {
        let root = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| JobErrors(vec![json_syntax_problem("(file)", &e)]))?;
        JobFile::from_val(&Val::from_json(&root), "a JSON object")
    }

    /// The file as TOML, one `[[job]]` table per job; [`JobFile::from_toml`] reads it
    /// back to the same jobs.
    pub fn to_toml(&self) -> String {
        let blocks: Vec<String> = self.jobs.iter().map(JobSpec::to_toml).collect();
        blocks.join("\n")
    }

    fn from_val(root: &Val, expected: &str) -> Result<JobFile, JobErrors> {
        let mut problems = Vec::new();
        let jobs = match root {
            Val::Table(t) => read_file(t, &mut problems),
            other => {
                problems.push(Problem {
                    job: None,
                    field: "(file)".to_owned(),
                    message: format!("expected {expected}, got {}", other.type_name()),
                });
                Vec::new()
            }
        };
        if problems.is_empty() {
            Ok(JobFile { jobs })
        } else {
            Err(JobErrors(problems))
        }
    }
}

impl JobSpec {
    /// A job with every optional field at its default: no description, one shard,
    /// no parameters, no timeout, no retries, failover on, `fire_once` misfires,
    /// `average` strategy, no labels, not overwriting, enabled, unbounded concurrency.
    pub fn new(name: JobName, schedule: Schedule, kind: JobKind) -> JobSpec {
        JobSpec {
            name,
            description: String::new(),
            schedule,
            shards: 1,
            shard_params: BTreeMap::new(),
            param: String::new(),
            kind,
            timeout: None,
            retries: RetryPolicy::default(),
            failover: true,
            misfire: MisfirePolicy::default(),
            strategy: Strategy::Average,
            labels: BTreeMap::new(),
            overwrite: false,
            enabled: true,
            max_concurrent: None,
            streaming: false,
            listeners: Vec::new(),
            alerts: None,
        }
    }

    /// Parse and validate one job from its JSON form (as stored in the registry and
    /// sent to the API). Problems name no job when the name itself is unusable.
    pub fn from_json(text: &str) -> Result<JobSpec, JobErrors> {
        let value = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| JobErrors(vec![json_syntax_problem("(document)", &e)]))?;
        JobSpec::from_json_value(&value)
    }

    /// Validate one job given as an already parsed JSON value (e.g. a REST request
    /// body). Problems name no job when the name itself is unusable.
    pub fn from_json_value(value: &serde_json::Value) -> Result<JobSpec, JobErrors> {
        let mut problems = Vec::new();
        let spec = match Val::from_json(value) {
            Val::Table(t) => read_job(&t, None, &mut problems),
            other => {
                problems.push(Problem {
                    job: None,
                    field: "(document)".to_owned(),
                    message: format!("expected a JSON object, got {}", other.type_name()),
                });
                None
            }
        };
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ if problems.is_empty() => Err(JobErrors(vec![Problem {
                job: None,
                field: "(document)".to_owned(),
                message: "invalid job".to_owned(),
            }])),
            _ => Err(JobErrors(problems)),
        }
    }

    /// Check a spec built in code against the rules of the job file, and that its
    /// JSON form reads back to the same spec (it does not when a `shard_params` value
    /// contains `,` or surrounding spaces, or a duration is finer than a millisecond).
    pub fn validate(&self) -> Result<(), JobErrors> {
        let back = JobSpec::from_json_value(&self.to_json())?;
        if back == *self {
            return Ok(());
        }
        let field = if back.shard_params != self.shard_params {
            "shard_params"
        } else if back.schedule != self.schedule {
            "schedule"
        } else if back.timeout != self.timeout {
            "timeout"
        } else if back.retries != self.retries {
            "retries"
        } else {
            "(spec)"
        };
        Err(JobErrors(vec![Problem {
            job: Some(self.name.as_str().to_owned()),
            field: field.to_owned(),
            message: "cannot be written in a job file exactly (a shard parameter with ',' \
                      or surrounding spaces, or a duration finer than a millisecond)"
                .to_owned(),
        }]))
    }

    /// The job as it may be shown to people: the same spec with every HTTP header
    /// value replaced by [`REDACTED`]. REST API responses, the console and logs
    /// must show this form (its [`JobSpec::to_json`]), never the spec itself, whose
    /// JSON form holds the header values in clear for the registry.
    pub fn redacted(&self) -> JobSpec {
        let mut spec = self.clone();
        if let JobKind::Http(http) = &self.kind {
            spec.kind = JobKind::Http(http.redacted());
        }
        spec
    }

    /// Undo [`JobSpec::redacted`] for a job sent back by a client that was shown
    /// the redacted form: every HTTP header whose value is exactly [`REDACTED`]
    /// gets the value of the header of the same name in `stored` (the copy in the
    /// registry), when it has one. Other headers are left as sent.
    pub fn restore_redacted(&mut self, stored: &JobSpec) {
        let (JobKind::Http(http), JobKind::Http(old)) = (&mut self.kind, &stored.kind) else {
            return;
        };
        for (name, value) in &mut http.headers {
            if value == REDACTED
                && let Some(secret) = old.headers.get(name)
            {
                value.clone_from(secret);
            }
        }
    }

    /// The JSON form, with the same field names as the job file (see "JSON form" in
    /// the module documentation); [`JobSpec::from_json_value`] reads it back to the
    /// same spec. It holds HTTP header values in clear: show people the form of
    /// [`JobSpec::redacted`].
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;

        fn s(text: impl Into<String>) -> Value {
            Value::String(text.into())
        }
        fn human(d: Duration) -> Value {
            Value::String(HumanDuration(d).to_string())
        }
        // Sorted keys whatever serde_json's map preserves, so the text is stable.
        fn object(m: BTreeMap<&str, Value>) -> Value {
            Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        }

        let mut m = BTreeMap::new();
        m.insert("name", s(self.name.as_str()));
        m.insert("description", s(&self.description));
        match &self.schedule {
            Schedule::Cron(c) => {
                m.insert("cron", s(c.expr()));
                m.insert("tz", s(c.tz().name()));
            }
            Schedule::Every(d) => {
                m.insert("every", human(*d));
            }
            Schedule::Delay(d) => {
                m.insert("delay", human(*d));
            }
            Schedule::At(t) => {
                m.insert("at", s(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
            }
            Schedule::Manual => {
                m.insert("manual", Value::Bool(true));
            }
        }
        m.insert("shards", self.shards.into());
        let params: Vec<String> = self
            .shard_params
            .iter()
            .map(|(item, value)| format!("{item}={value}"))
            .collect();
        m.insert("shard_params", s(params.join(",")));
        m.insert("param", s(&self.param));
        match &self.kind {
            JobKind::Script { command } => {
                m.insert("kind", s("script"));
                m.insert("command", Value::Array(command.iter().map(s).collect()));
            }
            JobKind::Http(http) => {
                m.insert("kind", s("http"));
                m.insert("http", http.to_json());
            }
            JobKind::Handler(name) => {
                m.insert("kind", s(name));
            }
        }
        if let Some(t) = self.timeout {
            m.insert("timeout", human(t));
        }
        let mut retries = BTreeMap::new();
        retries.insert("max", self.retries.max.into());
        retries.insert("initial", human(self.retries.initial));
        retries.insert("max_delay", human(self.retries.max_delay));
        m.insert("retries", object(retries));
        m.insert("failover", Value::Bool(self.failover));
        match self.misfire {
            MisfirePolicy::FireOnce => {
                m.insert("misfire", s("fire_once"));
            }
            MisfirePolicy::Skip => {
                m.insert("misfire", s("skip"));
            }
            MisfirePolicy::CatchUp { max } => {
                m.insert("misfire", s("catch_up"));
                m.insert("catch_up_max", max.into());
            }
        }
        m.insert("strategy", s(self.strategy.name()));
        m.insert(
            "labels",
            Value::Object(self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect()),
        );
        m.insert("overwrite", Value::Bool(self.overwrite));
        m.insert("enabled", Value::Bool(self.enabled));
        if let Some(n) = self.max_concurrent {
            m.insert("max_concurrent", n.into());
        }
        if self.streaming {
            m.insert("streaming", Value::Bool(true));
        }
        if !self.listeners.is_empty() {
            m.insert(
                "listeners",
                Value::Array(self.listeners.iter().map(ListenerSpec::to_json).collect()),
            );
        }
        if let Some(alerts) = &self.alerts {
            m.insert("alerts", Value::Array(alerts.iter().map(s).collect()));
        }
        object(m)
    }

    /// The job as one `[[job]]` TOML table with the fields of [`JobSpec::to_json`],
    /// in the order of the reference above; [`JobFile::from_toml`] reads it back to
    /// the same spec.
    pub fn to_toml(&self) -> String {
        let json = self.to_json();
        let mut out = String::from("[[job]]\n");
        if let serde_json::Value::Object(m) = &json {
            for key in JOB_FIELDS {
                let Some(v) = m.get(*key) else { continue };
                out.push_str(key);
                out.push_str(" = ");
                match v {
                    // Written in the order people read it: max first.
                    serde_json::Value::Object(r) if *key == "retries" => {
                        let parts: Vec<String> = RETRY_FIELDS
                            .iter()
                            .filter_map(|k| {
                                let mut part = format!("{k} = ");
                                write_toml_value(&mut part, r.get(*k)?);
                                Some(part)
                            })
                            .collect();
                        out.push_str(&format!("{{ {} }}", parts.join(", ")));
                    }
                    v => write_toml_value(&mut out, v),
                }
                out.push('\n');
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------
// Reading: TOML and JSON are first turned into one generic value, then validated
// field by field so that every problem of every job is reported in one go.

/// A field's value; `null` counts as absent.
fn get<'t>(t: &'t Table, key: &str) -> Option<&'t Val> {
    t.get(key).filter(|v| !matches!(v, Val::Null))
}

/// Marks a failed field whose problem has already been recorded.
#[derive(Debug, Clone, Copy)]
struct Reported;

/// Records problems for one job.
struct Cx<'p> {
    job: Option<String>,
    problems: &'p mut Vec<Problem>,
}

impl Cx<'_> {
    fn report(&mut self, field: &str, message: impl Into<String>) -> Reported {
        self.problems.push(Problem {
            job: self.job.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
        Reported
    }

    fn wrong_type(&mut self, field: &str, expected: &str, got: &Val) -> Reported {
        self.report(
            field,
            format!("expected {expected}, got {}", got.type_name()),
        )
    }

    fn string<'v>(&mut self, v: &'v Val, field: &str) -> Result<&'v str, Reported> {
        match v {
            Val::Str(s) => Ok(s),
            other => Err(self.wrong_type(field, "a string", other)),
        }
    }

    fn boolean(&mut self, v: &Val, field: &str) -> Result<bool, Reported> {
        match v {
            Val::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    fn integer(&mut self, v: &Val, field: &str, min: u32, max: u32) -> Result<u32, Reported> {
        match v {
            Val::Int(n) => match u32::try_from(*n) {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ if max == u32::MAX => {
                    Err(self.report(field, format!("must be at least {min}, got {n}")))
                }
                _ => Err(self.report(field, format!("must be between {min} and {max}, got {n}"))),
            },
            other => Err(self.wrong_type(field, "an integer", other)),
        }
    }

    /// A duration greater than zero.
    fn duration(&mut self, v: &Val, field: &str) -> Result<Duration, Reported> {
        match v {
            Val::Str(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    Err(self.report(field, ScheduleError::ZeroInterval.to_string()))
                }
                Ok(d) => Ok(d),
                Err(e) => Err(self.report(field, e.to_string())),
            },
            other => Err(self.wrong_type(field, "a duration string such as \"30s\"", other)),
        }
    }

    /// Reports every key of `t` that is not in `known`, suggesting a close one.
    fn unknown_fields(&mut self, t: &Table, known: &[&str], prefix: &str) {
        for key in t.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match closest(key, known) {
                Some(near) => format!("unknown field (did you mean {near:?}?)"),
                None => "unknown field".to_owned(),
            };
            self.report(&format!("{prefix}{key}"), message);
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn toml_syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let position = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        });
    Problem {
        job: None,
        field: "(file)".to_owned(),
        message: format!(
            "{}invalid TOML: {}",
            position.unwrap_or_default(),
            e.message().trim()
        ),
    }
}

fn json_syntax_problem(field: &str, e: &serde_json::Error) -> Problem {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    Problem {
        job: None,
        field: field.to_owned(),
        message: format!(
            "line {}, column {}: invalid JSON: {message}",
            e.line(),
            e.column()
        ),
    }
}

/// Reads the top level of a job file.
fn read_file(root: &Table, problems: &mut Vec<Problem>) -> Vec<JobSpec> {
    for key in root.keys() {
        if !FILE_FIELDS.contains(&key.as_str()) {
            let hint = match closest(key, FILE_FIELDS) {
                Some(near) => format!("; did you mean {near:?}?"),
                None => String::new(),
            };
            problems.push(Problem {
                job: None,
                field: key.clone(),
                message: format!(
                    "unknown top-level key (a job file holds [[job]] and [[alert]] tables and the [settings] and [scripts] tables{hint})"
                ),
            });
        }
    }
    let items: &[Val] = match get(root, "job") {
        None => &[],
        Some(Val::Array(items)) => items,
        Some(other) => {
            problems.push(Problem {
                job: None,
                field: "job".to_owned(),
                message: format!(
                    "expected an array of tables ([[job]]), got {}",
                    other.type_name()
                ),
            });
            &[]
        }
    };
    let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut jobs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let number = i + 1;
        let Val::Table(t) = item else {
            problems.push(Problem {
                job: Some(format!("#{number}")),
                field: "job".to_owned(),
                message: format!("expected a table ([[job]]), got {}", item.type_name()),
            });
            continue;
        };
        if let Some(spec) = read_job(t, Some(format!("#{number}")), problems) {
            jobs.push(spec);
        }
        if let Some(Val::Str(name)) = get(t, "name")
            && JobName::new(name).is_ok()
        {
            match first_seen.get(name.as_str()) {
                Some(first) => problems.push(Problem {
                    job: Some(name.clone()),
                    field: "name".to_owned(),
                    message: format!("duplicate job name (also job #{first})"),
                }),
                None => {
                    first_seen.insert(name, number);
                }
            }
        }
    }
    jobs
}

/// Reads one `[[job]]` table. `unnamed` is what problems call the job when its
/// name is missing or invalid. Returns `None` when a problem was recorded.
fn read_job(t: &Table, unnamed: Option<String>, problems: &mut Vec<Problem>) -> Option<JobSpec> {
    let before = problems.len();
    let mut cx = Cx {
        job: unnamed,
        problems,
    };
    let name = match get(t, "name") {
        None => Err(cx.report("name", "missing")),
        Some(Val::Str(s)) => match JobName::new(s) {
            Ok(name) => {
                cx.job = Some(s.clone());
                Ok(name)
            }
            Err(message) => Err(cx.report("name", message)),
        },
        Some(other) => Err(cx.wrong_type("name", "a string", other)),
    };
    let description = opt(t, "description", |v| cx.string(v, "description"))
        .map(|d| d.unwrap_or_default().to_owned());
    let schedule = read_schedule(&mut cx, t);
    let shards =
        opt(t, "shards", |v| cx.integer(v, "shards", 1, MAX_SHARDS)).map(|n| n.unwrap_or(1));
    let shard_params = match opt(t, "shard_params", |v| cx.string(v, "shard_params")) {
        Ok(Some(s)) => read_shard_params(&mut cx, s, shards.ok()),
        Ok(None) => Ok(BTreeMap::new()),
        Err(r) => Err(r),
    };
    let param =
        opt(t, "param", |v| cx.string(v, "param")).map(|p| p.unwrap_or_default().to_owned());
    let kind = read_kind(&mut cx, t);
    let timeout = opt(t, "timeout", |v| cx.duration(v, "timeout"));
    let retries = read_retries(&mut cx, t);
    let failover = opt(t, "failover", |v| cx.boolean(v, "failover")).map(|b| b.unwrap_or(true));
    let misfire = read_misfire(&mut cx, t);
    let strategy = match opt(t, "strategy", |v| cx.string(v, "strategy")) {
        Ok(None) => Ok(Strategy::Average),
        Ok(Some(s)) => Strategy::parse(s).map_err(|message| cx.report("strategy", message)),
        Err(r) => Err(r),
    };
    let labels = read_labels(&mut cx, t);
    let overwrite = opt(t, "overwrite", |v| cx.boolean(v, "overwrite")).map(|b| b.unwrap_or(false));
    let enabled = opt(t, "enabled", |v| cx.boolean(v, "enabled")).map(|b| b.unwrap_or(true));
    let max_concurrent = opt(t, "max_concurrent", |v| {
        cx.integer(v, "max_concurrent", 1, u32::MAX)
    });
    let streaming = opt(t, "streaming", |v| cx.boolean(v, "streaming")).map(|b| b.unwrap_or(false));
    if let (Ok(true), Ok(kind)) = (&streaming, &kind)
        && !matches!(kind, JobKind::Handler(_))
    {
        cx.report(
            "streaming",
            "only applies to Rust dataflow handlers (kind = \"<handler name>\")",
        );
    }
    let listeners = read_listeners(&mut cx, t);
    // Items of a `delay` job fire on their own clocks: no fire time is shared by
    // all items, so "after all items of the fire" has no meaning there.
    if let (Ok(ls), Ok(Schedule::Delay(_)), Ok(n)) = (&listeners, &schedule, &shards)
        && *n > 1
        && let Some(i) = ls.iter().position(|l| l.on == ListenerWhen::AfterAll)
    {
        cx.report(
            &format!("listeners[{i}].on"),
            "\"after_all\" needs a fire shared by all items, which a `delay` schedule with \
             more than one shard does not have (each item fires on its own)",
        );
    }
    let alerts = read_alerts(&mut cx, t);
    cx.unknown_fields(t, JOB_FIELDS, "");
    if cx.problems.len() > before {
        return None;
    }

    Some(JobSpec {
        name: name.ok()?,
        description: description.ok()?,
        schedule: schedule.ok()?,
        shards: shards.ok()?,
        shard_params: shard_params.ok()?,
        param: param.ok()?,
        kind: kind.ok()?,
        timeout: timeout.ok()?,
        retries: retries.ok()?,
        failover: failover.ok()?,
        misfire: misfire.ok()?,
        strategy: strategy.ok()?,
        labels: labels.ok()?,
        overwrite: overwrite.ok()?,
        enabled: enabled.ok()?,
        max_concurrent: max_concurrent.ok()?,
        streaming: streaming.ok()?,
        listeners: listeners.ok()?,
        alerts: alerts.ok()?,
    })
}

fn read_listeners(cx: &mut Cx<'_>, t: &Table) -> Result<Vec<ListenerSpec>, Reported> {
    let items = match get(t, "listeners") {
        None => return Ok(Vec::new()),
        Some(Val::Array(items)) => items,
        Some(other) => {
            return Err(cx.wrong_type(
                "listeners",
                "an array of tables ([[job.listeners]])",
                other,
            ));
        }
    };
    if items.len() > MAX_LISTENERS {
        return Err(cx.report(
            "listeners",
            format!("at most {MAX_LISTENERS} listeners, got {}", items.len()),
        ));
    }
    let mut out = Vec::new();
    let mut result = Ok(());
    for (i, item) in items.iter().enumerate() {
        match read_listener(cx, item, &format!("listeners[{i}]")) {
            Ok(l) => out.push(l),
            Err(r) => result = Err(r),
        }
    }
    result.map(|()| out)
}

fn read_listener(cx: &mut Cx<'_>, v: &Val, field: &str) -> Result<ListenerSpec, Reported> {
    let Val::Table(lt) = v else {
        return Err(cx.wrong_type(
            field,
            "a table such as { on = \"after\", command = [\"./notify.sh\"] }",
            v,
        ));
    };
    let on = match get(lt, "on") {
        None => Err(cx.report(
            &format!("{field}.on"),
            "missing (\"before\", \"after\" or \"after_all\")",
        )),
        Some(v) => cx.string(v, &format!("{field}.on")).and_then(|name| {
            ListenerWhen::parse(name).ok_or_else(|| {
                cx.report(
                    &format!("{field}.on"),
                    format!("must be \"before\", \"after\" or \"after_all\", got {name:?}"),
                )
            })
        }),
    };
    let command = get(lt, "command").map(|v| read_command_at(cx, v, &format!("{field}.command")));
    let handler = get(lt, "handler").map(|v| {
        let f = format!("{field}.handler");
        cx.string(v, &f).and_then(|h| {
            if is_handler_name(h) {
                Ok(h.to_owned())
            } else {
                Err(cx.report(
                    &f,
                    format!(
                        "must be a handler name (1-128 letters, digits, '.', '_', '-' and ':'), got {h:?}"
                    ),
                ))
            }
        })
    });
    let action = match (command, handler) {
        (Some(c), None) => c.map(ListenerAction::Command),
        (None, Some(h)) => h.map(ListenerAction::Handler),
        (None, None) => Err(cx.report(
            field,
            "needs `command` (a program) or `handler` (a Rust listener's name)",
        )),
        (Some(_), Some(_)) => Err(cx.report(field, "has both `command` and `handler`; give one")),
    };
    let timeout = opt(lt, "timeout", |v| {
        cx.duration(v, &format!("{field}.timeout"))
    })
    .map(|d| d.unwrap_or(DEFAULT_LISTENER_TIMEOUT));
    let wait = opt(lt, "wait", |v| cx.duration(v, &format!("{field}.wait")));
    cx.unknown_fields(lt, LISTENER_FIELDS, &format!("{field}."));
    let on = on?;
    let wait = match wait? {
        Some(_) if on != ListenerWhen::AfterAll => {
            return Err(cx.report(
                &format!("{field}.wait"),
                "only applies to on = \"after_all\"",
            ));
        }
        Some(w) if w > MAX_LISTENER_WAIT => {
            return Err(cx.report(
                &format!("{field}.wait"),
                format!("must be at most 1h, got {}", HumanDuration(w)),
            ));
        }
        w => w.unwrap_or(DEFAULT_LISTENER_WAIT),
    };
    Ok(ListenerSpec {
        on,
        action: action?,
        timeout: timeout?,
        wait,
    })
}

/// Alert channel names: 1-64 of ASCII letters, digits, `.`, `_`, `-` (as the
/// nodes' `[[alert]]` tables name them).
fn is_alert_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_alerts(cx: &mut Cx<'_>, t: &Table) -> Result<Option<Vec<String>>, Reported> {
    let items = match get(t, "alerts") {
        None => return Ok(None),
        Some(Val::Array(items)) => items,
        Some(other) => {
            return Err(cx.wrong_type("alerts", "an array of alert channel names", other));
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut result = Ok(());
    for (i, item) in items.iter().enumerate() {
        let field = format!("alerts[{i}]");
        match cx.string(item, &field) {
            Ok(n) if !is_alert_name(n) => {
                result = Err(cx.report(
                    &field,
                    format!(
                        "must be a channel name (1-64 letters, digits, '.', '_', '-'), got {n:?}"
                    ),
                ));
            }
            Ok(n) if names.iter().any(|m| m == n) => {
                result = Err(cx.report(&field, format!("{n:?} is listed twice")));
            }
            Ok(n) => names.push(n.to_owned()),
            Err(r) => result = Err(r),
        }
    }
    result.map(|()| Some(names))
}

/// Reads an optional field with `read`.
fn opt<'t, T>(
    t: &'t Table,
    key: &str,
    read: impl FnOnce(&'t Val) -> Result<T, Reported>,
) -> Result<Option<T>, Reported> {
    get(t, key).map(read).transpose()
}

const SCHEDULE_FIELDS: &[&str] = &["cron", "every", "delay", "at", "manual"];

fn read_schedule(cx: &mut Cx<'_>, t: &Table) -> Result<Schedule, Reported> {
    let cron = get(t, "cron").map(|v| read_cron(cx, t, v));
    if get(t, "tz").is_some() && cron.is_none() {
        cx.report("tz", "only applies to cron schedules");
    }
    let every = get(t, "every").map(|v| cx.duration(v, "every").map(Schedule::Every));
    let delay = get(t, "delay").map(|v| cx.duration(v, "delay").map(Schedule::Delay));
    let at = get(t, "at").map(|v| read_at(cx, v));
    let manual = match get(t, "manual") {
        None | Some(Val::Bool(false)) => None,
        Some(Val::Bool(true)) => Some(Ok(Schedule::Manual)),
        Some(other) => Some(Err(cx.wrong_type("manual", "a boolean", other))),
    };
    let mut given: Vec<(&str, Result<Schedule, Reported>)> = [
        ("cron", cron),
        ("every", every),
        ("delay", delay),
        ("at", at),
        ("manual", manual),
    ]
    .into_iter()
    .filter_map(|(field, r)| r.map(|r| (field, r)))
    .collect();
    match given.len() {
        0 => Err(cx.report(
            "schedule",
            "missing: set one of cron, every, delay, at or manual = true",
        )),
        1 => given.pop().map_or(Err(Reported), |(_, r)| r),
        _ => {
            let names: Vec<&str> = given.iter().map(|(field, _)| *field).collect();
            Err(cx.report(
                "schedule",
                format!(
                    "only one of {} may be set, got {}",
                    join_and(SCHEDULE_FIELDS),
                    join_and(&names)
                ),
            ))
        }
    }
}

fn read_cron(cx: &mut Cx<'_>, t: &Table, v: &Val) -> Result<Schedule, Reported> {
    let expr = cx.string(v, "cron");
    let tz = match get(t, "tz") {
        None => Ok(None),
        Some(v) => cx.string(v, "tz").and_then(|name| match parse_tz(name) {
            Ok(_) => Ok(Some(name)),
            Err(e) => Err(cx.report("tz", e.to_string())),
        }),
    };
    let expr = expr?;
    // With a bad zone the expression is still checked, so that both are reported.
    match CronSchedule::parse(expr, tz.ok().flatten()) {
        Ok(c) => tz.map(|_| Schedule::Cron(c)),
        Err(e @ ScheduleError::TimeZone(_)) => Err(cx.report("tz", e.to_string())),
        Err(e) => Err(cx.report("cron", e.to_string())),
    }
}

fn read_at(cx: &mut Cx<'_>, v: &Val) -> Result<Schedule, Reported> {
    const EXAMPLE: &str = "2030-01-01T03:00:00Z";
    let text = match v {
        Val::Str(s) => s.clone(),
        Val::Datetime(d) => match rfc3339_of_toml(d) {
            Some(s) => s,
            None => {
                return Err(cx.report(
                    "at",
                    format!(
                        "must have a date, a time and a UTC offset, such as {EXAMPLE}, got {d}"
                    ),
                ));
            }
        },
        other => {
            return Err(cx.wrong_type(
                "at",
                "an RFC 3339 timestamp (a string or a TOML datetime)",
                other,
            ));
        }
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Schedule::At(t.with_timezone(&Utc)))
        .map_err(|_| {
            cx.report(
                "at",
                format!(
                    "must be an RFC 3339 timestamp with a UTC offset, such as {EXAMPLE:?}, got {text:?}"
                ),
            )
        })
}

/// The RFC 3339 text of a TOML offset datetime; `None` for local dates and times.
fn rfc3339_of_toml(d: &toml::value::Datetime) -> Option<String> {
    let (date, time, offset) = (d.date?, d.time?, d.offset?);
    let fraction = time
        .nanosecond
        .map(|n| format!(".{n:09}"))
        .unwrap_or_default();
    Some(format!(
        "{date}T{:02}:{:02}:{:02}{fraction}{offset}",
        time.hour,
        time.minute,
        time.second.unwrap_or(0)
    ))
}

fn read_shard_params(
    cx: &mut Cx<'_>,
    text: &str,
    shards: Option<u32>,
) -> Result<BTreeMap<u32, String>, Reported> {
    const FORM: &str = "expected N=value, as in \"0=a,1=b\"";
    let mut params = BTreeMap::new();
    if text.trim().is_empty() {
        return Ok(params);
    }
    let mut result = Ok(());
    for (i, raw) in text.split(',').enumerate() {
        let entry = raw.trim();
        let problem = if entry.is_empty() {
            Some(format!("entry {} is empty ({FORM})", i + 1))
        } else if let Some((item, value)) = entry.split_once('=') {
            let item = item.trim();
            let number = item
                .parse::<u32>()
                .ok()
                .filter(|_| item.bytes().all(|b| b.is_ascii_digit()));
            match (number, shards) {
                (None, _) => Some(format!("entry {entry:?}: {item:?} is not an item number")),
                (Some(n), Some(shards)) if n >= shards => Some(format!(
                    "entry {entry:?}: item {n} is out of range (shards = {shards}, so items are 0 to {})",
                    shards - 1
                )),
                (Some(n), _) if params.contains_key(&n) => {
                    Some(format!("entry {entry:?}: item {n} is given twice"))
                }
                (Some(n), _) => {
                    params.insert(n, value.trim().to_owned());
                    None
                }
            }
        } else {
            Some(format!("entry {entry:?}: {FORM}"))
        };
        if let Some(message) = problem {
            result = Err(cx.report("shard_params", message));
        }
    }
    result.map(|()| params)
}

fn read_kind(cx: &mut Cx<'_>, t: &Table) -> Result<JobKind, Reported> {
    let command = get(t, "command").map(|v| read_command(cx, v));
    let http = get(t, "http").map(|v| read_http(cx, v));
    let kind = opt(t, "kind", |v| cx.string(v, "kind"))?;
    let script = |cx: &mut Cx<'_>, command: Option<Result<Vec<String>, Reported>>| match command {
        Some(c) => c.map(|command| JobKind::Script { command }),
        None => Err(cx.report("command", "missing (required for kind = \"script\")")),
    };
    let kind = match kind {
        None if command.is_none() && http.is_none() => {
            return Err(cx.report("kind", "missing (script, http, or a handler name)"));
        }
        None if command.is_none() => "http",
        None => "script",
        Some(kind) => kind,
    };
    if http.is_some() && kind != "http" {
        return Err(cx.report(
            "http",
            format!("only applies to kind = \"http\", not {kind:?}"),
        ));
    }
    if kind == "script" {
        return script(cx, command);
    }
    let result = if kind == "http" {
        match http {
            Some(h) => h.map(JobKind::Http),
            None => Err(cx.report(
                "http",
                "missing (required for kind = \"http\"), e.g. http = { url = \"https://example.com/hook\" }",
            )),
        }
    } else if kind.eq_ignore_ascii_case("script") || kind.eq_ignore_ascii_case("http") {
        Err(cx.report(
            "kind",
            format!(
                "{kind:?} is not a kind; did you mean {:?}?",
                kind.to_ascii_lowercase()
            ),
        ))
    } else if is_handler_name(kind) {
        Ok(JobKind::Handler(kind.to_owned()))
    } else {
        Err(cx.report(
            "kind",
            format!(
                "must be \"script\", \"http\" or a handler name (1-128 letters, digits, \
                 '.', '_', '-' and ':'), got {kind:?}"
            ),
        ))
    };
    if command.is_some() {
        return Err(cx.report(
            "command",
            format!("only applies to kind = \"script\", not {kind:?}"),
        ));
    }
    result
}

fn read_http(cx: &mut Cx<'_>, v: &Val) -> Result<HttpSpec, Reported> {
    let Val::Table(ht) = v else {
        return Err(cx.wrong_type(
            "http",
            "a table such as { url = \"https://example.com/hook\" }",
            v,
        ));
    };
    let method = opt(ht, "method", |v| {
        cx.string(v, "http.method").and_then(|name| {
            HttpMethod::parse(name).ok_or_else(|| {
                cx.report(
                    "http.method",
                    format!("must be GET, POST, PUT, PATCH, DELETE or HEAD, got {name:?}"),
                )
            })
        })
    })
    .map(Option::unwrap_or_default);
    let url = match get(ht, "url") {
        None => Err(cx.report("http.url", "missing")),
        Some(v) => cx
            .string(v, "http.url")
            .and_then(|u| match check_http_url(u) {
                Ok(()) => Ok(u.to_owned()),
                Err(m) => Err(cx.report("http.url", m)),
            }),
    };
    let headers = read_headers(cx, ht);
    let body = opt(ht, "body", |v| {
        cx.string(v, "http.body")
            .and_then(|b| match template_pieces(b) {
                Ok(_) => Ok(b.to_owned()),
                Err(m) => Err(cx.report("http.body", m)),
            })
    });
    let timeout = opt(ht, "timeout", |v| {
        cx.duration(v, "http.timeout").and_then(|d| {
            if d > MAX_HTTP_TIMEOUT {
                Err(cx.report(
                    "http.timeout",
                    format!(
                        "must be at most {}, got {}",
                        HumanDuration(MAX_HTTP_TIMEOUT),
                        HumanDuration(d)
                    ),
                ))
            } else {
                Ok(d)
            }
        })
    })
    .map(|d| d.unwrap_or(DEFAULT_HTTP_TIMEOUT));
    let accept = read_accept(cx, ht);
    cx.unknown_fields(ht, HTTP_FIELDS, "http.");
    let (method, body) = (method?, body?);
    if method == HttpMethod::Head && body.is_some() {
        return Err(cx.report("http.body", "not allowed with method HEAD"));
    }
    Ok(HttpSpec {
        method,
        url: url?,
        headers: headers?,
        body,
        timeout: timeout?,
        accept: accept?,
    })
}

/// Checks the URL of an HTTP job. The messages do not repeat the URL, which may
/// hold a secret in its query.
fn check_http_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a valid absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, got scheme {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not hold credentials (user:password@): put them in a header, such as \
             Authorization, whose value is kept secret"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn read_headers(cx: &mut Cx<'_>, ht: &Table) -> Result<BTreeMap<String, String>, Reported> {
    let t = match get(ht, "headers") {
        None => return Ok(BTreeMap::new()),
        Some(Val::Table(t)) => t,
        Some(other) => {
            return Err(cx.wrong_type(
                "http.headers",
                "a table of strings such as { Authorization = \"Bearer ...\" }",
                other,
            ));
        }
    };
    let mut headers = BTreeMap::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut result = Ok(());
    for (name, value) in t {
        if !is_header_name(name) {
            result = Err(cx.report(
                "http.headers",
                format!(
                    "invalid header name {name:?}: must be one or more letters, digits and \
                     !#$%&'*+-.^_`|~"
                ),
            ));
            continue;
        }
        let field = format!("http.headers.{name}");
        if let Some(reserved) = RESERVED_HEADERS
            .iter()
            .find(|r| r.eq_ignore_ascii_case(name))
        {
            result = Err(cx.report(&field, format!("{reserved} is set by shardcron")));
            continue;
        }
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), name) {
            result = Err(cx.report(
                &field,
                format!("given twice (also as {first:?}; header names ignore letter case)"),
            ));
            continue;
        }
        match value {
            // The value is a secret: messages never show it.
            Val::Str(v) if v.chars().any(|c| c.is_control() && c != '\t') => {
                result = Err(cx.report(
                    &field,
                    "must not contain control characters such as line breaks",
                ));
            }
            Val::Str(v) => {
                headers.insert(name.clone(), v.clone());
            }
            other => result = Err(cx.wrong_type(&field, "a string", other)),
        }
    }
    result.map(|()| headers)
}

fn read_accept(cx: &mut Cx<'_>, ht: &Table) -> Result<Vec<StatusRange>, Reported> {
    let items = match get(ht, "accept") {
        None => return Ok(vec![StatusRange::SUCCESS]),
        Some(Val::Array(items)) if items.is_empty() => {
            return Err(cx.report(
                "http.accept",
                "must not be empty: list the status codes that mean success, such as [\"2xx\"]",
            ));
        }
        Some(Val::Array(items)) => items,
        Some(other) => {
            return Err(cx.wrong_type(
                "http.accept",
                "an array of status codes, classes or ranges such as [200, \"3xx\", \"400-404\"]",
                other,
            ));
        }
    };
    let mut accept = Vec::with_capacity(items.len());
    let mut result = Ok(());
    for (i, item) in items.iter().enumerate() {
        let field = format!("http.accept[{i}]");
        let range = match item {
            Val::Int(n) => u16::try_from(*n)
                .map_err(|_| format!("status codes are between 100 and 599, got {n}"))
                .and_then(|c| StatusRange::new(c, c)),
            Val::Str(text) => StatusRange::parse(text),
            other => {
                result = Err(cx.wrong_type(
                    &field,
                    "a status code such as 200 or a string such as \"2xx\" or \"200-204\"",
                    other,
                ));
                continue;
            }
        };
        match range {
            Ok(r) => accept.push(r),
            Err(m) => result = Err(cx.report(&field, m)),
        }
    }
    result.map(|()| accept)
}

fn is_handler_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn read_command(cx: &mut Cx<'_>, v: &Val) -> Result<Vec<String>, Reported> {
    read_command_at(cx, v, "command")
}

/// An argv (`command` of a script job or of a listener, named `field`).
fn read_command_at(cx: &mut Cx<'_>, v: &Val, field: &str) -> Result<Vec<String>, Reported> {
    let Val::Array(items) = v else {
        return Err(cx.wrong_type(field, "an array of strings", v));
    };
    if items.is_empty() {
        return Err(cx.report(
            field,
            "must not be empty: its first element is the program to run",
        ));
    }
    let mut command = Vec::with_capacity(items.len());
    let mut result = Ok(());
    for (i, item) in items.iter().enumerate() {
        match item {
            Val::Str(s) => command.push(s.clone()),
            other => result = Err(cx.wrong_type(&format!("{field}[{i}]"), "a string", other)),
        }
    }
    result?;
    if command
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        return Err(cx.report(
            &format!("{field}[0]"),
            "must not be empty: it is the program to run",
        ));
    }
    Ok(command)
}

fn read_retries(cx: &mut Cx<'_>, t: &Table) -> Result<RetryPolicy, Reported> {
    let default = RetryPolicy::default();
    let rt = match get(t, "retries") {
        None => return Ok(default),
        Some(v @ Val::Int(_)) => {
            return cx
                .integer(v, "retries", 0, MAX_RETRIES)
                .map(|max| RetryPolicy { max, ..default });
        }
        Some(Val::Table(rt)) => rt,
        Some(other) => {
            return Err(cx.wrong_type(
                "retries",
                "an integer or a table such as { max = 3, initial = \"1s\", max_delay = \"1m\" }",
                other,
            ));
        }
    };
    let max = match get(rt, "max") {
        None => Err(cx.report("retries.max", "missing")),
        Some(v) => cx.integer(v, "retries.max", 0, MAX_RETRIES),
    };
    let initial = opt(rt, "initial", |v| cx.duration(v, "retries.initial"));
    let max_delay = opt(rt, "max_delay", |v| cx.duration(v, "retries.max_delay"));
    cx.unknown_fields(rt, RETRY_FIELDS, "retries.");
    let initial = initial?.unwrap_or(default.initial);
    let max_delay = match max_delay? {
        Some(d) if d < initial => {
            return Err(cx.report(
                "retries.max_delay",
                format!(
                    "must be at least retries.initial ({}), got {}",
                    HumanDuration(initial),
                    HumanDuration(d)
                ),
            ));
        }
        Some(d) => d,
        None => default.max_delay.max(initial),
    };
    Ok(RetryPolicy {
        max: max?,
        initial,
        max_delay,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MisfireName {
    FireOnce,
    Skip,
    CatchUp,
}

fn misfire_name(cx: &mut Cx<'_>, name: &str, field: &str) -> Result<MisfireName, Reported> {
    match name {
        "fire_once" => Ok(MisfireName::FireOnce),
        "skip" => Ok(MisfireName::Skip),
        "catch_up" => Ok(MisfireName::CatchUp),
        other => Err(cx.report(
            field,
            format!("must be \"fire_once\", \"skip\" or \"catch_up\", got {other:?}"),
        )),
    }
}

fn read_misfire(cx: &mut Cx<'_>, t: &Table) -> Result<MisfirePolicy, Reported> {
    const ONLY_CATCH_UP: &str = "only applies to misfire = \"catch_up\"";
    let cap = opt(t, "catch_up_max", |v| {
        cx.integer(v, "catch_up_max", 1, MAX_CATCH_UP)
    });
    let (policy, table_max) = match get(t, "misfire") {
        None => (Ok(MisfireName::FireOnce), Ok(None)),
        Some(Val::Str(s)) => (misfire_name(cx, s, "misfire"), Ok(None)),
        Some(Val::Table(mt)) => {
            let policy = match get(mt, "policy") {
                None => Err(cx.report("misfire.policy", "missing")),
                Some(v) => cx
                    .string(v, "misfire.policy")
                    .and_then(|s| misfire_name(cx, s, "misfire.policy")),
            };
            let max = opt(mt, "max", |v| cx.integer(v, "misfire.max", 1, MAX_CATCH_UP));
            cx.unknown_fields(mt, MISFIRE_FIELDS, "misfire.");
            if let (Ok(Some(_)), Ok(p)) = (&max, &policy)
                && *p != MisfireName::CatchUp
            {
                return Err(cx.report("misfire.max", "only applies to policy \"catch_up\""));
            }
            if let (Ok(Some(_)), Ok(Some(_))) = (&max, &cap) {
                return Err(cx.report(
                    "catch_up_max",
                    "misfire.max is set too; give only one of them",
                ));
            }
            (policy, max)
        }
        Some(other) => (
            Err(cx.wrong_type(
                "misfire",
                "a string or a table such as { policy = \"catch_up\", max = 5 }",
                other,
            )),
            Ok(None),
        ),
    };
    let policy = policy?;
    let cap = cap?;
    if policy != MisfireName::CatchUp && cap.is_some() {
        return Err(cx.report("catch_up_max", ONLY_CATCH_UP));
    }
    Ok(match policy {
        MisfireName::FireOnce => MisfirePolicy::FireOnce,
        MisfireName::Skip => MisfirePolicy::Skip,
        MisfireName::CatchUp => MisfirePolicy::CatchUp {
            max: table_max?.or(cap).unwrap_or(DEFAULT_CATCH_UP_MAX),
        },
    })
}

fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

fn read_labels(cx: &mut Cx<'_>, t: &Table) -> Result<BTreeMap<String, String>, Reported> {
    let lt = match get(t, "labels") {
        None => return Ok(BTreeMap::new()),
        Some(Val::Table(lt)) => lt,
        Some(other) => {
            return Err(cx.wrong_type(
                "labels",
                "a table of strings such as { region = \"eu\" }",
                other,
            ));
        }
    };
    let mut labels = BTreeMap::new();
    let mut result = Ok(());
    for (key, value) in lt {
        if !is_label_key(key) {
            result = Err(cx.report(
                "labels",
                format!(
                    "invalid key {key:?}: must be one or more letters, digits, '.', '_', '/' or '-'"
                ),
            ));
            continue;
        }
        let field = format!("labels.{key}");
        match value {
            Val::Str(v) if v.is_empty() => result = Err(cx.report(&field, "must not be empty")),
            Val::Str(v) => {
                labels.insert(key.clone(), v.clone());
            }
            other => result = Err(cx.wrong_type(&field, "a string", other)),
        }
    }
    result.map(|()| labels)
}

// ---------------------------------------------------------------------------------
// Writing TOML.

fn write_toml_value(out: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        // to_json writes no nulls; an empty string is the closest harmless form.
        Value::Null => out.push_str("\"\""),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_toml_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_toml_value(out, item);
            }
            out.push(']');
        }
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Object(m) => {
            out.push_str("{ ");
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
                if bare {
                    out.push_str(k);
                } else {
                    write_toml_string(out, k);
                }
                out.push_str(" = ");
                write_toml_value(out, item);
            }
            out.push_str(" }");
        }
    }
}

/// A TOML basic string.
fn write_toml_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const EXAMPLE: &str = include_str!("../../../examples/jobs.toml");

    /// A valid job named "x" (every 5s, a script) plus `extra` lines.
    fn job(extra: &str) -> String {
        format!("[[job]]\nname = \"x\"\nevery = \"5s\"\ncommand = [\"./a.sh\"]\n{extra}\n")
    }

    fn parse_one(text: &str) -> JobSpec {
        match JobFile::from_toml(text) {
            Ok(mut file) if file.jobs.len() == 1 => file.jobs.remove(0),
            Ok(file) => panic!("expected one job, got {}", file.jobs.len()),
            Err(e) => panic!("unexpected problems:\n{e}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match JobFile::from_toml(text) {
            Ok(file) => panic!("expected problems, got {} job(s)", file.jobs.len()),
            Err(e) => {
                assert!(!e.0.is_empty());
                e.0.iter().map(ToString::to_string).collect()
            }
        }
    }

    fn one_problem(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        p[0].clone()
    }

    fn errors(text: &str) -> Vec<Problem> {
        match JobFile::from_toml(text) {
            Ok(_) => panic!("expected problems"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn job_names() {
        assert_eq!(
            JobName::new("orders.sync_v2-eu").map(|n| n.to_string()),
            Ok("orders.sync_v2-eu".into())
        );
        assert!(JobName::new(&"a".repeat(128)).is_ok());
        assert!(JobName::new(&"a".repeat(129)).is_err());
        assert!(JobName::new("").is_err());
        assert!(JobName::new("é").is_err());
        assert_eq!(
            JobName::new("a b"),
            Err(
                r#"must be 1-128 characters of letters, digits, '.', '_' and '-', got "a b""#
                    .into()
            )
        );
    }

    #[test]
    fn full_job_with_every_field() {
        let spec = parse_one(
            r#"
            [[job]]
            name = "orders"
            description = "Sync orders"
            cron = "*/10 * * * *"
            tz = "Europe/Berlin"
            shards = 4
            shard_params = " 0=north, 1 = south ,3=a=b"
            param = "batch=500"
            kind = "script"
            command = ["./sync.sh", "--fast"]
            timeout = "1m30s"
            retries = { max = 3, initial = "2s", max_delay = "1m" }
            failover = false
            misfire = "catch_up"
            catch_up_max = 5
            strategy = "round_robin"
            labels = { region = "eu", "app.kubernetes.io/name" = "shop" }
            overwrite = true
            enabled = false
            max_concurrent = 2
            "#,
        );
        assert_eq!(spec.name.as_str(), "orders");
        assert_eq!(spec.description, "Sync orders");
        match &spec.schedule {
            Schedule::Cron(c) => {
                assert_eq!(c.expr(), "*/10 * * * *");
                assert_eq!(c.tz(), chrono_tz::Europe::Berlin);
            }
            other => panic!("expected cron, got {other:?}"),
        }
        assert_eq!(spec.shards, 4);
        let params: Vec<(u32, &str)> = spec
            .shard_params
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        assert_eq!(params, [(0, "north"), (1, "south"), (3, "a=b")]);
        assert_eq!(spec.param, "batch=500");
        assert_eq!(
            spec.kind,
            JobKind::Script {
                command: vec!["./sync.sh".into(), "--fast".into()]
            }
        );
        assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            spec.retries,
            RetryPolicy {
                max: 3,
                initial: Duration::from_secs(2),
                max_delay: Duration::from_secs(60)
            }
        );
        assert!(!spec.failover);
        assert_eq!(spec.misfire, MisfirePolicy::CatchUp { max: 5 });
        assert_eq!(spec.strategy, Strategy::RoundRobin);
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(spec.labels["region"], "eu");
        assert_eq!(spec.labels["app.kubernetes.io/name"], "shop");
        assert!(spec.overwrite);
        assert!(!spec.enabled);
        assert_eq!(spec.max_concurrent, Some(2));
    }

    #[test]
    fn defaults() {
        let spec = parse_one("[[job]]\nname = \"x\"\nevery = \"5s\"\ncommand = [\"./a.sh\"]\n");
        let expected = JobSpec::new(
            JobName::new("x").unwrap(),
            Schedule::Every(Duration::from_secs(5)),
            JobKind::Script {
                command: vec!["./a.sh".into()],
            },
        );
        assert_eq!(spec, expected);
        assert_eq!(spec.description, "");
        assert_eq!(spec.shards, 1);
        assert!(spec.shard_params.is_empty());
        assert_eq!(spec.param, "");
        assert_eq!(spec.timeout, None);
        assert_eq!(spec.retries, RetryPolicy::default());
        assert_eq!(spec.retries.initial, Duration::from_secs(1));
        assert_eq!(spec.retries.max_delay, Duration::from_secs(60));
        assert!(spec.failover);
        assert_eq!(spec.misfire, MisfirePolicy::FireOnce);
        assert_eq!(spec.strategy, Strategy::Average);
        assert!(spec.labels.is_empty());
        assert!(!spec.overwrite);
        assert!(spec.enabled);
        assert_eq!(spec.max_concurrent, None);
    }

    #[test]
    fn empty_files_are_valid() {
        for text in ["", "# nothing yet\n", "job = []\n"] {
            assert_eq!(
                JobFile::from_toml(text),
                Ok(JobFile { jobs: vec![] }),
                "{text:?}"
            );
        }
        assert_eq!(JobFile::from_json("{}"), Ok(JobFile { jobs: vec![] }));
        assert_eq!(
            JobFile::from_json(r#"{"job": []}"#),
            Ok(JobFile { jobs: vec![] })
        );
    }

    #[test]
    fn example_file_parses() {
        let file = match JobFile::from_toml(EXAMPLE) {
            Ok(file) => file,
            Err(e) => panic!("examples/jobs.toml:\n{e}"),
        };
        let names: Vec<&str> = file.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sync-orders",
                "nightly-report",
                "settle-invoices",
                "cleanup-tmp",
                "migrate-2030",
                "reindex-search",
                "legacy-export"
            ]
        );
        let sync = &file.jobs[0];
        assert_eq!(sync.schedule, Schedule::Every(Duration::from_secs(5)));
        assert_eq!(sync.shards, 4);
        assert_eq!(sync.shard_params.len(), 4);
        assert_eq!(sync.shard_params[&2], "east");
        assert_eq!(sync.misfire, MisfirePolicy::Skip);
        let report = &file.jobs[1];
        assert!(
            matches!(&report.schedule, Schedule::Cron(c) if c.tz() == chrono_tz::Europe::Berlin)
        );
        assert_eq!(report.retries.max, 2);
        let settle = &file.jobs[2];
        assert_eq!(settle.kind, JobKind::Handler("billing.settle".into()));
        assert_eq!(settle.strategy, Strategy::Consistent);
        assert_eq!(settle.misfire, MisfirePolicy::CatchUp { max: 24 });
        assert_eq!(
            file.jobs[3].schedule,
            Schedule::Delay(Duration::from_secs(600))
        );
        assert_eq!(
            file.jobs[4].schedule,
            Schedule::At(Utc.with_ymd_and_hms(2030, 1, 1, 3, 0, 0).unwrap())
        );
        assert_eq!(file.jobs[5].schedule, Schedule::Manual);
        assert!(!file.jobs[6].enabled);
        // Every example job survives the JSON form.
        for spec in &file.jobs {
            assert_eq!(JobSpec::from_json_value(&spec.to_json()).as_ref(), Ok(spec));
        }
    }

    #[test]
    fn shards_out_of_range() {
        assert_eq!(
            one_problem(&job("shards = 0").replace("\"x\"", "\"orders\"")),
            r#"job "orders": shards: must be between 1 and 10000, got 0"#
        );
        assert_eq!(
            one_problem(&job("shards = 10001")),
            r#"job "x": shards: must be between 1 and 10000, got 10001"#
        );
        assert_eq!(
            one_problem(&job("shards = -1")),
            r#"job "x": shards: must be between 1 and 10000, got -1"#
        );
        assert_eq!(parse_one(&job("shards = 10000")).shards, 10_000);
    }

    #[test]
    fn bad_or_missing_name() {
        let bad = "[[job]]\nname = \"a b\"\nevery = \"5s\"\ncommand = [\"./a.sh\"]\nshards = 0\n";
        assert_eq!(
            problems(bad),
            [
                r##"job "#1": name: must be 1-128 characters of letters, digits, '.', '_' and '-', got "a b""##,
                r##"job "#1": shards: must be between 1 and 10000, got 0"##,
            ]
        );
        let missing = format!(
            "{}[[job]]\nevery = \"5s\"\ncommand = [\"./a.sh\"]\n",
            job("")
        );
        assert_eq!(one_problem(&missing), r##"job "#2": name: missing"##);
        assert_eq!(
            one_problem("[[job]]\nname = 7\nevery = \"5s\"\ncommand = [\"./a.sh\"]\n"),
            r##"job "#1": name: expected a string, got an integer"##
        );
    }

    #[test]
    fn bad_cron_names_the_cron_field() {
        let text = "[[job]]\nname = \"x\"\ncron = \"not a cron\"\ncommand = [\"./a.sh\"]\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].job.as_deref(), Some("x"));
        assert_eq!(e[0].field, "cron");
        assert!(
            e[0].message.starts_with("invalid cron expression"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn unknown_tz_names_the_tz_field() {
        let text = "[[job]]\nname = \"x\"\ncron = \"0 * * * *\"\ntz = \"Mars/Olympus\"\ncommand = [\"./a.sh\"]\n";
        assert_eq!(
            one_problem(text),
            format!(
                "job \"x\": tz: {}",
                ScheduleError::TimeZone("Mars/Olympus".into())
            )
        );
        // A bad zone and a bad expression are both reported.
        let both = "[[job]]\nname = \"x\"\ncron = \"nope\"\ntz = \"Mars/Olympus\"\ncommand = [\"./a.sh\"]\n";
        let fields: Vec<String> = errors(both).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["tz", "cron"]);
    }

    #[test]
    fn tz_without_cron() {
        assert_eq!(
            one_problem(&job("tz = \"UTC\"")),
            r#"job "x": tz: only applies to cron schedules"#
        );
    }

    #[test]
    fn shard_params_forms_and_errors() {
        let ok = parse_one(&job("shards = 3\nshard_params = \"0=a, 2 = c=d ,1=\""));
        let params: Vec<(u32, &str)> = ok
            .shard_params
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        assert_eq!(params, [(0, "a"), (1, ""), (2, "c=d")]);
        assert!(
            parse_one(&job("shard_params = \"\""))
                .shard_params
                .is_empty()
        );
        assert!(
            parse_one(&job("shard_params = \"  \""))
                .shard_params
                .is_empty()
        );

        let cases = [
            (
                "shards = 4\nshard_params = \"0=a,4=e\"",
                r#"entry "4=e": item 4 is out of range (shards = 4, so items are 0 to 3)"#,
            ),
            (
                "shards = 4\nshard_params = \"0=a,x=b\"",
                r#"entry "x=b": "x" is not an item number"#,
            ),
            (
                "shards = 4\nshard_params = \"-1=a\"",
                r#"entry "-1=a": "-1" is not an item number"#,
            ),
            (
                "shards = 4\nshard_params = \"+1=a\"",
                r#"entry "+1=a": "+1" is not an item number"#,
            ),
            (
                "shards = 4\nshard_params = \"0=a,1=b,1=c\"",
                r#"entry "1=c": item 1 is given twice"#,
            ),
            (
                "shards = 4\nshard_params = \"0=a,b\"",
                r#"entry "b": expected N=value, as in "0=a,1=b""#,
            ),
            (
                "shards = 4\nshard_params = \"0=a,,1=b\"",
                r#"entry 2 is empty (expected N=value, as in "0=a,1=b")"#,
            ),
            (
                "shards = 4\nshard_params = 5",
                "expected a string, got an integer",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&job(extra)),
                format!("job \"x\": shard_params: {message}"),
                "{extra}"
            );
        }
        // Every bad entry is reported.
        assert_eq!(
            problems(&job("shards = 2\nshard_params = \"0=a,7=b,q\"")).len(),
            2
        );
        // With a bad shard count, entries are still checked for form.
        assert_eq!(
            problems(&job("shards = 0\nshard_params = \"9=a,x\"")),
            [
                r#"job "x": shards: must be between 1 and 10000, got 0"#,
                r#"job "x": shard_params: entry "x": expected N=value, as in "0=a,1=b""#,
            ]
        );
    }

    #[test]
    fn unknown_strategy() {
        let expected = match Strategy::parse("fastest") {
            Ok(s) => panic!("fastest parsed as {s:?}"),
            Err(message) => message,
        };
        assert_eq!(
            one_problem(&job("strategy = \"fastest\"")),
            format!("job \"x\": strategy: {expected}")
        );
    }

    #[test]
    fn duplicate_job_names() {
        let text = format!(
            "{}{}{}",
            job(""),
            job("").replace("\"x\"", "\"y\""),
            job("")
        );
        assert_eq!(
            one_problem(&text),
            r#"job "x": name: duplicate job name (also job #1)"#
        );
    }

    #[test]
    fn zero_or_several_schedules() {
        let none = "[[job]]\nname = \"x\"\ncommand = [\"./a.sh\"]\n";
        assert_eq!(
            one_problem(none),
            r#"job "x": schedule: missing: set one of cron, every, delay, at or manual = true"#
        );
        assert_eq!(
            one_problem(&format!("{none}manual = false\n")),
            r#"job "x": schedule: missing: set one of cron, every, delay, at or manual = true"#
        );
        assert_eq!(
            one_problem(&job("delay = \"1m\"\nmanual = true")),
            r#"job "x": schedule: only one of cron, every, delay, at and manual may be set, got every, delay and manual"#
        );
        assert_eq!(
            one_problem(&job("at = 2030-01-01T00:00:00Z")),
            r#"job "x": schedule: only one of cron, every, delay, at and manual may be set, got every and at"#
        );
        // manual = false next to a real schedule is harmless.
        assert_eq!(
            parse_one(&job("manual = false")).schedule,
            Schedule::Every(Duration::from_secs(5))
        );
    }

    #[test]
    fn every_delay_and_at() {
        let base = "[[job]]\nname = \"x\"\ncommand = [\"./a.sh\"]\n";
        assert_eq!(
            parse_one(&format!("{base}delay = \"1m30s\"")).schedule,
            Schedule::Delay(Duration::from_secs(90))
        );
        assert_eq!(
            parse_one(&format!("{base}manual = true")).schedule,
            Schedule::Manual
        );
        let at = Utc.with_ymd_and_hms(2030, 1, 1, 3, 0, 0).unwrap();
        for form in [
            "at = 2030-01-01T03:00:00Z",
            "at = 2030-01-01T04:00:00+01:00",
            "at = 2030-01-01 03:00:00Z",
            "at = \"2030-01-01T03:00:00Z\"",
            "at = \"2029-12-31T22:00:00-05:00\"",
        ] {
            assert_eq!(
                parse_one(&format!("{base}{form}")).schedule,
                Schedule::At(at),
                "{form}"
            );
        }
        let frac = parse_one(&format!("{base}at = 2030-01-01T03:00:00.25Z")).schedule;
        assert_eq!(frac, Schedule::At(at + chrono::Duration::milliseconds(250)));

        let cases = [
            ("every = \"0s\"", "every: must be greater than zero"),
            (
                "every = 5",
                "every: expected a duration string such as \"30s\", got an integer",
            ),
            (
                "delay = \"soon\"",
                "delay: must be a duration like \"30s\", \"5m\" or \"1h30m\" (units ms, s, m, h, d), got \"soon\"",
            ),
            (
                "at = 2030-01-01T03:00:00",
                "at: must have a date, a time and a UTC offset, such as 2030-01-01T03:00:00Z, got 2030-01-01T03:00:00",
            ),
            (
                "at = 2030-01-01",
                "at: must have a date, a time and a UTC offset, such as 2030-01-01T03:00:00Z, got 2030-01-01",
            ),
            (
                "at = \"tomorrow\"",
                "at: must be an RFC 3339 timestamp with a UTC offset, such as \"2030-01-01T03:00:00Z\", got \"tomorrow\"",
            ),
            (
                "at = 1",
                "at: expected an RFC 3339 timestamp (a string or a TOML datetime), got an integer",
            ),
            (
                "manual = \"yes\"",
                "manual: expected a boolean, got a string",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&format!("{base}{extra}")),
                format!("job \"x\": {message}"),
                "{extra}"
            );
        }
    }

    #[test]
    fn unknown_fields() {
        assert_eq!(
            one_problem(&job("colour = \"red\"")),
            r#"job "x": colour: unknown field"#
        );
        assert_eq!(
            one_problem(&job("shard = 2")),
            r#"job "x": shard: unknown field (did you mean "shards"?)"#
        );
        assert_eq!(
            one_problem(&job("timout = \"5s\"")),
            r#"job "x": timout: unknown field (did you mean "timeout"?)"#
        );
        // HTTP fields belong in the http table.
        assert_eq!(
            problems(
                "[[job]]\nname = \"x\"\nevery = \"5s\"\nkind = \"http\"\nurl = \"http://a\"\n"
            ),
            [
                r#"job "x": http: missing (required for kind = "http"), e.g. http = { url = "https://example.com/hook" }"#,
                r#"job "x": url: unknown field"#,
            ]
        );
        assert_eq!(
            one_problem(
                "[[job]]\nname = \"x\"\nevery = \"5s\"\nhttp = { url = \"http://a\", timout = \"1s\" }\n"
            ),
            r#"job "x": http.timout: unknown field (did you mean "timeout"?)"#
        );
        assert_eq!(
            one_problem(&job("retries = { max = 1, intial = \"2s\" }")),
            r#"job "x": retries.intial: unknown field (did you mean "initial"?)"#
        );
        assert_eq!(
            one_problem(&format!("colour = 1\n{}", job(""))),
            "colour: unknown top-level key (a job file holds [[job]] and [[alert]] tables and the [settings] and [scripts] tables)"
        );
        assert_eq!(
            one_problem(&format!("{}[[jobs]]\nname = \"y\"\n", job(""))),
            r#"jobs: unknown top-level key (a job file holds [[job]] and [[alert]] tables and the [settings] and [scripts] tables; did you mean "job"?)"#
        );
        assert_eq!(
            one_problem("[job]\nname = \"x\"\n"),
            "job: expected an array of tables ([[job]]), got a table"
        );
        assert_eq!(
            one_problem("job = [1]\n"),
            r##"job "#1": job: expected a table ([[job]]), got an integer"##
        );
    }

    #[test]
    fn wrong_types() {
        let cases = [
            (
                "shards = \"4\"",
                "shards: expected an integer, got a string",
            ),
            ("shards = 4.0", "shards: expected an integer, got a float"),
            (
                "description = 1979-05-27",
                "description: expected a string, got a datetime",
            ),
            ("param = [\"a\"]", "param: expected a string, got an array"),
            (
                "failover = \"no\"",
                "failover: expected a boolean, got a string",
            ),
            (
                "overwrite = 1",
                "overwrite: expected a boolean, got an integer",
            ),
            ("enabled = {}", "enabled: expected a boolean, got a table"),
            (
                "timeout = 30",
                "timeout: expected a duration string such as \"30s\", got an integer",
            ),
            ("timeout = \"0ms\"", "timeout: must be greater than zero"),
            (
                "max_concurrent = 0",
                "max_concurrent: must be at least 1, got 0",
            ),
            (
                "max_concurrent = \"2\"",
                "max_concurrent: expected an integer, got a string",
            ),
            (
                "strategy = 1",
                "strategy: expected a string, got an integer",
            ),
            (
                "labels = \"a=b\"",
                "labels: expected a table of strings such as { region = \"eu\" }, got a string",
            ),
            (
                "labels = { env = 1 }",
                "labels.env: expected a string, got an integer",
            ),
            ("labels = { env = \"\" }", "labels.env: must not be empty"),
            (
                "labels = { \"a b\" = \"x\" }",
                "labels: invalid key \"a b\": must be one or more letters, digits, '.', '_', '/' or '-'",
            ),
            (
                "labels = { \"\" = \"x\" }",
                "labels: invalid key \"\": must be one or more letters, digits, '.', '_', '/' or '-'",
            ),
            (
                "labels.app.tier = \"web\"",
                "labels.app: expected a string, got a table",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&job(extra)),
                format!("job \"x\": {message}"),
                "{extra}"
            );
        }
    }

    #[test]
    fn kinds_and_commands() {
        let base = "[[job]]\nname = \"x\"\nevery = \"5s\"\n";
        assert_eq!(
            parse_one(&format!(
                "{base}kind = \"http\"\nhttp = {{ url = \"http://a\" }}"
            ))
            .kind,
            JobKind::Http(HttpSpec::new(HttpMethod::Get, "http://a"))
        );
        assert_eq!(
            parse_one(&format!("{base}kind = \"billing.settle\"")).kind,
            JobKind::Handler("billing.settle".into())
        );
        assert_eq!(
            parse_one(&format!("{base}kind = \"app::Sync\"")).kind,
            JobKind::Handler("app::Sync".into())
        );
        assert_eq!(
            parse_one(&format!(
                "{base}kind = \"script\"\ncommand = [\"/bin/true\"]"
            ))
            .kind,
            JobKind::Script {
                command: vec!["/bin/true".into()]
            }
        );
        let cases = [
            ("", "kind: missing (script, http, or a handler name)"),
            (
                "kind = \"script\"",
                "command: missing (required for kind = \"script\")",
            ),
            (
                "kind = \"http\"\nhttp = { url = \"http://a\" }\ncommand = [\"a\"]",
                "command: only applies to kind = \"script\", not \"http\"",
            ),
            (
                "kind = \"h\"\nhttp = { url = \"http://a\" }",
                "http: only applies to kind = \"http\", not \"h\"",
            ),
            (
                "command = [\"a\"]\nhttp = { url = \"http://a\" }",
                "http: only applies to kind = \"http\", not \"script\"",
            ),
            (
                "kind = \"HTTP\"",
                "kind: \"HTTP\" is not a kind; did you mean \"http\"?",
            ),
            (
                "kind = \"h\"\ncommand = [\"a\"]",
                "command: only applies to kind = \"script\", not \"h\"",
            ),
            (
                "kind = \"Script\"",
                "kind: \"Script\" is not a kind; did you mean \"script\"?",
            ),
            (
                "kind = \"a b\"",
                "kind: must be \"script\", \"http\" or a handler name (1-128 letters, digits, '.', '_', '-' and ':'), got \"a b\"",
            ),
            ("kind = 1", "kind: expected a string, got an integer"),
            (
                "command = []",
                "command: must not be empty: its first element is the program to run",
            ),
            (
                "command = [\"\", \"x\"]",
                "command[0]: must not be empty: it is the program to run",
            ),
            (
                "command = [\"a\", 1]",
                "command[1]: expected a string, got an integer",
            ),
            (
                "command = \"./a.sh\"",
                "command: expected an array of strings, got a string",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&format!("{base}{extra}")),
                format!("job \"x\": {message}"),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn retries_forms_and_errors() {
        assert_eq!(
            parse_one(&job("retries = 3")).retries,
            RetryPolicy {
                max: 3,
                ..RetryPolicy::default()
            }
        );
        assert_eq!(
            parse_one(&job("retries = { max = 2 }")).retries,
            RetryPolicy {
                max: 2,
                ..RetryPolicy::default()
            }
        );
        // A longer initial delay raises the default cap with it.
        assert_eq!(
            parse_one(&job("retries = { max = 2, initial = \"2m\" }")).retries,
            RetryPolicy {
                max: 2,
                initial: Duration::from_secs(120),
                max_delay: Duration::from_secs(120)
            }
        );
        let cases = [
            (
                "retries = 101",
                "retries: must be between 0 and 100, got 101",
            ),
            (
                "retries = \"3\"",
                "retries: expected an integer or a table such as { max = 3, initial = \"1s\", max_delay = \"1m\" }, got a string",
            ),
            ("retries = { initial = \"1s\" }", "retries.max: missing"),
            (
                "retries = { max = 1, initial = \"0s\" }",
                "retries.initial: must be greater than zero",
            ),
            (
                "retries = { max = 1, initial = \"5s\", max_delay = \"1s\" }",
                "retries.max_delay: must be at least retries.initial (5s), got 1s",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&job(extra)),
                format!("job \"x\": {message}"),
                "{extra}"
            );
        }
    }

    #[test]
    fn misfire_forms_and_errors() {
        assert_eq!(
            parse_one(&job("misfire = \"skip\"")).misfire,
            MisfirePolicy::Skip
        );
        assert_eq!(
            parse_one(&job("misfire = \"fire_once\"")).misfire,
            MisfirePolicy::FireOnce
        );
        assert_eq!(
            parse_one(&job("misfire = \"catch_up\"")).misfire,
            MisfirePolicy::CatchUp {
                max: DEFAULT_CATCH_UP_MAX
            }
        );
        assert_eq!(
            parse_one(&job("misfire = \"catch_up\"\ncatch_up_max = 3")).misfire,
            MisfirePolicy::CatchUp { max: 3 }
        );
        assert_eq!(
            parse_one(&job("misfire = { policy = \"catch_up\", max = 5 }")).misfire,
            MisfirePolicy::CatchUp { max: 5 }
        );
        assert_eq!(
            parse_one(&job(
                "misfire = { policy = \"catch_up\" }\ncatch_up_max = 4"
            ))
            .misfire,
            MisfirePolicy::CatchUp { max: 4 }
        );
        assert_eq!(
            parse_one(&job("misfire = { policy = \"skip\" }")).misfire,
            MisfirePolicy::Skip
        );
        let cases = [
            (
                "misfire = \"later\"",
                "misfire: must be \"fire_once\", \"skip\" or \"catch_up\", got \"later\"",
            ),
            (
                "misfire = \"skip\"\ncatch_up_max = 3",
                "catch_up_max: only applies to misfire = \"catch_up\"",
            ),
            (
                "catch_up_max = 3",
                "catch_up_max: only applies to misfire = \"catch_up\"",
            ),
            (
                "misfire = \"catch_up\"\ncatch_up_max = 0",
                "catch_up_max: must be between 1 and 10000, got 0",
            ),
            (
                "misfire = { policy = \"skip\", max = 5 }",
                "misfire.max: only applies to policy \"catch_up\"",
            ),
            ("misfire = { max = 5 }", "misfire.policy: missing"),
            (
                "misfire = { policy = \"catch_up\", max = 5 }\ncatch_up_max = 5",
                "catch_up_max: misfire.max is set too; give only one of them",
            ),
            (
                "misfire = 1",
                "misfire: expected a string or a table such as { policy = \"catch_up\", max = 5 }, got an integer",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(
                one_problem(&job(extra)),
                format!("job \"x\": {message}"),
                "{extra}"
            );
        }
    }

    #[test]
    fn all_problems_of_all_jobs_are_collected() {
        let text = r#"
            [[job]]
            name = "orders"
            every = "5s"
            command = ["./a.sh"]
            shards = 0
            timeout = 30
            colour = "red"

            [[job]]
            name = "billing"
            kind = "billing.settle"
            retries = { max = 200 }
            misfire = "never"

            [[job]]
            name = "fine"
            manual = true
            kind = "h"
        "#;
        assert_eq!(
            problems(text),
            [
                r#"job "orders": shards: must be between 1 and 10000, got 0"#,
                r#"job "orders": timeout: expected a duration string such as "30s", got an integer"#,
                r#"job "orders": colour: unknown field"#,
                r#"job "billing": schedule: missing: set one of cron, every, delay, at or manual = true"#,
                r#"job "billing": retries.max: must be between 0 and 100, got 200"#,
                r#"job "billing": misfire: must be "fire_once", "skip" or "catch_up", got "never""#,
            ]
        );
        let e = JobFile::from_toml(text).unwrap_err();
        assert_eq!(e.to_string().lines().count(), 6);
        assert_eq!(e.0[0].job.as_deref(), Some("orders"));
        assert_eq!(e.0[0].field, "shards");
        assert_eq!(e.0[0].message, "must be between 1 and 10000, got 0");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = errors("[[job]]\nname = \"x\"\nshards = = 3\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].job, None);
        assert_eq!(e[0].field, "(file)");
        assert!(
            e[0].message.starts_with("line 3, column "),
            "{}",
            e[0].message
        );
        assert!(e[0].message.contains("invalid TOML"), "{}", e[0].message);

        let dup = errors("[[job]]\nname = \"x\"\nname = \"y\"\n");
        assert_eq!(dup.len(), 1);
        assert!(
            dup[0].message.starts_with("line 3, column 1: "),
            "{}",
            dup[0].message
        );

        let json = JobFile::from_json("{\"job\": [\n  {\"name\": }\n]}")
            .unwrap_err()
            .0;
        assert_eq!(json.len(), 1);
        assert_eq!(json[0].field, "(file)");
        assert!(
            json[0].message.starts_with("line 2, column "),
            "{}",
            json[0].message
        );
        assert!(
            !json[0].message.contains(" at line "),
            "{}",
            json[0].message
        );
    }

    #[test]
    fn json_documents() {
        let spec = JobSpec::from_json(
            r#"{"name": "x", "every": "5s", "command": ["./a.sh"], "timeout": null, "shards": 2}"#,
        )
        .unwrap();
        assert_eq!(spec.shards, 2);
        assert_eq!(spec.timeout, None);

        let bad = JobSpec::from_json(
            r#"{"name": "a b", "every": "5s", "command": ["./a.sh"], "shards": 1.5}"#,
        )
        .unwrap_err();
        let lines: Vec<String> = bad.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"name: must be 1-128 characters of letters, digits, '.', '_' and '-', got "a b""#,
                "shards: expected an integer, got a float",
            ]
        );
        assert_eq!(
            JobSpec::from_json("[1]").unwrap_err().to_string(),
            "(document): expected a JSON object, got an array"
        );
        assert_eq!(
            JobSpec::from_json(
                r#"{"name": "x", "every": "5s", "command": ["./a.sh"], "shards": 5000000000}"#
            )
            .unwrap_err()
            .to_string(),
            r#"job "x": shards: must be between 1 and 10000, got 5000000000"#
        );

        let file = JobFile::from_json(
            r#"{"job": [{"name": "a", "every": "1s", "kind": "h"}, {"name": "b", "manual": true, "kind": "h"}]}"#,
        )
        .unwrap();
        assert_eq!(file.jobs.len(), 2);
        assert_eq!(
            JobFile::from_json(r#"{"job": [{"name": "a", "every": "1s", "kind": "h"}, {"name": "a", "every": "1s", "kind": "h"}], "x": 1}"#)
                .unwrap_err()
                .to_string(),
            "x: unknown top-level key (a job file holds [[job]] and [[alert]] tables and the [settings] and [scripts] tables)\njob \"a\": name: duplicate job name (also job #1)"
        );
        assert_eq!(
            JobFile::from_json("[]").unwrap_err().to_string(),
            "(file): expected a JSON object, got an array"
        );
    }

    fn full_http() -> HttpSpec {
        HttpSpec {
            method: HttpMethod::Post,
            url: "https://example.com/hook?a=1".into(),
            headers: [
                ("Authorization".to_owned(), "Bearer s3cret".to_owned()),
                ("X-Trace".to_owned(), "on\tyes".to_owned()),
            ]
            .into(),
            body: Some("{\"item\": {{item}},\n \"fire\": \"{{ fire_time }}\"}".into()),
            timeout: Duration::from_millis(120_500),
            accept: vec![
                StatusRange::new(200, 200).unwrap(),
                StatusRange::new(204, 204).unwrap(),
                StatusRange::new(300, 399).unwrap(),
                StatusRange::new(400, 404).unwrap(),
            ],
        }
    }

    fn sample_specs() -> Vec<JobSpec> {
        let name = |n: &str| JobName::new(n).unwrap();
        let script = JobKind::Script {
            command: vec!["./run.sh".into(), "--x=1".into(), "a \"q\"".into()],
        };

        let minimal = JobSpec::new(
            name("minimal"),
            Schedule::Every(Duration::from_millis(1500)),
            script.clone(),
        );

        let mut full = JobSpec::new(
            name("full"),
            Schedule::Cron(CronSchedule::parse("0 30 2 * * *", Some("America/New_York")).unwrap()),
            script,
        );
        full.description = "line one\nline \"two\"\t\\".into();
        full.shards = 8;
        full.shard_params = [
            (0, "a".to_owned()),
            (3, "b=c".to_owned()),
            (7, String::new()),
        ]
        .into();
        full.param = "p=1,q=2".into();
        full.timeout = Some(Duration::from_secs(3600 + 1));
        full.retries = RetryPolicy {
            max: 5,
            initial: Duration::from_millis(250),
            max_delay: Duration::from_secs(86_400),
        };
        full.failover = false;
        full.misfire = MisfirePolicy::CatchUp { max: 7 };
        full.strategy = Strategy::Weighted;
        full.labels = [
            ("region".to_owned(), "eu".to_owned()),
            ("app.io/tier".to_owned(), "web".to_owned()),
        ]
        .into();
        full.overwrite = true;
        full.enabled = false;
        full.max_concurrent = Some(3);
        full.listeners = vec![
            ListenerSpec::new(
                ListenerWhen::Before,
                ListenerAction::Command(vec!["./before.sh".into(), "x y".into()]),
            ),
            ListenerSpec {
                on: ListenerWhen::AfterAll,
                action: ListenerAction::Handler("app::Done".into()),
                timeout: Duration::from_secs(5),
                wait: Duration::from_secs(90),
            },
        ];
        full.alerts = Some(vec!["pager".into(), "ops.log".into()]);

        let utc_cron = JobSpec::new(
            name("utc-cron"),
            Schedule::Cron(CronSchedule::parse("*/5 * * * *", None).unwrap()),
            JobKind::Http(HttpSpec::new(HttpMethod::Get, "http://127.0.0.1:8080/")),
        );
        let mut at = JobSpec::new(
            name("at"),
            Schedule::At(
                Utc.with_ymd_and_hms(2030, 6, 1, 9, 0, 0).unwrap()
                    + chrono::Duration::nanoseconds(123_456_789),
            ),
            JobKind::Handler("db.migrate".into()),
        );
        at.misfire = MisfirePolicy::Skip;
        let mut manual = JobSpec::new(
            name("manual"),
            Schedule::Manual,
            JobKind::Handler("app::Reindex".into()),
        );
        manual.strategy = Strategy::Odevity;
        manual.streaming = true;
        manual.alerts = Some(Vec::new());
        let delay = JobSpec::new(
            name("delay"),
            Schedule::Delay(Duration::from_secs(600)),
            JobKind::Http(full_http()),
        );
        vec![minimal, full, utc_cron, at, manual, delay]
    }

    #[test]
    fn json_round_trip() {
        for spec in sample_specs() {
            let json = spec.to_json();
            assert_eq!(
                JobSpec::from_json_value(&json).as_ref(),
                Ok(&spec),
                "{json}"
            );
            let text = json.to_string();
            assert_eq!(JobSpec::from_json(&text).as_ref(), Ok(&spec), "{text}");
            // Deterministic output.
            assert_eq!(spec.to_json().to_string(), text);
            assert_eq!(spec.validate(), Ok(()));
        }
        let file = JobFile {
            jobs: sample_specs(),
        };
        let text = serde_json::json!({ "job": file.jobs.iter().map(JobSpec::to_json).collect::<Vec<_>>() }).to_string();
        assert_eq!(JobFile::from_json(&text), Ok(file));
    }

    #[test]
    fn json_shape() {
        let specs = sample_specs();
        assert_eq!(
            specs[0].to_json(),
            serde_json::json!({
                "name": "minimal",
                "description": "",
                "every": "1s500ms",
                "shards": 1,
                "shard_params": "",
                "param": "",
                "kind": "script",
                "command": ["./run.sh", "--x=1", "a \"q\""],
                "retries": { "max": 0, "initial": "1s", "max_delay": "1m" },
                "failover": true,
                "misfire": "fire_once",
                "strategy": "average",
                "labels": {},
                "overwrite": false,
                "enabled": true,
            })
        );
        let full = specs[1].to_json();
        assert_eq!(full["cron"], "0 30 2 * * *");
        assert_eq!(full["tz"], "America/New_York");
        assert_eq!(full["shard_params"], "0=a,3=b=c,7=");
        assert_eq!(full["timeout"], "1h1s");
        assert_eq!(full["misfire"], "catch_up");
        assert_eq!(full["catch_up_max"], 7);
        assert_eq!(full["max_concurrent"], 3);
        assert_eq!(full["labels"]["app.io/tier"], "web");
        assert_eq!(specs[2].to_json()["tz"], "UTC");
        assert_eq!(specs[3].to_json()["at"], "2030-06-01T09:00:00.123456789Z");
        assert_eq!(specs[4].to_json()["manual"], true);
        assert_eq!(specs[5].to_json()["delay"], "10m");
        assert_eq!(
            specs[2].to_json()["http"],
            serde_json::json!({
                "method": "GET",
                "url": "http://127.0.0.1:8080/",
                "headers": {},
                "timeout": "30s",
                "accept": ["2xx"],
            })
        );
        assert_eq!(
            specs[5].to_json()["http"],
            serde_json::json!({
                "method": "POST",
                "url": "https://example.com/hook?a=1",
                "headers": { "Authorization": "Bearer s3cret", "X-Trace": "on\tyes" },
                "body": "{\"item\": {{item}},\n \"fire\": \"{{ fire_time }}\"}",
                "timeout": "2m500ms",
                "accept": [200, 204, "3xx", "400-404"],
            })
        );
        assert!(specs[0].to_json().get("http").is_none());
    }

    #[test]
    fn toml_round_trip() {
        let file = JobFile {
            jobs: sample_specs(),
        };
        assert_eq!(
            file.jobs[0].to_toml(),
            r#"[[job]]
name = "minimal"
description = ""
every = "1s500ms"
shards = 1
shard_params = ""
param = ""
kind = "script"
command = ["./run.sh", "--x=1", "a \"q\""]
retries = { max = 0, initial = "1s", max_delay = "1m" }
failover = true
misfire = "fire_once"
strategy = "average"
labels = {}
overwrite = false
enabled = true
"#
        );
        let text = file.to_toml();
        assert!(
            text.contains("\nlabels = { \"app.io/tier\" = \"web\", region = \"eu\" }\n"),
            "{text}"
        );
        assert_eq!(
            JobFile::from_toml(&text).map_err(|e| e.to_string()),
            Ok(file),
            "{text}"
        );
    }

    /// A valid HTTP job named "x" whose http table is `http`.
    fn http_job(http: &str) -> String {
        format!("[[job]]\nname = \"x\"\nevery = \"5s\"\nkind = \"http\"\nhttp = {http}\n")
    }

    fn http_of(spec: &JobSpec) -> &HttpSpec {
        match &spec.kind {
            JobKind::Http(h) => h,
            other => panic!("expected an http job, got {other:?}"),
        }
    }

    #[test]
    fn http_job_inline_and_sub_table() {
        let inline = parse_one(
            r#"
            [[job]]
            name = "ping"
            every = "10s"
            kind = "http"
            http = { method = "POST", url = "https://example.com/hook", headers = { Authorization = "Bearer x" }, body = '{"item": {{item}}, "fire": "{{fire_time}}"}', timeout = "5s", accept = [200, 204] }
            "#,
        );
        let expected = HttpSpec {
            method: HttpMethod::Post,
            url: "https://example.com/hook".into(),
            headers: [("Authorization".to_owned(), "Bearer x".to_owned())].into(),
            body: Some(r#"{"item": {{item}}, "fire": "{{fire_time}}"}"#.into()),
            timeout: Duration::from_secs(5),
            accept: vec![
                StatusRange {
                    first: 200,
                    last: 200,
                },
                StatusRange {
                    first: 204,
                    last: 204,
                },
            ],
        };
        assert_eq!(http_of(&inline), &expected);

        let sub_table = parse_one(
            r#"
            [[job]]
            name = "ping"
            every = "10s"
            shards = 2

            [job.http]
            method = "post"
            url = "https://example.com/hook"
            body = '{"item": {{item}}, "fire": "{{fire_time}}"}'
            timeout = "5s"
            accept = ["200", 204]

            [job.http.headers]
            Authorization = "Bearer x"
            "#,
        );
        // kind defaults to "http" when an http table is given.
        assert_eq!(sub_table.kind, JobKind::Http(expected));
        assert_eq!(sub_table.shards, 2);
    }

    #[test]
    fn http_defaults() {
        let spec = parse_one(&http_job("{ url = \"http://localhost:8080/x\" }"));
        let http = http_of(&spec);
        assert_eq!(
            http,
            &HttpSpec::new(HttpMethod::Get, "http://localhost:8080/x")
        );
        assert_eq!(http.method, HttpMethod::Get);
        assert!(http.headers.is_empty());
        assert_eq!(http.body, None);
        assert_eq!(http.timeout, DEFAULT_HTTP_TIMEOUT);
        assert_eq!(http.accept, [StatusRange::SUCCESS]);
        assert!(http.accepts(200) && http.accepts(299));
        assert!(!http.accepts(199) && !http.accepts(300) && !http.accepts(500));
        for m in HttpMethod::ALL {
            assert_eq!(HttpMethod::parse(m.as_str()), Some(m));
            assert_eq!(HttpMethod::parse(&m.as_str().to_lowercase()), Some(m));
        }
        assert_eq!(HttpMethod::parse("CONNECT"), None);
    }

    #[test]
    fn http_errors_name_the_field() {
        let cases = [
            (
                "1",
                "http: expected a table such as { url = \"https://example.com/hook\" }, got an integer",
            ),
            ("{}", "http.url: missing"),
            ("{ url = 5 }", "http.url: expected a string, got an integer"),
            (
                "{ url = \"example.com/hook\" }",
                "http.url: not a valid absolute URL: relative URL without a base",
            ),
            (
                "{ url = \"ftp://example.com/x\" }",
                "http.url: must be an http:// or https:// URL, got scheme \"ftp\"",
            ),
            (
                "{ url = \"https://user:pw@example.com/\" }",
                "http.url: must not hold credentials (user:password@): put them in a header, such as Authorization, whose value is kept secret",
            ),
            (
                "{ url = \"http://a\", method = \"FETCH\" }",
                "http.method: must be GET, POST, PUT, PATCH, DELETE or HEAD, got \"FETCH\"",
            ),
            (
                "{ url = \"http://a\", headers = \"x\" }",
                "http.headers: expected a table of strings such as { Authorization = \"Bearer ...\" }, got a string",
            ),
            (
                "{ url = \"http://a\", headers = { \"a b\" = \"x\" } }",
                "http.headers: invalid header name \"a b\": must be one or more letters, digits and !#$%&'*+-.^_`|~",
            ),
            (
                "{ url = \"http://a\", headers = { X-Token = 1 } }",
                "http.headers.X-Token: expected a string, got an integer",
            ),
            (
                "{ url = \"http://a\", headers = { X-Token = \"s3cret\\nX-Evil: 1\" } }",
                "http.headers.X-Token: must not contain control characters such as line breaks",
            ),
            (
                "{ url = \"http://a\", headers = { x-shardcron-token = \"1\" } }",
                "http.headers.x-shardcron-token: X-Shardcron-Token is set by shardcron",
            ),
            (
                "{ url = \"http://a\", headers = { Content-Length = \"1\" } }",
                "http.headers.Content-Length: Content-Length is set by shardcron",
            ),
            (
                "{ url = \"http://a\", headers = { Accept = \"a\", accept = \"b\" } }",
                "http.headers.accept: given twice (also as \"Accept\"; header names ignore letter case)",
            ),
            (
                "{ url = \"http://a\", body = 1 }",
                "http.body: expected a string, got an integer",
            ),
            (
                "{ url = \"http://a\", body = \"{{itme}}\" }",
                "http.body: unknown placeholder {{itme}} (did you mean {{item}}? known: job, item, total, item_param, param, fire_time, execution_id, instance, token, source, attempt)",
            ),
            (
                "{ url = \"http://a\", body = \"{{ password }}\" }",
                "http.body: unknown placeholder {{password}} (known: job, item, total, item_param, param, fire_time, execution_id, instance, token, source, attempt)",
            ),
            (
                "{ url = \"http://a\", body = \"é {{item\" }",
                "http.body: \"{{\" at character 3 is not closed by \"}}\"",
            ),
            (
                "{ url = \"http://a\", method = \"HEAD\", body = \"x\" }",
                "http.body: not allowed with method HEAD",
            ),
            (
                "{ url = \"http://a\", timeout = 5 }",
                "http.timeout: expected a duration string such as \"30s\", got an integer",
            ),
            (
                "{ url = \"http://a\", timeout = \"0s\" }",
                "http.timeout: must be greater than zero",
            ),
            (
                "{ url = \"http://a\", timeout = \"2h\" }",
                "http.timeout: must be at most 1h, got 2h",
            ),
            (
                "{ url = \"http://a\", accept = [] }",
                "http.accept: must not be empty: list the status codes that mean success, such as [\"2xx\"]",
            ),
            (
                "{ url = \"http://a\", accept = 200 }",
                "http.accept: expected an array of status codes, classes or ranges such as [200, \"3xx\", \"400-404\"], got an integer",
            ),
            (
                "{ url = \"http://a\", accept = [200, 99] }",
                "http.accept[1]: status codes are between 100 and 599, got 99",
            ),
            (
                "{ url = \"http://a\", accept = [70000] }",
                "http.accept[0]: status codes are between 100 and 599, got 70000",
            ),
            (
                "{ url = \"http://a\", accept = [\"6xx\"] }",
                "http.accept[0]: status codes are between 100 and 599, got 6xx",
            ),
            (
                "{ url = \"http://a\", accept = [\"299-200\"] }",
                "http.accept[0]: range 299-200 is reversed",
            ),
            (
                "{ url = \"http://a\", accept = [\"ok\"] }",
                "http.accept[0]: expected a status code such as 200, a class such as \"2xx\" or a range such as \"200-204\", got \"ok\"",
            ),
            (
                "{ url = \"http://a\", accept = [true] }",
                "http.accept[0]: expected a status code such as 200 or a string such as \"2xx\" or \"200-204\", got a boolean",
            ),
        ];
        for (http, message) in cases {
            assert_eq!(
                one_problem(&http_job(http)),
                format!("job \"x\": {message}"),
                "{http}"
            );
        }
        // Every problem of the table is reported at once.
        assert_eq!(
            problems(&http_job(
                "{ method = \"GET \", timeout = \"1y\", accept = [1], extra = 1 }"
            )),
            [
                r#"job "x": http.method: must be GET, POST, PUT, PATCH, DELETE or HEAD, got "GET ""#,
                r#"job "x": http.url: missing"#,
                r#"job "x": http.timeout: must be a duration like "30s", "5m" or "1h30m" (units ms, s, m, h, d), got "1y""#,
                r#"job "x": http.accept[0]: status codes are between 100 and 599, got 1"#,
                r#"job "x": http.extra: unknown field"#,
            ]
        );
    }

    #[test]
    fn a_header_value_never_appears_in_a_problem() {
        let text = http_job(
            "{ url = \"http://a\", headers = { Authorization = \"Bearer s3cret\\r\\n\" } }",
        );
        let e = JobFile::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("http.headers.Authorization"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn status_ranges() {
        for (text, first, last, shown) in [
            ("204", 204, 204, "204"),
            (" 2xx ", 200, 299, "2xx"),
            ("5XX", 500, 599, "5xx"),
            ("200-204", 200, 204, "200-204"),
            ("100-599", 100, 599, "100-599"),
            ("300-399", 300, 399, "3xx"),
        ] {
            let r = StatusRange::parse(text).unwrap();
            assert_eq!((r.first, r.last), (first, last), "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(StatusRange::parse(shown), Ok(r));
        }
        for bad in [
            "20", "2000", "x", "2x", "xx", "-", "200-", "+200", "0xx", "600",
        ] {
            assert!(StatusRange::parse(bad).is_err(), "{bad}");
        }
        let r = StatusRange::new(400, 404).unwrap();
        assert!(r.contains(400) && r.contains(404) && !r.contains(405));
    }

    fn context() -> ShardingContext {
        ShardingContext {
            job: "ping".into(),
            item: 3,
            total: 8,
            item_param: "eu".into(),
            param: "p=1".into(),
            fire_time: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
            execution_id: "e-1".into(),
            instance: "inst-a".into(),
            token: 77,
            source: crate::ExecutionSource::Retry,
            attempt: 2,
        }
    }

    #[test]
    fn body_placeholders_are_filled_from_the_context() {
        let mut http = HttpSpec::new(HttpMethod::Post, "http://a");
        assert_eq!(http.render_body(&context()), Ok(None));
        http.body = Some(
            "{{job}}|{{item}}|{{total}}|{{item_param}}|{{param}}|{{fire_time}}|{{execution_id}}|{{instance}}|{{token}}|{{source}}|{{attempt}}|{{ item }}|{ }|}}"
                .into(),
        );
        assert_eq!(
            http.render_body(&context()),
            Ok(Some(
                "ping|3|8|eu|p=1|2030-01-02T03:04:05Z|e-1|inst-a|77|RETRY|2|3|{ }|}}".into()
            ))
        );
        // Every placeholder is accepted by validation and has a value.
        for name in HTTP_PLACEHOLDERS {
            http.body = Some(format!("{{{{{name}}}}}"));
            let rendered = http.render_body(&context()).unwrap().unwrap();
            assert!(!rendered.is_empty() && !rendered.contains('{'), "{name}");
        }
        // A spec built in code with a bad template fails to render, naming it.
        http.body = Some("{{nope}}".into());
        assert!(
            http.render_body(&context())
                .unwrap_err()
                .contains("{{nope}}")
        );
    }

    #[test]
    fn redaction_hides_header_values() {
        let spec = sample_specs().remove(5);
        let debug = format!("{spec:?} {:#?}", spec.kind);
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("Authorization"), "{debug}");
        assert!(debug.contains(REDACTED), "{debug}");

        let redacted = spec.redacted();
        let json = redacted.to_json();
        assert_eq!(
            json["http"]["headers"],
            serde_json::json!({ "Authorization": REDACTED, "X-Trace": REDACTED })
        );
        assert!(!json.to_string().contains("s3cret"));
        // Everything else is unchanged.
        assert_eq!(json["http"]["url"], spec.to_json()["http"]["url"]);
        assert_eq!(json["http"]["body"], spec.to_json()["http"]["body"]);
        assert_eq!(sample_specs()[0].redacted(), sample_specs()[0]);

        // A redacted job sent back gets its stored values; changed ones are kept.
        let mut edited = JobSpec::from_json_value(&json).unwrap();
        if let JobKind::Http(h) = &mut edited.kind {
            h.headers.insert("X-Trace".into(), "off".into());
            h.headers.insert("X-New".into(), REDACTED.into());
        }
        edited.restore_redacted(&spec);
        let headers = &http_of(&edited).headers;
        assert_eq!(headers["Authorization"], "Bearer s3cret");
        assert_eq!(headers["X-Trace"], "off");
        assert_eq!(headers["X-New"], REDACTED);
    }

    #[test]
    fn http_toml_form_reads_back() {
        let spec = sample_specs().remove(5);
        let text = spec.to_toml();
        assert!(
            text.contains("\nhttp = { accept = [200, 204, \"3xx\", \"400-404\"], body = "),
            "{text}"
        );
        assert_eq!(parse_one(&text), spec);
    }

    #[test]
    fn validate_catches_specs_a_file_cannot_hold() {
        let mut spec = JobSpec::new(
            JobName::new("x").unwrap(),
            Schedule::Manual,
            JobKind::Handler("h".into()),
        );
        spec.shards = 2;
        spec.shard_params = [(1, "a,b".to_owned())].into();
        assert_eq!(spec.validate().unwrap_err().0[0].field, "shard_params");
        spec.shard_params.clear();
        spec.shards = 0;
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            r#"job "x": shards: must be between 1 and 10000, got 0"#
        );
    }

    #[test]
    fn listeners_alerts_and_streaming() {
        let spec = parse_one(
            r#"[[job]]
name = "x"
every = "5s"
kind = "app::Flow"
streaming = true
alerts = ["pager", "ding"]

[[job.listeners]]
on = "before"
command = ["./prepare.sh", "now"]

[[job.listeners]]
on = "after"
handler = "audit"
timeout = "10s"

[[job.listeners]]
on = "after_all"
command = ["./report.sh"]
wait = "2m"
"#,
        );
        assert!(spec.streaming);
        assert_eq!(
            spec.alerts,
            Some(vec!["pager".to_owned(), "ding".to_owned()])
        );
        assert_eq!(
            spec.listeners,
            vec![
                ListenerSpec::new(
                    ListenerWhen::Before,
                    ListenerAction::Command(vec!["./prepare.sh".into(), "now".into()]),
                ),
                ListenerSpec {
                    on: ListenerWhen::After,
                    action: ListenerAction::Handler("audit".into()),
                    timeout: Duration::from_secs(10),
                    wait: DEFAULT_LISTENER_WAIT,
                },
                ListenerSpec {
                    on: ListenerWhen::AfterAll,
                    action: ListenerAction::Command(vec!["./report.sh".into()]),
                    timeout: DEFAULT_LISTENER_TIMEOUT,
                    wait: Duration::from_secs(120),
                },
            ]
        );
        let plain = parse_one(&job(""));
        assert!(!plain.streaming);
        assert!(plain.listeners.is_empty());
        assert_eq!(plain.alerts, None);
        // Defaults are not written, so stored jobs keep their form.
        let json = plain.to_json();
        for field in ["streaming", "listeners", "alerts"] {
            assert!(json.get(field).is_none(), "{field} written: {json}");
        }
    }

    #[test]
    fn listener_alert_and_streaming_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "streaming = true",
                "streaming: only applies to Rust dataflow handlers",
            ),
            (
                "streaming = 1",
                "streaming: expected a boolean, got an integer",
            ),
            (
                "alerts = \"pager\"",
                "alerts: expected an array of alert channel names, got a string",
            ),
            ("alerts = [\"a b\"]", "alerts[0]: must be a channel name"),
            (
                "alerts = [\"a\", \"a\"]",
                "alerts[1]: \"a\" is listed twice",
            ),
            (
                "alerts = [1]",
                "alerts[0]: expected a string, got an integer",
            ),
            ("listeners = 3", "listeners: expected an array of tables"),
            (
                "[[job.listeners]]\ncommand = [\"./a\"]",
                "listeners[0].on: missing",
            ),
            (
                "[[job.listeners]]\non = \"around\"\ncommand = [\"./a\"]",
                "listeners[0].on: must be \"before\", \"after\" or \"after_all\", got \"around\"",
            ),
            (
                "[[job.listeners]]\non = \"after\"",
                "listeners[0]: needs `command`",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\"]\nhandler = \"h\"",
                "listeners[0]: has both `command` and `handler`",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = []",
                "listeners[0].command: must not be empty",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\", 2]",
                "listeners[0].command[1]: expected a string, got an integer",
            ),
            (
                "[[job.listeners]]\non = \"after\"\nhandler = \"a b\"",
                "listeners[0].handler: must be a handler name",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\"]\nwait = \"1m\"",
                "listeners[0].wait: only applies to on = \"after_all\"",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\"]\ntimeout = 5",
                "listeners[0].timeout: expected a duration string",
            ),
            (
                "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\"]\ntimout = \"5s\"",
                "listeners[0].timout: unknown field (did you mean \"timeout\"?)",
            ),
        ];
        for (extra, expected) in cases {
            let got = problems(&job(extra));
            assert!(
                got.iter().any(|p| p.contains(expected)),
                "{extra:?}: expected {expected:?} in {got:?}"
            );
        }
        let many =
            "[[job.listeners]]\non = \"after\"\ncommand = [\"./a\"]\n".repeat(MAX_LISTENERS + 1);
        let got = problems(&job(&many));
        assert!(
            got.iter()
                .any(|p| p.contains("listeners: at most 16 listeners, got 17")),
            "{got:?}"
        );
    }

    #[test]
    fn after_all_is_refused_on_multi_item_delay_jobs() {
        let text = "[[job]]\nname = \"d\"\ndelay = \"5s\"\nshards = 2\ncommand = [\"./a\"]\n\
                    [[job.listeners]]\non = \"after_all\"\ncommand = [\"./b\"]\n";
        let got = problems(text);
        assert!(
            got.len() == 1
                && got[0].starts_with("job \"d\": listeners[0].on: \"after_all\" needs a fire"),
            "{got:?}"
        );
        assert_eq!(
            parse_one(&text.replace("shards = 2", "shards = 1")).shards,
            1
        );
    }

    #[test]
    fn listener_wait_is_at_most_an_hour() {
        let got = problems(&job(
            "[[job.listeners]]\non = \"after_all\"\ncommand = [\"./a\"]\nwait = \"2h\"",
        ));
        assert_eq!(
            got,
            ["job \"x\": listeners[0].wait: must be at most 1h, got 2h"]
        );
    }

    #[test]
    fn alert_tables_are_accepted_at_the_top_level() {
        let text = format!("{}\n[[alert]]\nname = \"log\"\ntype = \"log\"\n", job(""));
        assert_eq!(JobFile::from_toml(&text).unwrap().jobs.len(), 1);
    }
}
