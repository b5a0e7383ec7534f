//! The etcd phase on the hosts: a new cluster formed by every member at once; a running one
//! restarted a member at a time and its membership changed to the Cluster file's through
//! etcd's own API, by the steps [`crate::etcd::plan`] gives.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use futures::future::join_all;
use strata_manifests::catalog::{self, Component, StartPhase};
use strata_manifests::plan::{Action, ActionKind, CLUSTER, PhaseName};
use strata_platforms::ssh::quote;

use crate::apply::Apply;
use crate::etcd::{self, Member, Step, Wanted};
use crate::hosts::{HostConn, fail, retry};
use crate::phases::start_units;

const PHASE: PhaseName = PhaseName::Etcd;

/// `etcdctl` against the member on the host it runs on, with the health-check identity.
pub(crate) fn etcdctl() -> String {
    format!(
        "ETCDCTL_API=3 {}/etcdctl --endpoints=https://127.0.0.1:{} \
         --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --dial-timeout=3s --command-timeout=15s",
        catalog::BIN_DIR,
        catalog::ETCD_CLIENT_PORT
    )
}

fn peer_url(h: &HostConn) -> String {
    let host = match h.host.address.as_ref() {
        Some(a) => match a.ip() {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => a.as_str().to_owned(),
        },
        None => h.name().to_owned(),
    };
    format!("https://{host}:{}", catalog::ETCD_PEER_PORT)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn wait_healthy(cx: &Apply<'_>, h: &HostConn) -> Result<()> {
    let health = format!("{} endpoint health", etcdctl());
    retry(
        &format!("phase {PHASE}, host {}: etcd healthy", h.name()),
        Duration::from_secs(120),
        || async { h.sh(PHASE, &health).await.map(drop) },
    )
    .await?;
    cx.reporter.step(PHASE, h.name(), "healthy");
    Ok(())
}

async fn write_membership(h: &HostConn, env: &str) -> Result<()> {
    h.conn
        .upload(etcd::MEMBERSHIP_ENV, env.as_bytes(), 0o644, "root:root")
        .await
        .map(drop)
        .map_err(|e| fail(PHASE, h.name(), e))
}

async fn start(cx: &Apply<'_>, h: &HostConn) -> Result<()> {
    start_units(cx, h, PHASE, &cx.components(&h.host, StartPhase::Etcd)).await
}

/// The cluster's id and members, as the member on `via` lists them.
async fn cluster_and_members(via: &HostConn) -> Result<(String, Vec<Member>)> {
    let list = via
        .sh(PHASE, &format!("{} member list -w json", etcdctl()))
        .await?;
    etcd::parse_members(&list)
        .map_err(|e| fail(PHASE, via.name(), format!("etcdctl member list: {e}")))
}

async fn member_list(via: &HostConn) -> Result<Vec<Member>> {
    cluster_and_members(via).await.map(|(_, m)| m)
}

/// The etcd phase: the cluster formed or changed to the file's members, and its id kept in
/// the state (apply never forms a new cluster in place of one it has seen).
pub async fn run(cx: &mut Apply<'_>) -> Result<()> {
    if let Some(seed) = cx.seed.take() {
        return restore(cx, &seed).await;
    }
    if !cx.state.restoring.is_empty() {
        return Err(fail(
            PHASE,
            "etcd",
            format!(
                "a restore from {f} stopped half-way (etcd stopped, its data set aside in \
                 {d}.before-restore-<time> on the etcd hosts): run `strata restore --from {f}` \
                 again to finish it",
                f = cx.state.restoring,
                d = etcd::DATA_DIR
            ),
        ));
    }
    let Some(Converged { id, formed }) = converge(cx).await? else {
        return Ok(());
    };
    check_same(&cx.state.etcd_cluster, &id)?;
    cx.state.etcd_cluster = id;
    let key = cx.want.secrets_key.clone();
    if formed && !key.is_empty() && key != cx.state.secrets_key {
        // An empty store: every Secret the API servers write is encrypted with the current
        // key (uploaded before), so the addons phase has none to rewrite. The re-encryption
        // `plan` lists is done here.
        cx.reporter.action(
            PHASE,
            Action {
                kind: ActionKind::Reencrypt,
                host: CLUSTER.into(),
                path: key.clone(),
            },
        );
        cx.reporter.step(
            PHASE,
            "etcd",
            format!("formed empty: every Secret is written encrypted with key {key}"),
        );
        cx.state.secrets_key = key;
    }
    Ok(())
}

/// Where a member's host keeps the snapshot to restore while it is restored.
const RESTORE_FILE: &str = "/var/lib/strata/backup/restore.db";

/// `strata restore`: the backup's snapshot becomes the data of every etcd host of the
/// Cluster file, as a new etcd cluster (a new token, the file's members and addresses: the
/// hosts may be new machines). First the snapshot goes to every member and etcd's own tool
/// reads it there (a broken one is refused before anything stops); then the control plane
/// and etcd stop, existing data is set aside (`/var/lib/etcd.before-restore-<time>`), the
/// snapshot restored, etcd started; every other component is marked to restart in its phase
/// (they hold the store's later revisions). Secrets stay encrypted with the backup's key
/// (recorded: the addons phase rewrites them with the current one).
async fn restore(cx: &mut Apply<'_>, seed: &crate::backup::Seed) -> Result<()> {
    if !cx.seed_placed {
        prepare_restore(cx, seed).await?;
    }
    // From here on the cluster is down until the restore is done: recorded first, with the
    // restarts every component with units needs (they hold the store's later revisions), so
    // that an interrupted restore is finished by running it again, not by a plain apply.
    let restarts: Vec<(String, BTreeSet<Component>)> = cx
        .hosts
        .iter()
        .map(|h| {
            let all = catalog::on_host(cx.cluster(), &h.host)
                .filter(|s| s.start != StartPhase::Etcd && !s.units.is_empty())
                .map(|s| s.component)
                .collect();
            (h.name().to_owned(), all)
        })
        .collect();
    for (host, all) in restarts {
        cx.state
            .pending_restarts
            .entry(host)
            .or_default()
            .extend(all);
    }
    cx.state.restoring = seed.from.display().to_string();
    if let Err(e) = cx.save_state() {
        discard_snapshot(cx).await;
        return Err(e);
    }
    // Restored Nodes say Ready as they did at the backup: wait-ready wants newer word.
    cx.ready_after = seed.record.taken_at.parse().ok();
    let members = etcd_members(cx);
    let bin = catalog::BIN_DIR;
    let want_revision = seed.record.etcd_revision;
    let stamp = now_secs();
    if let Err(e) = stop_and_set_aside(cx, &members, stamp).await {
        // Run again, the restore places it again; meanwhile no copy of every Secret lies
        // about (etcd's own data, set aside or not, stays where it is).
        discard_snapshot(cx).await;
        return Err(e);
    }
    let initial: Vec<String> = members
        .iter()
        .map(|h| format!("{}={}", h.name(), peer_url(h)))
        .collect();
    let initial = initial.join(",");
    let token = format!("strata-{}-restore-{stamp:x}", cx.cluster().name());
    let shared: &Apply<'_> = cx;
    let restored = join_all(members.iter().map(|h| {
        let (initial, token) = (initial.as_str(), token.as_str());
        async move {
            h.sh(
                PHASE,
                &format!(
                    "ETCDCTL_API=3 {bin}/etcdctl snapshot restore {RESTORE_FILE} --name {name} \
                     --initial-cluster {initial} --initial-cluster-token {token} \
                     --initial-advertise-peer-urls {peer} --data-dir {data} >/dev/null; \
                     rc=$?; rm -f {RESTORE_FILE}; exit $rc",
                    name = h.name(),
                    peer = peer_url(h),
                    data = etcd::DATA_DIR
                ),
            )
            .await?;
            write_membership(h, &etcd::membership_env(initial, "new", token)).await?;
            start(shared, h).await
        }
    }))
    .await;
    restored.into_iter().collect::<Result<Vec<_>>>()?;
    let waits = join_all(members.iter().map(|h| wait_healthy(shared, h))).await;
    waits.into_iter().collect::<Result<Vec<_>>>()?;
    let (id, _) = cluster_and_members(members[0]).await?;
    let count = members.len();
    cx.state.restoring.clear();
    cx.state.etcd_cluster = id.clone();
    cx.state.secrets_key = seed.record.encryption_key.clone();
    // The store now holds the objects Strata had applied at the backup: those the file no
    // longer renders are deleted in the addons phase, which also finishes the rest.
    for (path, object) in &seed.record.objects {
        cx.state
            .objects
            .entry(path.clone())
            .or_insert_with(|| object.clone());
    }
    cx.state.restored = Some(seed.record.hosts.clone());
    cx.save_state()?;
    cx.reporter.action(
        PHASE,
        Action {
            kind: ActionKind::Restore,
            host: CLUSTER.into(),
            path: seed.from.display().to_string(),
        },
    );
    cx.reporter.step(
        PHASE,
        "etcd",
        format!(
            "restored the backup of {} (revision {want_revision}) on {} member(s) as etcd cluster {id}",
            seed.record.taken_at,
            count
        ),
    );
    Ok(())
}

/// What a restore checks before anything stops: the Cluster file has etcd hosts, no host
/// that left the file is still in the cluster, and the snapshot is on every etcd host, read
/// there by etcd's own tool. The upload phase of a restore runs it once the binaries are in
/// place and before it removes what the file no longer renders (units it would stop).
pub async fn prepare_restore(cx: &Apply<'_>, seed: &crate::backup::Seed) -> Result<()> {
    if etcd_members(cx).is_empty() {
        bail!("phase {PHASE}: the Cluster file has no etcd host to restore the backup on");
    }
    let leaving = strata_manifests::plan::departed_hosts(&cx.want, &cx.state);
    if !leaving.is_empty() {
        bail!(
            "phase {PHASE}: hosts that left the Cluster file are still part of the cluster ({}): \
             run `strata apply` to let them leave first (their control plane would keep \
             running against the restored store); nothing was stopped",
            leaving.join(", ")
        );
    }
    let members = etcd_members(cx);
    if let Err(e) = place_snapshot(&members, seed).await {
        discard_snapshot(cx).await;
        return Err(e);
    }
    Ok(())
}

/// Removes the snapshot a restore placed on the etcd hosts (it holds every Secret), as far
/// as they answer: a restore that ends before the etcd phase leaves none behind.
pub async fn discard_snapshot(cx: &Apply<'_>) {
    let members = etcd_members(cx);
    let remove = format!("rm -f {RESTORE_FILE}");
    let _ = join_all(members.iter().map(|h| h.sh(PHASE, &remove))).await;
}

/// The etcd hosts of the Cluster file.
fn etcd_members<'a>(cx: &'a Apply<'_>) -> Vec<&'a HostConn> {
    cx.hosts
        .iter()
        .filter(|h| catalog::runs(cx.cluster(), &h.host, Component::Etcd))
        .collect()
}

/// The snapshot on every member's host, read there by etcd's own tool at the recorded
/// revision: a broken one is refused before anything stops.
async fn place_snapshot(members: &[&HostConn], seed: &crate::backup::Seed) -> Result<()> {
    let bin = catalog::BIN_DIR;
    let want_revision = seed.record.etcd_revision;
    let placed = join_all(members.iter().map(|h| async move {
        h.sh(PHASE, "umask 077 && mkdir -p /var/lib/strata/backup").await?;
        h.conn
            .upload(RESTORE_FILE, &seed.snapshot, 0o600, "root:root")
            .await
            .map_err(|e| fail(PHASE, h.name(), e))?;
        let status = h
            .sh(
                PHASE,
                &format!(
                    "ETCDCTL_API=3 {bin}/etcdctl snapshot status {RESTORE_FILE} -w json || \
                     {{ rc=$?; rm -f {RESTORE_FILE}; exit $rc; }}"
                ),
            )
            .await
            .map_err(|e| {
                fail(
                    PHASE,
                    h.name(),
                    format!(
                        "etcd refuses the snapshot of {} ({e:#}); nothing was stopped",
                        seed.from.display()
                    ),
                )
            })?;
        let revision = serde_json::from_str::<serde_json::Value>(status.trim())
            .ok()
            .and_then(|v| v["revision"].as_u64());
        if revision != Some(want_revision) {
            return Err(fail(
                PHASE,
                h.name(),
                format!(
                    "etcd reads the snapshot at revision {revision:?}, the backup's record says {want_revision}; nothing was stopped"
                ),
            ));
        }
        Ok::<_, anyhow::Error>(())
    }))
    .await;
    placed.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// The control plane stopped (nothing may write to the store while it is replaced), then
/// etcd, its data set aside.
async fn stop_and_set_aside(cx: &Apply<'_>, members: &[&HostConn], stamp: u64) -> Result<()> {
    for h in cx
        .hosts
        .iter()
        .filter(|h| catalog::runs(cx.cluster(), &h.host, Component::KubeApiserver))
    {
        h.sh(
            PHASE,
            &stopped(&[
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]),
        )
        .await?;
        cx.reporter.step(PHASE, h.name(), "control plane stopped");
    }
    let set_aside = format!(
        "{stop} && if [ -d {d} ]; then mv {d} {d}.before-restore-{stamp} && \
         echo {d}.before-restore-{stamp}; fi",
        stop = stopped(&["etcd"]),
        d = etcd::DATA_DIR
    );
    for h in members {
        let moved = h.sh(PHASE, &set_aside).await?;
        let what = match moved.trim() {
            "" => "etcd stopped".to_owned(),
            kept => format!("etcd stopped, its data set aside in {kept}"),
        };
        cx.reporter.step(PHASE, h.name(), what);
    }
    Ok(())
}

/// A script that stops `units` and fails, naming it, if one still runs.
fn stopped(units: &[&str]) -> String {
    let list: Vec<String> = units.iter().map(|u| format!("{u}.service")).collect();
    format!(
        "systemctl stop {list} 2>/dev/null; for u in {list}; do \
         if systemctl is-active --quiet \"$u\"; then echo \"$u still runs after systemctl stop\" >&2; exit 1; fi; \
         done; true",
        list = list.join(" ")
    )
}

/// The etcd cluster the members form.
struct Converged {
    id: String,
    /// Formed empty by this run.
    formed: bool,
}

/// The members answer as the cluster recorded (or none was).
fn check_same(known: &str, id: &str) -> Result<()> {
    if known.is_empty() || known == id {
        return Ok(());
    }
    Err(fail(
        PHASE,
        "etcd",
        format!(
            "the etcd members answer as cluster {id}, but this cluster's etcd is {known} \
             (state.json, etcdCluster): the hosts hold another cluster's data. Check the \
             Cluster file's hosts and addresses; no member was added or removed"
        ),
    ))
}

/// Why a new cluster is not formed where one has run.
fn formed_before(id: &str) -> anyhow::Error {
    fail(
        PHASE,
        "etcd",
        format!(
            "no etcd host of the Cluster file holds etcd data, but etcd cluster {id} has run \
             here (state.json, etcdCluster): forming a new one would start Kubernetes with no \
             objects. Bring back the hosts that hold its data (or put them back into the \
             Cluster file); to start empty on purpose, run `strata reset` (or `strata local \
             down`) first, or remove etcdCluster from state.json"
        ),
    )
}

fn no_quorum() -> anyhow::Error {
    fail(
        PHASE,
        "etcd",
        "no etcd member answers with a quorum; bring the members' hosts back (`systemctl \
         status etcd` on them), or restore the cluster from a backup",
    )
}

/// Forms or changes the cluster; its id (none without etcd hosts).
async fn converge(cx: &Apply<'_>) -> Result<Option<Converged>> {
    let members: Vec<&HostConn> = cx
        .hosts
        .iter()
        .filter(|h| catalog::runs(cx.cluster(), &h.host, Component::Etcd))
        .collect();
    if members.is_empty() {
        return Ok(None);
    }
    // Which hosts hold member data, and which have their membership file.
    let probe = format!(
        "if [ -d {}/member ]; then echo data; else echo empty; fi; \
         if [ -e {} ]; then echo env; else echo none; fi",
        etcd::DATA_DIR,
        etcd::MEMBERSHIP_ENV
    );
    let mut has_data = Vec::new();
    let mut has_env = Vec::new();
    for r in join_all(members.iter().map(|h| h.sh(PHASE, &probe))).await {
        let out = r?;
        has_data.push(out.contains("data"));
        has_env.push(out.contains("env"));
    }
    let known = &cx.state.etcd_cluster;
    if !has_data.iter().any(|d| *d) {
        if !known.is_empty() {
            return Err(formed_before(known));
        }
        form(cx, &members).await?;
        return cluster_and_members(members[0])
            .await
            .map(|(id, _)| Some(Converged { id, formed: true }));
    }
    let holders: Vec<&HostConn> = members
        .iter()
        .zip(&has_data)
        .filter(|(_, d)| **d)
        .map(|(h, _)| *h)
        .collect();
    start_holders(&members, &holders, &has_env).await?;
    let Some((id, current, via)) = listed_by_any(&holders).await else {
        // Finishing a formation is for a first apply that stopped half-way, never for a
        // cluster that has run: its members without data would outvote those with it.
        if !known.is_empty() && holders.len() < members.len() {
            return Err(no_quorum());
        }
        finish_forming(cx, &members, &holders).await?;
        return cluster_and_members(members[0])
            .await
            .map(|(id, _)| Some(Converged { id, formed: false }));
    };
    check_same(known, &id)?;
    // Only voting members with data are restarted and waited for: learners and hosts with
    // data of no member are the plan's to redo.
    let voters: Vec<&HostConn> = holders
        .iter()
        .filter(|h| {
            current
                .iter()
                .any(|m| !m.is_learner && m.peer_urls.contains(&peer_url(h)))
        })
        .copied()
        .collect();
    for h in &voters {
        start(cx, h).await?;
        wait_healthy(cx, h).await?;
    }
    let via = voters.first().copied().unwrap_or(via);
    change_membership(cx, &members, via, &current, &has_data).await?;
    if members.len().is_multiple_of(2) {
        cx.reporter.step(
            PHASE,
            "etcd",
            format!(
                "warning: {} etcd members tolerate no more failures than {} would; an odd count is better",
                members.len(),
                members.len() - 1
            ),
        );
    }
    Ok(Some(Converged { id, formed: false }))
}

/// A new cluster: every member at once (a quorum is needed to start).
async fn form(cx: &Apply<'_>, members: &[&HostConn]) -> Result<()> {
    let initial: Vec<String> = members
        .iter()
        .map(|h| format!("{}={}", h.name(), peer_url(h)))
        .collect();
    let token = format!("strata-{}-{:x}", cx.cluster().name(), now_secs());
    let env = etcd::membership_env(&initial.join(","), "new", &token);
    let started = join_all(members.iter().map(|h| {
        let env = env.as_str();
        async move {
            write_membership(h, env).await?;
            start(cx, h).await
        }
    }))
    .await;
    started.into_iter().collect::<Result<Vec<_>>>()?;
    let waits = join_all(members.iter().map(|h| wait_healthy(cx, h))).await;
    waits.into_iter().collect::<Result<Vec<_>>>()?;
    cx.reporter.step(
        PHASE,
        "etcd",
        format!("formed a new cluster of {} member(s)", members.len()),
    );
    Ok(())
}

/// A running cluster: the members with data start first (a stopped cluster regains its
/// quorum); a member applied before membership files existed gets one (etcd ignores it: it
/// has data).
async fn start_holders(
    members: &[&HostConn],
    holders: &[&HostConn],
    has_env: &[bool],
) -> Result<()> {
    for (h, env) in members.iter().zip(has_env) {
        if !env && holders.iter().any(|x| x.name() == h.name()) {
            let me = format!("{}={}", h.name(), peer_url(h));
            write_membership(h, &etcd::membership_env(&me, "existing", "")).await?;
        }
    }
    let start_all = "systemctl daemon-reload && systemctl start --no-block etcd.service";
    let started = join_all(holders.iter().map(|h| h.sh(PHASE, start_all))).await;
    started.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// The members as the cluster lists them, and the host that answered: the first holder to
/// answer within a minute (none without a quorum).
async fn listed_by_any<'h>(
    holders: &[&'h HostConn],
) -> Option<(String, Vec<Member>, &'h HostConn)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for h in holders {
            if let Ok((id, list)) = cluster_and_members(h).await {
                return Some((id, list, h));
            }
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// No quorum answers. When the members with data were started as a new cluster (a first
/// apply stopped before all of them started), the others start with the same membership;
/// anything else is not Strata's to repair.
async fn finish_forming(
    cx: &Apply<'_>,
    members: &[&HostConn],
    holders: &[&HostConn],
) -> Result<()> {
    let env = holders[0]
        .sh(PHASE, &format!("cat {}", etcd::MEMBERSHIP_ENV))
        .await?;
    if !env.contains("ETCD_INITIAL_CLUSTER_STATE=new") {
        return Err(no_quorum());
    }
    let rest: Vec<&HostConn> = members
        .iter()
        .filter(|m| !holders.iter().any(|h| h.name() == m.name()))
        .copied()
        .collect();
    for h in &rest {
        write_membership(h, &env).await?;
        start(cx, h).await?;
    }
    let waits = join_all(members.iter().map(|h| wait_healthy(cx, h))).await;
    waits.into_iter().collect::<Result<Vec<_>>>()?;
    cx.reporter.step(
        PHASE,
        "etcd",
        format!(
            "finished forming the cluster of {} member(s) an earlier apply began",
            members.len()
        ),
    );
    Ok(())
}

/// `etcdctl endpoint health --cluster -w json` (unhealthy members are listed, not errors).
async fn cluster_health(via: &HostConn) -> Result<String> {
    via.sh(
        PHASE,
        &format!(
            "{} endpoint health --cluster -w json 2>/dev/null || true",
            etcdctl()
        ),
    )
    .await
}

/// The membership made the file's, a step at a time.
async fn change_membership(
    cx: &Apply<'_>,
    members: &[&HostConn],
    via: &HostConn,
    current: &[Member],
    has_data: &[bool],
) -> Result<()> {
    let health = cluster_health(via).await?;
    let wanted: Vec<Wanted> = members
        .iter()
        .zip(has_data)
        .map(|(h, d)| Wanted {
            name: h.name().to_owned(),
            peer_url: peer_url(h),
            has_data: *d,
        })
        .collect();
    let steps = etcd::plan(&wanted, current, &etcd::parse_healthy(&health))
        .map_err(|e| fail(PHASE, "etcd", e))?;
    // Changes go through a voting member with data that stays.
    if steps.iter().any(
        |s| matches!(s, Step::Remove { member, .. } if member.peer_urls.contains(&peer_url(via))),
    ) {
        return Err(fail(
            PHASE,
            "etcd",
            "the member the change would go through is itself to be removed; apply again once \
             the other members are healthy",
        ));
    }
    let host = |name: &str| members.iter().find(|h| h.name() == name).copied();
    let mut joined = false;
    for step in &steps {
        match step {
            Step::Remove { member, why } => {
                if joined {
                    // The health the plan saw is minutes old: checked again.
                    let (_, now) = cluster_and_members(via).await?;
                    if !now.iter().any(|m| m.id == member.id) {
                        continue;
                    }
                    let health = cluster_health(via).await?;
                    etcd::check_removal(member, &now, &etcd::parse_healthy(&health))
                        .map_err(|e| fail(PHASE, "etcd", e))?;
                }
                via.sh(
                    PHASE,
                    &format!("{} member remove {}", etcdctl(), member.hex()),
                )
                .await?;
                cx.reporter.step(
                    PHASE,
                    "etcd",
                    format!("removed member {}: {why}", member.shown()),
                );
            }
            Step::ClearData { host: name } => {
                if let Some(h) = host(name) {
                    clear_data(cx, h).await?;
                }
            }
            Step::Join { host: name } => {
                if let Some(h) = host(name) {
                    join(cx, via, h).await?;
                    joined = true;
                }
            }
        }
    }
    Ok(())
}

/// Data of no member, kept aside rather than deleted.
async fn clear_data(cx: &Apply<'_>, h: &HostConn) -> Result<()> {
    let aside = format!("{}.stale-{}", etcd::DATA_DIR, now_secs());
    h.sh(
        PHASE,
        &format!("systemctl stop etcd.service; mv {} {aside}", etcd::DATA_DIR),
    )
    .await?;
    cx.reporter.step(
        PHASE,
        h.name(),
        format!("the etcd data here is no member's: kept as {aside}"),
    );
    Ok(())
}

/// `h` joins through `via`: added as a learner, started with the membership of now,
/// promoted once in sync.
async fn join(cx: &Apply<'_>, via: &HostConn, h: &HostConn) -> Result<()> {
    let name = h.name();
    let me = Wanted {
        name: name.to_owned(),
        peer_url: peer_url(h),
        has_data: false,
    };
    // etcd refuses a member while a recent change settles ("unhealthy cluster", just after
    // a promotion): asked again until it is listed.
    let add = format!(
        "{} member add {} --peer-urls={} --learner >/dev/null",
        etcdctl(),
        quote(name),
        me.peer_url
    );
    let listed = |l: &[Member]| l.iter().any(|m| m.peer_urls.contains(&me.peer_url));
    retry(
        &format!("phase {PHASE}, host {name}: added to etcd as a learner"),
        Duration::from_secs(90),
        || async {
            if listed(&member_list(via).await?) {
                return Ok(());
            }
            via.sh(PHASE, &add).await.map(drop)
        },
    )
    .await?;
    let now = member_list(via).await?;
    let Some(added) = now.iter().find(|m| m.peer_urls.contains(&me.peer_url)) else {
        return Err(fail(PHASE, name, "the member just added is not listed"));
    };
    write_membership(
        h,
        &etcd::membership_env(&etcd::initial_cluster(&now, &me), "existing", ""),
    )
    .await?;
    start(cx, h).await?;
    let promote = format!("{} member promote {}", etcdctl(), added.hex());
    retry(
        &format!("phase {PHASE}, host {name}: learner in sync and promoted"),
        Duration::from_secs(180),
        || async { via.sh(PHASE, &promote).await.map(drop) },
    )
    .await?;
    wait_healthy(cx, h).await?;
    cx.reporter
        .step(PHASE, name, "joined etcd as a learner, caught up, promoted");
    Ok(())
}
