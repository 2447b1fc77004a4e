//! `shardcron history`: read executions from the history database (`--history`),
//! or through a node's REST API (`--server`, `GET /api/executions`), with the same
//! filters and the same output.

use clap::Args;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use shardcron_store::{ExecutionQuery, HistoryStore, MAX_PAGE, SortKey, StoreError, StoreOptions};

use super::client::{Client, SERVER_FLAG, ServerArgs};
use super::{CliError, CliResult};

/// Most rows one request to the API may ask for.
const API_PAGE: u32 = 1000;

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// History database URL: sqlite://PATH, postgres://..., mysql://... (or
    /// --server to ask a node's API instead).
    #[arg(long, env = "SHARDCRON_HISTORY", value_name = "URL")]
    history: Option<String>,
    #[command(flatten)]
    remote: ServerArgs,
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
    /// Only executions of this instance (its id, as in the INSTANCE column).
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// How many rows, newest first (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
    limit: u32,
    /// Order by scheduled fire time instead of start time (not with --server).
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
    let history = args.history.as_deref().filter(|h| !h.trim().is_empty());
    match (history, args.remote.given()) {
        (Some(_), true) => Err(CliError::invalid(
            "--history (or SHARDCRON_HISTORY)",
            format!("give either a history database or {SERVER_FLAG}, not both"),
        )),
        (Some(url), false) => runtime.block_on(show(url, &args)),
        (None, true) => runtime.block_on(show_remote(&args)),
        (None, false) => Err(CliError::invalid(
            "--history (or SHARDCRON_HISTORY)",
            format!("missing: a history database URL, or {SERVER_FLAG} to ask a node's API"),
        )),
    }
}

async fn show(url: &str, args: &HistoryArgs) -> CliResult {
    // Reading must not create a database or change its schema.
    let opts = StoreOptions {
        migrate: false,
        max_connections: 1,
        ..StoreOptions::default()
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if !path.is_empty() && !std::path::Path::new(path).exists() {
            return Err(CliError::Failed(anyhow::anyhow!(
                "no history database at {path} (a node creates it at its first start)"
            )));
        }
    }
    let store = HistoryStore::connect_with(url, opts)
        .await
        .map_err(|e| match e {
            StoreError::BadUrl { .. } => CliError::invalid("--history", e),
            other => CliError::Failed(anyhow::anyhow!("{other}")),
        })?;
    let query = ExecutionQuery {
        job: args.job.clone(),
        item: args.item,
        instance: args.instance.clone(),
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
    print_rows(&page.items, args.json)
}

/// The same query through `GET /api/executions` (newest first by start time),
/// in pages of at most [`API_PAGE`].
async fn show_remote(args: &HistoryArgs) -> CliResult {
    if args.by_fire_time {
        return Err(CliError::invalid(
            "--by-fire-time",
            "not available with --server (the API orders by start time)",
        ));
    }
    let client = Client::new(&args.remote)?;
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(job) = &args.job {
        filters.push(("job", job.clone()));
    }
    if let Some(item) = args.item {
        filters.push(("item", item.to_string()));
    }
    if !args.status.is_empty() {
        let names: Vec<&str> = args.status.iter().map(|s| s.as_str()).collect();
        filters.push(("status", names.join(",")));
    }
    if !args.source.is_empty() {
        let names: Vec<&str> = args.source.iter().map(|s| s.as_str()).collect();
        filters.push(("source", names.join(",")));
    }
    if let Some(instance) = &args.instance {
        filters.push(("instance", instance.clone()));
    }
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut rows: Vec<ExecutionRecord> = Vec::new();
    let mut offset: u64 = 0;
    while rows.len() < limit {
        let want = u32::try_from(limit - rows.len())
            .unwrap_or(API_PAGE)
            .min(API_PAGE);
        let mut query = filters.clone();
        query.push(("limit", want.to_string()));
        if offset > 0 {
            query.push(("offset", offset.to_string()));
        }
        let answer = client
            .expect(
                reqwest::Method::GET,
                &["api", "executions"],
                &query,
                None,
                "executions",
            )
            .await?;
        let page = answer
            .get("executions")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| unexpected(&client, "no \"executions\" list"))?;
        for e in page {
            let r: ExecutionRecord = serde_json::from_value(e.clone())
                .map_err(|err| unexpected(&client, &format!("an execution: {err}")))?;
            // A row that moved to the next page while paging shows once.
            if !rows.iter().any(|x| x.id == r.id) {
                rows.push(r);
            }
        }
        match answer
            .get("next_offset")
            .and_then(serde_json::Value::as_u64)
        {
            Some(next) if !page.is_empty() && next > offset => offset = next,
            _ => break,
        }
    }
    rows.truncate(limit);
    print_rows(&rows, args.json)
}

fn unexpected(client: &Client, what: &str) -> CliError {
    CliError::Failed(anyhow::anyhow!(
        "unexpected answer from {} to GET /api/executions: {what}",
        client.server()
    ))
}

/// One JSON object per line, or the table.
fn print_rows(rows: &[ExecutionRecord], json: bool) -> CliResult {
    if json {
        for r in rows {
            println!(
                "{}",
                serde_json::to_string(r).map_err(|e| CliError::Failed(e.into()))?
            );
        }
    } else {
        print!("{}", table(rows));
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
    let mut out = columns(&lines);
    if rows.is_empty() {
        out.push_str("(no executions)\n");
    }
    out
}

/// Lines of cells (the first one the header) as left-aligned columns two spaces
/// apart, without trailing spaces.
pub(crate) fn columns(lines: &[Vec<String>]) -> String {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
