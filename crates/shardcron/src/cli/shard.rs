//! `shardcron shard preview`: what a sharding strategy assigns.

use clap::Subcommand;
use shardcron_core::job::JobName;
use shardcron_core::sharding::{ShardingInstance, Strategy};

use super::{CliError, CliResult};

/// Most items a job may have (the job file's `shards` bound).
const MAX_ITEMS: u32 = 10_000;

#[derive(Debug, Subcommand)]
pub(crate) enum ShardCommand {
    /// Print the assignment of items to instances as JSON.
    Preview {
        /// average, odevity, round_robin, weighted or consistent.
        #[arg(long, default_value = "average")]
        strategy: String,
        /// Number of sharding items.
        #[arg(long)]
        items: u32,
        /// Instances in their stable order, each optionally with a weight:
        /// `a,b,c` or `a:2,b:1`.
        #[arg(long)]
        instances: String,
        /// Job name (odevity, round_robin and consistent depend on it).
        #[arg(long, default_value = "job")]
        job: String,
    },
}

pub(crate) fn run(cmd: ShardCommand) -> CliResult {
    match cmd {
        ShardCommand::Preview {
            strategy,
            items,
            instances,
            job,
        } => {
            let strategy =
                Strategy::parse(&strategy).map_err(|e| CliError::invalid("--strategy", e))?;
            if items == 0 || items > MAX_ITEMS {
                return Err(CliError::invalid(
                    "--items",
                    format!("must be between 1 and {MAX_ITEMS}, got {items}"),
                ));
            }
            let job = JobName::new(&job).map_err(|e| CliError::invalid("--job", e))?;
            let instances = parse_instances(&instances)?;
            let assignment = strategy.assign(job.as_str(), items, &instances);
            let json = serde_json::to_string(&assignment)
                .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot encode assignment: {e}")))?;
            println!("{json}");
            Ok(())
        }
    }
}

/// Parse `a,b:2,c` into instances, refusing empty names, bad weights and duplicates.
fn parse_instances(spec: &str) -> Result<Vec<ShardingInstance>, CliError> {
    let mut out: Vec<ShardingInstance> = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (id, weight) = match part.rsplit_once(':') {
            Some((id, w)) => {
                let weight = w.parse::<u32>().ok().filter(|w| (1..=10_000).contains(w));
                let weight = weight.ok_or_else(|| {
                    CliError::invalid(
                        "--instances",
                        format!(
                            "weight of {id:?} must be an integer between 1 and 10000, got {w:?}"
                        ),
                    )
                })?;
                (id, weight)
            }
            None => (part, 1),
        };
        if id.is_empty() {
            return Err(CliError::invalid(
                "--instances",
                format!("empty instance name in {spec:?}"),
            ));
        }
        if out.iter().any(|i| i.id == id) {
            return Err(CliError::invalid(
                "--instances",
                format!("instance {id:?} is listed twice"),
            ));
        }
        out.push(ShardingInstance {
            id: id.to_string(),
            weight,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_with_weights_and_errors() {
        let got = parse_instances("a, b:3,c").map_err(|e| format!("{e:?}"));
        assert_eq!(
            got.map(|v| v.into_iter().map(|i| (i.id, i.weight)).collect::<Vec<_>>()),
            Ok(vec![("a".into(), 1), ("b".into(), 3), ("c".into(), 1)])
        );
        for bad in ["a,,b", "a:0", "a:x", "a,a", ":2"] {
            assert!(
                matches!(parse_instances(bad), Err(CliError::Invalid(m)) if m.starts_with("--instances: ")),
                "{bad}"
            );
        }
    }
}
