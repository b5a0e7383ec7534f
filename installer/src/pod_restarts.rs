//! Pods that read files of their host: each node's overlay agent and update agent read
//! their identity (a kubeconfig) from the host once, when they start. When apply changed
//! such a file (a renewed certificate), that node's pods are replaced, a node at a time, as a
//! changed file restarts a unit; until then the pending restart stays in state.json. A pod
//! that started after the files changed (the DaemonSet's own rollout replaced it) already
//! reads them and stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use strata_manifests::catalog::{self, Component, StartPhase};
use strata_manifests::plan::{Action, ActionKind, PhaseName};
use strata_manifests::{Host, addons};

use crate::apply::Apply;
use crate::hosts::{HostConn, retry_every};

/// How long a node's replaced pod may take to be Ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Replaces the pods whose host files changed (see the module), host by host in the
/// Cluster file's order, each recorded as done once its new pod is Ready.
pub async fn run(cx: &mut Apply<'_>, phase: PhaseName, client: &kube::Client) -> Result<()> {
    for i in 0..cx.hosts.len() {
        let h: Host = cx.hosts[i].host.clone();
        let Some(pending) = cx.state.pending_restarts.get(h.name.as_str()).cloned() else {
            continue;
        };
        let sets: Vec<(Component, &'static str)> = cx
            .components(&h, StartPhase::Addons)
            .into_iter()
            .filter(|s| pending.contains(&s.component))
            .filter_map(|s| s.daemonset.map(|ds| (s.component, ds)))
            .collect();
        if sets.is_empty() {
            continue;
        }
        let conn = &cx.hosts[i];
        let changed_at = files_changed_at(cx, conn, phase, &sets).await?;
        // The node's agents are independent of each other: replaced together.
        let results = join_all(
            sets.iter()
                .map(|(_, ds)| replace(client, phase, h.name.as_str(), ds, changed_at)),
        )
        .await;
        let mut errors = Vec::new();
        for ((component, ds), r) in sets.iter().zip(results) {
            let how = match r {
                Ok(how) => how,
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    continue;
                }
            };
            cx.reporter.action(
                phase,
                Action {
                    kind: ActionKind::Restart,
                    host: h.name.to_string(),
                    path: catalog::pod_restart_path(ds),
                },
            );
            cx.reporter
                .step(phase, h.name.as_str(), format!("{ds}: {how}"));
            if let Some(p) = cx.state.pending_restarts.get_mut(h.name.as_str()) {
                p.remove(component);
                if p.is_empty() {
                    cx.state.pending_restarts.remove(h.name.as_str());
                }
            }
        }
        cx.save_state()?;
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
    }
    Ok(())
}

/// When the files these components' pods read last changed on the host (seconds since the
/// epoch, the host's clock: the one its kubelet stamps a container's start with).
async fn files_changed_at(
    cx: &Apply<'_>,
    conn: &HostConn,
    phase: PhaseName,
    sets: &[(Component, &str)],
) -> Result<i64> {
    let components: BTreeSet<Component> = sets.iter().map(|(c, _)| *c).collect();
    let paths: Vec<String> = cx
        .want
        .hosts
        .get(conn.name())
        .into_iter()
        .flatten()
        .filter(|(_, f)| f.users.iter().any(|c| components.contains(c)))
        .map(|(p, _)| strata_platforms::ssh::quote(p))
        .collect();
    if paths.is_empty() {
        return Ok(0);
    }
    let out = conn
        .sh(phase, &format!("stat -c %Z {}", paths.join(" ")))
        .await?;
    out.lines()
        .map(|l| {
            l.trim().parse::<i64>().map_err(|e| {
                anyhow::anyhow!(
                    "phase {phase}, host {}: `stat` said {l:?}: {e}",
                    conn.name()
                )
            })
        })
        .try_fold(0, |latest, t| t.map(|t| latest.max(t)))
}

/// Deletes the pod of DaemonSet `ds` on `node` unless it started after `changed_at`, and
/// waits until another is Ready there. Says what it did.
async fn replace(
    client: &kube::Client,
    phase: PhaseName,
    node: &str,
    ds: &str,
    changed_at: i64,
) -> Result<&'static str> {
    let ns = addons::NAMESPACE;
    let what = format!("phase {phase}, host {node}: replacing the pod of DaemonSet {ns}/{ds}");
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    // Not created yet: its pods will read the files as they are now.
    let Some(set) = sets.get_opt(ds).await.with_context(|| what.clone())? else {
        return Ok("no DaemonSet yet: its pods start with the new files");
    };
    let selector = set
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if selector.is_empty() {
        bail!("{what}: the DaemonSet has no matchLabels selector");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let on_node = ListParams::default()
        .labels(&selector)
        .fields(&format!("spec.nodeName={node}"));
    let found = pods.list(&on_node).await.with_context(|| what.clone())?;
    // The old pods, each with the containers it runs now: the ones that must stop.
    let old: BTreeMap<String, BTreeSet<String>> = found
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() || !started_after(p, changed_at))
        .filter_map(|p| Some((p.metadata.name.clone()?, running_containers(p))))
        .collect();
    if old.is_empty() {
        return Ok(if found.items.is_empty() {
            "no pod on the node yet: it starts with the new files"
        } else {
            "its pod started after the files changed: kept"
        });
    }
    for name in old.keys() {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("{what}: deleting pod {name}")),
        }
    }
    retry_every(&what, READY_WITHIN, Duration::from_millis(250), || {
        let pods = pods.clone();
        let on_node = on_node.clone();
        let old = &old;
        async move {
            let now = pods.list(&on_node).await?;
            let new = now.items.iter().find(|p| {
                p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| !old.contains_key(n))
                    && p.metadata.deletion_timestamp.is_none()
            });
            match new {
                Some(p) if is_ready(p) => Ok(()),
                Some(p) => bail!(
                    "pod {} not Ready: {}",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    why_not_ready(p)
                ),
                None => {
                    let going: Vec<(&str, &Pod, &BTreeSet<String>)> = now
                        .items
                        .iter()
                        .filter_map(|p| {
                            let name = p.metadata.name.as_deref()?;
                            Some((name, p, old.get(name)?))
                        })
                        .collect();
                    // The kubelet reports the containers stopped at once but removes the pod
                    // only at its next status sync (up to 10 s later), and the DaemonSet
                    // waits for that: a pod whose containers that ran all stopped (those,
                    // not ones restarted since) is removed now.
                    for (name, p, _) in going.iter().filter(|(_, p, ran)| stopped(p, ran)) {
                        let mut now = DeleteParams::default().grace_period(0);
                        now.preconditions = Some(Preconditions {
                            uid: p.metadata.uid.clone(),
                            resource_version: None,
                        });
                        match pods.delete(name, &now).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    bail!("no new pod yet ({} old one(s) still going)", going.len())
                }
            }
        }
    })
    .await?;
    Ok("pod replaced and Ready")
}

/// Whether every container of the pod runs and started after `t` (seconds since the epoch).
fn started_after(p: &Pod, t: i64) -> bool {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses.is_some_and(|c| {
        !c.is_empty()
            && c.iter().all(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.as_ref())
                    .is_some_and(|at| at.0 > Timestamp::from_second(t).unwrap_or(Timestamp::MAX))
            })
    })
}

/// The ids of the pod's running containers.
fn running_containers(p: &Pod) -> BTreeSet<String> {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| c.container_id.clone())
        .collect()
}

/// Whether the kubelet reports every container of the pod stopped, each one of `ran`.
fn stopped(p: &Pod, ran: &BTreeSet<String>) -> bool {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    !ran.is_empty()
        && statuses.is_some_and(|c| {
            c.iter().all(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.container_id.as_ref())
                    .is_some_and(|id| ran.contains(id))
            })
        })
}

/// Whether a pod's Ready condition is True.
fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A not-Ready pod's phase and its containers' waiting reasons (CrashLoopBackOff, ...).
fn why_not_ready(p: &Pod) -> String {
    let Some(s) = p.status.as_ref() else {
        return "no status yet".into();
    };
    let mut why = vec![s.phase.clone().unwrap_or_else(|| "Pending".into())];
    for c in s.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            why.push(format!(
                "{}: {}",
                c.name,
                w.reason.as_deref().unwrap_or("waiting")
            ));
        }
    }
    why.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn running_since(secs: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "agent".into(),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(Timestamp::from_second(secs).expect("time"))),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn with_container(id: &str, running: bool) -> Pod {
        let state = if running {
            ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            }
        } else {
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    container_id: Some(id.into()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }
        };
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "agent".into(),
                    container_id: Some(id.into()),
                    state: Some(state),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn only_the_containers_seen_running_count_as_stopped() {
        let ran = running_containers(&with_container("containerd://a", true));
        assert_eq!(ran, ["containerd://a".to_string()].into());
        assert!(stopped(&with_container("containerd://a", false), &ran));
        // Restarted since (and stopped again): not the one that was asked to stop.
        assert!(!stopped(&with_container("containerd://b", false), &ran));
        assert!(!stopped(&with_container("containerd://a", true), &ran));
        // Nothing ran when it was deleted: left to the kubelet.
        assert!(!stopped(
            &with_container("containerd://a", false),
            &BTreeSet::new()
        ));
    }

    #[test]
    fn a_pod_is_kept_only_when_it_started_after_the_change() {
        let changed = 1_800_000_000;
        assert!(started_after(&running_since(changed + 1), changed));
        // The same second: it may have read the file before the change.
        assert!(!started_after(&running_since(changed), changed));
        assert!(!started_after(&running_since(changed - 60), changed));
        // Not running (waiting, or no status yet): replaced.
        assert!(!started_after(&Pod::default(), changed));
    }
}
