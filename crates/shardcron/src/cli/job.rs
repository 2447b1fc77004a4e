//! `shardcron job validate`: check a job file (its jobs and `[[alert]]` channels)
//! and print every problem.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use shardcron_alert::AlertConfig;
use shardcron_core::job::{JobFile, JobSpec};

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
}

pub(crate) fn run(cmd: JobCommand) -> CliResult {
    match cmd {
        JobCommand::Validate { file } => validate(&file),
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
