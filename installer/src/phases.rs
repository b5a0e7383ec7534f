//! The phases of `strata apply`, in order. Each is a value the engine runs; which units,
//! binaries, ports and restarts each host gets comes from the component catalogue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use futures::future::{BoxFuture, FutureExt, join_all};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Secret, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use strata_manifests::catalog::{self, Component, Spec, StartPhase};
use strata_manifests::images::StrataImage;
use strata_manifests::plan::{
    Action, ActionKind, AppliedFile, CLUSTER, PhaseName, changed_components, file_actions,
    is_kept_when_unrendered, leaves_with_its_host, original_of,
};
use strata_manifests::{Host, addons, pod_security};
use strata_platforms::ssh::{FileUpload, RemoteFile, quote};

use crate::apply::Apply;
use crate::assets::{Assets, IMAGE_DIR};
use crate::engine::Phase;
use crate::hosts::{HostConn, all, fail, retry, retry_every};

/// Every phase of an apply, in order.
pub fn sequence<'a, 'r: 'a>() -> Vec<&'a dyn Phase<Apply<'r>>> {
    vec![
        &Connect,
        &Facts,
        &Preflight,
        &Upload_,
        &Etcd,
        &ControlPlane,
        &Runtime,
        &Addons,
        &Nodes,
        &PodNetwork,
        &WaitReady,
        &RemoveHosts,
        &Kubeconfig,
    ]
}

/// What `strata apply --phase X` runs before X: hosts reached and their facts known.
pub const PREREQUISITES: &[PhaseName] = &[PhaseName::Connect, PhaseName::Facts];

macro_rules! phase {
    ($ty:ident, $name:expr, $run:ident) => {
        impl<'r> Phase<Apply<'r>> for $ty {
            fn name(&self) -> PhaseName {
                $name
            }
            fn run<'a>(&'a self, cx: &'a mut Apply<'r>) -> BoxFuture<'a, Result<()>> {
                $run(cx).boxed()
            }
        }
    };
}

struct Connect;
struct Facts;
struct Preflight;
struct Upload_;
struct Etcd;
struct ControlPlane;
struct Runtime;
struct Nodes;
struct Addons;
struct PodNetwork;
struct WaitReady;
struct RemoveHosts;
struct Kubeconfig;

phase!(Connect, PhaseName::Connect, connect);
phase!(Facts, PhaseName::Facts, facts);
phase!(Preflight, PhaseName::Preflight, preflight);
phase!(Upload_, PhaseName::Upload, upload);
phase!(Etcd, PhaseName::Etcd, etcd);
phase!(ControlPlane, PhaseName::ControlPlane, control_plane);
phase!(Runtime, PhaseName::Runtime, runtime);
phase!(Nodes, PhaseName::Nodes, nodes);
phase!(Addons, PhaseName::Addons, addons);
phase!(PodNetwork, PhaseName::PodNetwork, pod_network);
phase!(WaitReady, PhaseName::WaitReady, wait_ready);
phase!(RemoveHosts, PhaseName::RemoveHosts, remove_hosts);
phase!(Kubeconfig, PhaseName::Kubeconfig, kubeconfig);

/// Hosts taken out of the Cluster file leave the cluster (see [`crate::departures`]).
async fn remove_hosts(cx: &mut Apply<'_>) -> Result<()> {
    crate::departures::remove_hosts(cx).await
}

/// Host keys verified against their pins (or trusted at first contact); new pins saved.
async fn connect(cx: &mut Apply<'_>) -> Result<()> {
    let results =
        crate::hosts::connect(cx.reporter, &cx.cs, &mut cx.state, cx.accept_new_host_keys).await;
    cx.save_state()?;
    let (hosts, errors) = crate::hosts::successes_and_failures(results?);
    for h in &hosts {
        cx.reporter.step(
            PhaseName::Connect,
            h.name(),
            format!("connected, host key {}", h.conn.host_key()),
        );
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    cx.hosts = hosts;
    Ok(())
}

/// One script per host tells what it is (see [`crate::facts`]).
async fn facts(cx: &mut Apply<'_>) -> Result<()> {
    let c = cx.cluster();
    let gathered = join_all(cx.hosts.iter().map(|h| async move {
        let script = crate::facts::script(&catalog::ports(c, &h.host));
        let out = h.sh(PhaseName::Facts, &script).await?;
        Ok::<_, anyhow::Error>((h.name().to_owned(), crate::facts::parse(&out)))
    }))
    .await;
    let mut errors = Vec::new();
    for r in gathered {
        let (name, f) = match r {
            Ok(x) => x,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        cx.reporter.step(
            PhaseName::Facts,
            &name,
            format!(
                "{} kernel {}, cgroup {}, MTU {}",
                f.arch, f.kernel, f.cgroup, f.mtu
            ),
        );
        cx.facts.insert(name, f);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// Every host's facts judged against what its components need; every problem of every
/// host at once.
async fn preflight(cx: &mut Apply<'_>) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut errors = Vec::new();
    for h in &cx.hosts {
        let Some(f) = cx.facts.get(h.name()) else {
            continue;
        };
        let mut problems = crate::facts::problems(cx.cluster(), &h.host, f, now);
        // Its unit would be stopped by the upload, before any quorum check.
        let was_member = cx
            .state
            .hosts
            .get(h.name())
            .is_some_and(|files| files.contains_key("/etc/systemd/system/etcd.service"));
        if was_member && !catalog::runs(cx.cluster(), &h.host, Component::Etcd) {
            problems.push(
                "the etcd role cannot be taken from a host that stays in the cluster: take the \
                 host out of the Cluster file and apply (its member is removed, the quorum \
                 checked), then add it back with its new roles"
                    .into(),
            );
        }
        if problems.is_empty() {
            cx.reporter.step(PhaseName::Preflight, h.name(), "ok");
        } else {
            errors.push(format!(
                "{:#}",
                fail(PhaseName::Preflight, h.name(), problems.join("; "))
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// Binaries, image archives and rendered files, each only when the host lacks it (one probe
/// per host); files Strata wrote before and renders no more are removed, units stopped first.
/// The assets go through the fan-out (see [`crate::fanout`]): this computer sends each file
/// once, hosts pass it on. The components whose files changed are recorded as pending
/// restarts in the state, which the phases that start units consume: a run stopped in
/// between restarts them next time.
async fn upload(cx: &mut Apply<'_>) -> Result<()> {
    let needs_containerd_2 = strata_manifests::versions::uses(
        strata_manifests::versions::Item::ContainerdV2Required,
        cx.cluster().spec.kubernetes.version.minor(),
    );
    let probed = join_all(cx.hosts.iter().map(|h| probe_host(cx, h))).await;
    let (found, mut errors) = crate::hosts::successes_and_failures(probed);
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    let (needs, has) = asset_needs(cx, &found);
    let fleet = crate::fanout::Fleet {
        reporter: cx.reporter,
        hosts: &cx.hosts,
        assets: &cx.assets,
    };
    let fanned = crate::fanout::run(&fleet, &needs, &has).await?;
    let results = join_all(
        cx.hosts
            .iter()
            .zip(&found)
            .zip(&fanned.written)
            .map(|((h, p), fetched)| upload_host(cx, h, p, fetched, needs_containerd_2)),
    )
    .await;
    let mut deferred = Vec::new();
    for (h, r) in cx.hosts.iter().zip(results) {
        match r {
            Ok(Uploaded {
                changed,
                adopted,
                stamps,
                removals,
            }) => {
                let name = h.name().to_owned();
                let on_host: BTreeSet<Component> = catalog::on_host(&cx.cs.cluster, &h.host)
                    .map(|s| s.component)
                    .collect();
                let pending = cx.state.pending_restarts.entry(name.clone()).or_default();
                pending.extend(changed);
                pending.retain(|c| on_host.contains(c));
                if pending.is_empty() {
                    cx.state.pending_restarts.remove(&name);
                }
                let mut files = cx.want.hosts.get(&name).cloned().unwrap_or_default();
                let before = cx.state.hosts.get(&name);
                for (path, f) in &mut files {
                    f.preexisting = adopted.contains(path)
                        || before
                            .and_then(|b| b.get(path))
                            .is_some_and(|b| b.preexisting);
                    f.stamp = stamps.get(path).cloned();
                }
                // Files whose removal waits stay recorded until they are gone.
                for (path, _) in &removals {
                    if let Some(f) = before.and_then(|b| b.get(path)) {
                        files.insert(path.clone(), f.clone());
                    }
                }
                if !removals.is_empty() {
                    deferred.push((h, removals));
                }
                cx.state.hosts.insert(name, files);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    cx.save_state()?;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if let Some(seed) = &cx.seed {
        // A restore: its snapshot checked on the etcd hosts before any unit stops.
        crate::membership::prepare_restore(cx, seed).await?;
        for (h, removals) in &deferred {
            let removed = remove_unrendered(cx, h, removals).await;
            if removed.is_ok()
                && let Some(files) = cx.state.hosts.get_mut(h.name())
            {
                for (path, _) in removals {
                    files.remove(path);
                }
            }
            // Saved host by host: what is gone is not planned again.
            if let Err(e) = removed.and_then(|()| cx.save_state()) {
                crate::membership::discard_snapshot(cx).await;
                return Err(e);
            }
        }
        cx.seed_placed = true;
    }
    Ok(())
}

/// Removes files Strata wrote last time and renders no more (a role or addon removed, a file
/// renamed by a newer release), their units stopped first: `(path, preexisting)`.
async fn remove_unrendered(
    cx: &Apply<'_>,
    h: &HostConn,
    removals: &[(String, bool)],
) -> Result<()> {
    let phase = PhaseName::Upload;
    for (path, preexisting) in removals {
        h.sh(phase, &remove_command(path, *preexisting)).await?;
        cx.reporter.step(phase, h.name(), format!("removed {path}"));
        cx.reporter
            .action(phase, action(ActionKind::Remove, h.name(), path));
    }
    Ok(())
}

/// What one host has, before anything is written.
struct Probed {
    /// The files found at the paths it should have.
    have: BTreeMap<String, RemoteFile>,
    /// The paths where the host had a file of its own before Strata first wrote there (kept
    /// as `<path>.strata-orig` when the bytes differ).
    adopted: BTreeSet<String>,
}

/// Whether the file found (if any) differs from what should be there.
fn needs_write(want: &AppliedFile, there: Option<&RemoteFile>) -> bool {
    !there.is_some_and(|f| f.sha256 == want.sha256 && f.mode == want.mode)
}

/// One probe of a host's files (only the files whose stamp moved since the last apply are
/// read); a file of the host's own where Strata is about to write is kept first.
async fn probe_host(cx: &Apply<'_>, h: &HostConn) -> Result<Probed> {
    let phase = PhaseName::Upload;
    let name = h.name();
    let empty = Default::default();
    let want = cx.want.hosts.get(name).unwrap_or(&empty);
    let had = cx.state.hosts.get(name).unwrap_or(&empty);
    let paths: Vec<&str> = want.keys().map(String::as_str).collect();
    let known: BTreeMap<&str, (&str, &str)> = had
        .iter()
        .filter_map(|(p, f)| Some((p.as_str(), (f.stamp.as_deref()?, f.sha256.as_str()))))
        .collect();
    let have = h
        .conn
        .probe_known(&paths, &known)
        .await
        .map_err(|e| fail(phase, name, e))?;
    let adopted: BTreeSet<String> = want
        .keys()
        .filter(|p| !had.contains_key(*p) && have.contains_key(*p))
        .cloned()
        .collect();
    for path in &adopted {
        if !needs_write(&want[path], have.get(path)) {
            continue;
        }
        let orig = quote(&original_of(path));
        h.sh(
            phase,
            &format!("[ -e {orig} ] || cp -a {} {orig}", quote(path)),
        )
        .await?;
        cx.reporter.step(
            phase,
            name,
            format!("kept the host's own {path} as {}", original_of(path)),
        );
    }
    Ok(Probed { have, adopted })
}

/// Per host (in `cx.hosts` order), the asset paths it must be written and those it holds
/// with the right content (which it can pass on).
fn asset_needs(cx: &Apply<'_>, found: &[Probed]) -> (Vec<BTreeSet<String>>, Vec<BTreeSet<String>>) {
    let empty = Default::default();
    cx.hosts
        .iter()
        .zip(found)
        .map(|(h, p)| {
            let want = cx.want.hosts.get(h.name()).unwrap_or(&empty);
            let tree = cx.rendered.hosts.iter().find(|t| t.host == h.name());
            let assets = want
                .iter()
                .filter(|(path, _)| !tree.is_some_and(|t| t.files.contains_key(*path)));
            let mut needs = BTreeSet::new();
            let mut has = BTreeSet::new();
            for (path, w) in assets {
                let there = p.have.get(path);
                if needs_write(w, there) {
                    needs.insert(path.clone());
                }
                if there.is_some_and(|f| f.sha256 == w.sha256) {
                    has.insert(path.clone());
                }
            }
            (needs, has)
        })
        .unzip()
}

/// What one host's upload did.
struct Uploaded {
    /// The components whose files changed.
    changed: BTreeSet<Component>,
    /// See [`Probed::adopted`].
    adopted: BTreeSet<String>,
    /// Each file's stamp now that it holds what was applied (see `RemoteFile::stamp`).
    stamps: BTreeMap<String, String>,
    /// Files to remove once a restore's snapshot is checked (`(path, preexisting)`); an
    /// apply that restores nothing removes them at once.
    removals: Vec<(String, bool)>,
}

/// One host's upload once the assets are in place (`fetched`: the asset paths the fan-out
/// wrote). The actions are those `strata plan` lists (compared with what was applied), plus
/// rewrites of files that changed on the host behind Strata's back.
async fn upload_host(
    cx: &Apply<'_>,
    h: &HostConn,
    probed: &Probed,
    fetched: &BTreeSet<String>,
    needs_containerd_2: bool,
) -> Result<Uploaded> {
    let phase = PhaseName::Upload;
    let name = h.name();
    let empty = Default::default();
    let want = cx.want.hosts.get(name).unwrap_or(&empty);
    let had = cx.state.hosts.get(name).unwrap_or(&empty);
    let tree = cx.rendered.hosts.iter().find(|t| t.host == name);
    let have = &probed.have;
    let mut written_paths: Vec<&str> = Vec::new();
    let mut actions = file_actions(name, want, had);
    let mut written = 0;
    // The rendered files, small, in one command; assets the fan-out did not write one by one.
    let mut rendered = Vec::new();
    for (path, w) in want {
        let there = have.get(path);
        if !needs_write(w, there) {
            continue;
        }
        if !fetched.contains(path) {
            match tree.and_then(|t| t.files.get(path)) {
                Some(f) => rendered.push(FileUpload {
                    path,
                    content: &f.content,
                    mode: w.mode,
                }),
                None => {
                    let content = cx.assets.read(path).map_err(|e| fail(phase, name, e))?;
                    h.conn
                        .upload_known(path, &content, w.mode, "root:root", there)
                        .await
                        .map_err(|e| fail(phase, name, e))?;
                }
            }
        }
        written += 1;
        written_paths.push(path);
        if !actions.iter().any(|a| a.path == *path) {
            // Applied as it is now, yet different on the host: changed behind Strata's back.
            cx.reporter.step(
                phase,
                name,
                format!("{path} differed from what was applied"),
            );
            actions.push(action(ActionKind::Update, name, path));
        }
    }
    h.conn
        .upload_all(&rendered, "root:root")
        .await
        .map_err(|e| fail(phase, name, e))?;
    let mut removals: Vec<(String, bool)> = actions
        .iter()
        .filter(|a| a.kind == ActionKind::Remove)
        .map(|a| {
            let preexisting = had.get(&a.path).is_some_and(|f| f.preexisting);
            (a.path.clone(), preexisting)
        })
        .collect();
    if cx.seed.is_none() {
        remove_unrendered(cx, h, &removals).await?;
        removals.clear();
    }
    if needs_containerd_2 {
        check_containerd_2(h).await?;
    }
    cx.reporter
        .step(phase, name, format!("{written} file(s) written"));
    let changed = changed_components(&actions, want, had);
    // Removals are reported as they are done (see `remove_unrendered`).
    for a in actions.into_iter().filter(|a| a.kind != ActionKind::Remove) {
        cx.reporter.action(phase, a);
    }
    // Stamps of the files as they are now: those found right, and those just written.
    let mut stamps: BTreeMap<String, String> = have
        .iter()
        .filter(|(p, f)| want.get(*p).is_some_and(|w| !needs_write(w, Some(f))))
        .map(|(p, f)| (p.clone(), f.stamp.clone()))
        .collect();
    let fresh = h
        .conn
        .stamps(&written_paths)
        .await
        .map_err(|e| fail(phase, name, e))?;
    stamps.extend(fresh.into_iter().map(|(p, f)| (p, f.stamp)));
    Ok(Uploaded {
        changed,
        adopted: probed.adopted.clone(),
        stamps,
        removals,
    })
}

fn action(kind: ActionKind, host: &str, path: &str) -> Action {
    Action {
        kind,
        host: host.into(),
        path: path.into(),
    }
}

/// The shell command that removes a file Strata no longer renders; a unit is stopped and
/// disabled first. A path where the host had a file of its own gets that file back.
fn remove_command(path: &str, preexisting: bool) -> String {
    let quoted = quote(path);
    if preexisting {
        let orig = quote(&original_of(path));
        return format!("if [ -e {orig} ]; then mv -f {orig} {quoted}; fi");
    }
    match path.strip_prefix("/etc/systemd/system/").filter(|u| {
        [".service", ".path", ".timer"]
            .iter()
            .any(|k| u.ends_with(k))
            && !u.contains('/')
    }) {
        Some(unit) => format!(
            "systemctl disable --now {} >/dev/null 2>&1; rm -f {quoted} && systemctl daemon-reload",
            quote(unit)
        ),
        None => format!("rm -f {quoted}"),
    }
}

/// From Kubernetes 1.36 the kubelet needs containerd 2; the asset's containerd says which
/// it is once uploaded.
async fn check_containerd_2(h: &HostConn) -> Result<()> {
    let out = h
        .sh(
            PhaseName::Upload,
            &format!("{}/containerd --version", catalog::BIN_DIR),
        )
        .await?;
    let version = out.split_whitespace().nth(2).unwrap_or_default();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 2 {
        return Err(fail(
            PhaseName::Upload,
            h.name(),
            format!(
                "the assets' containerd is {version:?}; Kubernetes 1.36 and later need containerd 2 \
                 (put containerd 2.x in spec.assets.source)"
            ),
        ));
    }
    Ok(())
}

/// Enables and starts the units of `specs` on a host (without waiting), restarting those
/// of components with a pending restart (their files changed). systemd reads the unit files
/// again only when it says a unit changed on disk or was not found (a reload costs about as
/// much as everything else here; `enable` alone would do one too).
pub(crate) async fn start_units(
    cx: &Apply<'_>,
    h: &HostConn,
    phase: PhaseName,
    specs: &[&'static Spec],
) -> Result<()> {
    start_units_then(cx, h, phase, specs, Restart::Queued).await
}

/// How [`start_units_then`] restarts the units of components with a pending restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Queued (`--no-block`): the apply goes on while they restart.
    Queued,
    /// Waited for: systemd's restart job done (a notify unit ready), the unit active.
    Waited,
}

/// [`start_units`], the restarts queued or waited for.
async fn start_units_then(
    cx: &Apply<'_>,
    h: &HostConn,
    phase: PhaseName,
    specs: &[&'static Spec],
    how: Restart,
) -> Result<()> {
    let units: Vec<&str> = specs.iter().flat_map(|s| s.started_units()).collect();
    if units.is_empty() {
        return Ok(());
    }
    let pending = cx
        .state
        .pending_restarts
        .get(h.name())
        .cloned()
        .unwrap_or_default();
    let restart = catalog::restarts(&pending, specs.iter().copied());
    let list = units.join(" ");
    // Every unit of the components, also those a path or timer unit starts.
    let every: Vec<&str> = specs
        .iter()
        .flat_map(|s| s.units.iter().map(|u| u.name))
        .collect();
    // systemd reads the unit files again when a unit changed on disk (NeedDaemonReload), is
    // unknown, or is loaded from another file than Strata's (a package's unit in /lib that
    // Strata's in /etc now overrides: systemd does not notice that one by itself). Then
    // the units' failed state and start counters are reset: apply starts them on purpose,
    // and systemd's start limit (5 starts in 10 s, there to stop crash loops) refused a
    // path unit's restart in an e2e run ("Job failed"; six restarts in a row do it).
    // systemd resets each unit it holds and says "not loaded" for one it does not (it has
    // nothing to reset: a unit enabled without a reload, say): that is not a failure.
    let mut cmd = format!(
        "systemctl enable --quiet --no-reload {list} && \
         if systemctl show -p Id -p LoadState -p NeedDaemonReload -p FragmentPath {} | awk -F= '\
         function check() {{ if (id != \"\" && path != \"/etc/systemd/system/\" id) stale = 1; id = \"\"; path = \"\" }} \
         /^$/ {{ check() }} $1 == \"Id\" {{ id = $2 }} $1 == \"FragmentPath\" {{ path = $2 }} \
         $0 == \"LoadState=not-found\" || $0 == \"NeedDaemonReload=yes\" {{ stale = 1 }} \
         END {{ check(); exit !stale }}'; then systemctl daemon-reload; fi && \
         {{ systemctl reset-failed {list} 2>/dev/null || true; }}",
        every.join(" ")
    );
    if !restart.is_empty() {
        let restart = restart.join(" ");
        cmd.push_str(&match how {
            Restart::Queued => format!(" && systemctl restart --no-block {restart}"),
            // `is-active` with several units says yes when any one is active: each alone;
            // a unit that is not says why (systemd's own error names no unit).
            Restart::Waited => format!(
                " && {{ systemctl restart {restart}; r=$?; for u in {restart}; do \
                 systemctl is-active --quiet \"$u\" || {{ echo \"$u is $(systemctl is-active \"$u\") \
                 after its restart:\" >&2; systemctl status --no-pager --lines=10 \"$u\" >&2; r=1; }}; \
                 done; [ $r -eq 0 ]; }}"
            ),
        });
    }
    cmd.push_str(&format!(" && systemctl start --no-block {list}"));
    h.sh(phase, &cmd).await?;
    for u in &restart {
        cx.reporter
            .action(phase, action(ActionKind::Restart, h.name(), u));
    }
    let what = if restart.is_empty() {
        format!("started {}", units.join(", "))
    } else {
        format!(
            "started {} (restarted {})",
            units.join(", "),
            restart.join(", ")
        )
    };
    cx.reporter.step(phase, h.name(), what);
    Ok(())
}

/// The pending restarts of `phase`'s components are done on every host: recorded.
fn restarted(cx: &mut Apply<'_>, phase: StartPhase) -> Result<()> {
    let hosts: Vec<Host> = cx.hosts.iter().map(|h| h.host.clone()).collect();
    for h in &hosts {
        restarted_on(cx, h, phase);
    }
    cx.save_state()
}

/// The pending restarts of `phase`'s components on host `h` are done (not saved yet).
fn restarted_on(cx: &mut Apply<'_>, h: &Host, phase: StartPhase) {
    let started: BTreeSet<Component> = cx
        .components(h, phase)
        .iter()
        .map(|s| s.component)
        .collect();
    if let Some(p) = cx.state.pending_restarts.get_mut(h.name.as_str()) {
        p.retain(|c| !started.contains(c));
        if p.is_empty() {
            cx.state.pending_restarts.remove(h.name.as_str());
        }
    }
}

/// etcd: a new cluster is formed by every member at once; a running one keeps running (its
/// members restarted one at a time) and its membership follows the file a member at a
/// time (see [`crate::etcd`]).
async fn etcd(cx: &mut Apply<'_>) -> Result<()> {
    crate::membership::run(cx).await?;
    restarted(cx, StartPhase::Etcd)
}

/// The API server and controller manager on every control-plane host (the scheduler once the
/// API answers: [`StartPhase::Api`]): started, not waited for (the first phase that needs the API waits, see [`Apply::client`]), except
/// where running API servers restart one at a time.
async fn control_plane(cx: &mut Apply<'_>) -> Result<()> {
    rolling_control_plane(cx).await?;
    restarted(cx, StartPhase::ControlPlane)?;
    if cx.only == Some(PhaseName::ControlPlane) {
        // Run alone (`--phase control-plane`): done when the API answers, the scheduler
        // started (the addons phase starts it otherwise).
        cx.client(PhaseName::ControlPlane).await?;
        start_api_units(cx, PhaseName::ControlPlane).await?;
        restarted(cx, StartPhase::Api)?;
    }
    Ok(())
}

/// Waits until the API server `client` talks to answers `/readyz` with `ok`.
pub(crate) async fn wait_readyz(client: &kube::Client, what: &str, limit: Duration) -> Result<()> {
    retry(what, limit, || {
        let c = client.clone();
        async move {
            let text = c
                .request_text(http::Request::get("/readyz").body(Vec::new())?)
                .await?;
            if text.trim() == "ok" {
                Ok(())
            } else {
                bail!("{text}")
            }
        }
    })
    .await
}

/// Starts the control plane. An API server already running whose files changed is
/// restarted one host at a time, each back (its /readyz) before the next goes down, so
/// that a highly available control plane keeps answering through a change; API servers
/// that were not running start all at once (a first install).
async fn rolling_control_plane(cx: &Apply<'_>) -> Result<()> {
    let phase = PhaseName::ControlPlane;
    let pending = |h: &HostConn| {
        let on = cx.components(&h.host, StartPhase::ControlPlane);
        let p = cx.state.pending_restarts.get(h.name());
        !catalog::restarts(&p.cloned().unwrap_or_default(), on.iter().copied()).is_empty()
    };
    let control_plane: Vec<&HostConn> = cx
        .hosts
        .iter()
        .filter(|h| catalog::runs(cx.cluster(), &h.host, Component::KubeApiserver))
        .collect();
    // Which API servers run now.
    let probed = join_all(control_plane.iter().map(|h| {
        h.sh(
            phase,
            "systemctl is-active --quiet kube-apiserver.service && echo running || echo stopped",
        )
    }))
    .await;
    let mut running = BTreeSet::new();
    for (h, r) in control_plane.iter().zip(probed) {
        if r?.contains("running") {
            running.insert(h.name().to_owned());
        }
    }
    let rolling: Vec<&HostConn> = control_plane
        .iter()
        .filter(|h| running.contains(h.name()) && pending(h))
        .copied()
        .collect();
    if control_plane.len() < 2 || rolling.is_empty() {
        for h in &cx.hosts {
            start_units(
                cx,
                h,
                phase,
                &cx.components(&h.host, StartPhase::ControlPlane),
            )
            .await?;
        }
        return Ok(());
    }
    // New API servers first (more of them answer while the others restart).
    for h in cx
        .hosts
        .iter()
        .filter(|h| !rolling.iter().any(|r| r.name() == h.name()))
    {
        start_units(
            cx,
            h,
            phase,
            &cx.components(&h.host, StartPhase::ControlPlane),
        )
        .await?;
    }
    for h in rolling {
        start_units(
            cx,
            h,
            phase,
            &cx.components(&h.host, StartPhase::ControlPlane),
        )
        .await?;
        let client = crate::hosts::client_at(&cx.cs, &api_server_of(h)).await?;
        // The restart is queued (--no-block): wait until the old process is gone, then
        // until the new one answers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        wait_readyz(
            &client,
            &format!(
                "phase {phase}, host {}: API server back (/readyz)",
                h.name()
            ),
            Duration::from_secs(180),
        )
        .await?;
        cx.reporter.step(
            phase,
            h.name(),
            "API server restarted and ready (one host at a time)",
        );
    }
    Ok(())
}

/// `host:port` of a control-plane host's API server.
fn api_server_of(h: &HostConn) -> String {
    match h.host.address.as_ref() {
        Some(a) => match a.ip() {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", catalog::API_PORT),
            _ => format!("{}:{}", a.as_str(), catalog::API_PORT),
        },
        None => format!("{}:{}", h.name(), catalog::API_PORT),
    }
}

/// Every node's kernel settings, containerd, kube-proxy and other node units but the kubelet,
/// and the asset images imported: nothing here needs the API, so it overlaps the start of
/// the API servers.
async fn runtime(cx: &mut Apply<'_>) -> Result<()> {
    let phase = PhaseName::Runtime;
    let imports = import_script(&cx.assets, &StrataImage::Pause.built(cx.cluster()));
    let imports = imports.as_str();
    let rolling = restarting_hosts(cx, phase, StartPhase::Runtime).await?;
    let started = &*cx;
    let fresh = |h: &HostConn| !rolling.contains(h.name());
    all(&started.hosts, |h| async move {
        h.sh(phase, "sysctl --quiet --system >/dev/null 2>&1 || true")
            .await?;
        if fresh(h) {
            start_units(
                started,
                h,
                phase,
                &started.components(&h.host, StartPhase::Runtime),
            )
            .await?;
            import_images(started, h, imports).await?;
        }
        Ok(())
    })
    .await?;
    roll(cx, phase, StartPhase::Runtime, &rolling).await?;
    // Into the restarted containerd (an upgrade's new images, say).
    let started = &*cx;
    all(&started.hosts, |h| async move {
        if fresh(h) {
            return Ok(());
        }
        import_images(started, h, imports).await
    })
    .await?;
    restarted(cx, StartPhase::Runtime)
}

/// The runtime phase's image imports on `h` (`imports`: [`import_script`]).
async fn import_images(cx: &Apply<'_>, h: &HostConn, imports: &str) -> Result<()> {
    let phase = PhaseName::Runtime;
    for line in h.sh(phase, imports).await?.lines() {
        cx.reporter.step(phase, h.name(), line);
    }
    Ok(())
}

/// The hosts where units of `start`'s components run and must restart (their files changed:
/// renewed certificates, an upgrade, a restore on the same machines). They restart one host
/// at a time ([`roll`]); units that do not run yet start on every host at once.
async fn restarting_hosts(
    cx: &Apply<'_>,
    phase: PhaseName,
    start: StartPhase,
) -> Result<BTreeSet<String>> {
    let probes = join_all(cx.hosts.iter().map(|h| async move {
        let pending = cx.state.pending_restarts.get(h.name());
        let restart = catalog::restarts(
            &pending.cloned().unwrap_or_default(),
            cx.components(&h.host, start),
        );
        if restart.is_empty() {
            return Ok(None);
        }
        // `is-active` with several units says yes when any one is active.
        let out = h
            .sh(
                phase,
                &format!(
                    "systemctl is-active --quiet {} && echo running || echo stopped",
                    restart.join(" ")
                ),
            )
            .await?;
        Ok::<_, anyhow::Error>(out.contains("running").then(|| h.name().to_owned()))
    }))
    .await;
    let mut rolling = BTreeSet::new();
    for p in probes {
        rolling.extend(p?);
    }
    Ok(rolling)
}

/// Where the kubelet answers its health check (its default `healthzPort`, on loopback).
const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// How long a restarted kubelet may take to answer its health check.
const KUBELET_HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// Restarts the units of `start`'s components on the hosts of `rolling` one host at a time,
/// in the Cluster file's order: each restart waited for (systemd's job done, the units
/// active, a kubelet answering its health check) before the next host's begins, so that a
/// change rolled out to every node never has them all restarting at once.
async fn roll(
    cx: &mut Apply<'_>,
    phase: PhaseName,
    start: StartPhase,
    rolling: &BTreeSet<String>,
) -> Result<()> {
    let order: Vec<usize> = (0..cx.hosts.len())
        .filter(|i| rolling.contains(cx.hosts[*i].name()))
        .collect();
    for i in order {
        roll_host(cx, &cx.hosts[i], phase, start).await?;
        // Recorded host by host: a run stopped half-way does not restart these again.
        let host = cx.hosts[i].host.clone();
        restarted_on(cx, &host, start);
        cx.save_state()?;
    }
    Ok(())
}

/// [`roll`] on one host.
async fn roll_host(
    cx: &Apply<'_>,
    h: &HostConn,
    phase: PhaseName,
    start: StartPhase,
) -> Result<()> {
    let specs = cx.components(&h.host, start);
    start_units_then(cx, h, phase, &specs, Restart::Waited).await?;
    let pending = cx.state.pending_restarts.get(h.name());
    let kubelet = specs.iter().any(|s| s.component == Component::Kubelet)
        && pending.is_some_and(|p| p.contains(&Component::Kubelet));
    if kubelet {
        let limit = KUBELET_HEALTHY_WITHIN.as_secs();
        h.sh(phase, &healthz_script(KUBELET_HEALTHZ_PORT, limit))
            .await
            .map_err(|e| {
                fail(
                    phase,
                    h.name(),
                    format!(
                        "the kubelet did not answer its health check within {limit} s of its \
                         restart (`journalctl -u kubelet` on the host says why): {e:#}"
                    ),
                )
            })?;
    }
    cx.reporter
        .step(phase, h.name(), "restarted and back (one host at a time)");
    Ok(())
}

/// Waits up to `limit` seconds for `/healthz` on loopback `port` to say `ok` (bash's
/// /dev/tcp: no HTTP client needed on the host).
fn healthz_script(port: u16, limit: u64) -> String {
    format!(
        "timeout {limit} bash -c 'until (exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3 && grep -q \"^ok\" <&3) 2>/dev/null; \
         do sleep 0.5; done'"
    )
}

/// Every node's Node and pod subnet and CNI configuration, then its kubelet (which finds
/// them, and the images, in place).
async fn nodes(cx: &mut Apply<'_>) -> Result<()> {
    let api: Api<Node> = Api::all(cx.client(PhaseName::Nodes).await?);
    pod_subnets(cx, &api).await?;
    let phase = PhaseName::Nodes;
    let rolling = restarting_hosts(cx, phase, StartPhase::Nodes).await?;
    let started = &*cx;
    let rolling = &rolling;
    all(&started.hosts, |h| async move {
        if rolling.contains(h.name()) {
            return Ok(());
        }
        start_units(
            started,
            h,
            phase,
            &started.components(&h.host, StartPhase::Nodes),
        )
        .await
    })
    .await?;
    roll(cx, phase, StartPhase::Nodes, rolling).await?;
    restarted(cx, StartPhase::Nodes)
}

/// Every host's Node and pod subnet before its kubelet starts: Strata creates the Nodes no
/// kubelet has registered yet (a kubelet takes over the Node of its name), each with a free
/// subnet of the pod CIDR (see [`strata_manifests::pod_subnets`]), and writes each host's
/// CNI configuration. The kubelet then finds the pod network configured at its first check
/// and reports Ready at once, instead of at its next runtime check (every 5 s) and status
/// update after the overlay agent has written the configuration; nor does a first install
/// wait for the controller manager's leader lease and IPAM start. The agent writes the same
/// file ([`strata_overlay::cni::conflist`] with [`strata_overlay::plan::overlay_mtu`] of the
/// node address's interface), so it finds it in place. A Node registered without a subnet
/// (by its kubelet, before Strata created it) gets one from the controller manager: waited
/// for.
async fn pod_subnets(cx: &Apply<'_>, api: &Api<Node>) -> Result<()> {
    let phase = PhaseName::Nodes;
    let minor = cx.cluster().spec.kubernetes.version.minor();
    let subnets = || async {
        let nodes = api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("phase {phase}: listing the nodes"))?;
        anyhow::Ok(
            nodes
                .items
                .into_iter()
                .filter_map(|n| Some((n.metadata.name?, n.spec.and_then(|s| s.pod_cidr))))
                .collect::<BTreeMap<String, Option<String>>>(),
        )
    };
    let mut known = subnets().await?;
    // A Node without a subnet (registered by its kubelet) gets one from the controller
    // manager, which could pick the subnet Strata is about to give: waited for first.
    let unset: BTreeSet<String> = known
        .iter()
        .filter(|(_, cidr)| cidr.is_none())
        .map(|(name, _)| name.clone())
        .collect();
    if !unset.is_empty() {
        wait_nodes(
            api,
            &unset,
            &format!(
                "phase {phase}: a podCIDR for the Nodes registered without one (kube-controller-manager allocates them)"
            ),
            has_pod_cidr,
        )
        .await?;
        known = subnets().await?;
    }
    let missing: Vec<&HostConn> = cx
        .hosts
        .iter()
        .filter(|h| !known.contains_key(h.name()))
        .collect();
    let pod = cx.cluster().spec.network.pod_cidr.net();
    let used: Vec<ipnet::IpNet> = known
        .values()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    let given =
        strata_manifests::pod_subnets::allocate(pod, &used, missing.len()).map_err(|e| {
            anyhow::anyhow!(
                "phase {phase}: {e}; remove Nodes that are gone (kubectl delete node NAME) or \
                 install the cluster with a larger spec.network.podCIDR"
            )
        })?;
    for (h, cidr) in missing.into_iter().zip(given) {
        let mut node = pod_security::registered_node(&h.host, minor);
        if let Some(f) = cx.facts.get(h.name())
            && let Some(room) = pod_security::kubelet_room(f.cpus, f.memory_kib)
        {
            node.status = Some(room);
        }
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(cidr.to_string());
        spec.pod_cidrs = Some(vec![cidr.to_string()]);
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {
                known.insert(h.name().to_owned(), Some(cidr.to_string()));
                cx.reporter
                    .step(phase, h.name(), "Node created ahead of its kubelet");
            }
            // Registered meanwhile by its kubelet: the controller manager gives its subnet.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("phase {phase}: creating node {}", h.name()));
            }
        }
    }
    if cx
        .hosts
        .iter()
        .any(|h| !known.get(h.name()).is_some_and(Option::is_some))
    {
        wait_nodes(
            api,
            &node_names(cx),
            &format!(
                "phase {phase}: every node has a podCIDR (kube-controller-manager allocates them)"
            ),
            has_pod_cidr,
        )
        .await?;
        known = subnets().await?;
    }
    if !Component::Overlay.enabled(cx.cluster()) {
        // The pod network is the user's: its plugin writes the CNI configuration.
        return Ok(());
    }
    write_cni_configurations(cx, &known).await
}

/// Each host's CNI configuration for its pod subnet (`known`: node name -> podCIDR), as the
/// overlay agent writes it; written when it differs.
async fn write_cni_configurations(
    cx: &Apply<'_>,
    known: &BTreeMap<String, Option<String>>,
) -> Result<()> {
    let phase = PhaseName::Nodes;
    all(&cx.hosts, |h| async move {
        let name = h.name();
        let cidr = known
            .get(name)
            .cloned()
            .flatten()
            .ok_or_else(|| fail(phase, name, "no podCIDR"))?;
        let underlay = h.host.address.as_ref().and_then(|a| a.ip());
        let mtu = strata_overlay::plan::overlay_mtu(
            cx.facts.get(name).map_or(1500, |f| f.mtu_at(underlay)),
        );
        let conf = strata_overlay::cni::conflist(&cidr, mtu);
        let path = format!(
            "{}/{}",
            strata_manifests::render::CNI_DIR,
            strata_overlay::cni::FILE
        );
        let there = h
            .sh(phase, &format!("cat {} 2>/dev/null || true", quote(&path)))
            .await?;
        if there.trim_end() != conf {
            h.conn
                .upload(&path, conf.as_bytes(), 0o644, "root:root")
                .await
                .map_err(|e| fail(phase, name, e))?;
        }
        cx.reporter
            .step(phase, name, format!("pods on {cidr}, MTU {mtu}"));
        Ok(())
    })
    .await
}

/// The shell script that imports the asset images into containerd's k8s.io namespace, each
/// only when containerd does not already hold that reference at that digest, and names the
/// sandbox image as the release's kubelet and containerd expect it (`sandbox`). Archives of
/// Strata's images the cluster no longer takes from the assets are removed from the host.
/// `ctr` runs as few times as it can (each run costs a process start): one listing before,
/// one import per missing image, one listing after imports to check them.
fn import_script(assets: &Assets, sandbox: &str) -> String {
    let mut s = format!(
        r#"set -eu
ctr="{bin}/ctr -n k8s.io"
i=0
until listed=$($ctr images ls 2>/dev/null); do
  i=$((i + 1)); [ $i -lt 600 ] || {{ echo "containerd does not answer on its socket" >&2; exit 1; }}
  sleep 0.1
done
refs() {{ printf '%s\n' "$listed" | awk 'NR > 1 {{ print $1 " " $3 }}'; }}
has() {{ refs | grep -qxF "$1 $2"; }}
imported=0
import() {{ # FILE REF DIGEST
  if ! has "$2" "$3"; then
    $ctr images import "$1" >/dev/null
    echo "imported $2"
    imported=1
  fi
}}
check() {{ # FILE REF DIGEST
  has "$2" "$3" || {{ echo "$1 did not import as $2@$3" >&2; exit 1; }}
}}
alias() {{ # REF DIGEST ALIAS
  if ! has "$3" "$2"; then
    $ctr images tag --force "$1" "$3" >/dev/null
    echo "tagged $1 as $3"
  fi
}}
"#,
        bin = catalog::BIN_DIR
    );
    let args = |a: &crate::assets::Asset, i: &crate::assets::Image| {
        format!(
            "{} {} {}",
            quote(&a.remote),
            quote(&i.reference),
            quote(&i.digest)
        )
    };
    for (a, i) in assets.images() {
        s.push_str(&format!("import {}\n", args(a, i)));
    }
    s.push_str("[ $imported = 0 ] || listed=$($ctr images ls)\n");
    for (a, i) in assets.images() {
        s.push_str(&format!("check {}\n", args(a, i)));
        if i.strata == Some(StrataImage::Pause) {
            s.push_str(&format!(
                "alias {} {} {}\n",
                quote(&i.reference),
                quote(&i.digest),
                quote(sandbox)
            ));
        }
    }
    for i in StrataImage::ALL {
        if !assets.images().any(|(_, img)| img.strata == Some(i)) {
            let archive = format!("{IMAGE_DIR}/{}", i.archive());
            s.push_str(&format!(
                "if [ -e '{archive}' ]; then rm -f '{archive}'; echo 'removed {archive} (not taken from the assets)'; fi\n"
            ));
        }
    }
    s
}

/// The cluster objects, with server-side apply; objects Strata applied before and renders no
/// more are deleted (CustomResourceDefinitions stay, with the resources users made).
async fn addons(cx: &mut Apply<'_>) -> Result<()> {
    let phase = PhaseName::Addons;
    let client = cx.client(phase).await?;
    let (started, applied) = tokio::join!(start_api_units(cx, phase), apply_objects(cx, &client));
    started?;
    applied?;
    restarted(cx, StartPhase::Api)?;
    for o in &cx.rendered.objects {
        let before = cx.state.objects.get(&o.api_path).map(|a| &a.sha256);
        if before != cx.want.objects.get(&o.api_path).map(|a| &a.sha256) {
            cx.reporter
                .action(phase, action(ActionKind::Apply, CLUSTER, &o.api_path));
        }
    }
    // A leaving host's own objects go after its drain (remove-hosts).
    let kept = |p: &str| is_kept_when_unrendered(p) || leaves_with_its_host(&cx.want, &cx.state, p);
    let gone: Vec<String> = cx
        .state
        .objects
        .keys()
        .filter(|p| !cx.want.objects.contains_key(*p) && !kept(p))
        .cloned()
        .collect();
    for path in gone {
        delete_object(&client, &path).await?;
        cx.reporter
            .action(phase, action(ActionKind::Delete, CLUSTER, &path));
    }
    // Kept CRDs stay recorded, so that turning their addon on again is not a change; a
    // leaving host's objects until they are deleted.
    let kept: Vec<(String, _)> = cx
        .state
        .objects
        .iter()
        .filter(|(p, _)| !cx.want.objects.contains_key(*p) && kept(p))
        .map(|(p, o)| (p.clone(), o.clone()))
        .collect();
    cx.state.objects = cx.want.objects.clone();
    cx.state.objects.extend(kept);
    cx.save_state()?;
    crate::restored::finish(cx, &client).await?;
    let key = cx.want.secrets_key.clone();
    if !key.is_empty() && key != cx.state.secrets_key {
        let n = reencrypt_secrets(&client).await?;
        cx.reporter
            .action(phase, action(ActionKind::Reencrypt, CLUSTER, &key));
        cx.reporter.step(
            phase,
            CLUSTER,
            format!("{n} Secret(s) rewritten: encrypted with key {key}"),
        );
        // Recorded only now: an apply stopped before rewrites them all again.
        cx.state.secrets_key = key;
        cx.save_state()?;
    }
    Ok(())
}

/// The units of [`StartPhase::Api`] (the scheduler), now that the API answers.
async fn start_api_units(cx: &Apply<'_>, phase: PhaseName) -> Result<()> {
    all(&cx.hosts, |h| async move {
        start_units(cx, h, phase, &cx.components(&h.host, StartPhase::Api)).await
    })
    .await
}

/// Every cluster object with server-side apply, in waves: namespaces and definitions, then
/// what lives in them, then the workloads.
async fn apply_objects(cx: &Apply<'_>, client: &kube::Client) -> Result<()> {
    for wave in 0..=2 {
        let applied = join_all(
            cx.rendered
                .objects
                .iter()
                .filter(|o| apply_wave(&o.api_path) == wave)
                .map(|o| {
                    async move {
                        let req = http::Request::patch(format!(
                            "{}?fieldManager=strata&force=true",
                            o.api_path
                        ))
                        // JSON is YAML: the content type server-side apply wants, a body
                        // the audit log can record.
                        .header("Content-Type", "application/apply-patch+yaml")
                        .body(o.json.clone().into_bytes())?;
                        apply_object(client, req, &o.file).await
                    }
                }),
        )
        .await;
        let failed: Vec<String> = applied
            .into_iter()
            .filter_map(|r| r.err().map(|e| format!("{e:#}")))
            .collect();
        if !failed.is_empty() {
            bail!("{}", failed.join("\n"));
        }
    }
    Ok(())
}

/// When an object is applied: namespaces and CustomResourceDefinitions first (what other
/// objects live in or are), workloads last (their pods are admitted by the service accounts,
/// roles and pod security policies applied before: a controller refused a pod retries only
/// after a back-off), everything else in between. Objects of one wave are applied at once.
fn apply_wave(api_path: &str) -> u8 {
    let kind = api_path.rsplit('/').nth(1).unwrap_or_default();
    match kind {
        "namespaces" | "customresourcedefinitions" => 0,
        "daemonsets" | "deployments" | "statefulsets" | "replicasets" | "jobs" | "cronjobs"
        | "pods" => 2,
        _ => 1,
    }
}

/// Rewrites every Secret unchanged, so that the API server stores it encrypted with its
/// current key (Secrets written before keep the provider or key they were written with
/// until then). One that changed or vanished meanwhile was written or removed by someone
/// else: nothing to do. Returns how many were rewritten.
async fn reencrypt_secrets(client: &kube::Client) -> Result<usize> {
    let all: Api<Secret> = Api::all(client.clone());
    let mut rewritten = 0;
    let mut params = ListParams::default().limit(250);
    loop {
        let page = all
            .list(&params)
            .await
            .context("phase addons: listing Secrets to re-encrypt")?;
        for secret in &page.items {
            let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
                continue;
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            match api.replace(name, &PostParams::default(), secret).await {
                Ok(_) => rewritten += 1,
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("phase addons: rewriting Secret {ns}/{name} to re-encrypt it")
                    });
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(rewritten),
        }
    }
}

/// Server-side applies one object. A custom resource sent right after its CRD may meet a 404
/// until the API server serves the new kind: retried for up to 30 s.
async fn apply_object(
    client: &kube::Client,
    req: http::Request<Vec<u8>>,
    file: &str,
) -> Result<()> {
    let (parts, body) = req.into_parts();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = http::Request::new(body.clone());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        match client.request_text(req).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("phase addons: applying {file}")),
        }
    }
}

/// Deletes one object (its dependents in the background); one already gone is fine.
pub(crate) async fn delete_object(client: &kube::Client, path: &str) -> Result<()> {
    let req =
        http::Request::delete(format!("{path}?propagationPolicy=Background")).body(Vec::new())?;
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("phase addons: deleting {path}")),
    }
}

fn has_pod_cidr(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
}

/// Whether the node's Ready condition was reported after `after` (any time when None).
fn reported_after(n: &Node, after: Option<k8s_openapi::jiff::Timestamp>) -> bool {
    let Some(after) = after else { return true };
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .is_some_and(|t| t.0 > after)
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every node in `want` exists and satisfies `ok`.
async fn wait_nodes(
    api: &Api<Node>,
    want: &BTreeSet<String>,
    what: &str,
    ok: impl Fn(&Node) -> bool + Copy,
) -> Result<()> {
    let every = Duration::from_millis(250);
    retry_every(what, Duration::from_secs(180), every, || async move {
        let list = api.list(&ListParams::default()).await?;
        let waiting: Vec<&String> = want
            .iter()
            .filter(|w| {
                !list
                    .items
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(w.as_str()) && ok(n))
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            bail!("still waiting for {waiting:?}")
        }
    })
    .await
}

fn node_names(cx: &Apply<'_>) -> BTreeSet<String> {
    cx.hosts.iter().map(|h| h.name().to_owned()).collect()
}

/// Every node registered with its podCIDR (see [`pod_subnets`]); control-plane nodes get
/// their role label through the API (NodeRestriction forbids the kubelet to set it) and
/// their taints.
async fn pod_network(cx: &mut Apply<'_>) -> Result<()> {
    let phase = PhaseName::PodNetwork;
    let client = cx.client(phase).await?;
    let api: Api<Node> = Api::all(client.clone());
    wait_nodes(
        &api,
        &node_names(cx),
        &format!("phase {phase}: every node registered with a podCIDR"),
        has_pod_cidr,
    )
    .await?;
    // Role labels, set through the API (NodeRestriction forbids the kubelet): the update
    // operator knows control-plane and etcd nodes by them (one at a time, while the others
    // are healthy).
    for h in &cx.hosts {
        let mut labels = Vec::new();
        if catalog::runs(cx.cluster(), &h.host, Component::KubeApiserver) {
            labels.push(pod_security::CONTROL_PLANE_LABEL);
        }
        if catalog::runs(cx.cluster(), &h.host, Component::Etcd) {
            labels.push(strata_update_api::ETCD_NODE_LABEL);
        }
        // Applied also when empty: a host that lost its roles loses their labels.
        label_roles(&client, h.name(), &labels).await?;
    }
    let minor = cx.cluster().spec.kubernetes.version.minor();
    for h in &cx.hosts {
        let want = pod_security::taints_of(&h.host, minor);
        let user: Vec<&str> = h.host.taints.iter().map(|t| t.key.as_str()).collect();
        set_control_plane_taints(&api, h.name(), &want, &user).await?;
    }
    Ok(())
}

/// Gives node `name` exactly the control-plane taints `want` (NoSchedule) among the keys
/// Strata manages, leaving every other taint alone: read, change, replace with the
/// resourceVersion read (taints are one list to server-side apply, so it would replace
/// taints others set, such as the node controller's).
async fn set_control_plane_taints(
    api: &Api<Node>,
    name: &str,
    want: &[&str],
    user_taints: &[&str],
) -> Result<()> {
    for _ in 0..5 {
        let mut node = api
            .get(name)
            .await
            .with_context(|| format!("phase pod-network: reading node {name}"))?;
        let spec = node.spec.get_or_insert_with(Default::default);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        let before = taints.clone();
        // Only (key, NoSchedule) pairs of Strata's keys are managed here; a taint the
        // Cluster file lists for the host stays (the kubelet registered it).
        taints.retain(|t| {
            let managed = pod_security::CONTROL_PLANE_TAINT_KEYS.contains(&t.key.as_str())
                && t.effect == "NoSchedule"
                && !user_taints.contains(&t.key.as_str());
            !managed || want.contains(&t.key.as_str())
        });
        for key in want {
            if !taints
                .iter()
                .any(|t| t.key == *key && t.effect == "NoSchedule")
            {
                taints.push(Taint {
                    key: (*key).to_owned(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                });
            }
        }
        if *taints == before {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &node).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("phase pod-network: tainting node {name}"));
            }
        }
    }
    bail!(
        "phase pod-network: node {name} kept changing while its taints were set; re-run `strata apply`"
    )
}

/// Gives node `name` exactly the role labels `labels` that this field manager sets.
async fn label_roles(client: &kube::Client, name: &str, labels: &[&str]) -> Result<()> {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|l| ((*l).to_owned(), String::new()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    Api::<Node>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("strata-node-roles").force(),
            &Patch::Apply(&node),
        )
        .await
        .with_context(|| format!("phase pod-network: labelling {name}"))?;
    Ok(())
}

/// Success means every node Ready.
async fn wait_ready(cx: &mut Apply<'_>) -> Result<()> {
    let phase = PhaseName::WaitReady;
    let api: Api<Node> = Api::all(cx.client(phase).await?);
    let names = node_names(cx);
    let after = cx.ready_after;
    wait_nodes(
        &api,
        &names,
        &format!("phase {phase}: every node Ready"),
        move |n: &Node| is_ready(n) && reported_after(n, after),
    )
    .await?;
    for name in &names {
        cx.reporter.step(phase, name, "Ready");
    }
    // A node is Ready once its CNI configuration is in place (written before its kubelet
    // started); its pods reach the other nodes once its overlay agent runs.
    if Component::Overlay.enabled(cx.cluster()) {
        let api: Api<DaemonSet> = Api::namespaced(cx.client(phase).await?, addons::NAMESPACE);
        let name = addons::OVERLAY_DAEMONSET;
        let every = Duration::from_millis(250);
        retry_every(
            &format!(
                "phase {phase}: the overlay agent running on every node (DaemonSet {}/{name})",
                addons::NAMESPACE
            ),
            Duration::from_secs(180),
            every,
            || {
                let api = api.clone();
                async move {
                    let ds = api.get(name).await?;
                    let s = ds.status.unwrap_or_default();
                    let current = s.observed_generation.is_some()
                        && s.observed_generation == ds.metadata.generation;
                    let updated = s.updated_number_scheduled.unwrap_or(0);
                    if current
                        && s.desired_number_scheduled > 0
                        && s.number_ready == s.desired_number_scheduled
                        && updated == s.desired_number_scheduled
                    {
                        Ok(())
                    } else {
                        bail!(
                            "{} of {} agents ready ({updated} updated)",
                            s.number_ready,
                            s.desired_number_scheduled
                        )
                    }
                }
            },
        )
        .await?;
        cx.reporter
            .step(phase, "overlay", "an agent running on every node");
    }
    // Now that every node runs: the agents whose identity on their host changed.
    let client = cx.client(phase).await?;
    crate::pod_restarts::run(cx, phase, &client).await
}

async fn kubeconfig(cx: &mut Apply<'_>) -> Result<()> {
    let phase = PhaseName::Kubeconfig;
    if let Some(vip) = cx.cluster().spec.control_plane.vip
        && cx.cluster().spec.control_plane.endpoint.0.is_empty()
    {
        // The admin kubeconfig names the virtual IP: it answers before apply is done.
        let client = crate::hosts::admin_client(&cx.cs).await?;
        wait_readyz(
            &client,
            &format!("phase {phase}: the virtual IP {vip} answers (/readyz)"),
            Duration::from_secs(90),
        )
        .await?;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client, "kube-system");
        let holder = leases
            .get(strata_manifests::objects::VIP_LEASE)
            .await
            .ok()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
            .unwrap_or_default();
        cx.reporter.step(
            phase,
            "api",
            format!("virtual IP {vip} answers, held by {holder}"),
        );
    }
    let kubeconfig = cx.cs.state.file("auth/kubeconfig");
    cx.reporter.step(
        PhaseName::Kubeconfig,
        "local",
        format!("kubectl --kubeconfig {} get nodes", kubeconfig.display()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::apply_wave;

    /// After a restore, a Ready the snapshot brought back does not count.
    #[test]
    fn a_node_counts_as_ready_only_with_word_after_the_restore() {
        use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().expect("time");
        let node = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(Time(at("2026-12-01T17:00:00Z"))),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        assert!(super::is_ready(&node));
        assert!(super::reported_after(&node, None));
        assert!(super::reported_after(
            &node,
            Some(at("2026-12-01T16:59:59Z"))
        ));
        assert!(!super::reported_after(
            &node,
            Some(at("2026-12-01T17:00:00Z"))
        ));
        assert!(!super::reported_after(
            &Node::default(),
            Some(at("2026-12-01T16:00:00Z"))
        ));
    }

    #[test]
    fn namespaces_and_definitions_go_first_and_workloads_last() {
        for (path, wave) in [
            ("/api/v1/namespaces/strata-system", 0),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rebootlocks.update.strata.dev",
                0,
            ),
            (
                "/api/v1/namespaces/kube-system/serviceaccounts/strata-dns",
                1,
            ),
            (
                "/apis/policy/v1beta1/podsecuritypolicies/strata-restricted",
                1,
            ),
            ("/apis/update.strata.dev/v1alpha1/updatepolicies/default", 1),
            (
                "/apis/apps/v1/namespaces/strata-system/daemonsets/strata-overlay",
                2,
            ),
            (
                "/apis/apps/v1/namespaces/kube-system/deployments/strata-dns",
                2,
            ),
        ] {
            assert_eq!(apply_wave(path), wave, "{path}");
        }
    }

    /// The health check a rolling restart waits for, run by the shell against a server on
    /// loopback: `ok` passes; another answer, or no server, fails once its limit has passed.
    #[test]
    fn the_healthz_script_waits_for_ok() {
        use std::io::{Read as _, Write as _};
        let serve = |body: &'static str| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("addr").port();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(8) {
                    let Ok(mut s) = stream else { continue };
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            port
        };
        let run = |port: u16, limit: u64| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(super::healthz_script(port, limit))
                .status()
                .expect("sh")
                .success()
        };
        assert!(run(serve("ok"), 10));
        assert!(!run(serve("[-]ping failed"), 1));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        assert!(!run(closed, 1));
    }
}
