//! The remove-hosts phase: hosts taken out of the Cluster file leave the cluster after the
//! hosts that stay (or replace them) are Ready. Each is cordoned and drained through the
//! Eviction API, so PodDisruptionBudgets hold (a refused eviction is retried, and the pods
//! that block are named, until [`DRAIN_TIMEOUT`]); the host is reset (its units stopped,
//! Strata's files removed, as `strata reset` does) when it answers over SSH with its pinned
//! key; its Node is deleted, then its own cluster objects (kept by the addons phase, so that
//! its pods keep their routes while they are evicted); and its pins and state are dropped. Its etcd member, if it had
//! one, was removed by the etcd phase, which refuses a removal that would cost the quorum.
//! A failure leaves the host in the state: the next apply takes it up again.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use strata_drain::{DrainOptions, drain_pass, eviction_version};
use strata_manifests::plan::{Action, ActionKind, CLUSTER, PhaseName, departed_hosts};

use crate::apply::Apply;
use crate::hosts::fail;
use crate::phases::delete_object;
use crate::reset::{HostFiles, script};

/// How long a drain may wait for PodDisruptionBudgets to allow the evictions.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Between two drain passes.
const DRAIN_EVERY: Duration = Duration::from_secs(2);

/// Every host the state holds that the Cluster file no longer lists, one after another.
pub async fn remove_hosts(cx: &mut Apply<'_>) -> Result<()> {
    let departed: Vec<String> = departed_hosts(&cx.want, &cx.state)
        .into_iter()
        .map(str::to_owned)
        .collect();
    for name in departed {
        remove_host(cx, &name).await?;
    }
    Ok(())
}

async fn remove_host(cx: &mut Apply<'_>, name: &str) -> Result<()> {
    let phase = PhaseName::RemoveHosts;
    let client = cx.client(phase).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let there = nodes
        .get_opt(name)
        .await
        .map_err(|e| fail(phase, name, format!("reading its Node: {e}")))?
        .is_some();
    if there {
        let cordon = serde_json::json!({"spec": {"unschedulable": true}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&cordon))
            .await
            .map_err(|e| fail(phase, name, format!("cordoning its Node: {e}")))?;
        cx.reporter.step(phase, name, "cordoned");
        drain(cx, &client, name).await?;
    }
    // Its kubelet stopped first: a running kubelet registers its Node again.
    reset(cx, name).await?;
    if there {
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(fail(phase, name, format!("deleting its Node: {e}"))),
        }
    }
    // Its own cluster objects (its agents' identities, its OverlayNode), kept until now.
    let own: Vec<String> = cx
        .state
        .objects
        .iter()
        .filter(|(p, o)| o.host == name && !cx.want.objects.contains_key(*p))
        .map(|(p, _)| p.clone())
        .collect();
    for path in own {
        delete_object(&client, &path)
            .await
            .map_err(|e| fail(phase, name, format!("deleting {path}: {e:#}")))?;
        cx.reporter.action(
            phase,
            Action {
                kind: ActionKind::Delete,
                host: CLUSTER.into(),
                path: path.clone(),
            },
        );
        cx.state.objects.remove(&path);
    }
    cx.reporter.action(
        phase,
        Action {
            kind: ActionKind::Drain,
            host: name.into(),
            path: format!("Node {name}"),
        },
    );
    cx.state.hosts.remove(name);
    cx.state.pending_restarts.remove(name);
    cx.state.host_keys.remove(name);
    cx.state.applied_hosts.remove(name);
    cx.save_state()?;
    cx.reporter.step(
        phase,
        name,
        "left the cluster; its pins and state are dropped",
    );
    Ok(())
}

/// Evicts the node's pods until none is left, naming the pods that block whenever that
/// changes; refused after [`DRAIN_TIMEOUT`].
async fn drain(cx: &Apply<'_>, client: &kube::Client, name: &str) -> Result<()> {
    let phase = PhaseName::RemoveHosts;
    let options = DrainOptions {
        eviction_version: eviction_version(client)
            .await
            .map_err(|e| fail(phase, name, e))?,
        grace_period_seconds: None,
        // The host is leaving: its emptyDir data goes with it.
        delete_empty_dir_data: true,
    };
    let start = Instant::now();
    let mut shown = Vec::new();
    loop {
        let p = drain_pass(client, name, &options)
            .await
            .map_err(|e| fail(phase, name, e))?;
        if p.remaining == 0 {
            cx.reporter.step(phase, name, "drained");
            return Ok(());
        }
        if !p.blocked.is_empty() && p.blocked != shown {
            cx.reporter.step(
                phase,
                name,
                format!(
                    "draining: {} pod(s) left; waiting for: {}",
                    p.remaining,
                    p.blocked.join("; ")
                ),
            );
            shown = p.blocked.clone();
        }
        if start.elapsed() > DRAIN_TIMEOUT {
            bail!(fail(
                phase,
                name,
                format!(
                    "the drain did not finish in {} s ({} pod(s) left{}); the host stays in \
                     the cluster: free the pods (e.g. scale their workload so that its \
                     PodDisruptionBudget allows an eviction) and apply again",
                    DRAIN_TIMEOUT.as_secs(),
                    p.remaining,
                    if p.blocked.is_empty() {
                        String::new()
                    } else {
                        format!("; blocked: {}", p.blocked.join("; "))
                    }
                )
            ));
        }
        tokio::time::sleep(DRAIN_EVERY).await;
    }
}

/// Stops the host's units and removes Strata's files, as `strata reset` does, when the host
/// answers with its pinned key; a host that does not answer (gone for good) is said so and
/// left as it is.
async fn reset(cx: &Apply<'_>, name: &str) -> Result<()> {
    let phase = PhaseName::RemoveHosts;
    let Some(host) = cx.state.applied_hosts.get(name) else {
        cx.reporter.step(
            phase,
            name,
            "not reset: no address of it is recorded (applied by an older strata); reset it \
             by hand or retire it",
        );
        return Ok(());
    };
    let conn = match crate::hosts::connect_one(cx.reporter, &cx.cs, &cx.state, host).await {
        Ok(c) => c,
        Err(e) => {
            cx.reporter.step(
                phase,
                name,
                format!("not reset: it does not answer ({e:#}); reset it by hand or retire it"),
            );
            return Ok(());
        }
    };
    let files = HostFiles::of(cx.state.hosts.get(name));
    let out = conn.exec(&script(&files)).await;
    conn.close().await;
    match out {
        Ok(o) if o.success() => {}
        Ok(o) => bail!(fail(
            phase,
            name,
            format!("reset failed (exit {}):\n{}", o.status, o.tail())
        )),
        Err(e) => bail!(fail(phase, name, format!("reset failed: {e}"))),
    }
    for path in cx.state.hosts.get(name).into_iter().flat_map(|f| f.keys()) {
        cx.reporter.action(
            phase,
            Action {
                kind: ActionKind::Remove,
                host: name.into(),
                path: path.clone(),
            },
        );
    }
    cx.reporter.step(phase, name, "reset");
    Ok(())
}
