//! Cluster-wide objects the components need at start, as typed Kubernetes API values.
//! Addons add theirs to the same list; `apply` sends each with server-side apply.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use crate::model::Cluster;
use crate::render::{ClusterObject, RenderError, to_json, to_yaml};

/// The Lease whose holder holds the control plane's virtual IP (kube-system).
pub const VIP_LEASE: &str = "strata-vip";

/// Label on everything Strata creates in the cluster.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "strata");

pub(crate) fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
        ..ObjectMeta::default()
    }
}

pub(crate) fn binding(
    name: &str,
    role: &str,
    subject_kind: &str,
    subject: &str,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: subject_kind.into(),
            name: subject.into(),
            ..Subject::default()
        }]),
    }
}

/// An object with its file name and API path (namespaced when its metadata has a namespace).
pub(crate) fn object<T>(file: &str, obj: &T) -> Result<ClusterObject, RenderError>
where
    T: Resource + Metadata<Ty = ObjectMeta> + serde::Serialize,
{
    let name = obj.metadata().name.clone().unwrap_or_default();
    let group_version = if T::GROUP.is_empty() {
        format!("/api/{}", T::VERSION)
    } else {
        format!("/apis/{}/{}", T::GROUP, T::VERSION)
    };
    let api_path = match &obj.metadata().namespace {
        Some(ns) => format!(
            "{group_version}/namespaces/{ns}/{}/{name}",
            T::URL_PATH_SEGMENT
        ),
        None => format!("{group_version}/{}/{name}", T::URL_PATH_SEGMENT),
    };
    Ok(ClusterObject {
        file: file.into(),
        api_path,
        host: None,
        yaml: to_yaml(T::KIND, obj)?,
        json: to_json(T::KIND, obj)?,
    })
}

/// An object of a kind k8s-openapi does not know (the update API's, PodSecurityPolicy), by
/// its API path.
pub(crate) fn custom(
    file: &str,
    api_path: String,
    value: &impl serde::Serialize,
) -> Result<ClusterObject, RenderError> {
    Ok(ClusterObject {
        file: file.into(),
        api_path,
        host: None,
        yaml: to_yaml(file, value)?,
        json: to_json(file, value)?,
    })
}

impl ClusterObject {
    /// The object exists for host `name` (see [`ClusterObject::host`]).
    pub(crate) fn for_host(mut self, name: &str) -> Self {
        self.host = Some(name.to_owned());
        self
    }
}

pub fn cluster_objects(cluster: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    // The API server reaches kubelets (logs, exec, port-forward, metrics) as
    // kube-apiserver-kubelet-client: that identity gets the kubelet API and nothing else.
    let kubelet_api = ClusterRole {
        metadata: meta("strata:kube-apiserver-to-kubelet"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(
                [
                    "nodes/proxy",
                    "nodes/stats",
                    "nodes/log",
                    "nodes/spec",
                    "nodes/metrics",
                ]
                .map(String::from)
                .to_vec(),
            ),
            // What the API server does there (logs, exec, attach, port-forward, metrics).
            verbs: [
                "get", "list", "watch", "create", "update", "patch", "delete",
            ]
            .map(String::from)
            .to_vec(),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    let kubelet_api_binding = binding(
        "strata:kube-apiserver-to-kubelet",
        "strata:kube-apiserver-to-kubelet",
        "User",
        "kube-apiserver-kubelet-client",
    );
    // kube-proxy watches Services and EndpointSlices with its own client certificate.
    let proxier = binding(
        "strata:kube-proxy",
        "system:node-proxier",
        "User",
        "system:kube-proxy",
    );
    // Kubelets renew their client certificates (rotateCertificates) through CSRs that the
    // controller-manager approves for the node's own identity only.
    let renewal = binding(
        "strata:node-client-certificate-renewal",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        "Group",
        "system:nodes",
    );
    Ok([
        object(
            "rbac-kube-apiserver-to-kubelet.clusterrole.yaml",
            &kubelet_api,
        )?,
        object(
            "rbac-kube-apiserver-to-kubelet.clusterrolebinding.yaml",
            &kubelet_api_binding,
        )?,
        object("rbac-kube-proxy.clusterrolebinding.yaml", &proxier)?,
        object(
            "rbac-node-client-certificate-renewal.clusterrolebinding.yaml",
            &renewal,
        )?,
    ]
    .into_iter()
    .chain(crate::addons::namespace(cluster)?)
    .chain(crate::pod_security::objects(cluster)?)
    .chain(crate::addons::overlay(cluster)?)
    .chain(crate::addons::update_operator(cluster)?)
    .chain(crate::addons::dns(cluster)?)
    .chain(vip_objects(cluster)?)
    .collect())
}

/// The Lease the virtual IP's holder renews, and the right of the control-plane hosts'
/// agents (each by name) to read and renew that Lease, nothing else.
fn vip_objects(cluster: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    if cluster.spec.control_plane.vip.is_none() {
        return Ok(Vec::new());
    }
    let namespaced = |name: &str| ObjectMeta {
        namespace: Some("kube-system".into()),
        ..meta(name)
    };
    let lease = Lease {
        metadata: namespaced(VIP_LEASE),
        spec: None,
    };
    let role = Role {
        metadata: namespaced("strata:vip"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            resource_names: Some(vec![VIP_LEASE.into()]),
            verbs: vec!["get".into(), "update".into()],
            ..PolicyRule::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: namespaced("strata:vip"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "strata:vip".into(),
        },
        // The control-plane hosts of the file by name, not their group: a host taken out
        // of the file (its certificate still valid) can no longer take the address.
        subjects: Some(
            crate::catalog::hosts_running(cluster, crate::catalog::Component::Vip)
                .map(|h| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "User".into(),
                    name: format!("strata:vip:{}", h.name),
                    ..Subject::default()
                })
                .collect(),
        ),
    };
    Ok(vec![
        object("vip.lease.yaml", &lease)?,
        object("rbac-vip.role.yaml", &role)?,
        object("rbac-vip.rolebinding.yaml", &role_binding)?,
    ])
}
