//! The Cluster document (`apiVersion: strata.dev/v1alpha1`, `kind: Cluster`).
//!
//! Field names are the user contract described in manifests/README.md. Every field has a default
//! except the host list, so a minimal file is a handful of lines. Doc comments become the
//! descriptions of `strata schema`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use strata_update_api::{IntOrPercent, Weekday};

use crate::formats::{self, HostAddr};

pub const API_VERSION: &str = "strata.dev/v1alpha1";

/// A string-typed value with a parser: serde goes through the parser, the schema names the
/// format so that validation finds every bad value at once.
macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident($inner:ty), $format:literal, $parse:expr, $show:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub $inner);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&s).map($name)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let show: fn(&$inner) -> String = $show;
                f.write_str(&show(&self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_owned())
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": $format })
            }
        }
    };
}

string_value!(
    /// A CIDR block such as 10.244.0.0/16.
    Cidr(IpNet), "cidr", formats::parse_cidr, |n| n.to_string()
);
string_value!(
    /// An IP address or a DNS name.
    HostAddress((String, HostAddr)),
    "host-address",
    |s| formats::parse_host_address(s).map(|a| (s.to_owned(), a)),
    |(s, _)| s.clone()
);
string_value!(
    /// A DNS-1123 label: lower-case letters, digits and '-'.
    DnsLabel(String),
    "dns-label",
    |s| formats::check_dns_label(s).map(|()| s.to_owned()),
    |s| s.clone()
);
string_value!(
    /// A DNS name (dot-separated labels).
    DnsName(String),
    "dns-subdomain",
    |s| formats::check_dns_subdomain(s).map(|()| s.to_owned()),
    |s| s.clone()
);
string_value!(
    /// A duration such as 8760h, 30m, 1h30m or 45s.
    GoDuration(Duration), "duration", formats::parse_duration, |d| formats::format_duration(*d)
);
string_value!(
    /// A Kubernetes release MAJOR.MINOR.PATCH.
    KubernetesVersion((u32, u32, u32)),
    "kubernetes-version",
    formats::parse_kubernetes_version,
    |(a, b, c)| format!("{a}.{b}.{c}")
);
string_value!(
    /// host:port, or empty for the default.
    Endpoint(String),
    "endpoint",
    |s| formats::check_endpoint(s).map(|()| s.to_owned()),
    |s| s.clone()
);
string_value!(
    /// A time of day HH:MM on a 24-hour clock.
    TimeOfDay((u8, u8)),
    "time-of-day",
    formats::parse_time_of_day,
    |(h, m)| format!("{h:02}:{m:02}")
);
string_value!(
    /// An IANA time zone name such as UTC or Europe/Berlin.
    TimeZoneName(String),
    "time-zone",
    |s| formats::check_time_zone(s).map(|()| s.to_owned()),
    |s| s.clone()
);
string_value!(
    /// An OpenSSH SHA256 host key fingerprint (SHA256:...).
    SshFingerprint(String),
    "ssh-fingerprint",
    |s| formats::check_ssh_fingerprint(s).map(|()| s.to_owned()),
    |s| s.clone()
);

string_value!(
    /// An image reference as containerd pulls it: [REGISTRY/]REPOSITORY[:TAG][@DIGEST].
    ImageReference(String),
    "image-reference",
    |s| formats::check_image_reference(s).map(|()| s.to_owned()),
    |s| s.clone()
);

impl ImageReference {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl HostAddress {
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.0.1 {
            HostAddr::Ip(ip) => Some(*ip),
            HostAddr::Name(_) => None,
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0.0
    }
    /// The address as it appears in a URL or a `host:port` pair (`[v6]`).
    pub fn for_url(&self) -> String {
        match self.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.as_str().to_owned(),
        }
    }
}

impl DnsLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl KubernetesVersion {
    pub fn minor(&self) -> u32 {
        self.0.1
    }
    pub fn major(&self) -> u32 {
        self.0.0
    }
}

impl GoDuration {
    pub fn hours(h: u64) -> Self {
        Self(Duration::from_secs(h * 3600))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "strata.dev/v1alpha1")]
    V1alpha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Cluster,
}

/// A Kubernetes cluster that Strata installs and manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Strata Cluster")]
pub struct Cluster {
    /// Always `strata.dev/v1alpha1`.
    pub api_version: ApiVersion,
    /// Always `Cluster`.
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The cluster's name: a DNS-1123 label. Also the name of the state directory.
    pub name: DnsLabel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default)]
    pub kubernetes: KubernetesSpec,
    /// Where the hosts come from: `ssh: {}` (existing machines) or `local: {}` (machines
    /// created on this computer as systemd-nspawn containers).
    #[serde(default)]
    pub platform: Platform,
    /// SSH settings for every host; a host may override any of them.
    #[serde(default)]
    pub ssh: SshDefaults,
    #[serde(default)]
    pub control_plane: ControlPlane,
    /// The machines of the cluster.
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub etcd: EtcdSpec,
    #[serde(default)]
    pub pki: PkiSpec,
    #[serde(default)]
    pub assets: Assets,
    #[serde(default)]
    pub addons: Addons,
    #[serde(default, skip_serializing_if = "Images::is_default")]
    pub images: Images,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSpec {
    /// Kubernetes release to install, MAJOR.MINOR.PATCH.
    #[serde(default = "default_version")]
    pub version: KubernetesVersion,
}

pub const DEFAULT_KUBERNETES_VERSION: &str = "1.20.2";

fn default_version() -> KubernetesVersion {
    KubernetesVersion((1, 20, 2))
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        Self {
            version: default_version(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Platform {
    /// Existing machines reached over SSH by address.
    Ssh(SshPlatform),
    /// Machines created on this computer (systemd-nspawn); addresses may be omitted.
    Local(LocalPlatform),
}

impl Default for Platform {
    fn default() -> Self {
        Platform::Ssh(SshPlatform {})
    }
}

impl Platform {
    pub fn name(&self) -> &'static str {
        match self {
            Platform::Ssh(_) => "ssh",
            Platform::Local(_) => "local",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshPlatform {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPlatform {
    /// This cluster's addresses on this computer: a part of the benchmarking range
    /// 198.18.0.0/15 (default: all of it). Its first address is this computer's, the
    /// machines' router; hosts without an address get the next free ones. Local clusters
    /// whose ranges do not overlap run at once (e.g. 198.18.1.0/24 and 198.18.2.0/24);
    /// `strata local up` refuses a range that overlaps a running cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Cidr>,
    /// The prefix length of each machine's address (default: the range's own, every machine
    /// on one subnet). A longer prefix puts machines whose addresses differ within it on
    /// different subnets, routed through this computer, as hosts in two racks are: with 24,
    /// hosts at 198.18.0.x and 198.18.1.x are two subnets (the overlay then tunnels between
    /// them and routes directly within each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 15, max = 30))]
    pub prefix_length: Option<u8>,
}

/// The local platform's whole range, 198.18.0.0/15.
pub const LOCAL_PREFIX: u8 = 15;

/// 198.18.0.0/15: every local cluster's range is part of it.
pub fn local_range_all() -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(198, 18, 0, 0), LOCAL_PREFIX)
}

impl LocalPlatform {
    /// The cluster's range (an IPv6 one, refused by validation, counts as the default).
    pub fn range(&self) -> ipnet::Ipv4Net {
        match self.range.as_ref().map(Cidr::net) {
            Some(IpNet::V4(n)) => n.trunc(),
            _ => local_range_all(),
        }
    }

    /// The prefix length of the machines' addresses.
    pub fn machine_prefix(&self) -> u8 {
        self.prefix_length
            .unwrap_or_else(|| self.range().prefix_len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshDefaults {
    /// Login user; a user other than root needs password-less sudo.
    #[serde(default = "default_ssh_user")]
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Private key file; `~` is the home directory, a relative path is relative to the
    /// Cluster file.
    #[serde(default = "default_private_key")]
    pub private_key: String,
    /// Authenticate with the keys of the running ssh-agent (SSH_AUTH_SOCK) instead of
    /// privateKey.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// Reach the hosts through this SSH jump host (bastion).
    // In the schema a mapping, not "mapping or null": mistakes inside it are then reported
    // field by field ("did you mean").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Bastion")]
    pub bastion: Option<Bastion>,
}

/// An SSH jump host. Authentication is the same as for the hosts (key or agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bastion {
    pub address: HostAddress,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Login user on the bastion; default: the hosts' user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Pinned host key fingerprint of the bastion (SHA256:...); without it the first contact
    /// needs --accept-new-host-keys, which pins it in the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<SshFingerprint>,
}

fn default_ssh_user() -> String {
    "root".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_private_key() -> String {
    "~/.ssh/id_ed25519".into()
}

impl Default for SshDefaults {
    fn default() -> Self {
        Self {
            user: default_ssh_user(),
            port: default_ssh_port(),
            private_key: default_private_key(),
            agent: false,
            bastion: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    /// host:port of the API; empty means the first control-plane host, port 6443.
    #[serde(default = "default_endpoint")]
    pub endpoint: Endpoint,
    /// A virtual IP on the control-plane hosts' network, held by one control-plane host whose
    /// API server works at a time and moved with gratuitous ARP when that host dies: what
    /// the admin kubeconfig and other clients off the cluster use when `endpoint` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Extra IP addresses and DNS names for the API server certificate (a load balancer,
    /// a public name).
    #[serde(default, rename = "certSANs", skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<HostAddress>,
}

fn default_endpoint() -> Endpoint {
    Endpoint(String::new())
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self {
            endpoint: default_endpoint(),
            vip: None,
            cert_sans: Vec::new(),
        }
    }
}

/// What a host does in the cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Etcd,
    ControlPlane,
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Etcd, Role::ControlPlane, Role::Worker];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Host {
    /// Node name: a DNS-1123 label, unique in the cluster.
    pub name: DnsLabel,
    /// IP address or DNS name to reach the host; may be omitted on the local platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<HostAddress>,
    /// Any of etcd, control-plane, worker.
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "HostSsh::is_empty")]
    pub ssh: HostSsh,
    /// Kubernetes labels for the node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes taints for the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

impl Host {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSsh {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Pinned host key fingerprint (`ssh-keygen -lf` format, SHA256:...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<SshFingerprint>,
}

impl HostSsh {
    pub fn is_empty(&self) -> bool {
        self == &HostSsh::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Pod addresses; each node gets a /24 (IPv4) of it.
    #[serde(rename = "podCIDR", default = "default_pod_cidr")]
    pub pod_cidr: Cidr,
    /// Service (ClusterIP) addresses.
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Cidr,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: DnsName,
    #[serde(default)]
    pub overlay: OverlayNetwork,
    #[serde(default)]
    pub dns: ClusterDns,
}

/// Cluster DNS settings (the server is `spec.addons.dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterDns {
    /// DNS servers that answer names outside the cluster (port 53). Default: the
    /// nameservers of the nodes' resolv.conf, loopback ones skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<IpAddr>,
}

fn default_pod_cidr() -> Cidr {
    Cidr(IpNet::V4(ipnet::Ipv4Net::new_assert(
        [10, 244, 0, 0].into(),
        16,
    )))
}
fn default_service_cidr() -> Cidr {
    Cidr(IpNet::V4(ipnet::Ipv4Net::new_assert(
        [10, 96, 0, 0].into(),
        12,
    )))
}
fn default_cluster_domain() -> DnsName {
    DnsName("cluster.local".into())
}

impl Default for Network {
    fn default() -> Self {
        Self {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            cluster_domain: default_cluster_domain(),
            overlay: OverlayNetwork::default(),
            dns: ClusterDns::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayNetwork {
    /// VXLAN network identifier.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,
    /// VXLAN UDP port.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// Route pod traffic between nodes of the same underlay subnet straight through the
    /// underlay, without VXLAN encapsulation (flannel's DirectRouting); nodes on other
    /// subnets are still reached through the tunnel.
    #[serde(default = "yes")]
    pub direct_routing: bool,
}

fn default_vni() -> u32 {
    1
}
fn default_vxlan_port() -> u16 {
    8472
}

impl Default for OverlayNetwork {
    fn default() -> Self {
        Self {
            vni: default_vni(),
            port: default_vxlan_port(),
            direct_routing: true,
        }
    }
}

/// etcd settings (none yet; members are the hosts with the etcd role).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdSpec {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PkiSpec {
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// Validity of the certificate authorities Strata creates.
    #[serde(default = "default_ca_validity")]
    pub ca_validity: GoDuration,
    /// Validity of every other certificate.
    #[serde(default = "default_cert_validity")]
    pub cert_validity: GoDuration,
    /// Bring your own Kubernetes CA instead of generating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaFiles>,
}

fn default_ca_validity() -> GoDuration {
    GoDuration::hours(87_600)
}
fn default_cert_validity() -> GoDuration {
    GoDuration::hours(8_760)
}

impl Default for PkiSpec {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::default(),
            ca_validity: default_ca_validity(),
            cert_validity: default_cert_validity(),
            ca: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaFiles {
    /// PEM certificate of the CA.
    pub cert: String,
    /// PEM private key of the CA.
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assets {
    /// A directory or archive (.tar, .tar.gz, .tgz) with a manifest of versions and sha256
    /// digests, or an https URL of such an archive or directory, or `upstream`: the official
    /// release downloads (Kubernetes, etcd, containerd, runc, CNI plugins), each checked
    /// against its published sha256; empty means the built-in default for the platform.
    /// From an https directory URL each host fetches its files itself (this computer only
    /// the manifest).
    #[serde(default)]
    pub source: String,
    /// The sha256 (hex) of the archive, or of the manifest.json of a directory URL. Required
    /// for URLs (what is downloaded is verified before use); checked for local archives when
    /// given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// With `source: upstream`: a mirror of the official release URLs; a URL
    /// `https://HOST/PATH` is fetched as `<mirror>/HOST/PATH`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mirror: String,
}

/// Registry references that replace the images Strata otherwise imports from
/// spec.assets into every node's containerd. Each node pulls a named image itself, so the
/// registry must be reachable from the nodes and trusted by them (its CA in the hosts' trust
/// store, or a public registry). Pinning by digest (`...@sha256:...`) is recommended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Images {
    /// The pod sandbox image. Default: the assets' pause image, named as the release's
    /// kubelet expects it (k8s.gcr.io/pause:3.2 for 1.20), which is pulled under that name
    /// when the assets carry none (`source: upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<ImageReference>,
    /// The overlay agent. Default: the assets' strata.dev/overlay image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<ImageReference>,
    /// The update operator and its agent. Default: the assets'
    /// strata.dev/update-operator image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_operator: Option<ImageReference>,
    /// Cluster DNS. Default: the assets' strata.dev/dns image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ImageReference>,
}

impl Images {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Addons {
    #[serde(default)]
    pub overlay: OverlayAddon,
    #[serde(default)]
    pub update_operator: UpdateOperatorAddon,
    #[serde(default)]
    pub dns: DnsAddon,
}

/// Cluster DNS (`strata-dns`, Service `kube-dns` in kube-system).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsAddon {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for DnsAddon {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayAddon {
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for OverlayAddon {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOperatorAddon {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub policy: ClusterUpdatePolicy,
}

impl Default for UpdateOperatorAddon {
    fn default() -> Self {
        Self {
            enabled: true,
            policy: ClusterUpdatePolicy::default(),
        }
    }
}

/// The `default` UpdatePolicy's fields the Cluster file sets (the rest stay the policy's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterUpdatePolicy {
    /// How many nodes may be unavailable at once (a count, or a percentage such as "25%").
    #[serde(default)]
    #[schemars(schema_with = "int_or_percent_schema")]
    pub max_unavailable: IntOrPercent,
    /// Maintenance windows; empty means any time.
    #[serde(default)]
    pub windows: Vec<MaintenanceWindow>,
}

impl Default for ClusterUpdatePolicy {
    fn default() -> Self {
        Self {
            max_unavailable: IntOrPercent::Count(1),
            windows: Vec::new(),
        }
    }
}

/// The Cluster file's view of [`IntOrPercent`]: its formats, so a bad value gets the
/// validator's clear message.
fn int_or_percent_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 1 },
            { "type": "string", "format": "percent" }
        ]
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Days on which the window opens; empty means every day.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Opening time, HH:MM in the window's time zone.
    pub start: TimeOfDay,
    /// How long the window stays open.
    pub duration: GoDuration,
    #[serde(default = "utc")]
    pub time_zone: TimeZoneName,
}

fn utc() -> TimeZoneName {
    TimeZoneName("UTC".into())
}

impl From<&MaintenanceWindow> for strata_update_api::WindowSpec {
    fn from(w: &MaintenanceWindow) -> Self {
        Self {
            days: w.days.clone(),
            start: w.start.to_string(),
            duration: strata_update_api::GoDuration(w.duration.0),
            time_zone: w.time_zone.to_string(),
        }
    }
}

/// SSH settings of one host after applying the cluster-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSsh {
    pub user: String,
    pub port: u16,
    pub private_key: String,
    pub agent: bool,
    pub host_key: Option<SshFingerprint>,
    pub bastion: Option<Bastion>,
}

impl Cluster {
    pub fn name(&self) -> &str {
        self.metadata.name.as_str()
    }

    pub fn hosts_with(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.spec.hosts.iter().filter(move |h| h.has_role(role))
    }

    pub fn ssh_for(&self, host: &Host) -> EffectiveSsh {
        let d = &self.spec.ssh;
        EffectiveSsh {
            user: host.ssh.user.clone().unwrap_or_else(|| d.user.clone()),
            port: host.ssh.port.unwrap_or(d.port),
            private_key: host
                .ssh
                .private_key
                .clone()
                .unwrap_or_else(|| d.private_key.clone()),
            agent: d.agent,
            host_key: host.ssh.host_key.clone(),
            bastion: d.bastion.clone(),
        }
    }

    /// On the local platform, gives every host without an address the next free one of the
    /// cluster's range (from its third address on: the first is this computer's), in host
    /// order; none when the range is full (validation says so).
    pub fn assign_local_addresses(&mut self) {
        let Platform::Local(local) = &self.spec.platform else {
            return;
        };
        let range = local.range();
        // Taken: the hosts' own addresses and the virtual IP.
        let used: Vec<IpAddr> = self
            .spec
            .hosts
            .iter()
            .filter_map(|h| h.address.as_ref().and_then(HostAddress::ip))
            .chain(self.spec.control_plane.vip.map(IpAddr::V4))
            .collect();
        let mut next = u32::from(range.network()).saturating_add(2);
        let last = u32::from(range.broadcast());
        for h in self.spec.hosts.iter_mut().filter(|h| h.address.is_none()) {
            while used.contains(&IpAddr::V4(next.into())) {
                next += 1;
            }
            if next >= last {
                return;
            }
            let ip = std::net::Ipv4Addr::from(next);
            h.address = Some(HostAddress((ip.to_string(), HostAddr::Ip(IpAddr::V4(ip)))));
            next += 1;
        }
    }

    /// `host:port` of the first control-plane host's API server (what apply talks to while
    /// it installs: a virtual IP is held only once the control plane runs).
    pub fn first_api_server(&self) -> Option<String> {
        let host = self.hosts_with(Role::ControlPlane).next()?;
        let addr = host.address.as_ref()?;
        Some(match addr.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", crate::catalog::API_PORT),
            _ => format!("{}:{}", addr.as_str(), crate::catalog::API_PORT),
        })
    }

    /// `host:port` clients use to reach the API server.
    pub fn api_endpoint(&self) -> Option<String> {
        if !self.spec.control_plane.endpoint.0.is_empty() {
            return Some(self.spec.control_plane.endpoint.0.clone());
        }
        if let Some(vip) = self.spec.control_plane.vip {
            return Some(format!("{vip}:{}", crate::catalog::API_PORT));
        }
        let host = self.hosts_with(Role::ControlPlane).next()?;
        let addr = host.address.as_ref()?;
        Some(match addr.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:6443"),
            _ => format!("{}:6443", addr.as_str()),
        })
    }
}
