//! `strata-dns`: serves the cluster zone from watches on Services and Endpoints and forwards
//! other names upstream. Ready (`/ready`) once the first full list of each kind is in; live
//! (`/health`) while it serves; Prometheus metrics at `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use clap::Parser;
use kube::Client;
use strata_dns::metrics::Metrics;
use strata_dns::serve::{Options, serve};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The cluster's domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Where DNS is served (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// Upstream servers (IP or IP:port); when none, the nameservers of --resolv-conf.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// The resolv.conf whose nameservers are the upstreams by default (loopback ones are
    /// skipped: pods cannot reach a host's loopback).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Address ranges whose reverse names are the cluster's (service and pod ranges).
    #[arg(long = "reverse")]
    reverse: Vec<ipnet::IpNet>,
    /// Clients that may ask for names outside the cluster besides the Nodes' addresses (the
    /// pod network); others are refused.
    #[arg(long = "recursion-for")]
    recursion_for: Vec<ipnet::IpNet>,
    /// Read endpoints from discovery.k8s.io/v1 EndpointSlices (Kubernetes 1.21 and later)
    /// instead of core/v1 Endpoints.
    #[arg(long)]
    endpoint_slices: bool,
    /// Where /health, /ready and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
}

/// `nameserver` lines of a resolv.conf, loopback ones skipped, port 53.
fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn upstream(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s.parse().with_context(|| format!("--upstream {s}"))?;
    Ok(SocketAddr::new(ip, 53))
}

async fn serve_http(addr: SocketAddr, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "syncing\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    axum::serve(listener, app).await.context("serving /health")
}

async fn run(args: Args) -> Result<()> {
    let upstreams: Vec<SocketAddr> = if args.upstreams.is_empty() {
        let text = std::fs::read_to_string(&args.resolv_conf).unwrap_or_default();
        nameservers(&text)
    } else {
        args.upstreams
            .iter()
            .map(|s| upstream(s))
            .collect::<Result<_>>()?
    };
    if upstreams.is_empty() {
        tracing::warn!(
            resolv_conf = %args.resolv_conf.display(),
            "no upstream DNS server: names outside the cluster get SERVFAIL"
        );
    }
    tracing::info!(zone = %args.zone, ?upstreams, "starting");
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());
    tokio::spawn({
        let (ready, metrics) = (ready.clone(), metrics.clone());
        async move {
            if let Err(e) = serve_http(args.http, ready, metrics).await {
                tracing::error!(error = %format!("{e:#}"), "health endpoint stopped");
            }
        }
    });
    let client = Client::try_default()
        .await
        .context("connecting to the API server")?;
    let options = Options {
        zone: args.zone,
        listen: args.listen,
        upstreams,
        reverse: args.reverse,
        recursion_for: args.recursion_for,
        endpoint_slices: args.endpoint_slices,
    };
    // The server is its container's first process: SIGTERM, which the kubelet sends to stop
    // it, is ignored unless handled, and the pod would wait out its grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let serving = serve(client, options, Arc::clone(&ready), metrics);
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => return r.context("serving DNS"),
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => {}
    }
    // Stopping: the pod leaves the Service's endpoints at once, kube-proxy's rules a moment
    // later; queries still sent here meanwhile are answered (within the 5 s grace period).
    ready.store(false, Ordering::SeqCst);
    tracing::info!(
        "SIGTERM: answering {} s more while the Service forgets this pod",
        TERMINATING_FOR.as_secs()
    );
    tokio::select! {
        r = &mut serving => r.context("serving DNS"),
        () = tokio::time::sleep(TERMINATING_FOR) => Ok(()),
    }
}

/// How long the server answers after SIGTERM (less than the pod's grace period).
const TERMINATING_FOR: std::time::Duration = std::time::Duration::from_secs(2);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_from_resolv_conf_skip_loopback() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 198.18.0.1\nnameserver ::1\n\
                    nameserver fd00::53\nsearch example.com\noptions edns0\n";
        assert_eq!(
            nameservers(text),
            [
                "198.18.0.1:53".parse::<SocketAddr>().expect("addr"),
                "[fd00::53]:53".parse().expect("addr"),
            ]
        );
        assert_eq!(upstream("10.0.0.2").expect("ip").port(), 53);
        assert_eq!(upstream("10.0.0.2:5353").expect("addr").port(), 5353);
        assert!(upstream("dns.example").is_err());
    }
}
