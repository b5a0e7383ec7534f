//! What a restore leaves for the addons phase, once the API answers and the objects are
//! applied: the Nodes of hosts the backup's cluster had and the Cluster file no longer lists
//! are deleted (they would stay NotReady), and the pods of Strata's workloads are started
//! again (on machines that kept running, they watched the store's later revisions, which the
//! restored store has not reached). Recorded in state.json (`restored`) until done, so that
//! an apply stopped before finishes it.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use strata_manifests::plan::PhaseName;

use crate::apply::Apply;

const PHASE: PhaseName = PhaseName::Addons;

/// `(namespace, label selector)` of a rendered workload (a DaemonSet or Deployment), from its
/// API path and its JSON.
fn workload(api_path: &str, json: &str) -> Option<(String, String)> {
    let rest = api_path.strip_prefix("/apis/apps/v1/namespaces/")?;
    let (ns, kind) = rest.split_once('/')?;
    if !(kind.starts_with("daemonsets/") || kind.starts_with("deployments/")) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let labels = v.pointer("/spec/selector/matchLabels")?.as_object()?;
    let selector: Vec<String> = labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    (!selector.is_empty()).then(|| (ns.to_owned(), selector.join(",")))
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
    let mut restarted = 0;
    for o in &cx.rendered.objects {
        let Some((ns, selector)) = workload(&o.api_path, &o.json) else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        )
        .await
        .with_context(|| format!("phase {PHASE}: deleting the pods of {}", o.api_path))?;
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
            "after the restore: the pods of {restarted} Strata workload(s) started again{nodes}; \
             workloads with controllers of their own may need a restart too"
        ),
    );
    cx.state.restored = None;
    cx.save_state()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_found_by_path_and_selector() {
        let ds =
            r#"{"kind":"DaemonSet","spec":{"selector":{"matchLabels":{"app":"strata-overlay"}}}}"#;
        assert_eq!(
            workload(
                "/apis/apps/v1/namespaces/strata-system/daemonsets/strata-overlay",
                ds
            ),
            Some(("strata-system".into(), "app=strata-overlay".into()))
        );
        assert_eq!(
            workload("/apis/rbac.authorization.k8s.io/v1/clusterroles/x", ds),
            None
        );
        assert_eq!(
            workload(
                "/apis/apps/v1/namespaces/kube-system/deployments/strata-dns",
                "{}"
            ),
            None
        );
        assert_eq!(
            gone_hosts(
                &["cp1".into(), "w1".into(), "w2".into()],
                &["cp1", "w2", "w3"]
            ),
            ["w1"]
        );
    }
}
