//! The component catalogue: the one place that says which component runs on which hosts,
//! with which systemd units, binaries, ports and health check, and what it leaves on a host
//! at run time. Rendering (which files a host gets, tagged with the components that read
//! them), preflight (ports), assets (binaries per host), restart decisions, `strata status`,
//! `strata reset` and the end-to-end leftovers check all derive from it.
//!
//! A new part of the cluster (cluster DNS, an API load balancer, ...) is one more entry here
//! and one more arm in the renderer's match, not a new list somewhere else.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Host, Role};

/// A part of the cluster that Strata installs on hosts or into the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    /// The node-local API load balancer: kubelet, kube-proxy and the host-network agents
    /// reach the API servers through it.
    ApiBalancer,
    /// The control plane's virtual IP (`spec.controlPlane.vip`), on control-plane hosts.
    Vip,
    Containerd,
    Kubelet,
    KubeProxy,
    /// Kernel settings every node needs (sysctls, modules to load); no unit of its own.
    HostSettings,
    /// The oneshot unit that masquerades pod traffic leaving the pod network.
    PodMasquerade,
    /// The update agent's host side: its identity and the path units it works through.
    UpdateAgentHost,
    /// The overlay addon (a DaemonSet; on hosts: its VXLAN device and CNI configuration).
    Overlay,
    /// The update operator addon (CRDs, operator Deployment, agent DaemonSet).
    UpdateOperator,
    /// Cluster DNS (Deployment and Service kube-dns in kube-system).
    Dns,
}

/// How many components there are (the catalogue has one entry each).
pub const COMPONENTS: usize = 15;

/// Which hosts run a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Hosts with this role.
    Role(Role),
    /// Every host (every host is a Kubernetes node).
    EveryNode,
}

/// The apply phase that enables and starts a component's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StartPhase {
    Etcd,
    ControlPlane,
    /// Units whose first requests need the roles the API server creates once it serves
    /// (its bootstrap RBAC): started when the API answers `/readyz`, beside the cluster
    /// objects. The scheduler started with the API server had its first lists refused and
    /// retried them with a growing backoff: its pods waited 1.3 s longer (measured).
    Api,
    /// Every node's units but the kubelet: they need no API, so they start while the API
    /// servers start.
    Runtime,
    /// The kubelet, once its Node, pod subnet and the images are in place.
    Nodes,
    /// Runs as cluster objects (no host units).
    Addons,
}

/// How apply and `strata status` tell that a component works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `etcdctl endpoint health` with the healthcheck client identity, on the member's host.
    EtcdEndpoint,
    /// The API server's `/readyz` answers `ok`.
    ApiReadyz,
    /// Its node reports Ready.
    NodeReady,
    /// Its started units are active.
    UnitsActive,
    /// Its workloads' pods are running (an addon).
    PodsRunning,
}

/// A systemd unit of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub name: &'static str,
    /// Enabled and started by apply (and restarted when the component's files change).
    /// Units that are not started run only when something triggers them (a path unit's
    /// service, a timer's service): apply never starts or restarts those.
    pub started: bool,
}

const fn started(name: &'static str) -> Unit {
    Unit {
        name,
        started: true,
    }
}

const fn triggered(name: &'static str) -> Unit {
    Unit {
        name,
        started: false,
    }
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub component: Component,
    /// The name operators see (in status, events and docs).
    pub name: &'static str,
    pub placement: Placement,
    /// systemd units, in start order.
    pub units: &'static [Unit],
    /// Programs it runs, in the binaries directory: a new version restarts its units.
    pub binaries: &'static [&'static str],
    /// Programs it ships for operators and scripts (no restart when they change).
    pub tools: &'static [&'static str],
    /// Whether it needs the CNI plugins on its hosts.
    pub cni_plugins: bool,
    /// TCP ports it listens on (checked free by preflight).
    pub ports: &'static [u16],
    pub start: StartPhase,
    pub health: Health,
    /// Paths it creates at run time, outside the files Strata renders (data, state, sockets,
    /// files written by its pods); removed by `strata reset`. A trailing `*` is a glob.
    pub run_paths: &'static [&'static str],
    /// Network links it creates on its hosts (removed by reset).
    pub links: &'static [&'static str],
    /// Prefixes of the iptables chains it creates (removed by reset, with the rules that
    /// jump to them).
    pub chains: &'static [&'static str],
    /// The DaemonSet (in [`crate::addons::NAMESPACE`]) whose pod on each node reads this
    /// component's files on that node (its identity, mounted from the host): a change
    /// replaces that node's pod, as a change restarts a unit.
    pub daemonset: Option<&'static str>,
}

/// Where Strata installs the binaries it ships.
pub const BIN_DIR: &str = "/opt/strata/bin";
/// Where the CNI plugins are.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The API server's port.
pub const API_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// etcd's metrics and /health, on loopback.
pub const ETCD_METRICS_PORT: u16 = 2381;
/// The node-local API load balancer, on loopback (as Talos' KubePrism).
pub const API_BALANCER_PORT: u16 = 7445;
/// Where hosts pass assets to each other during an apply (`strata-fetch serve`, on the
/// host's cluster address, only while an apply runs).
pub const FETCH_PORT: u16 = 10263;

/// An entry with nothing on the hosts but its placement (the fields an entry leaves out).
const fn base(
    component: Component,
    name: &'static str,
    placement: Placement,
    start: StartPhase,
) -> Spec {
    Spec {
        component,
        name,
        placement,
        units: &[],
        binaries: &[],
        tools: &[],
        cni_plugins: false,
        ports: &[],
        start,
        health: Health::UnitsActive,
        run_paths: &[],
        links: &[],
        chains: &[],
        daemonset: None,
    }
}

/// The catalogue, in start order.
pub const CATALOG: &[Spec] = &[
    Spec {
        units: &[started("etcd.service")],
        binaries: &["etcd"],
        tools: &["etcdctl"],
        ports: &[ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_METRICS_PORT],
        health: Health::EtcdEndpoint,
        // The membership file apply writes when a member first starts (see render).
        run_paths: &["/var/lib/etcd", "/etc/etcd/membership.env"],
        ..base(
            Component::Etcd,
            "etcd",
            Placement::Role(Role::Etcd),
            StartPhase::Etcd,
        )
    },
    Spec {
        units: &[started("kube-apiserver.service")],
        binaries: &["kube-apiserver"],
        ports: &[API_PORT],
        health: Health::ApiReadyz,
        run_paths: &["/var/log/kubernetes"],
        ..base(
            Component::KubeApiserver,
            "kube-apiserver",
            Placement::Role(Role::ControlPlane),
            StartPhase::ControlPlane,
        )
    },
    Spec {
        units: &[started("kube-controller-manager.service")],
        binaries: &["kube-controller-manager"],
        ports: &[10257],
        ..base(
            Component::KubeControllerManager,
            "kube-controller-manager",
            Placement::Role(Role::ControlPlane),
            StartPhase::ControlPlane,
        )
    },
    Spec {
        units: &[started("kube-scheduler.service")],
        binaries: &["kube-scheduler"],
        ports: &[10259],
        ..base(
            Component::KubeScheduler,
            "kube-scheduler",
            Placement::Role(Role::ControlPlane),
            StartPhase::Api,
        )
    },
    Spec {
        units: &[started("strata-vip.service")],
        binaries: &["strata-vip"],
        ..base(
            Component::Vip,
            "vip",
            Placement::Role(Role::ControlPlane),
            StartPhase::ControlPlane,
        )
    },
    Spec {
        units: &[started("strata-api-balancer.service")],
        binaries: &["strata-api-balancer"],
        ports: &[API_BALANCER_PORT],
        ..base(
            Component::ApiBalancer,
            "api-balancer",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        units: &[started("containerd.service")],
        binaries: &["containerd", "containerd-shim-runc-v2", "runc"],
        // strata-fetch: how hosts pass the assets (these binaries, the image archives) on.
        tools: &["ctr", "strata-fetch"],
        cni_plugins: true,
        ports: &[FETCH_PORT],
        run_paths: &[
            "/var/lib/containerd",
            "/run/containerd",
            "/var/lib/cni",
            "/run/netns/cni-*",
            "/var/lib/strata/images",
            // containerd's `opt` plugin directory, made at its first start.
            "/opt/containerd",
        ],
        links: &["cni0"],
        chains: &["CNI-"],
        ..base(
            Component::Containerd,
            "containerd",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        units: &[started("kubelet.service")],
        binaries: &["kubelet"],
        ports: &[10250, 10248],
        health: Health::NodeReady,
        run_paths: &["/var/lib/kubelet", "/var/log/pods", "/var/log/containers"],
        chains: &["KUBE-"],
        ..base(
            Component::Kubelet,
            "kubelet",
            Placement::EveryNode,
            StartPhase::Nodes,
        )
    },
    Spec {
        units: &[started("kube-proxy.service")],
        binaries: &["kube-proxy"],
        ports: &[10256, 10249],
        chains: &["KUBE-"],
        ..base(
            Component::KubeProxy,
            "kube-proxy",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        ..base(
            Component::HostSettings,
            "host-settings",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        units: &[started("strata-pod-masquerade.service")],
        chains: &["STRATA-"],
        ..base(
            Component::PodMasquerade,
            "pod-masquerade",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        units: &[
            started("strata-reboot-required.path"),
            triggered("strata-reboot-required.service"),
            started("strata-reboot.path"),
            triggered("strata-reboot.service"),
            started("strata-update-engine-check.timer"),
            triggered("strata-update-engine-check.service"),
        ],
        run_paths: &["/run/strata"],
        ..base(
            Component::UpdateAgentHost,
            "update-agent-host",
            Placement::EveryNode,
            StartPhase::Runtime,
        )
    },
    Spec {
        health: Health::PodsRunning,
        run_paths: &["/etc/cni/net.d/10-strata.conflist"],
        links: &["strata.*"],
        daemonset: Some(crate::addons::OVERLAY_DAEMONSET),
        ..base(
            Component::Overlay,
            "overlay",
            Placement::EveryNode,
            StartPhase::Addons,
        )
    },
    Spec {
        health: Health::PodsRunning,
        daemonset: Some(crate::addons::UPDATE_AGENT_DAEMONSET),
        ..base(
            Component::UpdateOperator,
            "update-operator",
            Placement::EveryNode,
            StartPhase::Addons,
        )
    },
    Spec {
        health: Health::PodsRunning,
        ..base(
            Component::Dns,
            "dns",
            Placement::EveryNode,
            StartPhase::Addons,
        )
    },
];

impl Component {
    /// This component's catalogue entry.
    pub fn spec(self) -> &'static Spec {
        // Every component has exactly one entry (a unit test checks it).
        CATALOG
            .iter()
            .find(|s| s.component == self)
            .unwrap_or(&CATALOG[0])
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether the Cluster file turns this component on.
    pub fn enabled(self, c: &Cluster) -> bool {
        let addons = &c.spec.addons;
        match self {
            Component::Overlay => addons.overlay.enabled,
            Component::UpdateOperator | Component::UpdateAgentHost => {
                addons.update_operator.enabled
            }
            Component::Dns => addons.dns.enabled,
            Component::Vip => c.spec.control_plane.vip.is_some(),
            _ => true,
        }
    }
}

impl Spec {
    /// Whether this component runs on `h` of cluster `c`.
    pub fn runs_on(&self, c: &Cluster, h: &Host) -> bool {
        self.component.enabled(c)
            && match self.placement {
                Placement::Role(r) => h.has_role(r),
                Placement::EveryNode => true,
            }
    }

    /// The units apply enables and starts.
    pub fn started_units(&self) -> impl Iterator<Item = &'static str> {
        self.units.iter().filter(|u| u.started).map(|u| u.name)
    }
}

/// The components that run on `h`, in start order.
pub fn on_host<'a>(c: &'a Cluster, h: &'a Host) -> impl Iterator<Item = &'static Spec> + 'a {
    CATALOG.iter().filter(move |s| s.runs_on(c, h))
}

/// Whether component `c` runs on host `h`.
pub fn runs(cluster: &Cluster, h: &Host, c: Component) -> bool {
    c.spec().runs_on(cluster, h)
}

/// The hosts that run component `c`, in the Cluster file's order (etcd's members, the API
/// servers, ...).
pub fn hosts_running(cluster: &Cluster, c: Component) -> impl Iterator<Item = &Host> {
    cluster
        .spec
        .hosts
        .iter()
        .filter(move |h| runs(cluster, h, c))
}

/// The components that run on the host named `host` (none for a host not in the file).
pub fn on_host_named(c: &Cluster, host: &str) -> Vec<&'static Spec> {
    c.spec
        .hosts
        .iter()
        .filter(|h| h.name.as_str() == host)
        .flat_map(|h| on_host(c, h))
        .collect()
}

/// The components the cluster runs (on any host), in start order.
pub fn enabled(c: &Cluster) -> impl Iterator<Item = &'static Spec> + '_ {
    CATALOG.iter().filter(move |s| s.component.enabled(c))
}

/// The components that use a binary of the assets' `bin/` (by file name) and whether a new
/// version of it restarts them. A binary no component names is shipped to no host.
pub fn binary_users(name: &str) -> impl Iterator<Item = (&'static Spec, bool)> + '_ {
    CATALOG.iter().filter_map(move |s| {
        if s.binaries.contains(&name) {
            Some((s, true))
        } else if s.tools.contains(&name) {
            Some((s, false))
        } else {
            None
        }
    })
}

/// The TCP ports the components on `h` listen on, sorted.
pub fn ports(c: &Cluster, h: &Host) -> Vec<u16> {
    let set: BTreeSet<u16> = on_host(c, h)
        .flat_map(|s| s.ports.iter().copied())
        .collect();
    set.into_iter().collect()
}

/// The units to restart on a host whose files changed: the started units of every
/// component that reads a changed file, among `running` (the components of one phase).
pub fn restarts(
    changed: &BTreeSet<Component>,
    running: impl IntoIterator<Item = &'static Spec>,
) -> Vec<&'static str> {
    running
        .into_iter()
        .filter(|s| changed.contains(&s.component))
        .flat_map(|s| s.started_units())
        .collect()
}

/// How plan and apply name the replacement of a DaemonSet's pod on one host.
pub fn pod_restart_path(daemonset: &str) -> String {
    format!("pod of daemonset {}/{daemonset}", crate::addons::NAMESPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_has_one_entry() {
        // A component added to the enum and not to the catalogue fails here.
        for s in CATALOG {
            let c = s.component;
            assert_eq!(
                CATALOG.iter().filter(|x| x.component == c).count(),
                1,
                "{c:?}"
            );
            assert_eq!(c.spec().component, c);
        }
        let named: BTreeSet<Component> = CATALOG.iter().map(|s| s.component).collect();
        assert_eq!(named.len(), COMPONENTS);
    }

    #[test]
    fn no_unit_binary_or_port_belongs_to_two_components() {
        let mut units = BTreeSet::new();
        let mut bins = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for s in CATALOG {
            for u in s.units {
                assert!(units.insert(u.name), "unit {} twice", u.name);
            }
            for b in s.binaries.iter().chain(s.tools) {
                assert!(bins.insert(*b), "binary {b} twice");
            }
            for p in s.ports {
                assert!(ports.insert(*p), "port {p} twice");
            }
        }
    }

    #[test]
    fn a_triggered_unit_is_never_restarted() {
        let changed: BTreeSet<Component> = [Component::UpdateAgentHost].into();
        let r = restarts(&changed, [Component::UpdateAgentHost.spec()]);
        assert_eq!(
            r,
            [
                "strata-reboot-required.path",
                "strata-reboot.path",
                "strata-update-engine-check.timer"
            ]
        );
    }
}
