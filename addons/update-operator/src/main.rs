//! `strata-update-operator`: `operator` (the Deployment), `agent` (the DaemonSet), `crds`
//! (prints the CRDs generated from the types).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use strata_update_operator::{agent, crd, fleetlock, metrics, operator};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Run the operator (leader-elected): locks, approvals, Events, metrics and FleetLock.
    Operator {
        /// Namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "strata-system")]
        namespace: String,
        /// This replica's name in the Lease and on Events.
        #[arg(long, env = "POD_NAME")]
        identity: String,
        /// Address of the metrics and FleetLock endpoint.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Run the node agent.
    Agent {
        /// The node this agent runs on.
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The host's /run/strata/update-agent, mounted.
        #[arg(long, default_value = "/run/strata/update-agent")]
        dir: PathBuf,
        /// Seconds between passes.
        #[arg(long, default_value_t = 3)]
        interval: u64,
    },
}

/// A client from the pod's environment (in-cluster, or KUBECONFIG). No automatic retries of
/// 429: a refused eviction is the answer the operator's drain needs to see, not something to
/// wait out.
async fn client() -> Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("finding the API server (in-cluster, or KUBECONFIG)")?;
    config.default_retry = false;
    kube::Client::try_from(config).context("connecting to the API server")
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs to stderr as `time level target: message key=value...`, the level from RUST_LOG
/// (default info).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    init_logs();
    match Cli::parse().command {
        Command::Crds => print!("{}", crd::crds_yaml()?),
        Command::Operator {
            namespace,
            identity,
            listen,
        } => {
            let client = client().await?;
            let metrics = Arc::new(metrics::Metrics::default());
            let app = fleetlock::router(client.clone(), metrics.clone());
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tokio::spawn(async move {
                // The peer's address: FleetLock answers nodes only.
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "HTTP endpoint (metrics, FleetLock) stopped");
                }
            });
            operator::run(client, &namespace, &identity, metrics, terminated()).await?;
        }
        Command::Agent {
            node,
            dir,
            interval,
        } => {
            let client = client().await?;
            tracing::info!(%node, "agent started");
            // The API server of this node itself (control-plane nodes), not the balancer.
            let mut local = kube::Config::infer()
                .await
                .context("finding the API server (in-cluster, or KUBECONFIG)")?;
            local.cluster_url = crd::LOCAL_API_SERVER
                .parse()
                .context("the local API server's address")?;
            local.default_retry = false;
            let local_api = kube::Client::try_from(local).ok();
            let a = agent::Agent {
                client,
                node,
                dir,
                local_api,
                etcd_health: Some(crd::ETCD_HEALTH.to_owned()),
            };
            tokio::select! {
                () = a.run(Duration::from_secs(interval)) => {}
                () = terminated() => {}
            }
        }
    }
    Ok(())
}
