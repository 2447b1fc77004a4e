//! `shardcron standalone` and `shardcron agent`: one instance of a cluster, with
//! its registry, its history writer, the config file's jobs, the script and HTTP
//! runners, and the config file's alert channels: the SDK's [`Node`] fed from
//! flags and the config file.

use std::ffi::OsString;

use clap::Args;
use shardcron::console::auth::AuthOptions;
use shardcron::{ConsoleOptions, Node, NodeError};
use shardcron_registry::{EtcdOptions, EtcdTls};
use shardcron_runtime::script::{ScriptOptions, Supervisor};
use shardcron_runtime::{HttpOptions, InstanceConfig};

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
    let resolved = cluster_settings(&args)?;
    run(resolved, Mode::Agent)
}

/// `shardcron console`: the console and REST API of an etcd namespace, served
/// without joining it (no instance, no jobs run here). Same settings as `agent`.
pub(crate) fn console(args: AgentArgs) -> CliResult {
    let resolved = cluster_settings(&args)?;
    init_logging(&resolved.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve_console(resolved))
}

async fn serve_console(resolved: Resolved) -> CliResult {
    let failed = |e: String| CliError::Failed(anyhow::anyhow!(e));
    let opts = etcd_options(&resolved)?;
    let endpoints = opts.endpoints.join(",");
    let registry: std::sync::Arc<dyn shardcron_registry::Registry> = std::sync::Arc::new(
        shardcron_registry::EtcdRegistry::connect(opts)
            .await
            .map_err(|e| failed(format!("cannot connect to etcd at {endpoints}: {e}")))?,
    );
    let url = resolved.history.clone().unwrap_or_default();
    let history = shardcron_store::HistoryStore::connect(&url)
        .await
        .map_err(|e| failed(format!("history database: {e}")))?;
    let clock = shardcron_core::clock::SystemClock::shared();
    let auth_opts = AuthOptions {
        admin_password: resolved.admin_password.clone(),
        admin_token: admin_token()?,
        secure_cookies: resolved.secure_cookies,
    };
    let auth = shardcron::node::start_auth(registry.clone(), clock.clone(), auth_opts)
        .await
        .map_err(|e| match e {
            NodeError::Invalid(m) => CliError::Invalid(m),
            NodeError::Failed(m) => failed(m),
        })?;
    let state = std::sync::Arc::new(shardcron::console::ConsoleState {
        cluster: shardcron_runtime::Cluster::new(registry, clock.clone()),
        history,
        instance: None,
        auth,
        metrics: None,
        clock,
    });
    let bind = resolved.bind.unwrap_or(DEFAULT_CONSOLE_BIND);
    let console = shardcron::node::Console::start(bind, state)
        .await
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(url = %format!("http://{}/", console.addr()), "shardcron console is running (Ctrl-C or SIGTERM stops it)");
    wait_for_signal().await;
    console.stop().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The settings of a cluster node (`agent`, `console`): registry, namespace and
/// history are required.
fn cluster_settings(args: &AgentArgs) -> Result<Resolved, CliError> {
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
    Ok(resolved)
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
    let builder = match &mode {
        Mode::Standalone => Node::standalone(data),
        Mode::Agent => Node::etcd_with(etcd_options(&resolved)?),
    };
    let mut builder = builder
        .data_dir(data)
        .instance_config(config)
        .scripts(script_options(&resolved))
        .http(HttpOptions::default());
    if let Some(url) = &resolved.history {
        builder = builder.history(url);
    }
    if let Some(file) = &resolved.config {
        builder = builder.alerts(file.alerts.clone());
        for job in &file.jobs {
            builder = builder.job(job.clone());
        }
    }
    let bind = match mode {
        // The console is on by default for one machine, on loopback only.
        Mode::Standalone => Some(resolved.bind.unwrap_or(DEFAULT_CONSOLE_BIND)),
        Mode::Agent => resolved.bind,
    };
    if let Some(addr) = bind {
        builder = builder.console(ConsoleOptions {
            bind: addr,
            auth: AuthOptions {
                admin_password: resolved.admin_password.clone(),
                admin_token: admin_token()?,
                secure_cookies: resolved.secure_cookies,
            },
        });
    }
    let node = builder.start().await.map_err(|e| match e {
        NodeError::Invalid(m) => CliError::Invalid(m),
        NodeError::Failed(m) => CliError::Failed(anyhow::anyhow!(m)),
    })?;
    let instance = node.instance();
    tracing::info!(
        mode = match mode { Mode::Standalone => "standalone", Mode::Agent => "agent" },
        instance = instance.id().unwrap_or_default(),
        name = instance.name(),
        data = %data.display(),
        history = node.history().url(),
        console = ?node.console_addr().map(|a| format!("http://{a}/")),
        "shardcron is running (Ctrl-C or SIGTERM stops it gracefully)"
    );
    let waited = node.wait_for_shutdown_signal().await;
    let stopped = node.shutdown().await;
    waited.map_err(|e| CliError::Failed(e.into()))?;
    stopped.map_err(|e| CliError::Failed(e.into()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Where `standalone` serves the console when `--bind` is not given.
pub(crate) const DEFAULT_CONSOLE_BIND: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080),
);

/// `SHARDCRON_ADMIN_TOKEN`: an admin API token to accept (seeded at start).
pub(crate) fn admin_token() -> Result<Option<String>, CliError> {
    match std::env::var("SHARDCRON_ADMIN_TOKEN") {
        Ok(t) if t.trim().is_empty() => Err(CliError::invalid(
            "SHARDCRON_ADMIN_TOKEN",
            "is set but empty",
        )),
        Ok(t) => Ok(Some(t)),
        Err(_) => Ok(None),
    }
}

/// The etcd connection the flags describe (TLS files read, password from the
/// environment).
pub(crate) fn etcd_options(r: &Resolved) -> Result<EtcdOptions, CliError> {
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
    Ok(opts)
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
