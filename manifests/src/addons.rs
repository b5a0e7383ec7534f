//! Addon objects, applied with the cluster objects (server-side apply, in this order).
//!
//! The overlay: the `strata-overlay` agent as a DaemonSet on every node (host network,
//! NET_ADMIN only), with a ServiceAccount that may read Nodes and annotate them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, Namespace, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, ServiceAccount, Toleration,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::model::Cluster;
use crate::objects::{binding, meta, object};
use crate::render::{ClusterObject, RenderError};

/// The namespace of Strata's addons.
pub const NAMESPACE: &str = "strata-system";

/// The image of the overlay agent this Strata builds (`.ci/build-assets`).
pub fn overlay_image() -> String {
    format!("strata.dev/overlay:{}", env!("CARGO_PKG_VERSION"))
}

fn namespaced(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NAMESPACE.into()),
        ..meta(name)
    }
}

/// The overlay's objects (none when `spec.addons.overlay.enabled` is false).
pub fn overlay(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    if !c.spec.addons.overlay.enabled {
        return Ok(Vec::new());
    }
    let name = "strata-overlay";
    let labels: BTreeMap<String, String> = [("app.kubernetes.io/name".into(), name.into())].into();
    let ns = Namespace {
        metadata: meta(NAMESPACE),
        ..Namespace::default()
    };
    let sa = ServiceAccount {
        metadata: namespaced(name),
        ..ServiceAccount::default()
    };
    // Nodes only: read them all (peers), patch (its own annotations).
    let role = ClusterRole {
        metadata: meta("strata:overlay"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".into()]),
            verbs: ["get", "list", "watch", "patch"].map(String::from).to_vec(),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    let mut role_binding = binding("strata:overlay", "strata:overlay", "ServiceAccount", name);
    role_binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(NAMESPACE.into()),
        ..Subject::default()
    }]);
    let net = &c.spec.network.overlay;
    let container = Container {
        name: "agent".into(),
        image: Some(overlay_image()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(
            [
                "/strata-overlay".to_string(),
                "run".into(),
                "--device".into(),
                "strata.1".into(),
                "--vni".into(),
                net.vni.to_string(),
                "--port".into(),
                net.port.to_string(),
            ]
            .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity("10m".into())),
                    ("memory".to_string(), Quantity("16Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let ds = DaemonSet {
        metadata: namespaced(name),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    host_network: Some(true),
                    service_account_name: Some(name.into()),
                    // Every node, control plane and tainted ones included.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Toleration::default()
                    }]),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    };
    Ok(vec![
        object("overlay-1-namespace.yaml", &ns)?,
        object("overlay-2-serviceaccount.yaml", &sa)?,
        object("overlay-3-clusterrole.yaml", &role)?,
        object("overlay-4-clusterrolebinding.yaml", &role_binding)?,
        object("overlay-5-daemonset.yaml", &ds)?,
    ])
}
