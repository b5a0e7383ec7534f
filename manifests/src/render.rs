//! Everything each host needs, as data: a tree of files (absolute host paths, contents,
//! modes) per host, plus the cluster-wide objects. Written to a directory by
//! `strata render`, compared with what was applied by `strata plan`, uploaded by `apply`.
//!
//! Control-plane components and etcd run as systemd units from binaries in [`BIN_DIR`].
//! Every file is something an operator can read on the host and understand.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use strata_pki::StateDir;

use std::collections::BTreeSet;

use crate::catalog::{self, Component};
pub use crate::catalog::{
    API_BALANCER_PORT, API_PORT, BIN_DIR, CNI_BIN_DIR, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
};
use crate::images::StrataImage;
use crate::model::{Cluster, Host, Platform};
use crate::objects;
use crate::pki::first_address;
use crate::pod_security;
use crate::versions::{self, Item};

pub const KUBE_DIR: &str = "/etc/kubernetes";
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}: {source}; run `strata certs generate` first", path.display())]
    Pki {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host {host}: {reason}")]
    Host { host: String, reason: String },
    #[error("serializing {what}: {reason}")]
    Serialize { what: String, reason: String },
}

/// One file on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub mode: u32,
    pub content: Vec<u8>,
    /// The components that read it: a change restarts their units.
    pub users: BTreeSet<Component>,
}

/// All files of one host, by absolute path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTree {
    pub host: String,
    pub files: BTreeMap<String, HostFile>,
}

impl HostTree {
    /// Adds a file read by `by`. A file several components read (the cluster CA, say) is
    /// added by each; it is written once and a change restarts them all.
    fn add(
        &mut self,
        by: Component,
        path: impl Into<String>,
        mode: u32,
        content: impl Into<Vec<u8>>,
    ) {
        let file = self.files.entry(path.into()).or_insert_with(|| HostFile {
            mode,
            content: Vec::new(),
            users: BTreeSet::new(),
        });
        file.mode = mode;
        file.content = content.into();
        file.users.insert(by);
    }

    /// Adds a file its component watches and re-reads while it runs: a change restarts
    /// nothing.
    fn add_reloaded(&mut self, path: impl Into<String>, mode: u32, content: impl Into<Vec<u8>>) {
        self.files.insert(
            path.into(),
            HostFile {
                mode,
                content: content.into(),
                users: BTreeSet::new(),
            },
        );
    }

    /// The components that read any of `paths`.
    pub fn users_of<'a>(&self, paths: impl IntoIterator<Item = &'a String>) -> BTreeSet<Component> {
        paths
            .into_iter()
            .filter_map(|p| self.files.get(p))
            .flat_map(|f| f.users.iter().copied())
            .collect()
    }
}

/// A cluster-wide object, applied with server-side apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterObject {
    /// File name under cluster/, e.g. `rbac-apiserver-kubelet.clusterrole.yaml`.
    pub file: String,
    /// The object's path on the API server, e.g.
    /// `/apis/rbac.authorization.k8s.io/v1/clusterroles/NAME` (what server-side apply PATCHes).
    pub api_path: String,
    /// What apply writes to cluster/ and what the state's digest is of.
    pub yaml: String,
    /// The host the object exists for (its agents' identities, its OverlayNode): when the
    /// host leaves the cluster, the object goes after the host was drained.
    pub host: Option<String>,
    /// The same object as JSON: the server-side apply body. (The API server's audit log
    /// records a patch body only when it is JSON: a YAML body loses the whole event.)
    pub json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub hosts: Vec<HostTree>,
    pub objects: Vec<ClusterObject>,
    /// The name of the key that encrypts Secrets (every Secret is rewritten when it changes).
    pub secrets_key: String,
}

/// A systemd service unit for a long-running binary.
struct Unit<'a> {
    description: &'a str,
    documentation: &'a str,
    after: &'a [&'a str],
    requires: &'a [&'a str],
    exec: String,
    args: Vec<String>,
    extra: &'a [&'a str],
}

impl Unit<'_> {
    fn text(&self) -> String {
        let mut s =
            String::from("# Written by Strata; changes are overwritten by `strata apply`.\n");
        s.push_str("[Unit]\n");
        s.push_str(&format!("Description={}\n", self.description));
        s.push_str(&format!("Documentation={}\n", self.documentation));
        let mut after = vec!["network-online.target"];
        after.extend_from_slice(self.after);
        s.push_str(&format!(
            "After={}\nWants=network-online.target\n",
            after.join(" ")
        ));
        if !self.requires.is_empty() {
            s.push_str(&format!("Requires={}\n", self.requires.join(" ")));
        }
        s.push('\n');
        s.push_str("[Service]\n");
        s.push_str(&format!("ExecStart={}", self.exec));
        for a in &self.args {
            s.push_str(&format!(" \\\n  {a}"));
        }
        s.push('\n');
        for e in self.extra {
            s.push_str(e);
            s.push('\n');
        }
        s.push_str("Restart=always\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n");
        s
    }
}

/// TLS 1.2 cipher suites of the API server and the kubelets: forward-secret AEAD only (the
/// CIS Kubernetes Benchmark's list; TLS 1.3 suites are not configurable and all strong).
pub const TLS_CIPHER_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
];

/// Kernel settings the kubelet checks with `protectKernelDefaults` (it refuses to start when
/// they differ): set by the host settings first.
pub const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];

fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    minor: u32,
    state: &'a StateDir,
    /// The keys Secrets are encrypted with in etcd.
    keys: strata_pki::encryption::EncryptionKeys,
}

impl Ctx<'_> {
    fn read(&self, path: PathBuf) -> Result<Vec<u8>, RenderError> {
        self.state
            .read(&path)
            .map_err(|source| RenderError::Pki { path, source })
    }
    fn cert(&self, name: &str) -> Result<Vec<u8>, RenderError> {
        self.read(self.state.cert(name))
    }
    fn key(&self, name: &str) -> Result<Vec<u8>, RenderError> {
        self.read(self.state.key(name))
    }
    fn local(&self) -> bool {
        matches!(self.cluster.spec.platform, Platform::Local(_))
    }
}

/// How often the controller manager and the scheduler try for their leader lease (default
/// 2 s). Both start with the API server, whose RBAC roles come a moment after it serves: the
/// first try is refused, and the default period made every new cluster wait up to 2 s more
/// for its controllers (node pod subnets) and scheduling. A standby asks once a second.
const LEADER_ELECT_RETRY: &str = "1s";

/// The controller manager's requests per second to the API server and its burst (default
/// 20 and 30). At its start every controller lists what it watches and the garbage
/// collector and quota controllers read the API's discovery (a request per group version);
/// the default rate spread that over seconds, and no controller acts before all started.
const CONTROLLER_API_QPS: (u32, u32) = (100, 200);

fn host_ip(h: &Host) -> Option<IpAddr> {
    h.address.as_ref().and_then(|a| a.ip())
}

/// `host` as it appears in a URL (`[v6]`).
fn url_host(h: &Host) -> String {
    match h.address.as_ref() {
        Some(a) => a.for_url(),
        None => h.name.to_string(),
    }
}

fn yaml<T: serde::Serialize>(what: &str, v: &T) -> Result<String, RenderError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(v, options).map_err(|e| RenderError::Serialize {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// The whole rendering: one tree per host and the cluster objects. Reads the PKI from the
/// state directory (create it first with `strata_pki::generate`).
pub fn render(cluster: &Cluster, state: &StateDir) -> Result<Rendered, RenderError> {
    let keys_path = state.file(strata_pki::encryption::FILE);
    let keys = strata_pki::encryption::load(state)
        .map_err(|e| RenderError::Pki {
            path: keys_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .ok_or_else(|| RenderError::Pki {
            path: keys_path,
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    let secrets_key = keys.current().map(|k| k.name.clone()).unwrap_or_default();
    let ctx = Ctx {
        cluster,
        minor: cluster.spec.kubernetes.version.minor(),
        state,
        keys,
    };
    let mut hosts = Vec::new();
    for h in &cluster.spec.hosts {
        let mut t = HostTree {
            host: h.name.to_string(),
            ..HostTree::default()
        };
        for spec in catalog::on_host(cluster, h) {
            match spec.component {
                Component::Etcd => etcd_files(&ctx, h, &mut t)?,
                Component::KubeApiserver => apiserver_files(&ctx, h, &mut t)?,
                Component::KubeControllerManager => controller_manager_files(&ctx, &mut t)?,
                Component::KubeScheduler => scheduler_files(&ctx, &mut t)?,
                Component::ApiBalancer => api_balancer_files(&ctx, &mut t)?,
                Component::Vip => vip_files(&ctx, h, &mut t)?,
                Component::Containerd => containerd_files(&ctx, &mut t),
                Component::Kubelet => kubelet_files(&ctx, h, &mut t)?,
                Component::KubeProxy => kube_proxy_files(&ctx, h, &mut t)?,
                Component::HostSettings => host_settings_files(&ctx, &mut t),
                Component::PodMasquerade => t.add(
                    Component::PodMasquerade,
                    "/etc/systemd/system/strata-pod-masquerade.service",
                    0o644,
                    pod_masquerade_unit(&cluster.spec.network.pod_cidr.net().to_string()),
                ),
                Component::UpdateAgentHost => update_agent_files(&ctx, h, &mut t)?,
                Component::Overlay => t.add(
                    Component::Overlay,
                    format!("{}/kubeconfig", crate::addons::OVERLAY_DIR),
                    0o600,
                    ctx.read(
                        ctx.state
                            .file(&format!("kubeconfigs/overlay-{}.conf", h.name)),
                    )?,
                ),
                // Cluster objects (see objects::cluster_objects); the update agent's pods read
                // the kubeconfig update_agent_files writes.
                Component::UpdateOperator | Component::Dns => {}
            }
        }
        hosts.push(t);
    }
    Ok(Rendered {
        hosts,
        objects: objects::cluster_objects(cluster)?,
        secrets_key,
    })
}

// ---------------------------------------------------------------------------------------
// etcd

/// The environment file with the membership an etcd member first starts with: written by
/// apply when the member first starts (a new cluster, or a join), never rendered, so that a
/// running cluster is never started again as a new one.
pub const ETCD_MEMBERSHIP_ENV: &str = "/etc/etcd/membership.env";

fn etcd_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    let me = url_host(h);
    // Listen on the host's own address and loopback; a host known by name listens on all.
    let (listen_client, listen_peer) = match host_ip(h) {
        Some(_) => (
            format!("https://{me}:{ETCD_CLIENT_PORT},https://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("https://{me}:{ETCD_PEER_PORT}"),
        ),
        None => (
            format!("https://0.0.0.0:{ETCD_CLIENT_PORT}"),
            format!("https://0.0.0.0:{ETCD_PEER_PORT}"),
        ),
    };
    let etcd_pki = format!("{PKI_DIR}/etcd");
    // Flags, not a configuration file: etcd ignores its environment (the membership file)
    // when given one.
    let args = vec![
        flag("name", &h.name),
        flag("data-dir", "/var/lib/etcd"),
        flag("listen-client-urls", listen_client),
        flag(
            "advertise-client-urls",
            format!("https://{me}:{ETCD_CLIENT_PORT}"),
        ),
        flag("listen-peer-urls", listen_peer),
        flag(
            "initial-advertise-peer-urls",
            format!("https://{me}:{ETCD_PEER_PORT}"),
        ),
        flag(
            "listen-metrics-urls",
            format!("http://127.0.0.1:{}", catalog::ETCD_METRICS_PORT),
        ),
        flag("cert-file", format!("{etcd_pki}/server.crt")),
        flag("key-file", format!("{etcd_pki}/server.key")),
        flag("trusted-ca-file", format!("{etcd_pki}/ca.crt")),
        flag("client-cert-auth", true),
        flag("peer-cert-file", format!("{etcd_pki}/peer.crt")),
        flag("peer-key-file", format!("{etcd_pki}/peer.key")),
        flag("peer-trusted-ca-file", format!("{etcd_pki}/ca.crt")),
        flag("peer-client-cert-auth", true),
    ];
    let env = format!("EnvironmentFile={ETCD_MEMBERSHIP_ENV}");
    let extra = ["Type=notify", "LimitNOFILE=65536", env.as_str()];
    let unit = Unit {
        description: "etcd key-value store (Strata)",
        documentation: "https://etcd.io/docs/v3.4/op-guide/configuration/",
        after: &[],
        requires: &[],
        exec: format!("{BIN_DIR}/etcd"),
        args,
        extra: &extra,
    };
    t.add(
        Component::Etcd,
        "/etc/systemd/system/etcd.service",
        0o644,
        unit.text(),
    );
    t.add(
        Component::Etcd,
        format!("{etcd_pki}/ca.crt"),
        0o644,
        ctx.cert("etcd/ca")?,
    );
    // etcd reads its serving and peer certificates again for every new connection, and
    // etcdctl the health-check client's each time it runs: a renewal restarts no member (a
    // restarted leader hands over its leadership, and the API server's reads in flight then
    // fail with "leader changed").
    for (kind, src) in [
        ("server", format!("etcd/server-{}", h.name)),
        ("peer", format!("etcd/peer-{}", h.name)),
        ("healthcheck-client", "etcd/healthcheck-client".to_string()),
    ] {
        t.add_reloaded(format!("{etcd_pki}/{kind}.crt"), 0o644, ctx.cert(&src)?);
        t.add_reloaded(format!("{etcd_pki}/{kind}.key"), 0o600, ctx.key(&src)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Control plane

const AUDIT_POLICY: &str = "\
# What the API server records in /var/log/kubernetes/audit.log. Written by Strata.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
- RequestReceived
rules:
# Noisy, harmless reads by the control plane itself.
- level: None
  users:
  - system:kube-proxy
  verbs:
  - watch
- level: None
  userGroups:
  - system:nodes
  verbs:
  - get
  - list
  - watch
- level: None
  nonResourceURLs:
  - /healthz*
  - /livez*
  - /readyz*
  - /version
# Never record the content of secrets or tokens.
- level: Metadata
  resources:
  - group: \"\"
    resources:
    - secrets
    - configmaps
    - serviceaccounts/token
  - group: authentication.k8s.io
    resources:
    - tokenreviews
# Changes with their request bodies; everything else as metadata.
- level: Request
  verbs:
  - create
  - update
  - patch
  - delete
  - deletecollection
- level: Metadata
";

fn apiserver_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    let c = ctx.cluster;
    let net = &c.spec.network;
    let etcd_servers: Vec<String> = catalog::hosts_running(c, Component::Etcd)
        .map(|m| format!("https://{}:{ETCD_CLIENT_PORT}", url_host(m)))
        .collect();
    let issuer = format!("https://kubernetes.default.svc.{}", net.cluster_domain);
    let mut api = vec![];
    if let Some(ip) = host_ip(h) {
        api.push(flag("advertise-address", ip));
    }
    api.extend([
        flag("allow-privileged", true),
        flag("anonymous-auth", false),
        flag("authorization-mode", "Node,RBAC"),
        flag(
            "enable-admission-plugins",
            pod_security::admission_plugins(ctx.minor),
        ),
        flag("secure-port", API_PORT),
        flag("tls-min-version", "VersionTLS12"),
        flag("client-ca-file", format!("{PKI_DIR}/ca.crt")),
        flag("tls-cert-file", format!("{PKI_DIR}/apiserver.crt")),
        flag("tls-private-key-file", format!("{PKI_DIR}/apiserver.key")),
        flag("kubelet-certificate-authority", format!("{PKI_DIR}/ca.crt")),
        flag(
            "kubelet-client-certificate",
            format!("{PKI_DIR}/apiserver-kubelet-client.crt"),
        ),
        flag(
            "kubelet-client-key",
            format!("{PKI_DIR}/apiserver-kubelet-client.key"),
        ),
        flag("kubelet-preferred-address-types", "InternalIP,Hostname"),
        flag("etcd-servers", etcd_servers.join(",")),
        flag("etcd-cafile", format!("{PKI_DIR}/etcd/ca.crt")),
        flag(
            "etcd-certfile",
            format!("{PKI_DIR}/apiserver-etcd-client.crt"),
        ),
        flag(
            "etcd-keyfile",
            format!("{PKI_DIR}/apiserver-etcd-client.key"),
        ),
        flag("service-cluster-ip-range", net.service_cidr.net()),
        flag("service-account-issuer", &issuer),
        flag("service-account-key-file", format!("{PKI_DIR}/sa.pub")),
        flag(
            "service-account-signing-key-file",
            format!("{PKI_DIR}/sa.key"),
        ),
        flag(
            "requestheader-client-ca-file",
            format!("{PKI_DIR}/front-proxy-ca.crt"),
        ),
        flag("requestheader-allowed-names", "front-proxy-client"),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag(
            "proxy-client-cert-file",
            format!("{PKI_DIR}/front-proxy-client.crt"),
        ),
        flag(
            "proxy-client-key-file",
            format!("{PKI_DIR}/front-proxy-client.key"),
        ),
        flag("profiling", false),
        flag("audit-policy-file", format!("{KUBE_DIR}/audit-policy.yaml")),
        flag("audit-log-path", "/var/log/kubernetes/audit.log"),
        flag("audit-log-maxage", 30),
        flag("audit-log-maxbackup", 10),
        flag("audit-log-maxsize", 100),
    ]);
    api.push(flag(
        "encryption-provider-config",
        format!("{PKI_DIR}/encryption-config.yaml"),
    ));
    api.push(flag("tls-cipher-suites", TLS_CIPHER_SUITES.join(",")));
    if versions::uses(Item::ApiserverInsecurePortZero, ctx.minor) {
        api.push(flag("insecure-port", 0));
    }
    // With several API servers, one that is told to stop first says it is not ready
    // (/readyz) while it goes on serving: every node's balancer drops it (checks each second,
    // two failed in a row) before it stops listening, so that no request goes to it then.
    let several = catalog::hosts_running(c, Component::KubeApiserver).count() > 1;
    if several {
        api.push(flag("shutdown-delay-duration", "5s"));
    }
    let admission = pod_security::admission_configuration(ctx.minor);
    if admission.is_some() {
        api.push(flag(
            "admission-control-config-file",
            format!("{KUBE_DIR}/admission.yaml"),
        ));
    }
    let unit = Unit {
        description: "Kubernetes API server (Strata)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/",
        after: &["etcd.service"],
        requires: &[],
        exec: format!("{BIN_DIR}/kube-apiserver"),
        args: api,
        // On SIGTERM the API server stops listening (after the delay above), then waits for
        // its open connections (watches never end by themselves) up to its request timeout,
        // 60 s: every restart cost a minute. Its clients re-connect anyway.
        extra: if several {
            &["LimitNOFILE=65536", "TimeoutStopSec=10"]
        } else {
            &["LimitNOFILE=65536", "TimeoutStopSec=5"]
        },
    };
    t.add(
        Component::KubeApiserver,
        "/etc/systemd/system/kube-apiserver.service",
        0o644,
        unit.text(),
    );
    t.add(
        Component::KubeApiserver,
        format!("{KUBE_DIR}/audit-policy.yaml"),
        0o644,
        AUDIT_POLICY,
    );
    if let Some(conf) = admission {
        t.add(
            Component::KubeApiserver,
            format!("{KUBE_DIR}/admission.yaml"),
            0o644,
            conf,
        );
    }
    t.add(
        Component::KubeApiserver,
        format!("{PKI_DIR}/encryption-config.yaml"),
        0o600,
        ctx.keys.configuration(),
    );

    for name in [
        "apiserver",
        "apiserver-kubelet-client",
        "front-proxy-client",
        "apiserver-etcd-client",
    ] {
        t.add(
            Component::KubeApiserver,
            format!("{PKI_DIR}/{name}.crt"),
            0o644,
            ctx.cert(name)?,
        );
        t.add(
            Component::KubeApiserver,
            format!("{PKI_DIR}/{name}.key"),
            0o600,
            ctx.key(name)?,
        );
    }
    for (path, ca) in [
        (format!("{PKI_DIR}/ca.crt"), "ca"),
        (format!("{PKI_DIR}/front-proxy-ca.crt"), "front-proxy-ca"),
        (format!("{PKI_DIR}/etcd/ca.crt"), "etcd/ca"),
    ] {
        t.add(Component::KubeApiserver, path, 0o644, ctx.cert(ca)?);
    }
    // The service-account key pair: the API server signs and verifies tokens.
    t.add(
        Component::KubeApiserver,
        format!("{PKI_DIR}/sa.key"),
        0o600,
        ctx.read(ctx.state.sa_key())?,
    );
    t.add(
        Component::KubeApiserver,
        format!("{PKI_DIR}/sa.pub"),
        0o644,
        ctx.read(ctx.state.sa_pub())?,
    );
    Ok(())
}

fn controller_manager_files(ctx: &Ctx<'_>, t: &mut HostTree) -> Result<(), RenderError> {
    let c = ctx.cluster;
    let net = &c.spec.network;
    let cm_conf = format!("{KUBE_DIR}/controller-manager.conf");
    let mut cm = vec![
        flag("kubeconfig", &cm_conf),
        flag("authentication-kubeconfig", &cm_conf),
        flag("authorization-kubeconfig", &cm_conf),
        flag("bind-address", "127.0.0.1"),
        flag("client-ca-file", format!("{PKI_DIR}/ca.crt")),
        flag(
            "requestheader-client-ca-file",
            format!("{PKI_DIR}/front-proxy-ca.crt"),
        ),
        flag("cluster-name", c.name()),
        flag("cluster-signing-cert-file", format!("{PKI_DIR}/ca.crt")),
        flag("cluster-signing-key-file", format!("{PKI_DIR}/ca.key")),
        flag("root-ca-file", format!("{PKI_DIR}/ca.crt")),
        flag(
            "service-account-private-key-file",
            format!("{PKI_DIR}/sa.key"),
        ),
        flag("use-service-account-credentials", true),
        // Finished pods kept before the garbage collector deletes them (default 12500, sized
        // for far larger clusters than a few hosts).
        flag("terminated-pod-gc-threshold", 1000),
        flag("controllers", "*,bootstrapsigner,tokencleaner"),
        flag("leader-elect", true),
        // See LEADER_ELECT_RETRY.
        flag("leader-elect-retry-period", LEADER_ELECT_RETRY),
        // See CONTROLLER_API_QPS.
        flag("kube-api-qps", CONTROLLER_API_QPS.0),
        flag("kube-api-burst", CONTROLLER_API_QPS.1),
        flag("allocate-node-cidrs", true),
        flag("cluster-cidr", net.pod_cidr.net()),
        flag(
            "node-cidr-mask-size",
            crate::pod_subnets::node_prefix(net.pod_cidr.net()),
        ),
        flag("service-cluster-ip-range", net.service_cidr.net()),
        flag("profiling", false),
    ];
    if versions::uses(Item::InsecurePortZero, ctx.minor) {
        cm.push(flag("port", 0));
    }
    let unit = Unit {
        description: "Kubernetes controller manager (Strata)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/",
        after: &["kube-apiserver.service"],
        requires: &[],
        exec: format!("{BIN_DIR}/kube-controller-manager"),
        args: cm,
        extra: &[],
    };
    t.add(
        Component::KubeControllerManager,
        "/etc/systemd/system/kube-controller-manager.service",
        0o644,
        unit.text(),
    );
    t.add(
        Component::KubeControllerManager,
        format!("{KUBE_DIR}/controller-manager.conf"),
        0o600,
        ctx.read(ctx.state.file("kubeconfigs/controller-manager.conf"))?,
    );
    for (path, ca) in [
        (format!("{PKI_DIR}/ca.crt"), "ca"),
        (format!("{PKI_DIR}/front-proxy-ca.crt"), "front-proxy-ca"),
    ] {
        t.add(Component::KubeControllerManager, path, 0o644, ctx.cert(ca)?);
    }
    // The cluster CA key signs kubelet client-certificate renewals; sa.key signs the
    // controllers' service-account tokens.
    t.add(
        Component::KubeControllerManager,
        format!("{PKI_DIR}/ca.key"),
        0o600,
        ctx.key("ca")?,
    );
    t.add(
        Component::KubeControllerManager,
        format!("{PKI_DIR}/sa.key"),
        0o600,
        ctx.read(ctx.state.sa_key())?,
    );
    Ok(())
}

fn scheduler_files(ctx: &Ctx<'_>, t: &mut HostTree) -> Result<(), RenderError> {
    let mut sched_conf = vec![];
    let sc = format!("{KUBE_DIR}/scheduler.conf");
    sched_conf.extend([
        flag("kubeconfig", &sc),
        flag("authentication-kubeconfig", &sc),
        flag("authorization-kubeconfig", &sc),
        flag("bind-address", "127.0.0.1"),
        flag("leader-elect", true),
        flag("leader-elect-retry-period", LEADER_ELECT_RETRY),
        flag("profiling", false),
    ]);
    if versions::uses(Item::InsecurePortZero, ctx.minor) {
        sched_conf.push(flag("port", 0));
    }
    let unit = Unit {
        description: "Kubernetes scheduler (Strata)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/",
        after: &["kube-apiserver.service"],
        requires: &[],
        exec: format!("{BIN_DIR}/kube-scheduler"),
        args: sched_conf,
        extra: &[],
    };
    t.add(
        Component::KubeScheduler,
        "/etc/systemd/system/kube-scheduler.service",
        0o644,
        unit.text(),
    );

    t.add(
        Component::KubeScheduler,
        format!("{KUBE_DIR}/scheduler.conf"),
        0o600,
        ctx.read(ctx.state.file("kubeconfigs/scheduler.conf"))?,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Every node: containerd, kubelet, kube-proxy, sysctls

/// The cgroup driver of kubelet and containerd: systemd on real hosts; cgroupfs on the
/// local platform (nspawn machines share the computer's cgroup hierarchy).
pub fn cgroup_driver(c: &Cluster) -> &'static str {
    match c.spec.platform {
        Platform::Local(_) => "cgroupfs",
        Platform::Ssh(_) => "systemd",
    }
}

fn containerd_config(ctx: &Ctx<'_>) -> String {
    let systemd = cgroup_driver(ctx.cluster) == "systemd";
    format!(
        "# containerd for the Kubernetes CRI. Written by Strata.\n\
         version = 2\n\
         root = \"/var/lib/containerd\"\n\
         state = \"/run/containerd\"\n\
         \n\
         [grpc]\n  \
           address = \"{CONTAINERD_SOCKET}\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  \
           sandbox_image = \"{sandbox}\"\n  \
           # Hosts that may not lower oom_score_adj (no CAP_SYS_RESOURCE, e.g. containers).\n  \
           restrict_oom_score_adj = {restrict}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
           default_runtime_name = \"runc\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
           runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  \
           BinaryName = \"{BIN_DIR}/runc\"\n  \
           # Must match the kubelet's cgroupDriver ({driver}).\n  \
           SystemdCgroup = {systemd}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  \
           bin_dir = \"{CNI_BIN_DIR}\"\n  \
           conf_dir = \"/etc/cni/net.d\"\n",
        sandbox = StrataImage::Pause.reference(ctx.cluster),
        restrict = ctx.local(),
        driver = cgroup_driver(ctx.cluster),
    )
}

/// Cluster DNS's Service address: the tenth of the service range (validation makes sure
/// the range holds it).
pub fn cluster_dns_address(c: &Cluster) -> IpAddr {
    match first_address(c.spec.network.service_cidr.net()) {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v) + 9).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(v) + 9).into()),
    }
}

fn kubelet_config(ctx: &Ctx<'_>) -> String {
    let net = &ctx.cluster.spec.network;
    let dns = cluster_dns_address(ctx.cluster);
    // nodeStatusUpdateFrequency: how often the kubelet compares its node's status with what
    // it last posted (10 s by default): a node turns Ready at most 4 s after its network is.
    // It posts only what changed (and a full status every nodeStatusReportFrequency, set
    // explicitly: left unset it would follow the update frequency, a write every 4 s per
    // node); liveness is the node lease's job.
    let mut s = format!(
        "# kubelet configuration. Written by Strata.\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\n\
         kind: KubeletConfiguration\n\
         authentication:\n  \
           anonymous:\n    \
             enabled: false\n  \
           webhook:\n    \
             enabled: true\n  \
           x509:\n    \
             clientCAFile: {PKI_DIR}/ca.crt\n\
         authorization:\n  \
           mode: Webhook\n\
         readOnlyPort: 0\n\
         tlsCertFile: {PKI_DIR}/kubelet-serving.crt\n\
         tlsPrivateKeyFile: {PKI_DIR}/kubelet-serving.key\n\
         tlsMinVersion: VersionTLS12\n\
         tlsCipherSuites: [{suites}]\n\
         rotateCertificates: true\n\
         clusterDomain: {domain}\n\
         clusterDNS:\n\
         - {dns}\n\
         cgroupDriver: {driver}\n\
         failSwapOn: {fail_swap}\n\
         staticPodPath: \"\"\n\
         nodeStatusUpdateFrequency: 4s\n\
         nodeStatusReportFrequency: 5m\n\
         maxPods: {max_pods}\n",
        max_pods = crate::pod_security::KUBELET_MAX_PODS,
        domain = net.cluster_domain,
        suites = TLS_CIPHER_SUITES.join(", "),
        driver = cgroup_driver(ctx.cluster),
        // nspawn machines see the computer's swap; real hosts must have none.
        fail_swap = !ctx.local(),
    );
    if versions::uses(Item::KubeletRuntimeEndpointField, ctx.minor) {
        s.push_str(&format!(
            "containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}\n"
        ));
    }
    // The kubelet refuses to start when the kernel differs from what it expects (the host
    // settings set it first). Local machines share this computer's kernel: left alone.
    if !ctx.local() {
        s.push_str("protectKernelDefaults: true\n");
    }
    if ctx.local() {
        // Local machines share this computer's disk, most of it filled by other things: the
        // default percentages would taint every node with disk-pressure, and image garbage
        // collection (at 85% used) would delete images loaded without a registry. Absolute
        // floors instead (as kind does); below them the eviction manager still frees unused
        // images first.
        s.push_str(&format!(
            "evictionHard:\n  \
               memory.available: {}Mi\n  \
               nodefs.available: 1Gi\n  \
               nodefs.inodesFree: 5%\n  \
               imagefs.available: 1Gi\n\
             imageGCHighThresholdPercent: 100\n",
            crate::pod_security::KUBELET_MEMORY_EVICTION_KIB / 1024
        ));
    }
    if ctx.local() && versions::uses(Item::KubeletRefusesCgroupV1, ctx.minor) {
        // Local machines share this computer's cgroup hierarchy, which may be v1; real hosts
        // must run cgroup v2 from 1.35 on (apply's preflight says so).
        s.push_str("failCgroupV1: false\n");
    }
    s
}

fn kube_proxy_config(ctx: &Ctx<'_>, h: &Host) -> String {
    let mut s = format!(
        "# kube-proxy configuration. Written by Strata.\n\
         apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
         kind: KubeProxyConfiguration\n\
         clientConnection:\n  \
           kubeconfig: {KUBE_DIR}/kube-proxy.conf\n\
         mode: iptables\n\
         clusterCIDR: {pod}\n\
         hostnameOverride: {name}\n\
         metricsBindAddress: 127.0.0.1:10249\n",
        pod = ctx.cluster.spec.network.pod_cidr.net(),
        name = h.name,
    );
    if ctx.local() {
        // Containers cannot raise the host's conntrack limits: leave them as they are.
        s.push_str("conntrack:\n  maxPerCore: 0\n");
    }
    s
}

fn containerd_files(ctx: &Ctx<'_>, t: &mut HostTree) {
    t.add(
        Component::Containerd,
        "/etc/containerd/config.toml",
        0o644,
        containerd_config(ctx),
    );
    let unit = Unit {
        description: "containerd container runtime (Strata)",
        documentation: "https://containerd.io",
        after: &["local-fs.target"],
        requires: &[],
        exec: format!("{BIN_DIR}/containerd"),
        args: vec![flag("config", "/etc/containerd/config.toml")],
        extra: &[
            "Type=notify",
            "Delegate=yes",
            "KillMode=process",
            "LimitNOFILE=1048576",
            // containerd finds its shim (containerd-shim-runc-v2) through PATH.
            "Environment=PATH=/opt/strata/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ExecStartPre=-/sbin/modprobe overlay",
        ],
    };
    t.add(
        Component::Containerd,
        "/etc/systemd/system/containerd.service",
        0o644,
        unit.text(),
    );
}

fn kubelet_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    let name = h.name.as_str();
    t.add(
        Component::Kubelet,
        format!("{KUBE_DIR}/kubelet/config.yaml"),
        0o644,
        kubelet_config(ctx),
    );
    let mut args = vec![
        flag("config", format!("{KUBE_DIR}/kubelet/config.yaml")),
        flag("kubeconfig", format!("{KUBE_DIR}/kubelet.conf")),
        flag("cert-dir", "/var/lib/kubelet/pki"),
        flag("hostname-override", name),
    ];
    if let Some(ip) = host_ip(h) {
        args.push(flag("node-ip", ip));
    }
    if versions::uses(Item::KubeletContainerRuntimeFlag, ctx.minor) {
        args.push(flag("container-runtime", "remote"));
    }
    if versions::uses(Item::KubeletRuntimeEndpointFlag, ctx.minor) {
        args.push(flag(
            "container-runtime-endpoint",
            format!("unix://{CONTAINERD_SOCKET}"),
        ));
    }
    // Only labels the kubelet may set on itself (NodeRestriction); node-role labels are set
    // through the API once the node has registered.
    let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !labels.is_empty() {
        args.push(flag("node-labels", labels.join(",")));
    }
    // Control-plane taints from registration on, so no pod lands there before `apply`
    // reaches the API (which also taints nodes registered before).
    let taints: Vec<String> = pod_security::taints_of(h, ctx.minor)
        .into_iter()
        .map(|key| format!("{key}:NoSchedule"))
        .chain(
            h.taints
                .iter()
                .map(|tn| format!("{}={}:{:?}", tn.key, tn.value, tn.effect)),
        )
        .collect();
    if !taints.is_empty() {
        args.push(flag("register-with-taints", taints.join(",")));
    }
    let unit = Unit {
        description: "Kubernetes node agent (Strata)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/",
        after: &["containerd.service", "strata-api-balancer.service"],
        requires: &["containerd.service"],
        exec: format!("{BIN_DIR}/kubelet"),
        args,
        // The kubelet's in-tree ECR credential provider (until 1.27) asks the EC2 metadata
        // service for credentials at every start: about 6 s of timeouts on a host that is
        // not an EC2 instance. Images from ECR take an imagePullSecret instead.
        extra: &["Environment=AWS_EC2_METADATA_DISABLED=true"],
    };
    t.add(
        Component::Kubelet,
        "/etc/systemd/system/kubelet.service",
        0o644,
        unit.text(),
    );

    t.add(
        Component::Kubelet,
        format!("{KUBE_DIR}/kubelet.conf"),
        0o600,
        ctx.read(ctx.state.file(&format!("kubeconfigs/kubelet-{name}.conf")))?,
    );
    t.add(
        Component::Kubelet,
        format!("{PKI_DIR}/ca.crt"),
        0o644,
        ctx.cert("ca")?,
    );
    let serving = format!("kubelet/{name}-serving");
    t.add(
        Component::Kubelet,
        format!("{PKI_DIR}/kubelet-serving.crt"),
        0o644,
        ctx.cert(&serving)?,
    );
    t.add(
        Component::Kubelet,
        format!("{PKI_DIR}/kubelet-serving.key"),
        0o600,
        ctx.key(&serving)?,
    );

    Ok(())
}

fn kube_proxy_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    t.add(
        Component::KubeProxy,
        format!("{KUBE_DIR}/kube-proxy/config.yaml"),
        0o644,
        kube_proxy_config(ctx, h),
    );
    let unit = Unit {
        description: "Kubernetes service proxy (Strata)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/",
        after: &[],
        requires: &[],
        exec: format!("{BIN_DIR}/kube-proxy"),
        args: vec![flag("config", format!("{KUBE_DIR}/kube-proxy/config.yaml"))],
        extra: &[],
    };
    t.add(
        Component::KubeProxy,
        "/etc/systemd/system/kube-proxy.service",
        0o644,
        unit.text(),
    );
    t.add(
        Component::KubeProxy,
        format!("{KUBE_DIR}/kube-proxy.conf"),
        0o600,
        ctx.read(ctx.state.file("kubeconfigs/kube-proxy.conf"))?,
    );
    Ok(())
}

/// Kernel settings every node needs (applied by `sysctl --system` in the nodes phase).
fn host_settings_files(ctx: &Ctx<'_>, t: &mut HostTree) {
    let mut sysctl = String::from(
        "# Kernel settings Kubernetes networking needs. Written by Strata.\n\
         net.ipv4.ip_forward = 1\n\
         net.ipv6.conf.all.forwarding = 1\n\
         net.bridge.bridge-nf-call-iptables = 1\n\
         net.bridge.bridge-nf-call-ip6tables = 1\n",
    );
    if !ctx.local() {
        sysctl.push_str("# What the kubelet's protectKernelDefaults expects.\n");
        for (key, value) in KUBELET_SYSCTLS {
            sysctl.push_str(&format!("{key} = {value}\n"));
        }
    }
    t.add(
        Component::HostSettings,
        "/etc/sysctl.d/90-strata.conf",
        0o644,
        sysctl,
    );
    t.add(
        Component::HostSettings,
        "/etc/modules-load.d/strata.conf",
        0o644,
        "# Kernel modules for container networking and storage. Written by Strata.\n\
         overlay\n\
         br_netfilter\n",
    );
}

/// Where the node-local API load balancer's list of API servers and identity are.
pub const API_BALANCER_DIR: &str = "/etc/strata/api-balancer";

/// The API servers as the node-local balancers reach them, one `host:port` per line, in the
/// Cluster file's order.
pub fn api_balancer_backends(c: &crate::model::Cluster) -> String {
    let mut s = String::from(
        "# The cluster's API servers. Written by Strata; re-read by strata-api-balancer.\n",
    );
    for h in catalog::hosts_running(c, Component::KubeApiserver) {
        s.push_str(&format!("{}:{API_PORT}\n", url_host(h)));
    }
    s
}

fn api_balancer_files(ctx: &Ctx<'_>, t: &mut HostTree) -> Result<(), RenderError> {
    let dir = API_BALANCER_DIR;
    t.add_reloaded(
        format!("{dir}/backends"),
        0o644,
        api_balancer_backends(ctx.cluster),
    );
    // The health-check identity is read again when it changes: a renewal restarts nothing
    // (a restart would refuse the node's connections to the API for a moment).
    let by = Component::ApiBalancer;
    t.add_reloaded(format!("{dir}/ca.crt"), 0o644, ctx.cert("ca")?);
    t.add_reloaded(
        format!("{dir}/client.crt"),
        0o644,
        ctx.cert("api-balancer")?,
    );
    t.add_reloaded(format!("{dir}/client.key"), 0o600, ctx.key("api-balancer")?);
    let unit = Unit {
        description: "Node-local Kubernetes API load balancer (Strata)",
        documentation: "https://github.com/strata-dev/strata/tree/main/addons/api-balancer",
        after: &[],
        requires: &[],
        exec: format!("{BIN_DIR}/strata-api-balancer"),
        args: vec![
            flag("listen", format!("127.0.0.1:{API_BALANCER_PORT}")),
            flag("backends", format!("{dir}/backends")),
            flag("ca", format!("{dir}/ca.crt")),
            flag("cert", format!("{dir}/client.crt")),
            flag("key", format!("{dir}/client.key")),
        ],
        extra: &[
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "LimitNOFILE=65536",
        ],
    };
    t.add(
        by,
        "/etc/systemd/system/strata-api-balancer.service",
        0o644,
        unit.text(),
    );
    Ok(())
}

/// Where a control-plane host's virtual IP agent keeps its identity.
pub const VIP_DIR: &str = "/etc/strata/vip";

fn vip_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    let (Some(vip), Some(me)) = (ctx.cluster.spec.control_plane.vip, host_ip(h)) else {
        return Ok(());
    };
    let by = Component::Vip;
    t.add(
        by,
        format!("{VIP_DIR}/kubeconfig"),
        0o600,
        ctx.read(ctx.state.file(&format!("kubeconfigs/vip-{}.conf", h.name)))?,
    );
    let unit = Unit {
        description: "The control plane's virtual IP (Strata)",
        documentation: "https://github.com/strata-dev/strata/tree/main/addons/vip",
        after: &["kube-apiserver.service"],
        requires: &[],
        exec: format!("{BIN_DIR}/strata-vip"),
        args: vec![
            flag("vip", vip),
            flag("host-address", me),
            flag("identity", &h.name),
            flag("kubeconfig", format!("{VIP_DIR}/kubeconfig")),
        ],
        extra: &[
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
            // Gives the Lease up on the way down (a reboot moves the address at once).
            "TimeoutStopSec=10",
        ],
    };
    t.add(
        by,
        "/etc/systemd/system/strata-vip.service",
        0o644,
        unit.text(),
    );
    Ok(())
}

/// The update agent's identity on its node, and the path units it works through.
fn update_agent_files(ctx: &Ctx<'_>, h: &Host, t: &mut HostTree) -> Result<(), RenderError> {
    use crate::addons::UPDATE_AGENT_DIR;
    // Read by the agent's pod (the update operator's DaemonSet), not by the host's units.
    t.add(
        Component::UpdateOperator,
        format!("{UPDATE_AGENT_DIR}/kubeconfig"),
        0o600,
        ctx.read(
            ctx.state
                .file(&format!("kubeconfigs/update-agent-{}.conf", h.name)),
        )?,
    );
    for (unit, text) in crate::addons::update_agent_units() {
        t.add(
            Component::UpdateAgentHost,
            format!("/etc/systemd/system/{unit}"),
            0o644,
            text,
        );
    }
    t.add(
        Component::UpdateAgentHost,
        crate::addons::UPDATE_ENGINE_CHECK_PATH,
        0o755,
        crate::addons::UPDATE_ENGINE_CHECK,
    );
    Ok(())
}

/// The directory of the node's CNI configuration (written by the overlay agent, or by apply
/// without the overlay).
pub const CNI_DIR: &str = "/etc/cni/net.d";

/// The unit that masquerades pod traffic leaving the pod network (and nothing else: pods
/// reach pods on other nodes with their own addresses).
fn pod_masquerade_unit(pod_cidr: &str) -> String {
    let ipt = "iptables -w -t nat";
    let chain = "STRATA-POD-MASQ";
    format!(
        "# Written by Strata; changes are overwritten by `strata apply`.\n\
         [Unit]\n\
         Description=Strata: masquerade pod traffic that leaves the pod network {pod_cidr}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/sh -c '{ipt} -N {chain} 2>/dev/null; {ipt} -F {chain} && \
         {ipt} -A {chain} -d {pod_cidr} -j RETURN && {ipt} -A {chain} -d 224.0.0.0/4 -j RETURN && \
         {ipt} -A {chain} -j MASQUERADE && \
         ({ipt} -C POSTROUTING -s {pod_cidr} -j {chain} 2>/dev/null || \
         {ipt} -A POSTROUTING -s {pod_cidr} -j {chain})'\n\
         ExecStop=/bin/sh -c '{ipt} -D POSTROUTING -s {pod_cidr} -j {chain} 2>/dev/null; \
         {ipt} -F {chain} 2>/dev/null; {ipt} -X {chain} 2>/dev/null; true'\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Writes a rendering below `out` (`hosts/<host>/<path>`, `cluster/<file>`): directories
/// 0700 (the tree holds private keys), each file a new one with its mode, renamed into
/// place. Refuses when anything below `out` on the way is a symbolic link: a link planted
/// there could send a private key anywhere its creator chose, and an existing `out` that
/// another user owns or every user may write.
pub fn write_out(r: &Rendered, out: &Path) -> std::io::Result<()> {
    // Another user's directory (or one everyone may write) could have its entries swapped
    // between the checks below and the writes.
    if let Some(why) = strata_pki::files::unsafe_dir(out, rustix::process::geteuid().as_raw())? {
        return Err(std::io::Error::other(format!(
            "{}: {why}; refusing to write keys there (render into a directory of your own)",
            out.display()
        )));
    }
    let files = r
        .hosts
        .iter()
        .flat_map(|t| {
            t.files.iter().map(|(path, f)| {
                let p = out
                    .join("hosts")
                    .join(&t.host)
                    .join(path.trim_start_matches('/'));
                (p, f.content.as_slice(), f.mode)
            })
        })
        .chain(
            r.objects
                .iter()
                .map(|o| (out.join("cluster").join(&o.file), o.yaml.as_bytes(), 0o644)),
        );
    for (path, content, mode) in files {
        let rel = path.strip_prefix(out).unwrap_or(&path);
        let mut at = out.to_path_buf();
        for part in rel.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(std::io::Error::other(format!(
                        "{} is a symbolic link; refusing to write through it (remove it, or \
                         render into a new directory)",
                        at.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        if let Some(d) = path.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        strata_pki::files::write_atomic(&path, content, mode)?;
    }
    Ok(())
}

pub(crate) fn to_yaml<T: serde::Serialize>(what: &str, v: &T) -> Result<String, RenderError> {
    yaml(what, v)
}

pub(crate) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, RenderError> {
    serde_json::to_string(v).map_err(|e| RenderError::Serialize {
        what: what.into(),
        reason: e.to_string(),
    })
}
