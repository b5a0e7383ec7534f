//! Draining a node through the Eviction API, which honours PodDisruptionBudgets: a refused
//! eviction (429) is retried on the next pass until the drain timeout. The Eviction's API
//! version is the one the server lists for `pods/eviction` (policy/v1 from 1.22,
//! policy/v1beta1 on 1.20). The client given must not retry 429 by itself (kube's
//! `Config::default_retry`, on by default, waits a refused eviction out for up to 1,000 s
//! per request): turn it off, as the update operator and `strata apply` do.

#![forbid(unsafe_code)]

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// A pod a drain must move: not a mirror pod, not a DaemonSet's, not finished.
pub fn drainable(p: &Pod) -> bool {
    let mirror = p.annotations().contains_key("kubernetes.io/config.mirror");
    let daemon = p
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    !mirror && !daemon && !finished
}

fn has_empty_dir(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()))
}

/// The pods on `node` a drain must move.
pub async fn pods_on(client: &Client, node: &str) -> Result<Vec<Pod>, DrainError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(pods
        .list(&lp)
        .await
        .map_err(|source| DrainError::Api {
            what: format!("listing the pods on {node}"),
            source,
        })?
        .items
        .into_iter()
        .filter(drainable)
        .collect())
}

/// `policy/v1` or `policy/v1beta1`: what the server serves for `pods/eviction`.
pub async fn eviction_version(client: &Client) -> Result<String, DrainError> {
    let list = client
        .list_core_api_resources("v1")
        .await
        .map_err(|source| DrainError::Api {
            what: "discovering the Eviction version".into(),
            source,
        })?;
    let r = list.resources.iter().find(|r| r.name == "pods/eviction");
    Ok(match r {
        Some(r) => format!(
            "{}/{}",
            r.group.as_deref().unwrap_or("policy"),
            r.version.as_deref().unwrap_or("v1beta1")
        ),
        None => "policy/v1beta1".into(),
    })
}

/// One pass of a drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub remaining: u32,
    /// `namespace/name: why` for each pod whose eviction is refused for now.
    pub blocked: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub eviction_version: String,
    pub grace_period_seconds: Option<i64>,
    pub delete_empty_dir_data: bool,
}

/// Asks to evict every pod still on `node` (pods already terminating are waited for).
pub async fn drain_pass(
    client: &Client,
    node: &str,
    o: &DrainOptions,
) -> Result<Progress, DrainError> {
    let pods = pods_on(client, node).await?;
    let mut progress = Progress {
        remaining: pods.len() as u32,
        blocked: Vec::new(),
    };
    for p in &pods {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if has_empty_dir(p) && !o.delete_empty_dir_data {
            progress.blocked.push(format!(
                "{ns}/{name}: has emptyDir data (drain.deleteEmptyDirData is false)"
            ));
            continue;
        }
        let mut body = json!({
            "apiVersion": o.eviction_version,
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        if let Some(g) = o.grace_period_seconds {
            body["deleteOptions"] = json!({"gracePeriodSeconds": g});
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let r: Result<serde_json::Value, _> = api
            .create_subresource("eviction", &name, &PostParams::default(), &body)
            .await;
        match r {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                progress.remaining = progress.remaining.saturating_sub(1);
            }
            Err(kube::Error::Api(s)) if s.code == 429 || s.code == 500 => {
                progress.blocked.push(format!("{ns}/{name}: {}", s.message));
            }
            Err(source) => {
                return Err(DrainError::Api {
                    what: format!("evicting {ns}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(progress)
}
