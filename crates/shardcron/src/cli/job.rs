//! `shardcron job validate`: check a job file (its jobs and `[[alert]]` channels)
//! and print every problem. The other `job` subcommands manage the jobs of a
//! running namespace through a node's REST API (remote.rs).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use shardcron_alert::AlertConfig;
use shardcron_core::job::{JobFile, JobSpec};

use super::remote::{self, JobApplyArgs, JobItemsArgs, JobNameArgs, RemoteArgs};
use super::settings::read_alert_channels;
use super::{CliError, CliResult};

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Check a job file (TOML, or JSON when it ends in `.json`) and print every
    /// problem; exit 2 if there is any.
    Validate {
        /// The job file.
        file: PathBuf,
    },
    /// List the jobs of a running namespace (through a node's API, like every
    /// command below).
    List(RemoteArgs),
    /// Show a job as a job file, with its items and their owners.
    ///
    /// The job in its job-file form (TOML), then its revision, next fire times and
    /// items (enabled, owner, running execution, last fire) as comments, so that
    /// the output is a job file `job apply` takes back; --json: the API's answer.
    Get(JobNameArgs),
    /// Create or update the jobs of a job file.
    ///
    /// Each job is created, or replaced when it exists and differs (the file wins,
    /// `enabled` included); prints created, updated or unchanged per job. Every
    /// problem of the file is reported (exit 2) before any request. A job with
    /// HTTP header values is always replaced (the server shows them redacted, so
    /// they cannot be compared); `"<redacted>"` in the file keeps the stored value.
    Apply(JobApplyArgs),
    /// Delete a job, at once: there is no confirmation prompt.
    Rm(JobNameArgs),
    /// Let a job (or only --items of it) fire again.
    Enable(JobItemsArgs),
    /// Stop a job (or only --items of it) from firing.
    Disable(JobItemsArgs),
    /// Run a job now: every item, or --items.
    Trigger(JobItemsArgs),
}

pub(crate) fn run(cmd: JobCommand) -> CliResult {
    match cmd {
        JobCommand::Validate { file } => validate(&file),
        JobCommand::List(args) => remote::job_list(args),
        JobCommand::Get(args) => remote::job_get(args),
        JobCommand::Apply(args) => remote::job_apply(args),
        JobCommand::Rm(args) => remote::job_rm(args),
        JobCommand::Enable(args) => remote::job_set_enabled(args, true),
        JobCommand::Disable(args) => remote::job_set_enabled(args, false),
        JobCommand::Trigger(args) => remote::job_trigger(args),
    }
}

/// Read, parse and check a job file: its jobs and its `[[alert]]` channels (a
/// node's config file is a job file). When the file has channels, every name in a
/// job's `alerts` must be one of them (without, the names refer to channels
/// configured on the nodes). Problems are invalid input (exit 2).
pub(crate) fn load(file: &Path) -> Result<(Vec<JobSpec>, Vec<AlertConfig>), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::invalid("FILE", format!("cannot read {}: {e}", file.display())))?;
    let json = file.extension().is_some_and(|e| e == "json");
    let parsed = if json {
        JobFile::from_json(&text)
    } else {
        JobFile::from_toml(&text)
    };
    let mut problems: Vec<String> = Vec::new();
    let jobs = match parsed {
        Ok(f) => f.jobs,
        Err(errors) => {
            problems.extend(errors.0.iter().map(ToString::to_string));
            Vec::new()
        }
    };
    let has_channels = if json {
        serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.get("alert").is_some())
    } else {
        text.parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("alert"))
    };
    let channels = read_alert_channels(&text, json, file, &jobs, has_channels, &mut problems);
    if !problems.is_empty() {
        let n = problems.len();
        return Err(CliError::Invalid(format!(
            "{} has {n} problem{}:\n{}",
            file.display(),
            if n == 1 { "" } else { "s" },
            problems.join("\n")
        )));
    }
    Ok((jobs, channels))
}

fn validate(file: &Path) -> CliResult {
    let (jobs, channels) = load(file)?;
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let channels: Vec<String> = channels
        .iter()
        .map(|c| format!("{} ({})", c.name, c.channel.type_name()))
        .collect();
    println!(
        "{}: ok, {} job{}{}{}{}",
        file.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        if names.is_empty() { "" } else { ": " },
        names.join(", "),
        if channels.is_empty() {
            String::new()
        } else {
            format!(
                "; {} alert channel{}: {}",
                channels.len(),
                if channels.len() == 1 { "" } else { "s" },
                channels.join(", ")
            )
        }
    );
    Ok(())
}
