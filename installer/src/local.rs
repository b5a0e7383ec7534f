//! `strata local up | down | list`: the cluster's hosts as machines on this computer.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use strata_manifests::model::Platform;
use strata_manifests::plan::AppliedState;
use strata_platforms::local::cluster::{self, LocalHost, Paths};

use crate::certs::{ClusterState, load};
use crate::cli::{LocalCommand, StateArgs};

/// The cluster's SSH key pair for local machines: `<state>/ssh/id_ed25519`, created once.
pub fn ssh_key(state: &strata_pki::StateDir) -> Result<PathBuf> {
    let dir = state.ensure_dir("ssh")?;
    let key = dir.join("id_ed25519");
    if !key.exists() {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "strata-local", "-f"])
            .arg(&key)
            .output()
            .context("running ssh-keygen (package openssh-client)")?;
        if !out.status.success() {
            bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(key)
}

/// The cluster's local range (`spec.platform.local.range`, all of 198.18.0.0/15 by default).
fn range_of(cs: &ClusterState) -> Result<ipnet::Ipv4Net> {
    match &cs.cluster.spec.platform {
        Platform::Local(local) => Ok(local.range()),
        other => bail!(
            "cluster {} uses platform {}: `strata local` manages machines of `platform: local` clusters",
            cs.cluster.name(),
            other.name()
        ),
    }
}

fn local_hosts(cs: &ClusterState) -> Result<Vec<LocalHost>> {
    let Platform::Local(local) = &cs.cluster.spec.platform else {
        bail!(
            "cluster {} uses platform {}: `strata local` manages machines of `platform: local` clusters",
            cs.cluster.name(),
            cs.cluster.spec.platform.name()
        );
    };
    cs.cluster
        .spec
        .hosts
        .iter()
        .map(|h| match h.address.as_ref().and_then(|a| a.ip()) {
            Some(IpAddr::V4(ip)) => Ok(LocalHost {
                name: h.name.to_string(),
                address: ip,
                prefix: local.machine_prefix(),
            }),
            _ => Err(anyhow!(
                "host {}: local machines need an IPv4 address",
                h.name
            )),
        })
        .collect()
}

pub fn run(cmd: &LocalCommand) -> Result<ExitCode> {
    let paths = Paths::default();
    match cmd {
        LocalCommand::Up(args) => up(args, &paths),
        LocalCommand::Down { state, yes } => {
            let cs = load(state)?;
            let name = cs.cluster.name().to_owned();
            let existing = cluster::existing(&name, &paths);
            if existing.is_empty() {
                forget(&cs, &[])?;
                outln!("cluster {name}: no machines");
                return Ok(ExitCode::SUCCESS);
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("refusing to remove machines without confirmation; pass --yes");
                }
                let ok = dialoguer::Confirm::new()
                    .with_prompt(format!(
                        "Remove machines {} of cluster {name}?",
                        existing.join(", ")
                    ))
                    .default(false)
                    .interact()?;
                if !ok {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let removed = cluster::down(&name, &paths)?;
            forget(&cs, &removed)?;
            outln!(
                "removed {} machine(s) of cluster {name}: {}",
                removed.len(),
                removed.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::List(args) => {
            let cs = load(args)?;
            let name = cs.cluster.name();
            let range = range_of(&cs)?;
            outln!(
                "cluster {name}: range {range}, this computer {} on bridge {}",
                strata_platforms::local::network::router_of(range),
                strata_platforms::local::Bridge::for_cluster(name).name
            );
            outln!("{:<16} {:<16} STATE", "HOST", "ADDRESS");
            for h in local_hosts(&cs)? {
                let state = if cluster::running(name, &h.name, &paths) {
                    "running"
                } else if cluster::existing(name, &paths).contains(&h.name) {
                    "stopped"
                } else {
                    "absent"
                };
                outln!("{:<16} {:<16} {state}", h.name, h.address);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What apply recorded of the removed machines goes with them (their disks did): files,
/// pending restarts, the cluster's objects and its etcd cluster, so that the next apply on
/// new machines installs a new cluster, as after `strata reset`. Host keys stay pinned
/// (`local up` says when a machine's key changed).
fn forget(cs: &crate::certs::ClusterState, removed: &[String]) -> Result<()> {
    let state_file = cs.state.root.join(strata_manifests::plan::STATE_FILE);
    let mut state = AppliedState::load(&state_file)?;
    for name in removed {
        state.hosts.remove(name);
        state.pending_restarts.remove(name);
    }
    state.objects.clear();
    state.etcd_cluster.clear();
    state.restoring.clear();
    state.restored = None;
    state.save(&state_file).map_err(Into::into)
}

fn up(args: &StateArgs, paths: &Paths) -> Result<ExitCode> {
    let cs = load(args)?;
    let hosts = local_hosts(&cs)?;
    if !cluster::is_root() {
        bail!("`strata local up` creates machines and network namespaces: run it as root");
    }
    let key = ssh_key(&cs.state)?;
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", key.display()))?;
    eprintln!(
        "==> Booting {} machine(s) for cluster {} (the base image is built once, about a minute)",
        hosts.len(),
        cs.cluster.name()
    );
    let up = cluster::up(cs.cluster.name(), range_of(&cs)?, &hosts, &public, paths)
        .with_context(|| format!("phase local-up, cluster {}", cs.cluster.name()))?;
    // Pin every host key now: these machines were created by us, so their keys are known
    // from their own disks; SSH later verifies against these pins.
    let state_file = cs.state.root.join(strata_manifests::plan::STATE_FILE);
    let mut state = AppliedState::load(&state_file)?;
    outln!("{:<16} {:<16} HOST KEY", "HOST", "ADDRESS");
    for h in &up {
        if let Some(old) = state.host_keys.get(&h.name)
            && old != &h.host_key
        {
            eprintln!(
                "note: host {} was recreated; its new host key {} replaces the pinned {}",
                h.name, h.host_key, old
            );
        }
        state.host_keys.insert(h.name.clone(), h.host_key.clone());
        outln!("{:<16} {:<16} {}", h.name, h.address, h.host_key);
    }
    state.save(&state_file)?;
    outln!(
        "ssh -i {} root@{}   # host keys pinned in {}",
        key.display(),
        up.first()
            .map(|h| h.address)
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        state_file.display()
    );
    Ok(ExitCode::SUCCESS)
}
