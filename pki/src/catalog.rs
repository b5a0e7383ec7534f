//! What the cluster's PKI consists of: every CA, certificate and kubeconfig, derived from the
//! cluster's inputs (pki/README.md). Pure data; no IO.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Key type and size for every generated key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }
}

/// A host's address: an IP, or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(IpAddr),
    Dns(String),
}

/// One machine of the cluster, as far as certificates care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: Option<Address>,
    pub etcd: bool,
    pub control_plane: bool,
}

/// Files of a certificate authority supplied by the user (spec.pki.ca).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCa {
    pub cert_pem: String,
    pub key_pem: String,
    /// Where they came from, for messages.
    pub source: String,
}

/// Everything the PKI is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub cluster_name: String,
    /// `host:port` clients use for the API server.
    pub api_endpoint: String,
    /// `host:port` of the API server as a control-plane host's own components reach it.
    pub same_host_api: String,
    /// `host:port` of the node-local API load balancer on every node.
    pub node_balancer: String,
    /// The control plane's virtual IP: each control-plane host gets an identity to hold it.
    pub vip: Option<IpAddr>,
    /// First address of the service CIDR (the `kubernetes` Service's ClusterIP).
    pub api_service_ip: IpAddr,
    pub cluster_domain: String,
    pub nodes: Vec<Node>,
    /// Extra names and addresses for the API server certificate.
    pub extra_api_sans: Vec<Address>,
    pub key_algorithm: KeyAlgorithm,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// Bring-your-own Kubernetes CA.
    pub kubernetes_ca: Option<ExternalCa>,
}

/// The three certificate authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaId {
    Kubernetes,
    FrontProxy,
    Etcd,
}

impl CaId {
    pub const ALL: [CaId; 3] = [CaId::Kubernetes, CaId::FrontProxy, CaId::Etcd];

    /// File stem under pki/ (kubeadm names).
    pub fn name(&self) -> &'static str {
        match self {
            CaId::Kubernetes => "ca",
            CaId::FrontProxy => "front-proxy-ca",
            CaId::Etcd => "etcd/ca",
        }
    }

    pub fn common_name(&self) -> &'static str {
        match self {
            CaId::Kubernetes => "kubernetes",
            CaId::FrontProxy => "front-proxy-ca",
            CaId::Etcd => "etcd-ca",
        }
    }
}

/// Where a client certificate is also written as a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigSpec {
    /// Path relative to the state directory.
    pub file: String,
    /// User name inside the kubeconfig.
    pub user: String,
    pub server: Server,
}

/// Which API address a kubeconfig names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The cluster's endpoint (`Inputs::api_endpoint`): for users and tools off the cluster.
    Endpoint,
    /// The API server on the same host (controller manager and scheduler).
    SameHost,
    /// The node-local API load balancer (kubelet, kube-proxy, host-network agents).
    NodeBalancer,
}

/// One leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// File stem under pki/, e.g. `apiserver` or `etcd/server-cp1`.
    pub name: String,
    pub ca: CaId,
    pub common_name: String,
    pub organization: Option<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub dns_names: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
    pub kubeconfig: Option<KubeconfigSpec>,
    /// Hosts whose identity this certificate carries (for "what involves this host").
    pub nodes: Vec<String>,
}

impl CertSpec {
    fn new(name: impl Into<String>, ca: CaId, cn: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ca,
            common_name: cn.into(),
            organization: None,
            server_auth: false,
            client_auth: false,
            dns_names: BTreeSet::new(),
            ips: BTreeSet::new(),
            kubeconfig: None,
            nodes: Vec::new(),
        }
    }

    fn client(mut self) -> Self {
        self.client_auth = true;
        self
    }

    fn server(mut self) -> Self {
        self.server_auth = true;
        self
    }

    fn org(mut self, o: &str) -> Self {
        self.organization = Some(o.into());
        self
    }

    fn kubeconfig(
        mut self,
        file: impl Into<String>,
        user: impl Into<String>,
        server: Server,
    ) -> Self {
        self.kubeconfig = Some(KubeconfigSpec {
            file: file.into(),
            user: user.into(),
            server,
        });
        self
    }

    fn san(&mut self, a: &Address) {
        match a {
            Address::Ip(ip) => {
                self.ips.insert(*ip);
            }
            Address::Dns(d) => {
                self.dns_names.insert(d.clone());
            }
        }
    }
}

/// Splits `host:port` (with `[v6]:port`) and returns the host as an address.
pub fn endpoint_host(endpoint: &str) -> Option<Address> {
    let host = if let Some(rest) = endpoint.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        endpoint
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(endpoint)
    };
    if host.is_empty() {
        return None;
    }
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => Address::Ip(ip),
        Err(_) => Address::Dns(host.to_owned()),
    })
}

/// The identity of one of Strata's agents on node `node`: user `strata:KIND:NODE` in group
/// `strata:KINDs`, its certificate `KIND/NODE` and kubeconfig `kubeconfigs/KIND-NODE.conf`.
fn agent_identity(kind: &str, node: &str, server: Server) -> CertSpec {
    let user = format!("strata:{kind}:{node}");
    let mut c = CertSpec::new(format!("{kind}/{node}"), CaId::Kubernetes, user.clone())
        .org(&format!("strata:{kind}s"))
        .client()
        .kubeconfig(format!("kubeconfigs/{kind}-{node}.conf"), user, server);
    c.nodes.push(node.to_owned());
    c
}

/// Every leaf certificate of the cluster, in a stable order.
pub fn leaf_certificates(inputs: &Inputs) -> Vec<CertSpec> {
    let mut out = Vec::new();

    // API server serving certificate.
    let mut api = CertSpec::new("apiserver", CaId::Kubernetes, "kube-apiserver").server();
    for d in [
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", inputs.cluster_domain),
        "localhost".into(),
    ] {
        api.dns_names.insert(d);
    }
    api.ips.insert(inputs.api_service_ip);
    api.ips.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for n in inputs.nodes.iter().filter(|n| n.control_plane) {
        api.dns_names.insert(n.name.clone());
        if let Some(a) = &n.address {
            api.san(a);
        }
        api.nodes.push(n.name.clone());
    }
    if let Some(a) = endpoint_host(&inputs.api_endpoint) {
        api.san(&a);
    }
    for a in &inputs.extra_api_sans {
        api.san(a);
    }
    out.push(api);

    // Not system:masters: RBAC grants this identity the kubelet API only (see the
    // cluster objects rendered by strata-manifests).
    out.push(
        CertSpec::new(
            "apiserver-kubelet-client",
            CaId::Kubernetes,
            "kube-apiserver-kubelet-client",
        )
        .client(),
    );
    out.push(CertSpec::new("front-proxy-client", CaId::FrontProxy, "front-proxy-client").client());
    out.push(
        CertSpec::new(
            "apiserver-etcd-client",
            CaId::Etcd,
            "kube-apiserver-etcd-client",
        )
        .client(),
    );
    out.push(
        CertSpec::new(
            "etcd/healthcheck-client",
            CaId::Etcd,
            "kube-etcd-healthcheck-client",
        )
        .client(),
    );

    for n in inputs.nodes.iter().filter(|n| n.etcd) {
        for kind in ["server", "peer"] {
            let mut c = CertSpec::new(
                format!("etcd/{kind}-{}", n.name),
                CaId::Etcd,
                n.name.clone(),
            )
            .server()
            .client();
            c.dns_names.insert(n.name.clone());
            c.dns_names.insert("localhost".into());
            c.ips.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
            c.ips.insert(IpAddr::V6(Ipv6Addr::LOCALHOST));
            if let Some(a) = &n.address {
                c.san(a);
            }
            c.nodes.push(n.name.clone());
            out.push(c);
        }
    }

    out.push(
        CertSpec::new("admin", CaId::Kubernetes, "kubernetes-admin")
            .org("system:masters")
            .client()
            .kubeconfig("auth/kubeconfig", "kubernetes-admin", Server::Endpoint),
    );
    out.push(
        CertSpec::new(
            "controller-manager",
            CaId::Kubernetes,
            "system:kube-controller-manager",
        )
        .client()
        .kubeconfig(
            "kubeconfigs/controller-manager.conf",
            "system:kube-controller-manager",
            Server::SameHost,
        ),
    );
    out.push(
        CertSpec::new("scheduler", CaId::Kubernetes, "system:kube-scheduler")
            .client()
            .kubeconfig(
                "kubeconfigs/scheduler.conf",
                "system:kube-scheduler",
                Server::SameHost,
            ),
    );
    // The virtual IP's holders: each control-plane host renews the Lease kube-system/strata-vip
    // through its own API server (RBAC: that Lease only).
    if inputs.vip.is_some() {
        for n in inputs.nodes.iter().filter(|n| n.control_plane) {
            out.push(agent_identity("vip", &n.name, Server::SameHost));
        }
    }
    // The node-local API load balancer's health checks: /readyz, which any authenticated
    // user may read (system:public-info-viewer); no role is bound to this identity.
    out.push(CertSpec::new("api-balancer", CaId::Kubernetes, "strata:api-balancer").client());
    out.push(
        CertSpec::new("kube-proxy", CaId::Kubernetes, "system:kube-proxy")
            .client()
            .kubeconfig(
                "kubeconfigs/kube-proxy.conf",
                "system:kube-proxy",
                Server::NodeBalancer,
            ),
    );
    for n in &inputs.nodes {
        let user = format!("system:node:{}", n.name);
        let mut c = CertSpec::new(
            format!("kubelet/{}", n.name),
            CaId::Kubernetes,
            user.clone(),
        )
        .org("system:nodes")
        .client()
        .kubeconfig(
            format!("kubeconfigs/kubelet-{}.conf", n.name),
            user,
            Server::NodeBalancer,
        );
        c.nodes.push(n.name.clone());
        out.push(c);
        // The kubelet's serving certificate, so the API server can verify it.
        let mut s = CertSpec::new(
            format!("kubelet/{}-serving", n.name),
            CaId::Kubernetes,
            format!("system:node:{}", n.name),
        )
        .org("system:nodes")
        .server();
        s.dns_names.insert(n.name.clone());
        if let Some(a) = &n.address {
            s.san(a);
        }
        s.nodes.push(n.name.clone());
        out.push(s);
        // The update agent on this node: RBAC lets this identity read this node's Node and
        // NodeUpdate and write that NodeUpdate's status, nothing else (see manifests' addons).
        out.push(agent_identity(
            "update-agent",
            &n.name,
            Server::NodeBalancer,
        ));
        // The overlay agent on this node: RBAC lets this identity write this node's
        // OverlayNode and read Nodes, nothing else.
        out.push(agent_identity("overlay", &n.name, Server::NodeBalancer));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn three_hosts() -> Inputs {
        let node = |name: &str, ip: [u8; 4], etcd: bool, cp: bool| Node {
            name: name.into(),
            address: Some(Address::Ip(IpAddr::from(ip))),
            etcd,
            control_plane: cp,
        };
        Inputs {
            cluster_name: "demo".into(),
            api_endpoint: "198.18.0.2:6443".into(),
            same_host_api: "127.0.0.1:6443".into(),
            node_balancer: "127.0.0.1:7445".into(),
            vip: None,
            api_service_ip: IpAddr::from([10, 96, 0, 1]),
            cluster_domain: "cluster.local".into(),
            nodes: vec![
                node("cp1", [198, 18, 0, 2], true, true),
                node("w1", [198, 18, 0, 3], false, false),
                node("w2", [198, 18, 0, 4], false, false),
            ],
            extra_api_sans: vec![Address::Dns("api.example.com".into())],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            ca_validity: Duration::from_secs(87_600 * 3600),
            cert_validity: Duration::from_secs(8_760 * 3600),
            kubernetes_ca: None,
        }
    }

    #[test]
    fn apiserver_has_every_san_of_the_table() {
        let certs = leaf_certificates(&three_hosts());
        let api = &certs[0];
        assert_eq!(api.name, "apiserver");
        let dns: Vec<&str> = api.dns_names.iter().map(String::as_str).collect();
        assert_eq!(
            dns,
            [
                "api.example.com",
                "cp1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost"
            ]
        );
        let ips: Vec<String> = api.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.96.0.1", "127.0.0.1", "198.18.0.2"]);
    }

    #[test]
    fn one_kubelet_identity_per_node_and_unique_names() {
        let certs = leaf_certificates(&three_hosts());
        let kubelets: Vec<&CertSpec> = certs
            .iter()
            .filter(|c| c.name.starts_with("kubelet/") && !c.name.ends_with("-serving"))
            .collect();
        assert_eq!(kubelets.len(), 3);
        for k in &kubelets {
            assert_eq!(k.organization.as_deref(), Some("system:nodes"));
            assert!(k.common_name.starts_with("system:node:"));
        }
        let mut names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len());
        assert!(names.contains(&"etcd/server-cp1") && names.contains(&"etcd/peer-cp1"));
        assert!(!names.contains(&"etcd/server-w1"));
    }

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            endpoint_host("198.18.0.2:6443"),
            Some(Address::Ip(IpAddr::from([198, 18, 0, 2])))
        );
        assert_eq!(
            endpoint_host("[fd00::1]:6443"),
            Some(Address::Ip("fd00::1".parse().expect("ip")))
        );
        assert_eq!(
            endpoint_host("api.example.com:443"),
            Some(Address::Dns("api.example.com".into()))
        );
    }
}
