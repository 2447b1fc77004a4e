//! `shardcron cron next`: the next fire times of a cron expression.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use shardcron_core::schedule::{CronSchedule, ScheduleError};

use super::{CliError, CliResult};

/// Most fire times `cron next` prints.
const MAX_COUNT: u32 = 10_000;

#[derive(Debug, Subcommand)]
pub(crate) enum CronCommand {
    /// Print the next fire times, one RFC 3339 timestamp per line, in the
    /// expression's time zone.
    Next {
        /// The cron expression: 5 fields (minute precision), 6 (with seconds first)
        /// or 7 (with a year last). Quote it.
        expr: String,
        /// IANA time zone the expression is evaluated in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start after this instant (RFC 3339); default now.
        #[arg(long)]
        from: Option<String>,
        /// How many fire times to print.
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
}

pub(crate) fn run(cmd: CronCommand) -> CliResult {
    match cmd {
        CronCommand::Next {
            expr,
            tz,
            from,
            count,
        } => next(&expr, &tz, from.as_deref(), count),
    }
}

fn next(expr: &str, tz: &str, from: Option<&str>, count: u32) -> CliResult {
    if count == 0 || count > MAX_COUNT {
        return Err(CliError::invalid(
            "--count",
            format!("must be between 1 and {MAX_COUNT}, got {count}"),
        ));
    }
    let schedule = CronSchedule::parse(expr, Some(tz)).map_err(|e| match e {
        ScheduleError::TimeZone(_) => CliError::invalid("--tz", e),
        _ => CliError::invalid("EXPR", e),
    })?;
    let mut at: DateTime<Utc> = match from {
        None => Utc::now(),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                CliError::invalid(
                    "--from",
                    format!(
                        "must be an RFC 3339 instant like 2026-01-31T08:00:00Z, got {s:?} ({e})"
                    ),
                )
            })?,
    };
    let zone = schedule.tz();
    let mut out = String::new();
    for _ in 0..count {
        let Some(t) = schedule.next_after(at) else {
            break;
        };
        out.push_str(
            &t.with_timezone(&zone)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
        out.push('\n');
        at = t;
    }
    print!("{out}");
    Ok(())
}
