//! Addon objects, applied with the cluster objects (server-side apply, in this order).
//!
//! The overlay: the `strata-overlay` agent as a DaemonSet on every node (host network,
//! NET_ADMIN only), with a ServiceAccount that may read Nodes and annotate them.
//!
//! The update operator: its CRDs, the operator, the per-node agents and the default policy
//! (see [`update_operator`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use strata_overlay_api::{OverlayNode, OverlayNodeSpec};
use strata_update_api::{UpdatePolicyApply, UpdatePolicyApplySpec, WindowSpec};

use crate::images::StrataImage;
use crate::model::Cluster;
use crate::objects::{binding, custom, meta, object};
use crate::render::{ClusterObject, RenderError};

/// The namespace of Strata's addons.
pub const NAMESPACE: &str = "strata-system";

/// The addons' namespace, when the cluster runs any addon.
pub fn namespace(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    let addons = [
        crate::catalog::Component::Overlay,
        crate::catalog::Component::UpdateOperator,
    ];
    if !addons.iter().any(|a| a.enabled(c)) {
        return Ok(Vec::new());
    }
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: meta(NAMESPACE),
        ..Default::default()
    };
    Ok(vec![object("addons-namespace.yaml", &ns)?])
}

fn namespaced(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NAMESPACE.into()),
        ..meta(name)
    }
}

/// The namespace, Service name and pod label cluster DNS keeps, as kubeadm does for CoreDNS
/// (tools, NodeLocal DNSCache and some e2e tests look for them).
pub const DNS_NAMESPACE: &str = "kube-system";
pub const DNS_SERVICE: &str = "kube-dns";
/// The port strata-dns listens on in its pod (unprivileged: it runs as nobody); the Service
/// maps port 53 to it.
pub const DNS_POD_PORT: i32 = 1053;

/// Cluster DNS (none when `spec.addons.dns.enabled` is false): strata-dns as a Deployment of
/// two replicas spread across nodes, the `kube-dns` Service at the tenth address of the
/// service range, a PodDisruptionBudget, and RBAC to watch Services, Endpoints and Nodes.
pub fn dns(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    if !c.spec.addons.dns.enabled {
        return Ok(Vec::new());
    }
    let name = "strata-dns";
    let in_ns = |n: &str| ObjectMeta {
        namespace: Some(DNS_NAMESPACE.into()),
        ..meta(n)
    };
    let labels: BTreeMap<String, String> = [
        ("k8s-app".to_owned(), DNS_SERVICE.to_owned()),
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
    ]
    .into();
    let selector: BTreeMap<String, String> =
        [("k8s-app".to_owned(), DNS_SERVICE.to_owned())].into();
    let sa = ServiceAccount {
        metadata: in_ns(name),
        // Its pods watch Services, Endpoints and Nodes with it.
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let slices = crate::versions::uses(
        crate::versions::Item::EndpointSliceV1,
        c.spec.kubernetes.version.minor(),
    );
    // Endpoints from EndpointSlices where they are GA, core/v1 Endpoints before: one or the
    // other, never both.
    let role = ClusterRole {
        metadata: meta("strata:dns"),
        rules: Some(if slices {
            vec![
                rule(&[""], &["services", "nodes"], &["list", "watch"], &[]),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                    &[],
                ),
            ]
        } else {
            vec![rule(
                &[""],
                &["services", "endpoints", "nodes"],
                &["list", "watch"],
                &[],
            )]
        }),
        ..ClusterRole::default()
    };
    let mut role_binding = binding("strata:dns", "strata:dns", "ServiceAccount", name);
    role_binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(DNS_NAMESPACE.into()),
        ..Subject::default()
    }]);
    let net = &c.spec.network;
    let mut args = vec![
        "--zone".to_owned(),
        net.cluster_domain.to_string(),
        "--listen".into(),
        format!("0.0.0.0:{DNS_POD_PORT}"),
        "--reverse".into(),
        net.service_cidr.net().to_string(),
        "--reverse".into(),
        net.pod_cidr.net().to_string(),
        "--recursion-for".into(),
        net.pod_cidr.net().to_string(),
    ];
    if slices {
        args.push("--endpoint-slices".into());
    }
    for u in &net.dns.upstreams {
        args.push("--upstream".into());
        args.push(u.to_string());
    }
    let port = |name: &str, port: i32, protocol: &str| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(protocol.into()),
        ..ContainerPort::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(8080),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let container = Container {
        name: "dns".into(),
        image: Some(StrataImage::Dns.reference(c)),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["/strata-dns".into()]),
        args: Some(args),
        ports: Some(vec![
            port("dns", DNS_POD_PORT, "UDP"),
            port("dns-tcp", DNS_POD_PORT, "TCP"),
            port("http", 8080, "TCP"),
        ]),
        readiness_probe: Some(probe("/ready")),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            failure_threshold: Some(5),
            ..probe("/health")
        }),
        security_context: Some(locked_down(65534)),
        resources: Some(small("128Mi")),
        ..Container::default()
    };
    let mut tolerations = crate::pod_security::control_plane_tolerations();
    tolerations.push(Toleration {
        key: Some("CriticalAddonsOnly".into()),
        operator: Some("Exists".into()),
        ..Toleration::default()
    });
    let pod = PodSpec {
        service_account_name: Some(name.into()),
        priority_class_name: Some("system-cluster-critical".into()),
        // The nodes' resolv.conf: the upstreams, never itself.
        dns_policy: Some("Default".into()),
        // Spread, but a one-host cluster still runs both.
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(selector.clone()),
                                ..LabelSelector::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        tolerations: Some(tolerations),
        containers: vec![container],
        termination_grace_period_seconds: Some(5),
        ..PodSpec::default()
    };
    let deployment = deployment(
        in_ns(name),
        2,
        &selector,
        labels.clone(),
        // One at a time: a rollout never leaves the cluster without DNS.
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: Some(IntOrString::Int(0)),
            }),
        },
        pod,
    );
    let service_port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.into()),
        port: 53,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    };
    let mut service_meta = in_ns(DNS_SERVICE);
    service_meta.labels.get_or_insert_default().extend([
        ("k8s-app".to_owned(), DNS_SERVICE.to_owned()),
        ("kubernetes.io/name".to_owned(), "strata-dns".to_owned()),
    ]);
    // Where a Prometheus that discovers by annotation finds /metrics (as kubeadm marks
    // CoreDNS's Service).
    service_meta.annotations = Some(
        [
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), "8080".to_owned()),
        ]
        .into(),
    );
    let service = Service {
        metadata: service_meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some(crate::render::cluster_dns_address(c).to_string()),
            selector: Some(selector.clone()),
            ports: Some(vec![
                service_port("dns", "UDP"),
                service_port("dns-tcp", "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb_version = if crate::versions::uses(
        crate::versions::Item::PodDisruptionBudgetV1,
        c.spec.kubernetes.version.minor(),
    ) {
        "policy/v1"
    } else {
        "policy/v1beta1"
    };
    let pdb = serde_json::json!({
        "apiVersion": pdb_version,
        "kind": "PodDisruptionBudget",
        "metadata": in_ns(name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    });
    Ok(vec![
        object("dns-1-serviceaccount.yaml", &sa)?,
        object("dns-2-clusterrole.yaml", &role)?,
        object("dns-3-clusterrolebinding.yaml", &role_binding)?,
        object("dns-4-deployment.yaml", &deployment)?,
        object("dns-5-service.yaml", &service)?,
        custom(
            "dns-6-poddisruptionbudget.yaml",
            format!("/apis/{pdb_version}/namespaces/{DNS_NAMESPACE}/poddisruptionbudgets/{name}"),
            &pdb,
        )?,
    ])
}

/// Where each node's overlay agent finds its own identity (a kubeconfig with the node's
/// `strata:overlay:<node>` certificate).
pub const OVERLAY_DIR: &str = "/etc/strata/overlay";

/// The overlay agents' DaemonSet (in [`NAMESPACE`]).
pub const OVERLAY_DAEMONSET: &str = "strata-overlay";

/// The update agents' DaemonSet (in [`NAMESPACE`]).
pub const UPDATE_AGENT_DAEMONSET: &str = "strata-update-agent";

/// The overlay's objects (none when `spec.addons.overlay.enabled` is false): the OverlayNode
/// CRD and one OverlayNode per host (empty: its agent publishes into it), read access for
/// every agent, per node the right to write only that node's OverlayNode, and the DaemonSet.
/// No agent may write Nodes.
pub fn overlay(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    if !c.spec.addons.overlay.enabled {
        return Ok(Vec::new());
    }
    let name = OVERLAY_DAEMONSET;
    let g = "overlay.strata.dev";
    let labels: BTreeMap<String, String> = [("app.kubernetes.io/name".into(), name.into())].into();
    let (crd_name, crd) = strata_overlay_api::crd();
    let mut out = vec![custom(
        "overlay-1-crd.yaml",
        format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"),
        &crd,
    )?];
    // Every agent reads Nodes (pod subnets, addresses) and every node's overlay data.
    let agents = "strata:overlays";
    let role = ClusterRole {
        metadata: meta("strata:overlay"),
        rules: Some(vec![
            rule(&[""], &["nodes"], &["get", "list", "watch"], &[]),
            rule(&[g], &["overlaynodes"], &["get", "list", "watch"], &[]),
        ]),
        ..ClusterRole::default()
    };
    let mut role_binding = binding("strata:overlay", "strata:overlay", "Group", agents);
    role_binding.subjects = Some(vec![Subject {
        kind: "Group".into(),
        name: agents.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Subject::default()
    }]);
    out.push(object("overlay-3-clusterrole.yaml", &role)?);
    out.push(object("overlay-4-clusterrolebinding.yaml", &role_binding)?);
    for h in &c.spec.hosts {
        let node = h.name.as_str();
        let role_name = format!("strata:overlay:{node}");
        let r = ClusterRole {
            metadata: meta(&role_name),
            rules: Some(vec![rule(
                &[g],
                &["overlaynodes"],
                &["get", "update", "patch"],
                &[node],
            )]),
            ..ClusterRole::default()
        };
        let mut b = binding(&role_name, &role_name, "User", &role_name);
        b.subjects = Some(vec![Subject {
            kind: "User".into(),
            name: role_name.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]);
        out.push(object(&format!("overlay-6-{node}.clusterrole.yaml"), &r)?.for_host(node));
        out.push(object(&format!("overlay-6-{node}.clusterrolebinding.yaml"), &b)?.for_host(node));
        // Made here, empty: RBAC cannot limit `create` to a name.
        out.push(
            custom(
                &format!("overlay-7-{node}.overlaynode.yaml"),
                format!(
                    "/apis/{}/overlaynodes/{node}",
                    strata_overlay_api::API_VERSION
                ),
                &OverlayNode::new(node, OverlayNodeSpec::default()),
            )?
            .for_host(node),
        );
    }
    let net = &c.spec.network.overlay;
    let container = Container {
        name: "agent".into(),
        image: Some(StrataImage::Overlay.reference(c)),
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
                "--cni-dir".into(),
                crate::render::CNI_DIR.into(),
            ]
            .into_iter()
            .chain(net.direct_routing.then(|| "--direct-routing".to_string()))
            .collect(),
        ),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "cni".into(),
                mount_path: crate::render::CNI_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "identity".into(),
                mount_path: OVERLAY_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        env: Some(vec![
            pod_env("NODE_NAME", "spec.nodeName"),
            EnvVar {
                name: "KUBECONFIG".into(),
                value: Some(format!("{OVERLAY_DIR}/kubeconfig")),
                ..EnvVar::default()
            },
        ]),
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
                    // It speaks as its node (the kubeconfig on the host), not as a service
                    // account every node's pod would share.
                    automount_service_account_token: Some(false),
                    // Every node, control plane and tainted ones included.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Toleration::default()
                    }]),
                    containers: vec![container],
                    // Where it writes the node's CNI configuration; its identity.
                    volumes: Some(vec![
                        host_path("cni", crate::render::CNI_DIR, "DirectoryOrCreate"),
                        host_path("identity", OVERLAY_DIR, "Directory"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    };
    out.push(object("overlay-5-daemonset.yaml", &ds)?);
    Ok(out)
}

/// Where each node's update agent finds its own identity (a kubeconfig with the node's
/// `strata:update-agent:<node>` certificate).
pub const UPDATE_AGENT_DIR: &str = "/etc/strata/update-agent";
/// The host directory the agent reads the reboot sentinel from and writes reboot requests to.
pub const UPDATE_AGENT_RUN_DIR: &str = "/run/strata/update-agent";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        verbs: v(verbs),
        resource_names: (!names.is_empty()).then(|| v(names)),
        ..PolicyRule::default()
    }
}

fn pod_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn locked_down(user: i64) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn small(memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_string(), Quantity(memory_limit.into()))].into()),
        ..ResourceRequirements::default()
    }
}

/// A Deployment of `replicas` pods from `pod`, selected by `selector`, labelled `labels`.
fn deployment(
    metadata: ObjectMeta,
    replicas: i32,
    selector: &BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    strategy: DeploymentStrategy,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

/// The update operator's objects (none when `spec.addons.updateOperator.enabled` is false):
/// CRDs, the operator (Deployment, leader Lease, Service for metrics and FleetLock), the
/// agent (DaemonSet; each node's agent speaks as `strata:update-agent:<node>`, allowed to
/// read its own Node and write its own NodeUpdate's status, nothing else), and the `default`
/// UpdatePolicy from the Cluster file.
pub fn update_operator(c: &Cluster) -> Result<Vec<ClusterObject>, RenderError> {
    let addon = &c.spec.addons.update_operator;
    if !addon.enabled {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, (name, crd)) in strata_update_api::crds().into_iter().enumerate() {
        out.push(custom(
            &format!("update-operator-0{}-crd-{name}.yaml", i + 1),
            format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"),
            &crd,
        )?);
    }

    // The operator: the only writer of locks, approvals and gate labels.
    let name = "strata-update-operator";
    let g = "update.strata.dev";
    let sa = ServiceAccount {
        metadata: namespaced(name),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let role = ClusterRole {
        metadata: meta("strata:update-operator"),
        rules: Some(vec![
            // Gate labels, cordons and uncordons.
            rule(&[""], &["nodes"], &["get", "list", "watch", "patch"], &[]),
            // Drains: the pods on a node, their evictions; deletes for drain.onTimeout: Force.
            rule(&[""], &["pods"], &["get", "list", "delete"], &[]),
            rule(&[""], &["pods/eviction"], &["create"], &[]),
            rule(
                &[g],
                &["updatepolicies", "nodeupdates", "rebootlocks"],
                &["get", "list", "watch"],
                &[],
            ),
            rule(
                &[g],
                &["nodeupdates", "rebootlocks"],
                &["create", "patch", "update"],
                &[],
            ),
            rule(
                &[g],
                &["updatepolicies/status", "rebootlocks/status"],
                &["patch", "update"],
                &[],
            ),
            rule(&[""], &["events"], &["create", "patch"], &[]),
        ]),
        ..ClusterRole::default()
    };
    let mut role_binding = binding(
        "strata:update-operator",
        "strata:update-operator",
        "ServiceAccount",
        name,
    );
    role_binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(NAMESPACE.into()),
        ..Subject::default()
    }]);
    let lease_role = Role {
        metadata: namespaced("strata:update-operator-lease"),
        rules: Some(vec![
            rule(&["coordination.k8s.io"], &["leases"], &["create"], &[]),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "update"],
                &[name],
            ),
        ]),
    };
    let lease_binding = RoleBinding {
        metadata: namespaced("strata:update-operator-lease"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "strata:update-operator-lease".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(NAMESPACE.into()),
            ..Subject::default()
        }]),
    };
    let labels: BTreeMap<String, String> = [("app.kubernetes.io/name".into(), name.into())].into();
    let operator = Container {
        name: "operator".into(),
        image: Some(StrataImage::UpdateOperator.reference(c)),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["/strata-update-operator".into(), "operator".into()]),
        env: Some(vec![
            pod_env("POD_NAME", "metadata.name"),
            pod_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            // Server-side apply on 1.20 keys ports by (port, protocol): always spelled out.
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(8080),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        }),
        security_context: Some(locked_down(65534)),
        resources: Some(small("64Mi")),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(name.into()),
        // Beside the control plane it is part of, never on a worker whose root
        // could read its token.
        node_selector: Some(BTreeMap::from([(
            crate::pod_security::CONTROL_PLANE_LABEL.to_owned(),
            String::new(),
        )])),
        tolerations: Some(crate::pod_security::control_plane_tolerations()),
        containers: vec![operator],
        termination_grace_period_seconds: Some(10),
        ..PodSpec::default()
    };
    let deployment = deployment(
        namespaced(name),
        1,
        &labels,
        labels.clone(),
        // Never two at once by choice; the Lease guards against it anyway.
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..DeploymentStrategy::default()
        },
        pod,
    );
    let service = Service {
        metadata: namespaced(name),
        spec: Some(ServiceSpec {
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    out.push(object("update-operator-2-serviceaccount.yaml", &sa)?);
    out.push(object("update-operator-3-clusterrole.yaml", &role)?);
    out.push(object(
        "update-operator-4-clusterrolebinding.yaml",
        &role_binding,
    )?);
    out.push(object("update-operator-5-lease-role.yaml", &lease_role)?);
    out.push(object(
        "update-operator-6-lease-rolebinding.yaml",
        &lease_binding,
    )?);
    out.push(object("update-operator-7-deployment.yaml", &deployment)?);
    out.push(object("update-operator-8-service.yaml", &service)?);

    // The agents: per node, what only that node's agent may read and write. No write on
    // Nodes, Pods or evictions: the operator cordons, drains and uncordons.
    for h in &c.spec.hosts {
        let node = h.name.as_str();
        let role_name = format!("strata:update-agent:{node}");
        let r = ClusterRole {
            metadata: meta(&role_name),
            rules: Some(vec![
                rule(&[""], &["nodes"], &["get"], &[node]),
                rule(&[g], &["nodeupdates"], &["get"], &[node]),
                rule(
                    &[g],
                    &["nodeupdates/status"],
                    &["get", "update", "patch"],
                    &[node],
                ),
            ]),
            ..ClusterRole::default()
        };
        let mut b = binding(&role_name, &role_name, "User", &role_name);
        b.subjects = Some(vec![Subject {
            kind: "User".into(),
            name: role_name.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]);
        out.push(
            object(
                &format!("update-operator-9-agent-{node}.clusterrole.yaml"),
                &r,
            )?
            .for_host(node),
        );
        out.push(
            object(
                &format!("update-operator-9-agent-{node}.clusterrolebinding.yaml"),
                &b,
            )?
            .for_host(node),
        );
    }
    let agent_name = UPDATE_AGENT_DAEMONSET;
    let agent_labels: BTreeMap<String, String> =
        [("app.kubernetes.io/name".into(), agent_name.into())].into();
    let agent = Container {
        name: "agent".into(),
        image: Some(StrataImage::UpdateOperator.reference(c)),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["/strata-update-operator".into(), "agent".into()]),
        env: Some(vec![
            pod_env("NODE_NAME", "spec.nodeName"),
            EnvVar {
                name: "KUBECONFIG".into(),
                value: Some(format!("{UPDATE_AGENT_DIR}/kubeconfig")),
                ..EnvVar::default()
            },
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "identity".into(),
                mount_path: UPDATE_AGENT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "run".into(),
                mount_path: UPDATE_AGENT_RUN_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        // Root only to read its 0600 kubeconfig; no capability at all.
        security_context: Some(locked_down(0)),
        resources: Some(small("64Mi")),
        ..Container::default()
    };
    let ds = DaemonSet {
        metadata: namespaced(agent_name),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(agent_labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(agent_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // The API server's address as the host knows it; no pod network needed.
                    host_network: Some(true),
                    automount_service_account_token: Some(false),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Toleration::default()
                    }]),
                    containers: vec![agent],
                    volumes: Some(vec![
                        host_path("identity", UPDATE_AGENT_DIR, "Directory"),
                        host_path("run", UPDATE_AGENT_RUN_DIR, "DirectoryOrCreate"),
                    ]),
                    termination_grace_period_seconds: Some(5),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    };
    out.push(object("update-operator-10-agent-daemonset.yaml", &ds)?);

    // The default policy, with only the fields the Cluster file sets.
    let policy = UpdatePolicyApply::new(
        meta("default"),
        UpdatePolicyApplySpec {
            max_unavailable: addon.policy.max_unavailable,
            windows: addon.policy.windows.iter().map(WindowSpec::from).collect(),
        },
    );
    out.push(custom(
        "update-operator-11-policy-default.yaml",
        format!(
            "/apis/{}/updatepolicies/default",
            strata_update_api::API_VERSION
        ),
        &policy,
    )?);
    Ok(out)
}

/// Where the host's update_engine check lives (see [`UPDATE_ENGINE_CHECK`]).
pub const UPDATE_ENGINE_CHECK_PATH: &str = "/etc/strata/update-engine-check";

/// The host-side check of update_engine (Flatcar/Container Linux style hosts): asks it over
/// D-Bus (`busctl`, part of systemd) for its status and, when an update waits for a reboot,
/// leaves the same sentinel the agent reads. Does nothing on hosts without update_engine. The
/// agent itself never talks to the system bus (that would be root on the host).
pub const UPDATE_ENGINE_CHECK: &str = r#"#!/bin/sh
# Written by Strata; changes are overwritten by `strata apply`.
# update_engine's status over D-Bus; UPDATE_STATUS_UPDATED_NEED_REBOOT -> $DIR/reboot-required.
out=$(busctl --system call com.coreos.update1 /com/coreos/update1   com.coreos.update1.Manager GetStatus 2>/dev/null) || exit 0
case "$out" in
  *'"UPDATE_STATUS_UPDATED_NEED_REBOOT"'*)
    mkdir -p "$DIR" && touch "$DIR/reboot-required" ;;
esac
exit 0
"#;

/// Units on every node for its update agent: two path units through which the unprivileged
/// agent sees the reboot sentinel and asks for a reboot, and a timer that asks update_engine.
pub fn update_agent_units() -> [(&'static str, String); 6] {
    let head = "# Written by Strata; changes are overwritten by `strata apply`.\n";
    [
        (
            "strata-reboot-required.path",
            format!(
                "{head}[Unit]\nDescription=Strata: mirror /run/reboot-required for the update agent\n\n\
                 [Path]\nPathExists=/run/reboot-required\n\n[Install]\nWantedBy=multi-user.target\n"
            ),
        ),
        // RemainAfterExit: while the file exists, a PathExists= path unit starts its service
        // again each time that service is inactive; a oneshot that exits would be started
        // in a loop until systemd's trigger limit fails the path unit.
        (
            "strata-reboot-required.service",
            format!(
                "{head}[Unit]\nDescription=Strata: a reboot is required\n\n\
                 [Service]\nType=oneshot\nRemainAfterExit=yes\n\
                 ExecStart=/bin/sh -c 'mkdir -p {UPDATE_AGENT_RUN_DIR} && touch {UPDATE_AGENT_RUN_DIR}/reboot-required'\n"
            ),
        ),
        (
            "strata-reboot.path",
            format!(
                "{head}[Unit]\nDescription=Strata: reboot when the update agent asks\n\n\
                 [Path]\nPathExists={UPDATE_AGENT_RUN_DIR}/reboot\nMakeDirectory=yes\nDirectoryMode=0700\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
        ),
        (
            "strata-reboot.service",
            format!(
                "{head}[Unit]\nDescription=Strata: reboot for an OS update (approved by the update operator)\n\n\
                 [Service]\nType=oneshot\nExecStart=/bin/systemctl reboot\n"
            ),
        ),
        (
            "strata-update-engine-check.timer",
            format!(
                "{head}[Unit]\nDescription=Strata: ask update_engine whether a reboot is due\n\n\
                 [Timer]\nOnBootSec=1min\nOnUnitActiveSec=1min\n\n\
                 [Install]\nWantedBy=timers.target\n"
            ),
        ),
        (
            "strata-update-engine-check.service",
            format!(
                "{head}[Unit]\nDescription=Strata: ask update_engine whether a reboot is due\n\n\
                 [Service]\nType=oneshot\nEnvironment=DIR={UPDATE_AGENT_RUN_DIR}\n\
                 ExecStart={UPDATE_ENGINE_CHECK_PATH}\n"
            ),
        ),
    ]
}
