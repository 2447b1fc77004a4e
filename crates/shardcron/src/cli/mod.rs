//! Command-line parsing and dispatch. Exit codes (DESIGN.md section 9): 0 success,
//! 2 bad usage or invalid input (the message names the field), 1 other failures.

mod client;
mod cron;
mod history;
mod job;
mod node;
mod remote;
mod settings;
mod shard;

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An error that maps to an exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad usage or invalid input: exit 2. The message names the field.
    Invalid(String),
    /// Anything else: exit 1.
    Failed(anyhow::Error),
}

impl CliError {
    /// Invalid input in `field`.
    pub(crate) fn invalid(field: &str, problem: impl fmt::Display) -> Self {
        CliError::Invalid(format!("{field}: {problem}"))
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Failed(e)
    }
}

pub(crate) type CliResult = Result<(), CliError>;

#[derive(Debug, Parser)]
#[command(
    name = "shardcron",
    version,
    about = "A distributed job scheduler with sharding, failover and fencing."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cron expression tools.
    #[command(subcommand)]
    Cron(cron::CronCommand),
    /// Sharding strategy tools.
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Job files, and the jobs of a running namespace (through a node's API).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// The instances of a running namespace (through a node's API).
    #[command(subcommand)]
    Instance(remote::InstanceCommand),
    /// Executions in progress (through a node's API).
    #[command(subcommand)]
    Execution(remote::ExecutionCommand),
    /// Everything in one process: embedded registry and SQLite history under
    /// --data, jobs from --config.
    Standalone(node::StandaloneArgs),
    /// One instance of a cluster that coordinates through etcd.
    Agent(node::AgentArgs),
    /// The console and REST API of an etcd namespace, without joining it
    /// (same settings as agent; --bind defaults to 127.0.0.1:8080).
    Console(node::AgentArgs),
    /// Read executions from the history database (--history) or a node's API
    /// (--server).
    History(history::HistoryArgs),
}

/// Parse the command line, run the command, and turn the outcome into an exit code.
pub(crate) fn main() -> ExitCode {
    // The script supervisor takes its arguments verbatim (no clap: the command
    // line after `--` belongs to the script), and starts fast.
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|a| a == "__supervise") {
        return shardcron_runtime::script::supervise_main(raw.collect());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to
            // stderr (exit 2), as the contract requires.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Cron(c) => cron::run(c),
        Command::Shard(c) => shard::run(c),
        Command::Job(c) => job::run(c),
        Command::Standalone(a) => node::standalone(a),
        Command::Agent(a) => node::agent(a),
        Command::Console(a) => node::console(a),
        Command::History(a) => history::run(a),
        Command::Instance(c) => remote::instance(c),
        Command::Execution(c) => remote::execution(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Invalid(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
