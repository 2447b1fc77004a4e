//! `shardcron job validate`: check a job file and print every problem.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use shardcron_core::job::JobFile;

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

/// Read and parse a job file; problems are invalid input (exit 2).
pub(crate) fn load(file: &Path) -> Result<JobFile, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::invalid("FILE", format!("cannot read {}: {e}", file.display())))?;
    let parsed = if file.extension().is_some_and(|e| e == "json") {
        JobFile::from_json(&text)
    } else {
        JobFile::from_toml(&text)
    };
    parsed.map_err(|errors| {
        let n = errors.0.len();
        CliError::Invalid(format!(
            "{} has {n} problem{}:\n{errors}",
            file.display(),
            if n == 1 { "" } else { "s" }
        ))
    })
}

fn validate(file: &Path) -> CliResult {
    let jobs = load(file)?;
    let names: Vec<&str> = jobs.jobs.iter().map(|j| j.name.as_str()).collect();
    println!(
        "{}: ok, {} job{}{}{}",
        file.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        if names.is_empty() { "" } else { ": " },
        names.join(", ")
    );
    Ok(())
}
