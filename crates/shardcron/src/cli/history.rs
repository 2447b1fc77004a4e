//! `shardcron history`: read executions from the history database.

use clap::Args;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use shardcron_store::{ExecutionQuery, HistoryStore, MAX_PAGE, SortKey, StoreError, StoreOptions};

use super::{CliError, CliResult};

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// History database URL: sqlite://PATH, postgres://..., mysql://...
    #[arg(long, env = "SHARDCRON_HISTORY", value_name = "URL")]
    history: String,
    /// Only this job.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// Only this item.
    #[arg(long, value_name = "N")]
    item: Option<u32>,
    /// Only these statuses (comma-separated): RUNNING, SUCCEEDED, FAILED,
    /// TIMED_OUT, CANCELLED, LOST, SKIPPED.
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = parse_status)]
    status: Vec<ExecutionStatus>,
    /// Only these sources (comma-separated): NORMAL, MISFIRE, FAILOVER, RETRY, MANUAL.
    #[arg(long, value_name = "SOURCE", value_delimiter = ',', value_parser = parse_source)]
    source: Vec<ExecutionSource>,
    /// How many rows, newest first (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
    limit: u32,
    /// Order by scheduled fire time instead of start time.
    #[arg(long)]
    by_fire_time: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_status(s: &str) -> Result<ExecutionStatus, String> {
    s.trim().parse()
}

fn parse_source(s: &str) -> Result<ExecutionSource, String> {
    s.trim().parse()
}

pub(crate) fn run(args: HistoryArgs) -> CliResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(e.into()))?;
    runtime.block_on(show(args))
}

async fn show(args: HistoryArgs) -> CliResult {
    // Reading must not create a database or change its schema.
    let opts = StoreOptions {
        migrate: false,
        max_connections: 1,
        ..StoreOptions::default()
    };
    if let Some(path) = args.history.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if !path.is_empty() && !std::path::Path::new(path).exists() {
            return Err(CliError::Failed(anyhow::anyhow!(
                "no history database at {path} (a node creates it at its first start)"
            )));
        }
    }
    let store = HistoryStore::connect_with(&args.history, opts)
        .await
        .map_err(|e| match e {
            StoreError::BadUrl { .. } => CliError::invalid("--history", e),
            other => CliError::Failed(anyhow::anyhow!("{other}")),
        })?;
    let query = ExecutionQuery {
        job: args.job.clone(),
        item: args.item,
        statuses: args.status.clone(),
        sources: args.source.clone(),
        sort: if args.by_fire_time {
            SortKey::FireTime
        } else {
            SortKey::StartedAt
        },
        limit: args.limit,
        ..ExecutionQuery::default()
    };
    let page = store
        .query(&query)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("history query: {e}")))?;
    if args.json {
        for r in &page.items {
            println!(
                "{}",
                serde_json::to_string(r).map_err(|e| CliError::Failed(e.into()))?
            );
        }
    } else {
        print!("{}", table(&page.items));
    }
    Ok(())
}

/// A fixed-width table, newest first as queried.
fn table(rows: &[ExecutionRecord]) -> String {
    let header = [
        "STARTED",
        "JOB",
        "ITEM",
        "FIRE TIME",
        "STATUS",
        "SOURCE",
        "ATTEMPT",
        "TOKEN",
        "DURATION",
        "INSTANCE",
        "CAUSE",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_string()).collect()];
    for r in rows {
        let duration = r
            .ended_at
            .map(|e| format!("{}ms", (e - r.started_at).num_milliseconds()))
            .unwrap_or_else(|| "-".into());
        let fire = match (r.fire_time_end, r.skipped_count) {
            (Some(end), Some(n)) => format!(
                "{}..{} ({n})",
                r.fire_time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                end.format("%H:%M:%S%.3fZ")
            ),
            _ => r.fire_time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        };
        let cause = match (&r.cause, &r.skip_reason) {
            (Some(c), _) => c
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect(),
            (None, Some(reason)) => reason.to_string(),
            (None, None) => String::new(),
        };
        lines.push(vec![
            r.started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            r.job.clone(),
            r.item.to_string(),
            fire,
            r.status.as_str().to_string(),
            r.source.as_str().to_string(),
            r.attempt.to_string(),
            r.token.to_string(),
            duration,
            r.instance.clone(),
            cause,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no executions)\n");
    }
    out
}
