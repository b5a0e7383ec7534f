//! The Kubernetes DNS-Based Service Discovery specification (kubernetes/dns,
//! docs/specification.md, version 1.1.0) as one pure function: a question (name, type) and
//! an [`Index`] in, the answer out. The server turns answers into DNS messages; tests read
//! them as they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::index::{Endpoint, Index, Kind, ServiceEntry, dashed};

/// The version of the specification served in `dns-version.<zone>`.
pub const SPEC_VERSION: &str = "1.1.0";

/// The record types the cluster zone answers (anything else gets no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Txt,
    Cname,
    Soa,
    Ns,
    Any,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Priority 0, weight 100 split among the records (as CoreDNS does), port, target.
    Srv {
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Cname(String),
    Txt(String),
    /// The zone's SOA (also the authority of every negative answer).
    Soa,
    /// The zone's name server.
    Ns(String),
}

/// One resource record: an absolute name (no trailing dot) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists and has records of the type.
    Records {
        answers: Vec<Rr>,
        additionals: Vec<Rr>,
    },
    /// The name exists, with no record of the type (NOERROR, SOA in authority).
    NoData,
    /// The name does not exist (NXDOMAIN, SOA in authority).
    NxDomain,
    /// Not a name of the cluster: forwarded upstream.
    NotOurs,
}

/// What the server is authoritative for: the cluster zone and the reverse names of the
/// service and pod ranges.
#[derive(Debug, Clone)]
pub struct Zone {
    /// e.g. `cluster.local` (lower case, no trailing dot).
    pub name: String,
    /// Ranges whose reverse names are answered here (NXDOMAIN when unknown).
    pub reverse: Vec<ipnet::IpNet>,
}

impl Zone {
    /// The name server named in the zone's NS and SOA records.
    pub fn ns(&self) -> String {
        format!("ns.dns.{}", self.name)
    }

    /// Answers `qtype` for `qname` (any case, with or without the trailing dot).
    pub fn answer(&self, index: &Index, qname: &str, qtype: QType) -> Answer {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = reverse_ip(&name) {
            return self.reverse(index, &name, ip, qtype);
        }
        let Some(rel) = relative(&name, &self.name) else {
            return Answer::NotOurs;
        };
        let labels: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('.').rev().collect()
        };
        match labels.as_slice() {
            [] => self.apex(qtype),
            ["dns-version"] => only(qtype, QType::Txt, || {
                vec![Rr {
                    name: name.clone(),
                    data: Data::Txt(SPEC_VERSION.into()),
                }]
            }),
            ["dns"] | ["dns", "ns"] if qtype != QType::A => Answer::NoData,
            ["svc"] | ["pod"] => Answer::NoData,
            ["svc", ns] => {
                if index.has_namespace(ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            ["svc", ns, svc, rest @ ..] => match index.service(ns, svc) {
                Some(s) => self.service(&name, ns, svc, s, rest, qtype),
                None => Answer::NxDomain,
            },
            ["pod", _ns] => Answer::NoData,
            ["pod", _ns, ip] => match undashed(ip) {
                Some(IpAddr::V4(v)) => only(qtype, QType::A, || {
                    vec![Rr {
                        name: name.clone(),
                        data: Data::A(v),
                    }]
                }),
                Some(IpAddr::V6(v)) => only(qtype, QType::Aaaa, || {
                    vec![Rr {
                        name: name.clone(),
                        data: Data::Aaaa(v),
                    }]
                }),
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    fn apex(&self, qtype: QType) -> Answer {
        let rr = |data| Rr {
            name: self.name.clone(),
            data,
        };
        match qtype {
            QType::Soa => records(vec![rr(Data::Soa)]),
            QType::Ns => records(vec![rr(Data::Ns(self.ns()))]),
            QType::Any => records(vec![rr(Data::Soa), rr(Data::Ns(self.ns()))]),
            _ => Answer::NoData,
        }
    }

    fn service(
        &self,
        name: &str,
        ns: &str,
        svc: &str,
        s: &ServiceEntry,
        rest: &[&str],
        qtype: QType,
    ) -> Answer {
        let fqdn = format!("{svc}.{ns}.svc.{}", self.name);
        match (&s.kind, rest) {
            (Kind::ExternalName(target), []) => match qtype {
                QType::Srv | QType::Ptr | QType::Txt | QType::Soa | QType::Ns => Answer::NoData,
                _ => records(vec![Rr {
                    name: name.into(),
                    data: Data::Cname(target.clone()),
                }]),
            },
            (Kind::ClusterIp(ips), []) => match qtype {
                QType::Srv => {
                    let named: Vec<_> = s.ports.iter().filter(|p| !p.name.is_empty()).collect();
                    let weight = split_weight(named.len());
                    let answers = named
                        .iter()
                        .map(|p| Rr {
                            name: name.into(),
                            data: Data::Srv {
                                weight,
                                port: p.port,
                                target: fqdn.clone(),
                            },
                        })
                        .collect::<Vec<_>>();
                    with_additionals(answers, addresses(&fqdn, ips, QType::Any))
                }
                _ => non_empty(addresses(name, ips, qtype)),
            },
            (Kind::Headless(eps), []) => {
                if eps.is_empty() {
                    return Answer::NxDomain;
                }
                match qtype {
                    QType::Srv => {
                        let mut answers = Vec::new();
                        let mut additionals = Vec::new();
                        let targets: Vec<(&Endpoint, &crate::index::Port)> = eps
                            .iter()
                            .flat_map(|e| {
                                e.ports
                                    .iter()
                                    .filter(|p| !p.name.is_empty())
                                    .map(move |p| (e, p))
                            })
                            .collect();
                        let weight = split_weight(targets.len());
                        for (e, p) in targets {
                            let target = format!("{}.{fqdn}", e.label().to_ascii_lowercase());
                            answers.push(Rr {
                                name: name.into(),
                                data: Data::Srv {
                                    weight,
                                    port: p.port,
                                    target: target.clone(),
                                },
                            });
                            additionals.extend(addresses(&target, &[e.ip], QType::Any));
                        }
                        dedup(&mut additionals);
                        with_additionals(answers, additionals)
                    }
                    _ => {
                        let ips: Vec<IpAddr> = eps.iter().map(|e| e.ip).collect();
                        non_empty(addresses(name, &ips, qtype))
                    }
                }
            }
            (_, [proto]) if proto.starts_with('_') => {
                let proto = &proto[1..];
                if s.ports
                    .iter()
                    .any(|p| p.protocol == proto && !p.name.is_empty())
                {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            (Kind::Headless(eps), [label]) => {
                let ips: Vec<IpAddr> = eps
                    .iter()
                    .filter(|e| e.label().eq_ignore_ascii_case(label))
                    .map(|e| e.ip)
                    .collect();
                if ips.is_empty() {
                    Answer::NxDomain
                } else {
                    non_empty(addresses(name, &ips, qtype))
                }
            }
            (kind, [proto, port]) if proto.starts_with('_') && port.starts_with('_') => {
                let (proto, port) = (&proto[1..], &port[1..]);
                let Some(p) = s
                    .ports
                    .iter()
                    .find(|p| p.protocol == proto && p.name == port)
                else {
                    return Answer::NxDomain;
                };
                if qtype != QType::Srv && qtype != QType::Any {
                    return Answer::NoData;
                }
                match kind {
                    Kind::ClusterIp(ips) => with_additionals(
                        vec![Rr {
                            name: name.into(),
                            data: Data::Srv {
                                weight: 100,
                                port: p.port,
                                target: fqdn.clone(),
                            },
                        }],
                        addresses(&fqdn, ips, QType::Any),
                    ),
                    Kind::Headless(eps) => {
                        // Each endpoint's own port of that name (they may differ from the
                        // Service's).
                        let targets: Vec<(&Endpoint, u16)> = eps
                            .iter()
                            .filter_map(|e| {
                                e.ports
                                    .iter()
                                    .find(|q| q.name == port && q.protocol == proto)
                                    .map(|q| (e, q.port))
                            })
                            .collect();
                        if targets.is_empty() {
                            return Answer::NxDomain;
                        }
                        let weight = split_weight(targets.len());
                        let mut answers = Vec::new();
                        let mut additionals = Vec::new();
                        for (e, port) in targets {
                            let target = format!("{}.{fqdn}", e.label().to_ascii_lowercase());
                            answers.push(Rr {
                                name: name.into(),
                                data: Data::Srv {
                                    weight,
                                    port,
                                    target: target.clone(),
                                },
                            });
                            additionals.extend(addresses(&target, &[e.ip], QType::Any));
                        }
                        dedup(&mut additionals);
                        with_additionals(answers, additionals)
                    }
                    Kind::ExternalName(_) => Answer::NxDomain,
                }
            }
            _ => Answer::NxDomain,
        }
    }

    fn reverse(&self, index: &Index, name: &str, ip: IpAddr, qtype: QType) -> Answer {
        let targets = index.reverse(ip);
        if !targets.is_empty() {
            return only(qtype, QType::Ptr, || {
                targets
                    .iter()
                    .map(|t| Rr {
                        name: name.into(),
                        data: Data::Ptr(format!("{t}.{}", self.name)),
                    })
                    .collect()
            });
        }
        if self.reverse.iter().any(|net| net.contains(&ip)) {
            Answer::NxDomain
        } else {
            Answer::NotOurs
        }
    }
}

fn records(answers: Vec<Rr>) -> Answer {
    Answer::Records {
        answers,
        additionals: Vec::new(),
    }
}

fn with_additionals(answers: Vec<Rr>, additionals: Vec<Rr>) -> Answer {
    if answers.is_empty() {
        return Answer::NoData;
    }
    Answer::Records {
        answers,
        additionals,
    }
}

fn non_empty(answers: Vec<Rr>) -> Answer {
    if answers.is_empty() {
        Answer::NoData
    } else {
        records(answers)
    }
}

/// Records of type `want` (or ANY) from `make`, no data for other types.
fn only(qtype: QType, want: QType, make: impl FnOnce() -> Vec<Rr>) -> Answer {
    if qtype == want || qtype == QType::Any {
        non_empty(make())
    } else {
        Answer::NoData
    }
}

/// A and AAAA records of `ips` for `name`, as `qtype` asks.
fn addresses(name: &str, ips: &[IpAddr], qtype: QType) -> Vec<Rr> {
    ips.iter()
        .filter_map(|ip| {
            let data = match (ip, qtype) {
                (IpAddr::V4(v), QType::A | QType::Any) => Data::A(*v),
                (IpAddr::V6(v), QType::Aaaa | QType::Any) => Data::Aaaa(*v),
                _ => return None,
            };
            Some(Rr {
                name: name.into(),
                data,
            })
        })
        .collect()
}

fn dedup(rrs: &mut Vec<Rr>) {
    let mut seen = Vec::with_capacity(rrs.len());
    rrs.retain(|r| {
        if seen.contains(r) {
            false
        } else {
            seen.push(r.clone());
            true
        }
    });
}

/// Weight 100 split among `n` records (at least 1 each).
fn split_weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(100).max(1)
}

/// `name` relative to `zone` ("" for the apex), when it is in the zone.
fn relative<'a>(name: &'a str, zone: &str) -> Option<&'a str> {
    if name == zone {
        return Some("");
    }
    name.strip_suffix(zone)?.strip_suffix('.')
}

/// The address of a reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`).
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rest
            .split('.')
            .rev()
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?;
        let o: [u8; 4] = octets.try_into().ok()?;
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .rev()
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.chunks(2).enumerate() {
        bytes[i] = (pair[0] << 4) | pair[1];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// `10-0-0-1` -> 10.0.0.1; `fd00--1` -> fd00::1.
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The dashed form, for tests and callers that name pods.
pub fn pod_label(ip: IpAddr) -> String {
    dashed(ip)
}
