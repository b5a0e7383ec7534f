//! What a restore leaves for the addons phase, once the API answers and the objects are
//! applied: the Nodes of hosts the backup's cluster had and the Cluster file no longer lists
//! are deleted (they would stay NotReady), and the pods of Strata's workloads are replaced
//! with a rolling restart (on machines that kept running, they watched the store's later
//! revisions, which the restored store has not reached). Recorded in state.json
//! (`restored`) until done, so that an apply stopped before finishes it.

use anyhow::{Context as _, Result};
use strata_manifests::plan::PhaseName;

use crate::apply::Apply;

const PHASE: PhaseName = PhaseName::Addons;

/// The annotation of a pod template a restore sets (its pods are replaced).
pub const RESTARTED_AT: &str = "strata.dev/restarted-at";

/// Whether a rendered object is a workload (a DaemonSet or a Deployment), by its API path.
fn is_workload(api_path: &str) -> bool {
    api_path
        .strip_prefix("/apis/apps/v1/namespaces/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, kind)| {
            kind.starts_with("daemonsets/") || kind.starts_with("deployments/")
        })
}

/// The hosts of the backup's cluster whose Nodes go: those the Cluster file does not list.
fn gone_hosts(backup: &[String], file: &[&str]) -> Vec<String> {
    backup
        .iter()
        .filter(|h| !file.contains(&h.as_str()))
        .cloned()
        .collect()
}

/// Finishes a restore (see the module): nothing to do unless state.json says one happened.
pub async fn finish(cx: &mut Apply<'_>, client: &kube::Client) -> Result<()> {
    let Some(backup_hosts) = cx.state.restored.clone() else {
        return Ok(());
    };
    let file: Vec<&str> = cx
        .cluster()
        .spec
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let gone = gone_hosts(&backup_hosts, &file);
    for name in &gone {
        crate::phases::delete_object(client, &format!("/api/v1/nodes/{name}")).await?;
    }
    // A rolling restart, as `kubectl rollout restart` makes one: each workload replaces its
    // pods within its own limits (DNS within its PodDisruptionBudget), not all at once.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT: now
    }}}}});
    let body = serde_json::to_vec(&patch)?;
    let mut restarted = 0;
    for o in &cx.rendered.objects {
        if !is_workload(&o.api_path) {
            continue;
        }
        let req = http::Request::patch(o.api_path.as_str())
            .header("Content-Type", "application/merge-patch+json")
            .body(body.clone())?;
        client
            .request_text(req)
            .await
            .with_context(|| format!("phase {PHASE}: restarting the pods of {}", o.api_path))?;
        restarted += 1;
    }
    let nodes = if gone.is_empty() {
        String::new()
    } else {
        format!(
            "; Nodes of hosts no longer in the file deleted: {}",
            gone.join(", ")
        )
    };
    cx.reporter.step(
        PHASE,
        "cluster",
        format!(
            "after the restore: the pods of {restarted} Strata workload(s) replaced (a rolling \
             restart){nodes}; workloads with controllers of their own may need a restart too"
        ),
    );
    cx.state.restored = None;
    cx.save_state()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_found_by_path_and_gone_hosts_by_name() {
        assert!(is_workload(
            "/apis/apps/v1/namespaces/strata-system/daemonsets/strata-overlay"
        ));
        assert!(is_workload(
            "/apis/apps/v1/namespaces/kube-system/deployments/strata-dns"
        ));
        assert!(!is_workload(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/x"
        ));
        assert!(!is_workload(
            "/apis/apps/v1/namespaces/kube-system/statefulsets/x"
        ));
        assert_eq!(
            gone_hosts(
                &["cp1".into(), "w1".into(), "w2".into()],
                &["cp1", "w2", "w3"]
            ),
            ["w1"]
        );
    }
}
