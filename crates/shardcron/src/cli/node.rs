//! `shardcron standalone` and `shardcron agent`: one instance of a cluster, with
//! its registry, its history writer, the config file's jobs and the script runner.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use clap::Args;
use shardcron_core::clock::SystemClock;
use shardcron_registry::{EtcdOptions, EtcdRegistry, EtcdTls, MemoryRegistry, Registry};
use shardcron_runtime::script::{ScriptJob, ScriptOptions, Supervisor};
use shardcron_runtime::{
    ApplyOutcome, Cluster, Handlers, HttpJob, HttpOptions, Instance, InstanceConfig, Runner,
    SchedulerOptions,
};
use shardcron_store::{HistoryStore, HistoryWriter, WriterOptions};

use super::settings::{AgentFlags, NodeFlags, Resolved};
use super::{CliError, CliResult};

/// `shardcron standalone`.
#[derive(Debug, Args)]
pub(crate) struct StandaloneArgs {
    #[command(flatten)]
    node: NodeFlags,
}

/// `shardcron agent`.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    agent: AgentFlags,
    #[command(flatten)]
    node: NodeFlags,
}

/// Which registry a node uses.
enum Mode {
    Standalone,
    Agent,
}

pub(crate) fn standalone(args: StandaloneArgs) -> CliResult {
    let resolved = Resolved::new(&args.node, None)?;
    run(resolved, Mode::Standalone)
}

pub(crate) fn agent(args: AgentArgs) -> CliResult {
    let resolved = Resolved::new(&args.node, Some(&args.agent))?;
    if resolved.registry.is_none() {
        return Err(CliError::invalid(
            "--registry",
            "required (or SHARDCRON_REGISTRY, or settings.registry in the config file), e.g. etcd://127.0.0.1:2379",
        ));
    }
    if resolved.namespace.is_none() {
        return Err(CliError::invalid(
            "--namespace",
            "required (or SHARDCRON_NAMESPACE, or settings.namespace in the config file)",
        ));
    }
    if resolved.history.is_none() {
        return Err(CliError::invalid(
            "--history",
            "required (or SHARDCRON_HISTORY, or settings.history in the config file), e.g. postgres://user@host/db",
        ));
    }
    run(resolved, Mode::Agent)
}

fn run(resolved: Resolved, mode: Mode) -> CliResult {
    init_logging(&resolved.log)?;
    let config = instance_config(&resolved)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve(resolved, mode, config))
}

fn init_logging(filter: &str) -> CliResult {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| CliError::invalid("--log (SHARDCRON_LOG)", e))?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot set up logging: {e}")))
}

fn instance_config(r: &Resolved) -> Result<InstanceConfig, CliError> {
    let mut c = InstanceConfig::new();
    if let Some(name) = &r.name {
        c.name = name.clone();
    }
    c.labels = r.labels.clone();
    // Capabilities come from what this binary can run (the handlers below:
    // script and http).
    c.capabilities = Vec::new();
    c.weight = r.weight;
    c.lease_ttl = r.lease_ttl;
    c.fence_margin = (r.lease_ttl / 5).max(std::time::Duration::from_millis(200));
    c.heartbeat_interval = (r.lease_ttl / 3).min(c.heartbeat_interval);
    c.validate().map_err(|e| match e {
        shardcron_runtime::Error::Invalid(msg) => CliError::Invalid(msg),
        other => CliError::Failed(other.into()),
    })?;
    Ok(c)
}

async fn serve(resolved: Resolved, mode: Mode, config: InstanceConfig) -> CliResult {
    let data = &resolved.data;
    std::fs::create_dir_all(data).map_err(|e| {
        CliError::invalid("--data", format!("cannot create {}: {e}", data.display()))
    })?;
    let clock = SystemClock::shared();
    let (registry, memory): (Arc<dyn Registry>, Option<MemoryRegistry>) = match &mode {
        Mode::Standalone => {
            let dir = data.join("registry");
            let m = MemoryRegistry::open(&dir).map_err(|e| {
                CliError::Failed(anyhow::anyhow!(
                    "cannot open the embedded registry in {}: {e}",
                    dir.display()
                ))
            })?;
            (Arc::new(m.clone()), Some(m))
        }
        Mode::Agent => (Arc::new(connect_etcd(&resolved).await?), None),
    };
    let history_url = resolved
        .history
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", absolute_display(&data.join("history.db"))));
    let store = HistoryStore::connect(&history_url)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("history database: {e}")))?;
    let writer = HistoryWriter::start(store.clone(), WriterOptions::new(data.join("spool")))
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("history spool: {e}")))?;

    let http = HttpJob::new(HttpOptions::default())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot set up the HTTP job client: {e}")))?;
    let handlers = Handlers::new()
        .register("script", ScriptJob::new(script_options(&resolved)))
        .register("http", http);
    let runner = Runner {
        handlers,
        history: Arc::new(writer.clone()),
        options: SchedulerOptions::default(),
    };
    let instance = Instance::start_with(registry.clone(), clock.clone(), config, runner)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot join the cluster: {e}")))?;

    if let Some(file) = &resolved.config {
        apply_jobs(&Cluster::new(registry.clone(), clock), file).await?;
    }
    let instance = Arc::new(instance);
    let http = match resolved.bind {
        Some(addr) => Some(super::http::spawn(addr, instance.clone()).await?),
        None => None,
    };
    tracing::info!(
        mode = match mode { Mode::Standalone => "standalone", Mode::Agent => "agent" },
        instance = instance.id().unwrap_or_default(),
        name = instance.name(),
        data = %data.display(),
        history = store.url(),
        bind = ?resolved.bind,
        "shardcron is running (Ctrl-C or SIGTERM stops it gracefully)"
    );
    let waited = instance.wait_for_shutdown_signal().await;
    if let Some(h) = http {
        h.abort();
        let _ = h.await;
    }
    let instance = Arc::try_unwrap(instance).map_err(|_| {
        CliError::Failed(anyhow::anyhow!("the instance is still shared at shutdown"))
    })?;
    let stopped = instance.shutdown().await;
    if let Err(e) = writer.shutdown().await {
        tracing::error!(error = %e, "the history writer did not flush everything");
    }
    if let Some(m) = memory {
        let _ = m.close().await;
    }
    waited.map_err(|e| CliError::Failed(e.into()))?;
    stopped.map_err(|e| CliError::Failed(e.into()))?;
    tracing::info!("stopped");
    Ok(())
}

async fn connect_etcd(r: &Resolved) -> Result<EtcdRegistry, CliError> {
    let url = r.registry.as_deref().unwrap_or_default();
    let ns = r.namespace.as_deref().unwrap_or_default();
    let mut opts =
        EtcdOptions::from_url(url, ns).map_err(|e| CliError::invalid("--registry", e))?;
    if let Some(user) = &r.registry_user {
        let password = std::env::var("SHARDCRON_REGISTRY_PASSWORD").map_err(|_| {
            CliError::invalid(
                "SHARDCRON_REGISTRY_PASSWORD",
                "must be set when --registry-user is given",
            )
        })?;
        opts.user = Some(user.clone());
        opts.password = Some(password);
    }
    let read = |flag: &str, p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, CliError> {
        p.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| {
                    CliError::invalid(flag, format!("cannot read {}: {e}", p.display()))
                })
            })
            .transpose()
    };
    let ca = read("--registry-ca", &r.registry_ca)?;
    let cert = read("--registry-cert", &r.registry_cert)?;
    let key = read("--registry-key", &r.registry_key)?;
    if cert.is_some() != key.is_some() {
        return Err(CliError::invalid(
            "--registry-cert",
            "--registry-cert and --registry-key go together",
        ));
    }
    if url.starts_with("etcds://") || url.starts_with("https://") {
        let ca_pem = ca.ok_or_else(|| {
            CliError::invalid("--registry-ca", "required for an etcds:// registry")
        })?;
        opts.tls = Some(EtcdTls {
            ca_pem,
            cert_pem: cert,
            key_pem: key,
            domain: None,
        });
    } else if ca.is_some() || cert.is_some() {
        return Err(CliError::invalid(
            "--registry",
            "TLS files are given but the URL is plain etcd://; use etcds://",
        ));
    }
    opts.validate()
        .map_err(|e| CliError::invalid("--registry", e))?;
    EtcdRegistry::connect(opts)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot connect to etcd at {url}: {e}")))
}

fn script_options(r: &Resolved) -> ScriptOptions {
    let mut opts = ScriptOptions {
        allow: r.script_allow.clone(),
        ..ScriptOptions::default()
    };
    // Runs go through `shardcron __supervise`, which kills a run's process group
    // when this process dies (see shardcron_runtime::script).
    if let Ok(exe) = std::env::current_exe() {
        opts.supervisor = Some(Supervisor {
            program: exe,
            args: vec![OsString::from("__supervise")],
        });
    }
    opts
}

async fn apply_jobs(cluster: &Cluster, file: &super::settings::ConfigFile) -> CliResult {
    for job in &file.jobs {
        let name = job.name.as_str();
        match cluster.apply_job(job).await {
            Ok(ApplyOutcome::Created) => {
                tracing::info!(job = name, "job created from the config file")
            }
            Ok(ApplyOutcome::Overwritten) => {
                tracing::info!(
                    job = name,
                    "job updated from the config file (overwrite = true)"
                )
            }
            Ok(ApplyOutcome::Unchanged) => tracing::debug!(job = name, "job unchanged"),
            Ok(ApplyOutcome::Conflict) => tracing::warn!(
                job = name,
                "the registry's copy of this job differs from the config file; kept the registry's copy (set overwrite = true in the file to replace it)"
            ),
            Err(e) => {
                return Err(CliError::Failed(anyhow::anyhow!(
                    "cannot apply job {name:?} from {}: {e}",
                    file.path.display()
                )));
            }
        }
    }
    Ok(())
}

fn absolute_display(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}
