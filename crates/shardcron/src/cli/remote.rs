//! The management commands over a node's REST API (docs/api.md): `shardcron job
//! list|get|apply|rm|enable|disable|trigger`, `shardcron instance
//! list|enable|disable|shutdown` and `shardcron execution cancel`, each with
//! `--server URL` and `--token TOKEN` (`SHARDCRON_SERVER`, `SHARDCRON_TOKEN`),
//! text or `--json` output. `shardcron history --server` lives in history.rs.

use std::future::Future;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use shardcron_core::job::{JobName, JobSpec};

use super::client::{Client, ServerArgs};
use super::history::columns;
use super::job::load;
use super::{CliError, CliResult};

/// Where the API is, and the output form.
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A command about one job.
#[derive(Debug, Args)]
pub(crate) struct JobNameArgs {
    /// The job's name.
    name: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// `job apply`.
#[derive(Debug, Args)]
pub(crate) struct JobApplyArgs {
    /// The job file (TOML, or JSON when it ends in `.json`), as `job validate`
    /// reads it.
    file: PathBuf,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// A command about one job or some of its items.
#[derive(Debug, Args)]
pub(crate) struct JobItemsArgs {
    /// The job's name.
    name: String,
    /// Only these sharding items (comma-separated), e.g. 0,2.
    #[arg(long, value_name = "N,N", value_delimiter = ',')]
    items: Vec<u32>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// `shardcron instance ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum InstanceCommand {
    /// List the live instances (and the disabled names without one).
    List(RemoteArgs),
    /// Let the instances of this name run items again.
    Enable(InstanceNameArgs),
    /// Take the instances of this name out of the work (the flag is kept by
    /// name, so it outlives restarts: a machine taken out stays out).
    Disable(InstanceNameArgs),
    /// Ask the instance with this id to stop gracefully (it carries it out itself).
    Shutdown(InstanceIdArgs),
}

/// A command about an instance name.
#[derive(Debug, Args)]
pub(crate) struct InstanceNameArgs {
    /// The instance's name (the NAME column of `instance list`).
    name: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// A command about one instance.
#[derive(Debug, Args)]
pub(crate) struct InstanceIdArgs {
    /// The instance's id (the ID column of `instance list`).
    id: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// `shardcron execution ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ExecutionCommand {
    /// Cancel a running execution (its process is stopped; it ends CANCELLED).
    Cancel(ExecutionIdArgs),
}

/// A command about one execution.
#[derive(Debug, Args)]
pub(crate) struct ExecutionIdArgs {
    /// The execution's id (the `id` of `history --json`).
    id: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Run a command on a small runtime of its own.
fn block_on(f: impl Future<Output = CliResult>) -> CliResult {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(e.into()))?
        .block_on(f)
}

/// A job name given on the command line (exit 2 naming NAME when it cannot be one).
fn job_name(name: &str) -> Result<String, CliError> {
    JobName::new(name)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| CliError::invalid("NAME", e))
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn unexpected(client: &Client, what: &str) -> CliError {
    CliError::Failed(anyhow::anyhow!(
        "unexpected answer from {}: {what}",
        client.server()
    ))
}

/// A time of the API as in the history table (milliseconds, UTC), `-` for none.
fn time(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| {
                t.with_timezone(&Utc)
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
            })
            .unwrap_or_else(|_| s.clone()),
        _ => "-".into(),
    }
}

/// A cell: strings as they are, null as `-`, anything else as JSON.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn yes_no(v: Option<&Value>) -> String {
    match v.and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// `job list`.
pub(crate) fn job_list(args: RemoteArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    block_on(async move {
        let answer = client.get(&["api", "jobs"], "the job list").await?;
        if args.json {
            print_json(&answer);
            return Ok(());
        }
        let jobs = answer
            .get("jobs")
            .and_then(Value::as_array)
            .ok_or_else(|| unexpected(&client, "no \"jobs\" list"))?;
        let mut lines = vec![header(&[
            "NAME",
            "SCHEDULE",
            "SHARDS",
            "ENABLED",
            "RUNNING",
            "LAST STATUS",
            "NEXT FIRE",
        ])];
        for j in jobs {
            lines.push(vec![
                cell(j.get("name")),
                cell(j.get("schedule")),
                cell(j.get("shards")),
                yes_no(j.get("enabled")),
                cell(j.get("running")),
                cell(j.get("last").and_then(|l| l.get("status"))),
                time(j.get("next_fire")),
            ]);
        }
        let mut out = columns(&lines);
        if jobs.is_empty() {
            out.push_str("(no jobs)\n");
        }
        print!("{out}");
        // Jobs the registry holds but cannot read.
        for e in answer
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            eprintln!("warning: {}", e.as_str().unwrap_or_default());
        }
        Ok(())
    })
}

/// `job get`: the job-file form, then its state as TOML comments (so the output
/// is a job file that `job apply` takes back).
pub(crate) fn job_get(args: JobNameArgs) -> CliResult {
    let name = job_name(&args.name)?;
    let client = Client::new(&args.remote.server)?;
    block_on(async move {
        let what = format!("job {name:?}");
        let answer = client.get(&["api", "jobs", &name], &what).await?;
        if args.remote.json {
            print_json(&answer);
            return Ok(());
        }
        let job = answer
            .get("job")
            .ok_or_else(|| unexpected(&client, "no \"job\""))?;
        match JobSpec::from_json_value(job) {
            Ok(spec) => print!("{}", spec.to_toml()),
            Err(e) => {
                eprintln!(
                    "warning: the server's job does not read back as a job file ({e}); \
                     showing its JSON form"
                );
                print_json(job);
            }
        }
        println!();
        println!("# revision: {}", cell(answer.get("revision")));
        let fires: Vec<String> = answer
            .get("next_fires")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| time(Some(t)))
            .collect();
        println!(
            "# next fires: {}",
            if fires.is_empty() {
                "-".to_owned()
            } else {
                fires.join(", ")
            }
        );
        let mut lines = vec![header(&[
            "ITEM",
            "ENABLED",
            "OWNER",
            "RUNNING",
            "LAST FIRE",
            "LAST COMPLETED",
        ])];
        for i in answer
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let owner = match (
                i.get("owner_name").and_then(Value::as_str),
                i.get("owner").and_then(Value::as_str),
            ) {
                (Some(name), Some(id)) => format!("{name} ({id})"),
                (None, Some(id)) => id.to_owned(),
                _ => "-".to_owned(),
            };
            lines.push(vec![
                cell(i.get("item")),
                yes_no(i.get("enabled")),
                owner,
                cell(i.get("running").and_then(|r| r.get("execution_id"))),
                time(i.get("last_fire")),
                time(i.get("last_completed")),
            ]);
        }
        println!("# items:");
        for line in columns(&lines).lines() {
            println!("#   {line}");
        }
        Ok(())
    })
}

/// `job apply`: every problem of the file is reported (exit 2) before any
/// request; then each job is created, or replaced when it differs from the
/// server's copy.
pub(crate) fn job_apply(args: JobApplyArgs) -> CliResult {
    let (jobs, channels) = load(&args.file)?;
    let client = Client::new(&args.remote.server)?;
    if !channels.is_empty() {
        eprintln!(
            "note: the [[alert]] channels of {} are node settings: apply does not send them",
            args.file.display()
        );
    }
    if jobs.is_empty() {
        eprintln!("{}: no jobs", args.file.display());
        return Ok(());
    }
    block_on(async move {
        for spec in &jobs {
            let (outcome, revision) = apply_one(&client, spec).await?;
            let name = spec.name.as_str();
            if args.remote.json {
                println!(
                    "{}",
                    json!({ "name": name, "result": outcome, "revision": revision })
                );
            } else {
                println!("{name}: {outcome}");
            }
        }
        Ok(())
    })
}

/// Create or replace one job: `created`, `updated` or `unchanged`, and the
/// revision. A job with HTTP header values is always replaced: the server only
/// shows them redacted, so they cannot be compared.
async fn apply_one(client: &Client, spec: &JobSpec) -> Result<(&'static str, Value), CliError> {
    let name = spec.name.as_str();
    let what = format!("job {name:?}");
    let body = spec.to_json();
    let answer = client
        .call(Method::GET, &["api", "jobs", name], &[], None)
        .await?;
    if answer.is_unknown_object() {
        let created = client.post(&["api", "jobs"], Some(&body), &what).await?;
        return Ok((
            "created",
            created.get("revision").cloned().unwrap_or(Value::Null),
        ));
    }
    let current = client.check(answer, &what)?;
    let revision = current.get("revision").cloned().unwrap_or(Value::Null);
    let same = current
        .get("job")
        .and_then(|j| JobSpec::from_json_value(j).ok())
        .is_some_and(|server| server == *spec);
    if same {
        return Ok(("unchanged", revision));
    }
    let mut body = body;
    if let (Value::Object(m), false) = (&mut body, revision.is_null()) {
        // Refuse to overwrite an edit made since the read.
        m.insert("revision".into(), revision);
    }
    let updated = client
        .expect(Method::PUT, &["api", "jobs", name], &[], Some(&body), &what)
        .await?;
    Ok((
        "updated",
        updated.get("revision").cloned().unwrap_or(Value::Null),
    ))
}

/// `job rm` (no confirmation prompt).
pub(crate) fn job_rm(args: JobNameArgs) -> CliResult {
    let name = job_name(&args.name)?;
    let client = Client::new(&args.remote.server)?;
    block_on(async move {
        let what = format!("job {name:?}");
        client
            .expect(Method::DELETE, &["api", "jobs", &name], &[], None, &what)
            .await?;
        if args.remote.json {
            println!("{}", json!({ "name": name, "deleted": true }));
        } else {
            println!("{name}: deleted");
        }
        Ok(())
    })
}

/// `job enable` / `job disable`, of the job or of some of its items.
pub(crate) fn job_set_enabled(args: JobItemsArgs, on: bool) -> CliResult {
    let name = job_name(&args.name)?;
    let client = Client::new(&args.remote.server)?;
    let verb = if on { "enable" } else { "disable" };
    let done = if on { "enabled" } else { "disabled" };
    block_on(async move {
        if args.items.is_empty() {
            let what = format!("job {name:?}");
            let answer = client
                .post(&["api", "jobs", &name, verb], None, &what)
                .await?;
            if args.remote.json {
                println!("{answer}");
            } else {
                println!("{name}: {done}");
            }
            return Ok(());
        }
        for item in &args.items {
            let what = format!("item {item} of job {name:?}");
            let n = item.to_string();
            let answer = client
                .post(&["api", "jobs", &name, "items", &n, verb], None, &what)
                .await?;
            if args.remote.json {
                println!("{answer}");
            } else {
                println!("{name} item {item}: {done}");
            }
        }
        Ok(())
    })
}

/// `job trigger`: run the job now (all items, or `--items`).
pub(crate) fn job_trigger(args: JobItemsArgs) -> CliResult {
    let name = job_name(&args.name)?;
    let client = Client::new(&args.remote.server)?;
    block_on(async move {
        let what = format!("job {name:?}");
        let body = (!args.items.is_empty()).then(|| json!({ "items": args.items }));
        let answer = client
            .post(&["api", "jobs", &name, "trigger"], body.as_ref(), &what)
            .await?;
        if args.remote.json {
            println!("{answer}");
        } else {
            let items = if args.items.is_empty() {
                "all items".to_owned()
            } else {
                let list: Vec<String> = args.items.iter().map(ToString::to_string).collect();
                format!(
                    "item{} {}",
                    if list.len() == 1 { "" } else { "s" },
                    list.join(",")
                )
            };
            println!(
                "{name}: triggered ({items}; request {})",
                cell(answer.get("request"))
            );
        }
        Ok(())
    })
}

/// `shardcron instance ...`.
pub(crate) fn instance(cmd: InstanceCommand) -> CliResult {
    match cmd {
        InstanceCommand::List(args) => instance_list(args),
        InstanceCommand::Enable(args) => instance_set_enabled(args, true),
        InstanceCommand::Disable(args) => instance_set_enabled(args, false),
        InstanceCommand::Shutdown(args) => instance_shutdown(args),
    }
}

fn instance_list(args: RemoteArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    block_on(async move {
        let answer = client
            .get(&["api", "instances"], "the instance list")
            .await?;
        if args.json {
            print_json(&answer);
            return Ok(());
        }
        let instances = answer
            .get("instances")
            .and_then(Value::as_array)
            .ok_or_else(|| unexpected(&client, "no \"instances\" list"))?;
        let mut lines = vec![header(&[
            "NAME", "ID", "HOST", "ENABLED", "LEADER", "ITEMS", "WEIGHT", "LABELS", "STARTED",
        ])];
        for i in instances {
            let labels: Vec<String> = match i.get("labels") {
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect(),
                _ => Vec::new(),
            };
            lines.push(vec![
                cell(i.get("name")),
                cell(i.get("id")),
                cell(i.get("host")),
                yes_no(i.get("enabled")),
                yes_no(i.get("leader")),
                cell(i.get("items")),
                cell(i.get("weight")),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
                time(i.get("started_at")),
            ]);
        }
        // Disabled names with no live instance, so that they can be enabled.
        let disabled: Vec<&Value> = answer
            .get("disabled_names")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        for name in &disabled {
            let mut line = vec![cell(Some(name)), "-".into(), "-".into(), "no".into()];
            line.extend(std::iter::repeat_n("-".to_owned(), 5));
            lines.push(line);
        }
        let mut out = columns(&lines);
        if instances.is_empty() && disabled.is_empty() {
            out.push_str("(no instances)\n");
        }
        print!("{out}");
        Ok(())
    })
}

fn instance_set_enabled(args: InstanceNameArgs, on: bool) -> CliResult {
    let client = Client::new(&args.remote.server)?;
    let verb = if on { "enable" } else { "disable" };
    block_on(async move {
        let name = args.name;
        let what = format!("instance name {name:?}");
        let answer = client
            .post(&["api", "instances", &name, verb], None, &what)
            .await?;
        if args.remote.json {
            println!("{answer}");
        } else {
            println!("instance {name}: {verb}d");
        }
        Ok(())
    })
}

fn instance_shutdown(args: InstanceIdArgs) -> CliResult {
    let client = Client::new(&args.remote.server)?;
    block_on(async move {
        let id = args.id;
        let what = format!("instance {id:?}");
        let answer = client
            .post(&["api", "instances", &id, "shutdown"], None, &what)
            .await?;
        if args.remote.json {
            println!("{answer}");
        } else {
            println!("instance {id}: shutdown requested");
        }
        Ok(())
    })
}

/// `shardcron execution ...`.
pub(crate) fn execution(cmd: ExecutionCommand) -> CliResult {
    match cmd {
        ExecutionCommand::Cancel(args) => execution_cancel(args),
    }
}

fn execution_cancel(args: ExecutionIdArgs) -> CliResult {
    let client = Client::new(&args.remote.server)?;
    block_on(async move {
        let id = args.id;
        let what = format!("execution {id:?}");
        let answer = client
            .post(&["api", "executions", &id, "cancel"], None, &what)
            .await?;
        if args.remote.json {
            println!("{answer}");
        } else {
            println!("execution {id}: cancel requested");
        }
        Ok(())
    })
}
