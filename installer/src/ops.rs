//! `strata status`, `strata kubeconfig` and `strata reset`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use strata_manifests::Host;
use strata_manifests::model::Role;
use strata_manifests::plan::AppliedState;

use crate::apply::{admin_client, connect_all, remember_host_keys};
use crate::certs::load;
use crate::cli::StateArgs;

/// The services Strata runs on a host, by role.
fn services(h: &Host) -> Vec<&'static str> {
    let mut s = Vec::new();
    if h.has_role(Role::Etcd) {
        s.push("etcd");
    }
    if h.has_role(Role::ControlPlane) {
        s.extend([
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]);
    }
    s.extend(["containerd", "kubelet", "kube-proxy"]);
    s
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn kubeconfig(args: &StateArgs, out: Option<&Path>) -> Result<ExitCode> {
    let cs = load(args)?;
    let path = cs.state.file("auth/kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: run `strata apply` (or `strata certs generate`) first",
            path.display()
        )
    })?;
    match out {
        None => outln!("{}", text.trim_end()),
        Some(p) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("writing {}", p.display()))?;
            f.write_all(text.as_bytes())?;
            eprintln!("wrote {} (admin credentials: keep it private)", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: &StateArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let cs = load(args)?;
        let state_file = cs.state.root.join("state.json");
        let mut state = AppliedState::load(&state_file)?;
        let hosts: Vec<&Host> = cs.cluster.spec.hosts.iter().collect();
        let conns = connect_all(&cs, &state, &hosts, false).await?;
        // Keys trusted at the prompt are pinned.
        for (h, c) in hosts.iter().zip(&conns) {
            if let Ok(c) = c {
                remember_host_keys(&cs, &mut state, h, c);
            }
        }
        state.save(&state_file)?;
        let mut healthy = true;
        outln!(
            "{:<12} {:<16} {:<5} {:<10} SERVICES",
            "HOST",
            "ADDRESS",
            "SSH",
            "KUBELET"
        );
        for (h, c) in hosts.iter().zip(conns) {
            let addr = h
                .address
                .as_ref()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let conn = match c {
                Ok(c) => c,
                Err(e) => {
                    healthy = false;
                    outln!(
                        "{:<12} {addr:<16} {:<5} {:<10} {e:#}",
                        h.name.as_str(),
                        "FAIL",
                        "-"
                    );
                    continue;
                }
            };
            let units = services(h);
            let out = conn
                .exec(&format!("systemctl is-active {}", units.join(" ")))
                .await?;
            let states: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            let shown: Vec<String> = units
                .iter()
                .zip(
                    states
                        .iter()
                        .chain(std::iter::repeat(&String::from("unknown"))),
                )
                .map(|(u, s)| {
                    if s != "active" {
                        healthy = false;
                    }
                    format!("{u}={s}")
                })
                .collect();
            let version = conn
                .exec("/opt/strata/bin/kubelet --version 2>/dev/null")
                .await?;
            let version = String::from_utf8_lossy(&version.stdout)
                .trim()
                .trim_start_matches("Kubernetes ")
                .to_owned();
            outln!(
                "{:<12} {addr:<16} {:<5} {:<10} {}",
                h.name.as_str(),
                "ok",
                if version.is_empty() { "-" } else { &version },
                shown.join(" ")
            );
            conn.close().await;
        }
        let api = async {
            let client = admin_client(&cs).await?;
            let ready = client
                .request_text(http::Request::get("/readyz").body(Vec::new())?)
                .await?;
            let nodes: Api<Node> = Api::all(client);
            let list = nodes.list(&ListParams::default()).await?;
            Ok::<_, anyhow::Error>((ready, list))
        };
        match api.await {
            Ok((ready, list)) => {
                outln!("API https://{}: {}", cs.inputs.api_endpoint, ready.trim());
                for n in &list.items {
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| {
                            if c.status == "True" {
                                "Ready".to_string()
                            } else {
                                format!("NotReady ({})", c.reason.clone().unwrap_or_default())
                            }
                        })
                        .unwrap_or_else(|| "Unknown".into());
                    outln!(
                        "  node {:<12} {ready}",
                        n.metadata.name.clone().unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                healthy = false;
                outln!("API https://{}: unreachable: {e:#}", cs.inputs.api_endpoint);
            }
        }
        Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

const RESET: &str = r#"set -u
units="kubelet kube-proxy containerd kube-scheduler kube-controller-manager kube-apiserver etcd"
[ -x /opt/strata/bin/kube-proxy ] && /opt/strata/bin/kube-proxy --cleanup >/dev/null 2>&1
systemctl disable --now --quiet kubelet 2>/dev/null
# Every pod's processes: through containerd while it runs, then whatever is left in the
# pods' cgroups, then the shims.
if [ -x /opt/strata/bin/ctr ]; then
  for t in $(/opt/strata/bin/ctr -n k8s.io tasks ls -q 2>/dev/null); do
    /opt/strata/bin/ctr -n k8s.io tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1
  done
fi
# (A process of another PID namespace reads as 0 there: never `kill 0`, our own group.)
for f in $(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null); do
  for p in $(cat "$f" 2>/dev/null); do [ "$p" -gt 1 ] && kill -9 "$p" 2>/dev/null; done
done
# Everything is about to be deleted: no graceful shutdown (the API server waits a minute).
for u in $units; do
  systemctl kill --quiet --signal=SIGKILL "$u" 2>/dev/null
  systemctl disable --now --quiet "$u" 2>/dev/null
done
pkill -KILL -x containerd-shim 2>/dev/null
for m in $(awk '$2 ~ "^/(var/lib/kubelet|run/containerd|var/lib/containerd)/" {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null; done
rm -rf /var/lib/strata /etc/kubernetes /etc/etcd /var/lib/etcd /var/lib/kubelet /var/lib/containerd /run/containerd /var/log/kubernetes /opt/strata /etc/containerd /etc/sysctl.d/90-strata.conf /etc/modules-load.d/strata.conf /etc/cni/net.d/10-strata.conflist /var/lib/cni
ip link del cni0 2>/dev/null
ip link del strata.1 2>/dev/null
for u in $units; do rm -f "/etc/systemd/system/$u.service"; done
systemctl daemon-reload
echo reset
"#;

pub fn reset(args: &StateArgs, yes: bool) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let cs = load(args)?;
        let state_file = cs.state.root.join("state.json");
        let mut state = AppliedState::load(&state_file)?;
        let hosts: Vec<&Host> = cs.cluster.spec.hosts.iter().collect();
        if !yes {
            if !std::io::stdin().is_terminal() {
                bail!("refusing to reset the cluster without confirmation; pass --yes");
            }
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            let ok = dialoguer::Confirm::new()
                .with_prompt(format!(
                    "Remove Kubernetes, etcd and all their data from {} (cluster {})?",
                    names.join(", "),
                    cs.cluster.name()
                ))
                .default(false)
                .interact()?;
            if !ok {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let conns = connect_all(&cs, &state, &hosts, false).await?;
        let mut errors = Vec::new();
        for (h, c) in hosts.iter().zip(conns) {
            match c {
                Ok(conn) => {
                    let out = conn.exec(RESET).await?;
                    if out.success() {
                        outln!("[{}] reset", h.name);
                        state.hosts.remove(h.name.as_str());
                    } else {
                        errors.push(format!(
                            "host {}: reset failed (exit {}):\n{}",
                            h.name,
                            out.status,
                            out.tail()
                        ));
                    }
                    conn.close().await;
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            state.objects.clear();
        }
        state.save(&state_file)?;
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(ExitCode::SUCCESS)
    })
}
