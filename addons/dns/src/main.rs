//! `strata-dns`: serves the cluster zone from watches on Services and Endpoints and forwards
//! other names upstream. Ready (`/ready`) once the first full list of both kinds is in; live
//! (`/health`) while it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use strata_dns::forward::Forwarder;
use strata_dns::index::Index;
use strata_dns::records::Zone;
use strata_dns::server::{Handler, SharedIndex};
use tokio::sync::Notify;

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
    /// Where /health and /ready are served.
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

fn watched<K>(api: Api<K>, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        let mut events = reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    store
}

async fn serve_http(addr: SocketAddr, ready: Arc<AtomicBool>) -> Result<()> {
    use axum::http::StatusCode;
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
    let index: SharedIndex = Arc::new(RwLock::new(Arc::new(Index::default())));
    let handler = Handler {
        zone: Zone {
            name: args.zone.trim_end_matches('.').to_ascii_lowercase(),
            reverse: args.reverse.clone(),
        },
        index: index.clone(),
        forwarder: Forwarder::new(upstreams),
        recursion_for: args.recursion_for.clone(),
    };
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let ready = ready.clone();
        async move {
            if let Err(e) = serve_http(args.http, ready).await {
                tracing::error!(error = %format!("{e:#}"), "health endpoint stopped");
            }
        }
    });

    let client = Client::try_default()
        .await
        .context("connecting to the API server")?;
    let notify = Arc::new(Notify::new());
    let services = watched(Api::<Service>::all(client.clone()), notify.clone());
    let endpoints = watched(Api::<Endpoints>::all(client.clone()), notify.clone());
    let nodes = watched(Api::<Node>::all(client), notify.clone());
    // Answers only from a full view of the cluster.
    services
        .wait_until_ready()
        .await
        .context("the Service watch")?;
    endpoints
        .wait_until_ready()
        .await
        .context("the Endpoints watch")?;
    nodes.wait_until_ready().await.context("the Node watch")?;
    let rebuild = |services: &Store<Service>, endpoints: &Store<Endpoints>| {
        let s = services.state();
        let e = endpoints.state();
        let mut next = Index::build(s.iter().map(|x| &**x), e.iter().map(|x| &**x));
        next.set_nodes(nodes.state().iter().map(|n| &**n));
        let n = next.len();
        *index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        n
    };
    let n = rebuild(&services, &endpoints);
    tracing::info!(services = n, "synced");

    let mut server = hickory_server::server::Server::new(handler);
    let udp = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("binding UDP {}", args.listen))?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding TCP {}", args.listen))?;
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    ready.store(true, Ordering::Relaxed);

    let index_task = async {
        loop {
            notify.notified().await;
            // Let a burst of changes settle into one index.
            tokio::time::sleep(Duration::from_millis(100)).await;
            rebuild(&services, &endpoints);
        }
    };
    tokio::select! {
        () = index_task => Ok(()),
        r = server.block_until_done() => r.context("the DNS server stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

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
