//! `strata-vip`: holds the control plane's virtual IP while this host holds the Lease (see
//! the library).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use strata_vip::election::{Decision, Elector, Record};
use strata_vip::{arp, netlink};
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The virtual IP.
    #[arg(long)]
    vip: Ipv4Addr,
    /// This host's own address: the virtual IP goes on the interface that holds it.
    #[arg(long)]
    host_address: Ipv4Addr,
    /// This host's name in the Lease.
    #[arg(long)]
    identity: String,
    /// Credentials for this host's own API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    #[arg(long, default_value = "strata-vip")]
    lease: String,
    /// Seconds a Lease seen unchanged stays another host's.
    #[arg(long, default_value_t = 4)]
    lease_seconds: u64,
    /// Milliseconds between reads of the Lease.
    #[arg(long, default_value_t = 1000)]
    retry_ms: u64,
}

fn record(l: &Lease) -> Record {
    Record {
        holder: l
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default(),
        version: l.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// `l` with this host as holder, renewed now.
fn claimed(l: &Lease, identity: &str, seconds: u64) -> Lease {
    let mut l = l.clone();
    let spec = l.spec.get_or_insert_with(Default::default);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    if spec.holder_identity.as_deref() != Some(identity) {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(i32::try_from(seconds).unwrap_or(i32::MAX));
    l
}

async fn client(path: &PathBuf, timeout: Duration) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    kube::Client::try_from(config).context("API client")
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .without_time()
        .init();
    let args = Args::parse();
    let retry = Duration::from_millis(args.retry_ms);
    let api: Api<Lease> = Api::namespaced(client(&args.kubeconfig, retry).await?, &args.namespace);
    let nl = netlink::connect()?;
    let index = netlink::interface_of(&nl, args.host_address).await?;
    let mut elector = Elector::new(
        args.identity.clone(),
        Duration::from_secs(args.lease_seconds),
        Duration::from_secs(1),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    info!(vip = %args.vip, lease = %format!("{}/{}", args.namespace, args.lease), "candidate");
    let result = hold(&args, &api, &nl, index, &mut elector, &mut term, retry).await;
    // On every way out: the address first (no two holders), then the Lease, so that another
    // host takes over at once.
    let removed = netlink::remove(&nl, args.vip).await;
    give_up(&api, &args, &mut elector).await;
    if matches!(removed, Ok(true)) {
        info!(vip = %args.vip, "released");
    }
    result
}

/// Holds the address while this host holds the Lease, until SIGTERM (Ok) or a netlink
/// failure (Err).
async fn hold(
    args: &Args,
    api: &Api<Lease>,
    nl: &rtnetlink::Handle,
    index: u32,
    elector: &mut Elector,
    term: &mut tokio::signal::unix::Signal,
    retry: Duration,
) -> Result<()> {
    let mut tick = tokio::time::interval(retry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announcements = 0u32;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => return Ok(()),
        }
        // Past its deadline (the API calls below may take a while): let go first.
        if !elector.holds(Instant::now()) && netlink::remove(nl, args.vip).await? {
            info!(vip = %args.vip, "gave up the virtual IP");
        }
        match tokio::time::timeout(retry, api.get(&args.lease)).await {
            Ok(Ok(l)) => {
                last_error.clear();
                match elector.observe(record(&l), Instant::now()) {
                    Decision::Claim => {
                        let want = claimed(&l, &args.identity, args.lease_seconds);
                        // The renewal counts from before it was sent: others saw the Lease
                        // change no earlier than that.
                        let sent = Instant::now();
                        let params = PostParams::default();
                        let write = api.replace(&args.lease, &params, &want);
                        match tokio::time::timeout(retry, write).await {
                            Ok(Ok(written)) => elector.renewed(record(&written), sent),
                            Ok(Err(kube::Error::Api(e))) if e.code == 409 => elector.lost(),
                            Ok(Err(e)) => report(&mut last_error, format!("renewing: {e}")),
                            Err(_) => report(&mut last_error, "renewing: timed out".into()),
                        }
                    }
                    Decision::Follow => elector.lost(),
                }
            }
            Ok(Err(e)) => report(&mut last_error, format!("reading the Lease: {e}")),
            Err(_) => report(&mut last_error, "reading the Lease: timed out".into()),
        }
        if elector.holds(Instant::now()) {
            if netlink::add(nl, index, args.vip).await? {
                info!(vip = %args.vip, "holding the virtual IP");
                announcements = 3;
            }
            if announcements > 0 {
                announcements -= 1;
                if let Err(e) = arp::announce(index, args.vip) {
                    warn!(error = %e, "gratuitous ARP");
                }
            }
        } else if netlink::remove(nl, args.vip).await? {
            info!(vip = %args.vip, "gave up the virtual IP");
        }
    }
}

fn report(last: &mut String, text: String) {
    if *last != text {
        warn!(error = %text, "the Lease");
        *last = text;
    }
}

/// Frees the Lease when it names this host, so that another takes over at once (the
/// address is already gone).
async fn give_up(api: &Api<Lease>, args: &Args, elector: &mut Elector) {
    elector.lost();
    let Ok(Ok(mut l)) = tokio::time::timeout(Duration::from_secs(2), api.get(&args.lease)).await
    else {
        return;
    };
    if record(&l).holder != args.identity {
        return;
    }
    if let Some(spec) = l.spec.as_mut() {
        spec.holder_identity = None;
    }
    let params = PostParams::default();
    let write = api.replace(&args.lease, &params, &l);
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), write).await {
        warn!(error = %e, "giving up the Lease");
    }
}
