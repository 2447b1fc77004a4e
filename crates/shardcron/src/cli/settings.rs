//! Settings of `standalone` and `agent`. Every setting comes from, in order of
//! precedence: its flag, its `SHARDCRON_*` environment variable (clap reads both),
//! the config file's `[settings]` table (and `[scripts]` for the allow-list), and
//! its default. A bad value stops the start with exit code 2 and a message that
//! names the flag or the config key.
//!
//! A config file is a job file (`[[job]]` tables) with two optional tables:
//!
//! ```toml
//! [settings]
//! data = "/var/lib/shardcron"      # relative paths are relative to this file
//! bind = "127.0.0.1:8080"
//! registry = "etcd://10.0.0.1:2379,10.0.0.2:2379"
//! namespace = "prod"
//! history = "postgres://shardcron@db/shardcron"
//! name = "worker-1"
//! labels = { role = "worker" }
//! weight = 2
//! lease_ttl = "5s"
//! log = "info"
//! registry_user = "shardcron"      # password: SHARDCRON_REGISTRY_PASSWORD only
//! registry_ca = "certs/ca.pem"     # etcds:// registries
//! registry_cert = "certs/client.pem"
//! registry_key = "certs/client-key.pem"
//! admin_password = "..."           # the console's admin; or SHARDCRON_ADMIN_PASSWORD
//! secure_cookies = true            # behind an HTTPS proxy
//!
//! [scripts]
//! allow = ["/opt/jobs", "scripts"]
//! ```
//!
//! and any number of `[[alert]]` tables: the node's alert channels (format in
//! `shardcron_alert`), which the jobs' `alerts` lists name. A JSON config file may
//! hold them as an `alert` array.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::Args;
use shardcron_alert::AlertConfig;
use shardcron_core::duration::parse_duration;
use shardcron_core::job::{JobFile, JobKind, JobSpec, ListenerAction};
use shardcron_runtime::script::{check_allowed, parse_allow_env};

use super::CliError;

/// Flags shared by `standalone` and `agent`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeFlags {
    /// Config file: [[job]] tables plus optional [settings] and [scripts] tables.
    #[arg(long, env = "SHARDCRON_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Local data directory (registry and SQLite history of standalone; the
    /// history spool of both). Default: ./shardcron-data
    #[arg(long, env = "SHARDCRON_DATA", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Serve the console, the REST API, /metrics and /health on this address.
    /// Default: 127.0.0.1:8080 for standalone, none for agent.
    #[arg(long, env = "SHARDCRON_BIND", value_name = "ADDR")]
    pub(crate) bind: Option<SocketAddr>,
    /// History database URL: sqlite://PATH, postgres://..., mysql://...
    /// (standalone default: sqlite in the data directory).
    #[arg(long, env = "SHARDCRON_HISTORY", value_name = "URL")]
    pub(crate) history: Option<String>,
    /// Instance name (flags such as "disabled" attach to it). Default: host name.
    #[arg(long, env = "SHARDCRON_NAME", value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Labels that jobs select on: k=v,k2=v2
    #[arg(long, env = "SHARDCRON_LABELS", value_name = "K=V,...", value_parser = parse_labels)]
    pub(crate) labels: Option<BTreeMap<String, String>>,
    /// Relative capacity for the weighted strategy, 1 to 10000. Default: 1
    #[arg(long, env = "SHARDCRON_WEIGHT", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) weight: Option<u32>,
    /// Registry lease TTL, at least 2s. Default: 5s
    #[arg(long, env = "SHARDCRON_LEASE_TTL", value_name = "DURATION", value_parser = parse_ttl)]
    pub(crate) lease_ttl: Option<Duration>,
    /// Directories scripts may run from, colon-separated absolute paths.
    /// Default: the config file's [scripts] allow, else the config file's directory.
    #[arg(long, env = "SHARDCRON_SCRIPT_ALLOW", value_name = "DIR:DIR")]
    pub(crate) script_allow: Option<String>,
    /// Log filter (tracing syntax), e.g. info or shardcron_runtime=debug. Default: info
    #[arg(long, env = "SHARDCRON_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,
}

/// Flags of `agent` only.
#[derive(Debug, Clone, Args)]
pub(crate) struct AgentFlags {
    /// etcd endpoints: etcd://HOST:PORT[,HOST:PORT] (etcds:// for TLS).
    #[arg(long, env = "SHARDCRON_REGISTRY", value_name = "URL")]
    pub(crate) registry: Option<String>,
    /// Namespace (key prefix) of the cluster in etcd.
    #[arg(long, env = "SHARDCRON_NAMESPACE", value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// etcd user (the password comes from SHARDCRON_REGISTRY_PASSWORD only).
    #[arg(long, env = "SHARDCRON_REGISTRY_USER", value_name = "USER")]
    pub(crate) registry_user: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate (etcds://).
    #[arg(long, env = "SHARDCRON_REGISTRY_CA", value_name = "FILE")]
    pub(crate) registry_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "SHARDCRON_REGISTRY_CERT", value_name = "FILE")]
    pub(crate) registry_cert: Option<PathBuf>,
    /// Client private key (PEM) for etcd.
    #[arg(long, env = "SHARDCRON_REGISTRY_KEY", value_name = "FILE")]
    pub(crate) registry_key: Option<PathBuf>,
}

/// `k=v,k2=v2` (an empty string is no labels).
pub(crate) fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} must be KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("{part:?}: key and value must not be empty"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k:?} is given twice"));
        }
    }
    Ok(out)
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(2) {
        return Err(format!(
            "must be at least 2s (etcd's minimum lease), got {s:?}"
        ));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("must be at most 1h, got {s:?}"));
    }
    Ok(d)
}

/// The `[settings]` table of a config file.
#[derive(Debug, Clone, Default)]
struct FileSettings {
    data: Option<PathBuf>,
    bind: Option<SocketAddr>,
    registry: Option<String>,
    namespace: Option<String>,
    history: Option<String>,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    weight: Option<u32>,
    lease_ttl: Option<Duration>,
    log: Option<String>,
    registry_user: Option<String>,
    registry_ca: Option<PathBuf>,
    registry_cert: Option<PathBuf>,
    registry_key: Option<PathBuf>,
    admin_password: Option<String>,
    secure_cookies: Option<bool>,
}

const SETTINGS_KEYS: &[&str] = &[
    "data",
    "bind",
    "registry",
    "namespace",
    "history",
    "name",
    "labels",
    "weight",
    "lease_ttl",
    "log",
    "registry_user",
    "registry_ca",
    "registry_cert",
    "registry_key",
    "admin_password",
    "secure_cookies",
];

/// A config file, read and validated.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFile {
    /// The file.
    pub(crate) path: PathBuf,
    /// Its directory (relative paths in it are relative to this), absolute.
    pub(crate) dir: PathBuf,
    /// Its jobs, script commands made absolute.
    pub(crate) jobs: Vec<JobSpec>,
    /// Its `[[alert]]` channels.
    pub(crate) alerts: Vec<AlertConfig>,
    settings: FileSettings,
    scripts_allow: Option<Vec<PathBuf>>,
}

impl ConfigFile {
    /// Read, parse and validate `path` (TOML, or JSON when it ends in `.json`;
    /// JSON files hold jobs only). Every problem is reported (exit 2).
    pub(crate) fn load(path: &Path) -> Result<ConfigFile, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::invalid("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        let abs = absolute(path)
            .map_err(|e| CliError::invalid("--config", format!("{}: {e}", path.display())))?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut problems: Vec<String> = Vec::new();
        let json = path.extension().is_some_and(|e| e == "json");
        let parsed = if json {
            JobFile::from_json(&text)
        } else {
            JobFile::from_toml(&text)
        };
        let mut jobs = match parsed {
            Ok(f) => f.jobs,
            Err(errors) => {
                problems.extend(errors.0.iter().map(ToString::to_string));
                Vec::new()
            }
        };
        let alerts = read_alert_channels(&text, json, path, &jobs, true, &mut problems);
        let mut settings = FileSettings::default();
        let mut scripts_allow = None;
        if path.extension().is_none_or(|e| e != "json")
            && let Ok(root) = text.parse::<toml::Table>()
        {
            if let Some(v) = root.get("settings") {
                settings = read_settings(v, &dir, &mut problems);
            }
            if let Some(v) = root.get("scripts") {
                scripts_allow = read_scripts(v, &dir, &mut problems);
            }
        }
        // Programs (of script jobs and of command listeners) are relative to
        // the file.
        let absolute_program = |command: &mut Vec<String>| {
            if let Some(first) = command.first_mut()
                && !Path::new(first.as_str()).is_absolute()
            {
                *first = normalize(&dir.join(first.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        };
        for job in &mut jobs {
            if let JobKind::Script { command } = &mut job.kind {
                absolute_program(command);
            }
            for l in &mut job.listeners {
                if let ListenerAction::Command(command) = &mut l.action {
                    absolute_program(command);
                }
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            return Err(CliError::Invalid(format!(
                "{} has {n} problem{}:\n{}",
                path.display(),
                if n == 1 { "" } else { "s" },
                problems.join("\n")
            )));
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            dir,
            jobs,
            alerts,
            settings,
            scripts_allow,
        })
    }
}

/// The `[[alert]]` channels of a config file's `text` (TOML, or JSON when `json`:
/// an `alert` array), each problem added to `problems` naming its field
/// (`alert[1].url: ...`) and never quoting a secret. With `check_names`, every name
/// in a job's `alerts` must be one of the file's channels. Syntax errors of the
/// file are left to the job reader, which reports them.
pub(crate) fn read_alert_channels(
    text: &str,
    json: bool,
    path: &Path,
    jobs: &[JobSpec],
    check_names: bool,
    problems: &mut Vec<String>,
) -> Vec<AlertConfig> {
    // The channels, and the names of the tables (read from the raw tables, so that
    // a job naming a channel whose table has a problem is not reported too).
    let (read, names) = if json {
        let alert = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|root| root.get("alert").cloned());
        let names = table_names(alert.as_ref().and_then(|v| v.as_array()), |t| {
            t.get("name")?.as_str()
        });
        (
            alert.map(|v| AlertConfig::list_from_json(&v, "alert")),
            names,
        )
    } else {
        let alert = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut root| root.remove("alert"));
        let names = table_names(alert.as_ref().and_then(|v| v.as_array()), |t| {
            t.get("name")?.as_str()
        });
        (
            alert.map(|v| AlertConfig::list_from_toml(&v, "alert")),
            names,
        )
    };
    let channels = read.map_or_else(Vec::new, |read| collect(read, problems));
    if check_names {
        for job in jobs {
            for (i, name) in job.alerts.iter().flatten().enumerate() {
                if !names.contains(name) {
                    problems.push(format!(
                        "job {:?}: alerts[{i}]: no [[alert]] channel named {name:?} in {}",
                        job.name.as_str(),
                        path.display()
                    ));
                }
            }
        }
    }
    channels
}

/// The `name` of each of `tables` that has one (`name` reads it from a table).
fn table_names<'a, T>(
    tables: Option<&'a Vec<T>>,
    name: impl Fn(&'a T) -> Option<&'a str>,
) -> Vec<String> {
    tables
        .into_iter()
        .flatten()
        .filter_map(|t| name(t).map(str::to_owned))
        .collect()
}

fn collect(
    read: Result<Vec<AlertConfig>, shardcron_alert::AlertConfigErrors>,
    problems: &mut Vec<String>,
) -> Vec<AlertConfig> {
    read.unwrap_or_else(|errors| {
        problems.extend(errors.0.iter().map(ToString::to_string));
        Vec::new()
    })
}

fn read_settings(v: &toml::Value, dir: &Path, problems: &mut Vec<String>) -> FileSettings {
    let mut out = FileSettings::default();
    let Some(t) = v.as_table() else {
        problems.push(format!(
            "settings: expected a table ([settings]), got {}",
            v.type_str()
        ));
        return out;
    };
    for (key, value) in t {
        let field = format!("settings.{key}");
        let mut bad = |msg: String| problems.push(format!("{field}: {msg}"));
        let string = |value: &toml::Value| -> Result<String, String> {
            match value.as_str() {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                Some(_) => Err("must not be empty".into()),
                None => Err(format!("expected a string, got {}", value.type_str())),
            }
        };
        match key.as_str() {
            "data" => match string(value) {
                Ok(s) => out.data = Some(normalize(&dir.join(s))),
                Err(e) => bad(e),
            },
            "bind" => match string(value).and_then(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8080 ({e})"))
            }) {
                Ok(a) => out.bind = Some(a),
                Err(e) => bad(e),
            },
            "registry" => match string(value) {
                Ok(s) => out.registry = Some(s),
                Err(e) => bad(e),
            },
            "namespace" => match string(value) {
                Ok(s) => out.namespace = Some(s),
                Err(e) => bad(e),
            },
            "history" => match string(value) {
                Ok(s) => out.history = Some(s),
                Err(e) => bad(e),
            },
            "name" => match string(value) {
                Ok(s) => out.name = Some(s),
                Err(e) => bad(e),
            },
            "log" => match string(value) {
                Ok(s) => out.log = Some(s),
                Err(e) => bad(e),
            },
            "registry_user" => match string(value) {
                Ok(s) => out.registry_user = Some(s),
                Err(e) => bad(e),
            },
            // The message never quotes the value: it is a secret.
            "admin_password" => match value.as_str() {
                Some(s) if s.chars().count() >= 12 => out.admin_password = Some(s.to_string()),
                Some(_) => bad("must be at least 12 characters".into()),
                None => bad(format!("expected a string, got {}", value.type_str())),
            },
            "secure_cookies" => match value.as_bool() {
                Some(b) => out.secure_cookies = Some(b),
                None => bad(format!("expected a boolean, got {}", value.type_str())),
            },
            "registry_ca" | "registry_cert" | "registry_key" => match string(value) {
                Ok(s) => {
                    let p = Some(normalize(&dir.join(s)));
                    match key.as_str() {
                        "registry_ca" => out.registry_ca = p,
                        "registry_cert" => out.registry_cert = p,
                        _ => out.registry_key = p,
                    }
                }
                Err(e) => bad(e),
            },
            "labels" => match value {
                toml::Value::Table(t) => {
                    let mut labels = BTreeMap::new();
                    for (k, v) in t {
                        match v.as_str() {
                            Some(s) if !s.is_empty() && !k.is_empty() => {
                                labels.insert(k.clone(), s.to_string());
                            }
                            Some(_) => bad(format!("{k:?}: key and value must not be empty")),
                            None => bad(format!("{k:?}: expected a string, got {}", v.type_str())),
                        }
                    }
                    out.labels = Some(labels);
                }
                toml::Value::String(s) => match parse_labels(s) {
                    Ok(l) => out.labels = Some(l),
                    Err(e) => bad(e),
                },
                other => bad(format!(
                    "expected a table like {{ role = \"worker\" }}, got {}",
                    other.type_str()
                )),
            },
            "weight" => match value.as_integer() {
                Some(n) if (1..=10_000).contains(&n) => out.weight = u32::try_from(n).ok(),
                Some(n) => bad(format!("must be between 1 and 10000, got {n}")),
                None => bad(format!("expected an integer, got {}", value.type_str())),
            },
            "lease_ttl" => match string(value).and_then(|s| parse_ttl(&s)) {
                Ok(d) => out.lease_ttl = Some(d),
                Err(e) => bad(e),
            },
            _ => bad(format!(
                "unknown setting (known: {})",
                SETTINGS_KEYS.join(", ")
            )),
        }
    }
    out
}

fn read_scripts(v: &toml::Value, dir: &Path, problems: &mut Vec<String>) -> Option<Vec<PathBuf>> {
    let Some(t) = v.as_table() else {
        problems.push(format!(
            "scripts: expected a table ([scripts]), got {}",
            v.type_str()
        ));
        return None;
    };
    let mut allow = None;
    for (key, value) in t {
        match (key.as_str(), value) {
            ("allow", toml::Value::Array(items)) => {
                let mut dirs = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) if !s.trim().is_empty() => dirs.push(normalize(&dir.join(s))),
                        _ => problems.push(format!(
                            "scripts.allow[{i}]: expected a directory path, got {item}"
                        )),
                    }
                }
                allow = Some(dirs);
            }
            ("allow", other) => problems.push(format!(
                "scripts.allow: expected a list of directories, got {}",
                other.type_str()
            )),
            (other, _) => problems.push(format!("scripts.{other}: unknown setting (known: allow)")),
        }
    }
    allow
}

/// `path` made absolute against the working directory.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    Ok(normalize(&std::path::absolute(path)?))
}

/// Remove `.` and resolve `..` lexically (the allow-list check resolves links).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Everything a node needs, resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) config: Option<ConfigFile>,
    pub(crate) data: PathBuf,
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) history: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) weight: u32,
    pub(crate) lease_ttl: Duration,
    pub(crate) script_allow: Vec<PathBuf>,
    pub(crate) log: String,
    pub(crate) registry: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) registry_user: Option<String>,
    pub(crate) registry_ca: Option<PathBuf>,
    pub(crate) registry_cert: Option<PathBuf>,
    pub(crate) registry_key: Option<PathBuf>,
    /// The console's admin password: `SHARDCRON_ADMIN_PASSWORD` or
    /// `settings.admin_password` (never a flag: flags show in `ps`).
    pub(crate) admin_password: Option<String>,
    /// Mark the console's cookies `Secure` (`settings.secure_cookies`).
    pub(crate) secure_cookies: bool,
}

impl Resolved {
    /// Merge flags (and their environment variables) over the config file over
    /// the defaults, and check the jobs' script commands against the allow-list.
    pub(crate) fn new(flags: &NodeFlags, agent: Option<&AgentFlags>) -> Result<Self, CliError> {
        let config = flags.config.as_deref().map(ConfigFile::load).transpose()?;
        let file = config
            .as_ref()
            .map(|c| c.settings.clone())
            .unwrap_or_default();
        let script_allow = match (&flags.script_allow, &config) {
            (Some(v), _) => parse_allow_env(v)
                .map_err(|e| CliError::invalid("--script-allow (SHARDCRON_SCRIPT_ALLOW)", e))?,
            (None, Some(c)) => c
                .scripts_allow
                .clone()
                .unwrap_or_else(|| vec![c.dir.clone()]),
            (None, None) => Vec::new(),
        };
        let resolved = Resolved {
            data: flags
                .data
                .clone()
                .or(file.data.clone())
                .unwrap_or_else(|| PathBuf::from("shardcron-data")),
            bind: flags.bind.or(file.bind),
            history: flags.history.clone().or(file.history.clone()),
            name: flags.name.clone().or(file.name.clone()),
            labels: flags
                .labels
                .clone()
                .or(file.labels.clone())
                .unwrap_or_default(),
            weight: flags.weight.or(file.weight).unwrap_or(1),
            lease_ttl: flags
                .lease_ttl
                .or(file.lease_ttl)
                .unwrap_or(Duration::from_secs(5)),
            log: flags
                .log
                .clone()
                .or(file.log.clone())
                .unwrap_or_else(|| "info".into()),
            registry: agent
                .and_then(|a| a.registry.clone())
                .or(file.registry.clone()),
            namespace: agent
                .and_then(|a| a.namespace.clone())
                .or(file.namespace.clone()),
            registry_user: agent
                .and_then(|a| a.registry_user.clone())
                .or(file.registry_user.clone()),
            registry_ca: agent
                .and_then(|a| a.registry_ca.clone())
                .or(file.registry_ca.clone()),
            registry_cert: agent
                .and_then(|a| a.registry_cert.clone())
                .or(file.registry_cert.clone()),
            registry_key: agent
                .and_then(|a| a.registry_key.clone())
                .or(file.registry_key.clone()),
            admin_password: match std::env::var("SHARDCRON_ADMIN_PASSWORD") {
                Ok(p) if p.chars().count() < 12 => {
                    return Err(CliError::invalid(
                        "SHARDCRON_ADMIN_PASSWORD",
                        "must be at least 12 characters",
                    ));
                }
                Ok(p) => Some(p),
                Err(_) => file.admin_password.clone(),
            },
            secure_cookies: file.secure_cookies.unwrap_or(false),
            script_allow,
            config,
        };
        resolved.check_scripts()?;
        Ok(resolved)
    }

    /// Every script job of the config file must run a command inside the
    /// allow-list: a job that could never run is refused at start.
    fn check_scripts(&self) -> Result<(), CliError> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let mut problems: Vec<String> = Vec::new();
        for job in &config.jobs {
            let mut check = |field: String, command: &[String]| {
                if let Err(e) = check_allowed(command, &self.script_allow) {
                    problems.push(format!("job {:?}: {field}: {e}", job.name.as_str()));
                }
            };
            if let JobKind::Script { command } = &job.kind {
                check("command".into(), command);
            }
            for (i, l) in job.listeners.iter().enumerate() {
                if let ListenerAction::Command(command) = &l.action {
                    check(format!("listeners[{i}].command"), command);
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CliError::Invalid(format!(
                "{}:\n{}",
                config.path.display(),
                problems.join("\n")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refuse_bad_pairs() {
        let l = parse_labels("role=worker, zone=a").unwrap();
        assert_eq!(l.get("role").map(String::as_str), Some("worker"));
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("role").unwrap_err().contains("KEY=VALUE"));
        assert!(
            parse_labels("role=")
                .unwrap_err()
                .contains("must not be empty")
        );
        assert!(parse_labels("a=1,a=2").unwrap_err().contains("twice"));
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(parse_ttl("3s").unwrap(), Duration::from_secs(3));
        assert!(parse_ttl("1s").unwrap_err().contains("at least 2s"));
        assert!(parse_ttl("3").is_err());
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
