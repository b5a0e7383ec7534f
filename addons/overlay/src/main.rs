//! `NODE_NAME=N strata-overlay run --device D --vni N --port P --cni-dir DIR
//! [--direct-routing]`: the agent (see agent.rs), with in-cluster credentials or KUBECONFIG.
//! `strata-overlay program --device D --vni N --port P --underlay IP --me NAME --nodes FILE
//! [--direct-routing]`: programs this network namespace's overlay for the nodes listed in FILE
//! (JSON array of {name, pod_cidr, underlay, vtep_mac}; `-` is standard input) and prints this
//! node's VTEP MAC. `strata-overlay mac --device D --vni N --port P --underlay IP --pod-cidr CIDR` only
//! creates the device and prints its MAC.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use strata_overlay::netlink::{Device, connect, ensure_device, reconcile};
use strata_overlay::plan::{NodeInfo, desired, gateway};

fn arg<'a>(args: &'a [String], name: &str) -> Result<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .with_context(|| format!("missing {name}"))
}

async fn run(args: Vec<String>) -> Result<()> {
    if args.first().map(String::as_str) == Some("run") {
        let node = std::env::var("NODE_NAME").context("NODE_NAME: this node's name")?;
        let opts = strata_overlay::agent::Options {
            device: arg(&args, "--device")?,
            vni: arg(&args, "--vni")?.parse().context("--vni")?,
            port: arg(&args, "--port")?.parse().context("--port")?,
            cni_dir: std::path::Path::new(arg(&args, "--cni-dir")?),
            direct_routing: args.iter().any(|a| a == "--direct-routing"),
        };
        // The agent is its container's first process: SIGTERM, which the kubelet sends to
        // stop it, is ignored unless handled, and the pod would wait out its grace period.
        // The datapath stays programmed when it exits; the next agent takes it over.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        return tokio::select! {
            r = strata_overlay::agent::run(&node, &opts) => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
    }
    let dev = Device {
        name: arg(&args, "--device")?.to_owned(),
        vni: arg(&args, "--vni")?.parse().context("--vni")?,
        port: arg(&args, "--port")?.parse().context("--port")?,
        underlay: arg(&args, "--underlay")?.parse().context("--underlay")?,
    };
    let h = connect()?;
    match args.first().map(String::as_str) {
        Some("mac") => {
            let cidr: ipnet::Ipv4Net = arg(&args, "--pod-cidr")?.parse().context("--pod-cidr")?;
            let st = ensure_device(&h, &dev, gateway(cidr)).await?;
            println!("{}", st.mac);
        }
        Some("program") => {
            let me = arg(&args, "--me")?;
            let file = arg(&args, "--nodes")?;
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
            };
            let nodes: Vec<NodeInfo> = serde_json::from_str(&text).context("--nodes")?;
            let mine = nodes
                .iter()
                .find(|n| n.name == me)
                .with_context(|| format!("{me} is not in --nodes"))?;
            let st = ensure_device(&h, &dev, gateway(mine.pod_cidr)).await?;
            let direct = args
                .iter()
                .any(|a| a == "--direct-routing")
                .then_some(st.underlay_net);
            let c = reconcile(&h, &st, &desired(me, &nodes, direct)).await?;
            println!(
                "{} added={} removed={}",
                st.mac,
                c.added.len(),
                c.removed.len()
            );
            for what in &c.added {
                eprintln!("added {what}");
            }
            for what in &c.removed {
                eprintln!("removed {what}");
            }
        }
        _ => {
            bail!("usage: strata-overlay mac|program --device D --vni N --port P --underlay IP ...")
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(std::env::args().skip(1).collect()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
