//! What the cluster's Services and their endpoints say, as an immutable index that queries
//! read without locks or API requests. A new index is built from the watch stores after each
//! change (a burst of changes makes one), and swapped in whole. Endpoints come from core/v1
//! Endpoints (Kubernetes 1.20) or discovery.k8s.io/v1 EndpointSlices (from 1.21).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{EndpointSubset, Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A port of a Service or an endpoint, as the spec names it in SRV records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name (SRV records exist only for named ports).
    pub name: String,
    /// `tcp`, `udp` or `sctp` (lower case, as in `_<proto>`).
    pub protocol: String,
    pub port: u16,
}

/// One address behind a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `spec.hostname` of the pod (StatefulSets): `<hostname>.<service>.<ns>.svc.<zone>`.
    pub hostname: Option<String>,
    pub ports: Vec<Port>,
}

impl Endpoint {
    /// The endpoint's own label below its Service: its hostname, or its address with dashes.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => dashed(self.ip),
        }
    }
}

/// `10.0.0.1` -> `10-0-0-1`; `fd00::1` -> `fd00--1`.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string().replace('.', "-"),
        IpAddr::V6(v) => v.to_string().replace(':', "-"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Its cluster IPs (one per family).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the endpoints that answer (ready ones, and not-ready ones when the
    /// Service publishes them).
    Headless(Vec<Endpoint>),
    /// A CNAME to this name.
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: Kind,
    pub ports: Vec<Port>,
}

/// The index one query reads.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// By (namespace, name), lower case.
    services: HashMap<(String, String), ServiceEntry>,
    /// Namespaces that have at least one Service (`<ns>.svc.<zone>` exists).
    namespaces: BTreeSet<String>,
    /// PTR targets by address, relative to the zone (`<svc>.<ns>.svc`).
    reverse: HashMap<IpAddr, Vec<String>>,
    /// The Nodes' addresses: host-network pods and the hosts themselves ask from these.
    node_addresses: HashSet<IpAddr>,
}

impl Index {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    /// PTR targets of `ip`, relative to the zone.
    pub fn reverse(&self, ip: IpAddr) -> &[String] {
        self.reverse.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// Whether `ip` is one of the Nodes' addresses.
    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        self.node_addresses.contains(&ip)
    }

    /// Records the Nodes' addresses (see [`Index::is_node_address`]).
    pub fn set_nodes<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>) {
        self.node_addresses = nodes
            .into_iter()
            .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
            .flatten()
            .filter_map(|a| a.address.parse().ok())
            .collect();
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Adds a Service (and, for a headless one, its endpoints).
    pub fn insert(&mut self, namespace: &str, name: &str, entry: ServiceEntry) {
        let (ns, name) = (namespace.to_ascii_lowercase(), name.to_ascii_lowercase());
        let fqdn = format!("{name}.{ns}.svc");
        match &entry.kind {
            Kind::ClusterIp(ips) => {
                for ip in ips {
                    self.reverse.entry(*ip).or_default().push(fqdn.clone());
                }
            }
            Kind::Headless(eps) => {
                for e in eps {
                    self.reverse
                        .entry(e.ip)
                        .or_default()
                        .push(format!("{}.{fqdn}", e.label().to_ascii_lowercase()));
                }
            }
            Kind::ExternalName(_) => {}
        }
        self.namespaces.insert(ns.clone());
        self.services.insert((ns, name), entry);
    }

    /// The index of these Services and Endpoints (core/v1).
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl IntoIterator<Item = &'a Endpoints>,
    ) -> Self {
        let endpoints: HashMap<(&str, &str), &Endpoints> = endpoints
            .into_iter()
            .filter_map(|e| {
                Some((
                    (
                        e.metadata.namespace.as_deref()?,
                        e.metadata.name.as_deref()?,
                    ),
                    e,
                ))
            })
            .collect();
        Self::build_with(services, |ns, name, publish| {
            endpoints
                .get(&(ns, name))
                .and_then(|e| e.subsets.as_ref())
                .map(|subsets| endpoints_of(subsets, publish))
                .unwrap_or_default()
        })
    }

    /// The index of these Services and EndpointSlices (discovery.k8s.io/v1): a Service's
    /// slices are those labelled with its name; FQDN slices are not addresses.
    pub fn build_from_slices<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let Some(ns) = slice.metadata.namespace.as_deref() else {
                continue;
            };
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            if matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                by_service.entry((ns, service)).or_default().push(slice);
            }
        }
        Self::build_with(services, |ns, name, publish| {
            by_service
                .get(&(ns, name))
                .map(|slices| endpoints_of_slices(slices, publish))
                .unwrap_or_default()
        })
    }

    /// The index of `services`, a headless one's endpoints from `endpoints(namespace, name,
    /// publish_not_ready)`.
    fn build_with<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl Fn(&str, &str, bool) -> Vec<Endpoint>,
    ) -> Self {
        let mut index = Index::default();
        for s in services {
            let (Some(ns), Some(name)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            else {
                continue;
            };
            if let Some(entry) = entry_of(s, |publish| endpoints(ns, name, publish)) {
                index.insert(ns, name, entry);
            }
        }
        for v in index.reverse.values_mut() {
            v.sort();
            v.dedup();
        }
        index
    }
}

fn port_of(name: Option<&str>, protocol: Option<&str>, port: i32) -> Option<Port> {
    Some(Port {
        name: name.unwrap_or_default().to_ascii_lowercase(),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port).ok()?,
    })
}

fn entry_of(s: &Service, endpoints: impl FnOnce(bool) -> Vec<Endpoint>) -> Option<ServiceEntry> {
    let spec = s.spec.as_ref()?;
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_of(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?.trim_end_matches('.');
        return Some(ServiceEntry {
            kind: Kind::ExternalName(target.to_ascii_lowercase()),
            ports,
        });
    }
    let cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if cluster_ips.first() == Some(&"None") {
        let publish = spec.publish_not_ready_addresses == Some(true);
        return Some(ServiceEntry {
            kind: Kind::Headless(endpoints(publish)),
            ports,
        });
    }
    let ips: Vec<IpAddr> = cluster_ips.iter().filter_map(|i| i.parse().ok()).collect();
    if ips.is_empty() {
        // No address yet (or none at all): nothing to answer.
        return None;
    }
    Some(ServiceEntry {
        kind: Kind::ClusterIp(ips),
        ports,
    })
}

fn endpoints_of(subsets: &[EndpointSubset], publish_not_ready: bool) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for subset in subsets {
        let ports: Vec<Port> = subset
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port_of(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        let ready = subset.addresses.iter().flatten();
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .filter(|_| publish_not_ready);
        for a in ready.chain(not_ready) {
            add_endpoint(&mut out, &a.ip, a.hostname.as_deref(), &ports);
        }
    }
    out
}

/// Adds `ip` (with `hostname`) serving `ports`; an address already listed gains the ports.
fn add_endpoint(out: &mut Vec<Endpoint>, ip: &str, hostname: Option<&str>, ports: &[Port]) {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return;
    };
    let hostname = hostname.filter(|h| !h.is_empty()).map(str::to_owned);
    match out
        .iter_mut()
        .find(|e| e.ip == ip && e.hostname == hostname)
    {
        Some(e) => {
            for p in ports {
                if !e.ports.contains(p) {
                    e.ports.push(p.clone());
                }
            }
        }
        None => out.push(Endpoint {
            ip,
            hostname,
            ports: ports.to_vec(),
        }),
    }
}

/// The endpoints of a Service's slices: ready ones (a missing condition counts as ready, as
/// the API documents), and the others when the Service publishes them. A slice port without
/// a number stands for every port and names none for SRV.
fn endpoints_of_slices(slices: &[&EndpointSlice], publish_not_ready: bool) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let ports: Vec<Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port_of(p.name.as_deref(), p.protocol.as_deref(), p.port?))
            .collect();
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for ip in &e.addresses {
                add_endpoint(&mut out, ip, e.hostname.as_deref(), &ports);
            }
        }
    }
    out
}
