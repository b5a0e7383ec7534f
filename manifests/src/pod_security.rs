//! What keeps a pod from becoming cluster-admin: control-plane hosts (which hold ca.key and
//! sa.key) are tainted, and every pod is judged by a pod security mechanism.
//!
//! - Taints: a host with the control-plane role and without the worker role registers with
//!   the release's control-plane taints ([`control_plane_taints`]); giving a host the worker
//!   role too (as a one-host cluster does) is how a Cluster file keeps it schedulable. The
//!   addons that must run there tolerate every key ([`control_plane_tolerations`]).
//! - Through 1.24, PodSecurityPolicy ([`objects`]): `strata-restricted` for every
//!   authenticated user and service account (no host namespaces, paths or ports, no
//!   privilege, all capabilities dropped, a non-root user), `strata-privileged` only for the
//!   service accounts of kube-system and strata-system. The controller-manager runs its
//!   controllers with their own credentials (`--use-service-account-credentials`), so the
//!   pods of a Deployment are judged by their own service account, not by the controller's.
//!   Cluster-admins may use every policy (RBAC `*` includes `use`), by design.
//! - From 1.25, Pod Security admission ([`admission_configuration`]): `baseline` enforced,
//!   `restricted` warned and audited, the two system namespaces exempt.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint, Toleration};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::addons::NAMESPACE;
use crate::catalog::Component;
use crate::model::{Cluster, Host, Role};
use crate::objects::{custom, meta, object};
use crate::render::{ClusterObject, RenderError};
use crate::versions::{self, Item};

/// The label of control-plane nodes (set through the API: NodeRestriction forbids the kubelet).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Every control-plane taint key any supported release uses.
pub const CONTROL_PLANE_TAINT_KEYS: [&str; 2] = [
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/control-plane",
];

/// The taint keys release 1.`minor` puts on control-plane nodes (effect NoSchedule).
pub fn control_plane_taints(minor: u32) -> Vec<&'static str> {
    [
        (Item::ControlPlaneTaintMaster, CONTROL_PLANE_TAINT_KEYS[0]),
        (
            Item::ControlPlaneTaintControlPlane,
            CONTROL_PLANE_TAINT_KEYS[1],
        ),
    ]
    .into_iter()
    .filter(|(item, _)| versions::uses(*item, minor))
    .map(|(_, key)| key)
    .collect()
}

/// Whether `h` is tainted as a control-plane node: it runs the control plane and the Cluster
/// file did not also make it a worker.
pub fn is_tainted(h: &Host) -> bool {
    h.has_role(Role::ControlPlane) && !h.has_role(Role::Worker)
}

/// The control-plane taints of host `h` under release 1.`minor` (none when not tainted).
pub fn taints_of(h: &Host, minor: u32) -> Vec<&'static str> {
    if is_tainted(h) {
        control_plane_taints(minor)
    } else {
        Vec::new()
    }
}

/// The Node host `h`'s kubelet registers (its `--node-labels` and `--register-with-taints`):
/// the host's labels, the control-plane taints ([`taints_of`]) and the host's own taints.
/// `apply` creates it ahead of a kubelet that has not registered yet, and a kubelet keeps
/// the labels and taints of a Node that exists, so both must say the same.
pub fn registered_node(h: &Host, minor: u32) -> Node {
    let taints: Vec<Taint> = taints_of(h, minor)
        .into_iter()
        .map(|key| Taint {
            key: key.to_owned(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        })
        .chain(h.taints.iter().map(|t| Taint {
            key: t.key.clone(),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: format!("{:?}", t.effect),
            ..Taint::default()
        }))
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(h.name.to_string()),
            labels: (!h.labels.is_empty()).then(|| h.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..NodeSpec::default()
        }),
        // Room for no pod until the kubelet reports its own, unless apply knows the host's
        // (see kubelet_room). Not empty: a kubelet (1.20)
        // taking over a Node without capacity panics (it adds its huge page sizes to the
        // Node's capacity map, which an empty map read back from the API server is not).
        status: Some(NodeStatus {
            capacity: Some(no_pods()),
            allocatable: Some(no_pods()),
            ..NodeStatus::default()
        }),
    }
}

/// Pods per node: the kubelet's default, which Strata keeps.
pub const KUBELET_MAX_PODS: u32 = 110;
/// The kubelet's hard eviction floor for memory (its default, and what the local platform
/// sets): kept out of the node's allocatable memory.
pub const KUBELET_MEMORY_EVICTION_KIB: u64 = 100 * 1024;

/// The capacity and allocatable room a kubelet will report for a host of `cpus` logical
/// processors and `memory_kib` total memory (no resources reserved; the memory eviction
/// floor deducted), for the Node created ahead of it: the scheduler places its pods before
/// the kubelet's first status instead of refusing them and backing off. None when either
/// is unknown (0). Its first status replaces this with its own count (ephemeral storage
/// and huge pages included).
pub fn kubelet_room(cpus: u32, memory_kib: u64) -> Option<NodeStatus> {
    if cpus == 0 || memory_kib <= KUBELET_MEMORY_EVICTION_KIB {
        return None;
    }
    let room = |memory: u64| -> BTreeMap<String, Quantity> {
        [
            ("cpu".to_owned(), Quantity(cpus.to_string())),
            ("memory".to_owned(), Quantity(format!("{memory}Ki"))),
            ("pods".to_owned(), Quantity(KUBELET_MAX_PODS.to_string())),
        ]
        .into()
    };
    Some(NodeStatus {
        capacity: Some(room(memory_kib)),
        allocatable: Some(room(memory_kib - KUBELET_MEMORY_EVICTION_KIB)),
        ..NodeStatus::default()
    })
}

fn no_pods() -> BTreeMap<String, Quantity> {
    [("pods".to_owned(), Quantity("0".into()))].into()
}

/// Tolerations of every control-plane taint key, for the pods that must run there.
pub fn control_plane_tolerations() -> Vec<Toleration> {
    CONTROL_PLANE_TAINT_KEYS
        .iter()
        .map(|key| Toleration {
            key: Some((*key).to_owned()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        })
        .collect()
}

/// Admission plugins the API server enables for release 1.`minor` (Pod Security admission is
/// on by default from 1.23 and needs no entry).
pub fn admission_plugins(minor: u32) -> &'static str {
    if versions::uses(Item::PodSecurityPolicy, minor) {
        "NodeRestriction,PodSecurityPolicy"
    } else {
        "NodeRestriction"
    }
}

/// The API server's admission configuration (from 1.25: Pod Security admission's defaults).
pub fn admission_configuration(minor: u32) -> Option<String> {
    versions::uses(Item::PodSecurityAdmission, minor).then(|| {
        format!(
            "# Written by Strata; changes are overwritten by `strata apply`.
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
      audit: restricted
      audit-version: latest
      warn: restricted
      warn-version: latest
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: [kube-system, {NAMESPACE}]
"
        )
    })
}

/// `policy/v1beta1` PodSecurityPolicy: removed from the API in 1.25, so not in k8s-openapi;
/// the fields Strata sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityPolicy {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: PodSecurityPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityPolicySpec {
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_drop_capabilities: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_capabilities: Vec<&'static str>,
    pub volumes: Vec<&'static str>,
    pub host_network: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<Range>,
    #[serde(rename = "hostPID")]
    pub host_pid: bool,
    #[serde(rename = "hostIPC")]
    pub host_ipc: bool,
    pub run_as_user: Strategy,
    #[serde(rename = "seLinux")]
    pub se_linux: Strategy,
    pub supplemental_groups: Strategy,
    pub fs_group: Strategy,
    pub read_only_root_filesystem: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Strategy {
    pub rule: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
}

impl Strategy {
    fn any() -> Self {
        Self {
            rule: "RunAsAny",
            ranges: Vec::new(),
        }
    }
    fn non_root_ids() -> Self {
        Self {
            rule: "MustRunAs",
            ranges: vec![Range { min: 1, max: 65535 }],
        }
    }
}

pub const RESTRICTED: &str = "strata-restricted";
pub const PRIVILEGED: &str = "strata-privileged";

/// What any authenticated user's pods get: the Kubernetes project's "restricted" example.
pub fn restricted() -> PodSecurityPolicy {
    // The container runtime's default seccomp profile unless the pod names it.
    let mut metadata = meta(RESTRICTED);
    metadata.annotations = Some(
        [
            (
                "seccomp.security.alpha.kubernetes.io/allowedProfileNames",
                "runtime/default,docker/default",
            ),
            (
                "seccomp.security.alpha.kubernetes.io/defaultProfileName",
                "runtime/default",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    PodSecurityPolicy {
        api_version: "policy/v1beta1",
        kind: "PodSecurityPolicy",
        metadata,
        spec: PodSecurityPolicySpec {
            privileged: false,
            allow_privilege_escalation: false,
            required_drop_capabilities: vec!["ALL"],
            allowed_capabilities: Vec::new(),
            volumes: vec![
                "configMap",
                "emptyDir",
                "projected",
                "secret",
                "downwardAPI",
                "csi",
                "persistentVolumeClaim",
                "ephemeral",
            ],
            host_network: false,
            host_ports: Vec::new(),
            host_pid: false,
            host_ipc: false,
            run_as_user: Strategy {
                rule: "MustRunAsNonRoot",
                ranges: Vec::new(),
            },
            se_linux: Strategy::any(),
            supplemental_groups: Strategy::non_root_ids(),
            fs_group: Strategy::non_root_ids(),
            read_only_root_filesystem: false,
        },
    }
}

/// What the system namespaces' service accounts get: anything.
pub fn privileged() -> PodSecurityPolicy {
    PodSecurityPolicy {
        api_version: "policy/v1beta1",
        kind: "PodSecurityPolicy",
        metadata: meta(PRIVILEGED),
        spec: PodSecurityPolicySpec {
            privileged: true,
            allow_privilege_escalation: true,
            required_drop_capabilities: Vec::new(),
            allowed_capabilities: vec!["*"],
            volumes: vec!["*"],
            host_network: true,
            host_ports: vec![Range { min: 0, max: 65535 }],
            host_pid: true,
            host_ipc: true,
            run_as_user: Strategy::any(),
            se_linux: Strategy::any(),
            supplemental_groups: Strategy::any(),
            fs_group: Strategy::any(),
            read_only_root_filesystem: false,
        },
    }
}

fn use_role(name: &str, policy: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["policy".into()]),
            resources: Some(vec!["podsecuritypolicies".into()]),
            verbs: vec!["use".into()],
            resource_names: Some(vec![policy.into()]),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    }
}

fn group(name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "Group".into(),
        name: name.into(),
        ..Subject::default()
    }
}

fn cluster_role_ref(name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: name.into(),
    }
}

/// The namespaces whose service accounts may run privileged pods.
fn system_namespaces(c: &Cluster) -> Vec<&'static str> {
    let addons = [Component::Overlay, Component::UpdateOperator];
    let mut out = vec!["kube-system"];
    if addons.iter().any(|a| a.enabled(c)) {
        out.push(NAMESPACE);
    }
    out
}

/// The policies and who may use them (through 1.24; none from 1.25).
pub fn objects(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    let minor = c.spec.kubernetes.version.minor();
    if !versions::uses(Item::PodSecurityPolicy, minor) {
        return Ok(Vec::new());
    }
    let psp = |p: PodSecurityPolicy| {
        let name = p.metadata.name.clone().unwrap_or_default();
        custom(
            &format!("pod-security-policy-{name}.yaml"),
            format!("/apis/policy/v1beta1/podsecuritypolicies/{name}"),
            &p,
        )
    };
    let restricted_role = format!("strata:psp:{RESTRICTED}");
    let privileged_role = format!("strata:psp:{PRIVILEGED}");
    let everyone = ClusterRoleBinding {
        metadata: meta(&restricted_role),
        role_ref: cluster_role_ref(&restricted_role),
        subjects: Some(vec![group("system:authenticated")]),
    };
    let mut out = vec![
        psp(restricted())?,
        psp(privileged())?,
        object(
            "pod-security-restricted.clusterrole.yaml",
            &use_role(&restricted_role, RESTRICTED),
        )?,
        object(
            "pod-security-privileged.clusterrole.yaml",
            &use_role(&privileged_role, PRIVILEGED),
        )?,
        object("pod-security-restricted.clusterrolebinding.yaml", &everyone)?,
    ];
    for ns in system_namespaces(c) {
        let binding = RoleBinding {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                ..meta(&privileged_role)
            },
            role_ref: cluster_role_ref(&privileged_role),
            subjects: Some(vec![group(&format!("system:serviceaccounts:{ns}"))]),
        };
        out.push(object(
            &format!("pod-security-privileged-{ns}.rolebinding.yaml"),
            &binding,
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_the_release_and_the_worker_role() {
        assert_eq!(control_plane_taints(20), ["node-role.kubernetes.io/master"]);
        assert_eq!(control_plane_taints(24), CONTROL_PLANE_TAINT_KEYS);
        assert_eq!(
            control_plane_taints(25),
            ["node-role.kubernetes.io/control-plane"]
        );
        let host = |roles: &str| -> Host {
            serde_saphyr::from_str(&format!("{{name: h, roles: [{roles}]}}")).expect("host")
        };
        assert!(is_tainted(&host("etcd, control-plane")));
        assert!(!is_tainted(&host("etcd, control-plane, worker")));
        assert!(!is_tainted(&host("worker")));
        assert!(taints_of(&host("worker"), 20).is_empty());
    }

    #[test]
    fn restricted_allows_nothing_of_the_host() {
        let r = restricted().spec;
        assert!(!r.privileged && !r.allow_privilege_escalation);
        assert!(!r.host_network && !r.host_pid && !r.host_ipc && r.host_ports.is_empty());
        assert!(!r.volumes.contains(&"hostPath") && !r.volumes.contains(&"*"));
        assert_eq!(r.required_drop_capabilities, ["ALL"]);
        assert_eq!(r.run_as_user.rule, "MustRunAsNonRoot");
    }

    #[test]
    fn one_mechanism_per_release() {
        assert_eq!(admission_plugins(24), "NodeRestriction,PodSecurityPolicy");
        assert!(admission_configuration(24).is_none());
        assert_eq!(admission_plugins(25), "NodeRestriction");
        let conf = admission_configuration(25).expect("from 1.25");
        assert!(conf.contains("enforce: baseline") && conf.contains("warn: restricted"));
    }
}
