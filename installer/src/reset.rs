//! `strata reset`: every host back to how it was before Strata. What to stop and remove comes
//! from the component catalogue (every component's units, run-time paths, network links and
//! iptables chains, whatever roles the host has now) and from the files Strata wrote there
//! (as recorded when applied): files it created are deleted, a host's own files it replaced
//! are put back. Nothing is rendered: reset works on a cluster whose PKI is broken.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Result, bail};
use strata_manifests::catalog::{self, CATALOG, Component};
use strata_manifests::plan::{AppliedFile, AppliedState};
use strata_platforms::ssh::quote;

use crate::certs::{ClusterState, load};
use crate::cli::StateArgs;
use crate::engine::Reporter;

/// Directories that are Strata's alone on a host: removed whole.
const OWNED_DIRS: &[&str] = &[
    catalog::BIN_DIR,
    "/opt/strata",
    "/etc/strata",
    "/var/lib/strata",
];

/// Directories Strata creates on a host (with everything below them): emptied ones are
/// removed by reset. Any other directory stays, even when Strata's files were its last.
const PRUNE_DIRS: &str = "/etc/cni /opt/cni /etc/kubernetes /etc/etcd /etc/containerd /etc/strata /opt/strata /var/lib/strata /run/strata";

/// What reset does with the files Strata applied to one host.
#[derive(Debug, Default)]
pub struct HostFiles {
    /// Files Strata created: deleted.
    pub created: BTreeSet<String>,
    /// Paths where the host had a file of its own: that file put back (or left as it is,
    /// when Strata found the same bytes there).
    pub preexisting: BTreeSet<String>,
}

impl HostFiles {
    pub fn of(applied: Option<&BTreeMap<String, AppliedFile>>) -> Self {
        let mut out = Self::default();
        for (path, f) in applied.into_iter().flatten() {
            if f.preexisting {
                out.preexisting.insert(path.clone());
            } else {
                out.created.insert(path.clone());
            }
        }
        out
    }
}

/// The paths quoted for the remote shell, as one quoted word (`eval "set -- $X"` splits
/// it); a trailing `*` stays a glob.
fn words(paths: &BTreeSet<String>) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| match p.strip_suffix('*') {
            Some(prefix) => format!("{}*", quote(prefix)),
            None => quote(p),
        })
        .collect();
    quote(&quoted.join(" "))
}

/// The reset script for a host that got `files`.
pub fn script(files: &HostFiles) -> String {
    let units: Vec<&str> = CATALOG
        .iter()
        .rev()
        .flat_map(|s| s.units.iter().map(|u| u.name))
        .collect();
    let mut paths: BTreeSet<String> = files.created.clone();
    paths.extend(
        CATALOG
            .iter()
            .flat_map(|s| s.run_paths.iter().map(|p| (*p).to_owned())),
    );
    paths.extend(OWNED_DIRS.iter().map(|p| (*p).to_owned()));
    paths.extend(units.iter().map(|u| format!("/etc/systemd/system/{u}")));
    paths.retain(|p| !files.preexisting.contains(p));
    let links: BTreeSet<&str> = CATALOG
        .iter()
        .flat_map(|s| s.links.iter().copied())
        .collect();
    let chains: BTreeSet<&str> = CATALOG
        .iter()
        .flat_map(|s| s.chains.iter().copied())
        .collect();
    let chains_re = format!(
        "^({})",
        chains.iter().copied().collect::<Vec<_>>().join("|")
    );
    format!(
        "set -u\nBIN={bin}\nUNITS='{units}'\nPATHS={paths}\nRESTORE={restore}\nLINKS='{links}'\nCHAINS='{chains_re}'\nPRUNE='{PRUNE_DIRS}'\n{RESET}",
        bin = catalog::BIN_DIR,
        units = units.join(" "),
        paths = words(&paths),
        restore = words(&files.preexisting),
        links = links.iter().copied().collect::<Vec<_>>().join("|"),
    )
}

const RESET: &str = r#"
[ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
systemctl disable --now --quiet kubelet.service 2>/dev/null
# Every pod's processes: through containerd while it runs, then whatever is left in the
# pods' cgroups, then the shims.
if [ -x "$BIN/ctr" ]; then
  for t in $("$BIN/ctr" -n k8s.io tasks ls -q 2>/dev/null); do
    "$BIN/ctr" -n k8s.io tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1
  done
fi
# (A process of another PID namespace reads as 0 there: never `kill 0`, our own group.)
for f in $(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null); do
  for p in $(cat "$f" 2>/dev/null); do [ "$p" -gt 1 ] && kill -9 "$p" 2>/dev/null; done
done
# Everything is about to be deleted: no graceful shutdown (the API server waits a minute).
for u in $UNITS; do
  systemctl kill --quiet --signal=SIGKILL "$u" 2>/dev/null
  systemctl disable --now --quiet "$u" 2>/dev/null
done
# (The kernel's name of containerd-shim-runc-v2 is its first 15 characters.)
pkill -KILL -x containerd-shim 2>/dev/null
for m in $(awk '$2 ~ "^/(var/lib/kubelet/|run/containerd/|var/lib/containerd/|run/netns/cni-)" {print $2}' /proc/mounts | sort -r); do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
# The host's own files that Strata replaced, put back.
eval "set -- $RESTORE"
for p in "$@"; do
  if [ -e "$p.strata-orig" ]; then mv -f "$p.strata-orig" "$p"; fi
done
# etcd data apply or restore set aside (copies of the cluster's data, Secrets included).
rm -rf /var/lib/etcd.before-restore-* /var/lib/etcd.stale-*
# Files and directories, then their parents that are left empty, inside the directories
# Strata creates (a system directory such as /etc/sysctl.d stays, even empty).
eval "set -- $PATHS"
for p in "$@"; do
  [ -e "$p" ] || [ -L "$p" ] || continue
  rm -rf "$p"
  d=$(dirname "$p")
  while :; do
    inside=no
    for top in $PRUNE; do case "$d/" in "$top"/*) inside=yes ;; esac; done
    [ $inside = yes ] || break
    rmdir "$d" 2>/dev/null || break
    d=$(dirname "$d")
  done
done
for d in /etc/systemd/system/*.wants; do rmdir "$d" 2>/dev/null; done
# Network links: the overlay's device and the pods' bridge.
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
  eval "case \"\$l\" in $LINKS) ip link del \"\$l\" 2>/dev/null ;; esac"
done
# iptables chains of kubelet, kube-proxy, the CNI plugins and Strata, and every rule that
# jumps to them; everything else as it was.
for ipt in iptables ip6tables; do
  command -v "$ipt-save" >/dev/null 2>&1 || continue
  "$ipt-save" 2>/dev/null | awk -v re="$CHAINS" '
    /^:/ { if (substr($1, 2) ~ re) next }
    /^-A/ {
      if ($2 ~ re) next
      for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && $(i + 1) ~ re) next
    }
    { print }' | "$ipt-restore" 2>/dev/null
done
systemctl daemon-reload
systemctl reset-failed 2>/dev/null
echo reset
"#;

fn confirmed(cs: &ClusterState, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to reset the cluster without confirmation; pass --yes");
    }
    let names: Vec<&str> = cs
        .cluster
        .spec
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    Ok(dialoguer::Confirm::new()
        .with_prompt(format!(
            "Remove Kubernetes, etcd and all their data from {} (cluster {})?",
            names.join(", "),
            cs.cluster.name()
        ))
        .default(false)
        .interact()?)
}

pub fn run(args: &StateArgs, yes: bool) -> Result<ExitCode> {
    let cs = load(args)?;
    if !confirmed(&cs, yes)? {
        return Ok(ExitCode::SUCCESS);
    }
    let state_file = cs.state.root.join(strata_manifests::plan::STATE_FILE);
    let mut state = AppliedState::load(&state_file)?;
    let files: Vec<HostFiles> = cs
        .cluster
        .spec
        .hosts
        .iter()
        .map(|h| HostFiles::of(state.hosts.get(h.name.as_str())))
        .collect();
    let reporter = Reporter::plain();
    crate::runtime()?.block_on(async {
        let results = crate::hosts::connect(&reporter, &cs, &mut state, false).await?;
        let mut errors = Vec::new();
        // The etcd hosts not reset yet: once none is left, the etcd cluster is gone.
        let mut etcd_left: Vec<&str> = cs
            .cluster
            .spec
            .hosts
            .iter()
            .filter(|h| catalog::runs(&cs.cluster, h, Component::Etcd))
            .map(|h| h.name.as_str())
            .collect();
        for (r, files) in results.into_iter().zip(&files) {
            let h = match r {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    continue;
                }
            };
            match h.conn.exec(&script(files)).await {
                Ok(out) if out.success() => {
                    outln!("[{}] reset", h.name());
                    state.hosts.remove(h.name());
                    state.pending_restarts.remove(h.name());
                    state.applied_hosts.remove(h.name());
                    etcd_left.retain(|n| *n != h.name());
                }
                Ok(out) => errors.push(format!(
                    "host {}: reset failed (exit {}):\n{}",
                    h.name(),
                    out.status,
                    out.tail()
                )),
                Err(e) => errors.push(format!("host {}: reset failed: {e}", h.name())),
            }
            h.conn.close().await;
        }
        if errors.is_empty() {
            state.objects.clear();
        }
        if etcd_left.is_empty() {
            // Every etcd member's data is gone: the next apply forms a new cluster.
            state.etcd_cluster.clear();
            state.restoring.clear();
        }
        state.save(&state_file)?;
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> HostFiles {
        HostFiles {
            created: ["/etc/x y".to_string()].into(),
            preexisting: ["/etc/containerd/config.toml".to_string()].into(),
        }
    }

    /// The words of one of the script's lists, as the shell reads them.
    fn list(script: &str, name: &str) -> Vec<String> {
        let line = script
            .lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .expect("list");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("{line}\neval \"set -- ${name}\"; printf '%s\\n' \"$@\""),
            ])
            .output()
            .expect("sh");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The script names every unit, run-time path, link and chain of the catalogue.
    #[test]
    fn the_script_covers_the_whole_catalogue() {
        let s = script(&files());
        for spec in CATALOG {
            for u in spec.units {
                assert!(s.contains(u.name), "{}", u.name);
            }
            for p in spec.run_paths {
                assert!(s.contains(p.trim_end_matches('*')), "{p}");
            }
            for l in spec.links {
                assert!(s.contains(l), "{l}");
            }
            for c in spec.chains {
                assert!(s.contains(c), "{c}");
            }
        }
        let paths = list(&s, "PATHS");
        assert!(paths.contains(&"/etc/x y".to_string()), "{paths:?}");
        assert!(paths.contains(&"/etc/systemd/system/kubelet.service".to_string()));
        assert!(paths.contains(&"/opt/strata".to_string()));
        // The host's own file is put back, never deleted.
        assert!(!paths.contains(&"/etc/containerd/config.toml".to_string()));
        assert_eq!(list(&s, "RESTORE"), ["/etc/containerd/config.toml"]);
    }

    /// The script is valid shell (dash, as on Debian hosts).
    #[test]
    fn the_script_parses() {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script(&files())])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
