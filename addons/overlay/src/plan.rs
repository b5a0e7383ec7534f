//! What the kernel must hold on one node for the overlay, computed from the nodes alone
//! (pure: tested without a kernel). Flannel's VXLAN layout: each node's VXLAN device carries
//! the first address of its pod subnet; for every other node there is
//! - a route to that node's pod subnet through its first address, on the VXLAN device;
//! - a neighbour entry: that first address is the node's VTEP MAC;
//! - a forwarding-database entry: that MAC lives behind the node's underlay address.
//!
//! With direct routing (flannel's DirectRouting), a node whose underlay address lies in this
//! node's own underlay subnet (the same segment: reached without a router) gets instead one
//! route to its pod subnet through its underlay address on the underlay interface, and no
//! VXLAN entries: packets go unencapsulated. Nodes on other subnets keep the VXLAN entries.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut b = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!(
                "`{s}` is not a MAC address (six hex pairs with colons)"
            ));
        }
        for (i, p) in parts.iter().enumerate() {
            b[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("`{s}` is not a MAC address (six hex pairs with colons)"))?;
        }
        Ok(Mac(b))
    }
}

/// One node as the overlay sees it (from its Node object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    /// The address other nodes send VXLAN packets to.
    pub underlay: Ipv4Addr,
    /// The MAC of the node's VXLAN device.
    pub vtep_mac: Mac,
}

/// The VXLAN device's own address: the first address of the node's pod subnet.
pub fn gateway(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

/// Which interface a route to a peer's pod subnet leaves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// The VXLAN device, via the peer's VTEP address (encapsulated).
    Vxlan,
    /// The underlay interface, via the peer's underlay address (direct routing).
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub path: Path,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.path {
            Path::Vxlan => "vxlan",
            Path::Direct => "direct",
        };
        write!(f, "route {} via {} ({how})", self.dst, self.via)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub mac: Mac,
    pub dst: IpAddr,
}

/// Everything one node's kernel must hold for its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
}

/// The entries for every node but `me`. `direct`: this node's underlay subnet when direct
/// routing is on; peers inside it are routed straight through the underlay.
pub fn desired(me: &str, nodes: &[NodeInfo], direct: Option<Ipv4Net>) -> Desired {
    let mut d = Desired::default();
    for n in nodes.iter().filter(|n| n.name != me) {
        if direct.is_some_and(|net| net.contains(&n.underlay)) {
            d.routes.push(Route {
                dst: n.pod_cidr,
                via: n.underlay,
                path: Path::Direct,
            });
            continue;
        }
        let via = gateway(n.pod_cidr);
        d.routes.push(Route {
            dst: n.pod_cidr,
            via,
            path: Path::Vxlan,
        });
        d.neighbours.push(Neighbour {
            ip: via,
            mac: n.vtep_mac,
        });
        d.fdb.push(Fdb {
            mac: n.vtep_mac,
            dst: IpAddr::V4(n.underlay),
        });
    }
    d.routes.sort();
    d.neighbours.sort();
    d.fdb.sort();
    d
}

/// The VXLAN device's MTU: the underlay's minus the 50 bytes of VXLAN over IPv4.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(50)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, underlay: [u8; 4], last: u8) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidr: cidr.parse().expect("cidr"),
            underlay: underlay.into(),
            vtep_mac: Mac([0x0a, 0x58, 0, 0, 0, last]),
        }
    }

    #[test]
    fn every_other_node_gets_a_route_a_neighbour_and_an_fdb_entry() {
        let nodes = [
            node("a", "10.244.0.0/24", [198, 18, 0, 2], 1),
            node("b", "10.244.1.0/24", [198, 18, 0, 3], 2),
            node("c", "10.244.2.0/24", [198, 18, 0, 4], 3),
        ];
        let d = desired("a", &nodes, None);
        assert_eq!(
            d.routes,
            [
                Route {
                    dst: "10.244.1.0/24".parse().expect("net"),
                    via: Ipv4Addr::new(10, 244, 1, 0),
                    path: Path::Vxlan,
                },
                Route {
                    dst: "10.244.2.0/24".parse().expect("net"),
                    via: Ipv4Addr::new(10, 244, 2, 0),
                    path: Path::Vxlan,
                }
            ]
        );
        assert_eq!(d.neighbours[1].mac, Mac([0x0a, 0x58, 0, 0, 0, 3]));
        assert_eq!(d.fdb[0].dst, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)));
        assert_eq!(desired("z", &nodes, None).routes.len(), 3);
        assert_eq!(desired("a", &nodes[..1], None), Desired::default());
    }

    #[test]
    fn peers_on_the_same_subnet_are_routed_directly_the_others_through_vxlan() {
        let nodes = [
            node("a", "10.244.0.0/24", [198, 18, 0, 2], 1),
            node("b", "10.244.1.0/24", [198, 18, 0, 3], 2),
            node("c", "10.244.2.0/24", [198, 18, 1, 2], 3),
        ];
        let mine: Ipv4Net = "198.18.0.2/24".parse().expect("net");
        let d = desired("a", &nodes, Some(mine.trunc()));
        assert_eq!(
            d.routes,
            [
                Route {
                    dst: "10.244.1.0/24".parse().expect("net"),
                    via: Ipv4Addr::new(198, 18, 0, 3),
                    path: Path::Direct,
                },
                Route {
                    dst: "10.244.2.0/24".parse().expect("net"),
                    via: Ipv4Addr::new(10, 244, 2, 0),
                    path: Path::Vxlan,
                }
            ]
        );
        // Only the peer on the other subnet has VXLAN entries.
        assert_eq!(d.neighbours.len(), 1);
        assert_eq!(d.neighbours[0].mac, Mac([0x0a, 0x58, 0, 0, 0, 3]));
        assert_eq!(d.fdb.len(), 1);
        assert_eq!(d.fdb[0].dst, IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)));
        // One subnet holding them all: nothing is encapsulated.
        let wide: Ipv4Net = "198.18.0.0/15".parse().expect("net");
        let all = desired("a", &nodes, Some(wide));
        assert!(all.routes.iter().all(|r| r.path == Path::Direct));
        assert!(all.neighbours.is_empty() && all.fdb.is_empty());
        assert_eq!(
            all.routes[0].to_string(),
            "route 10.244.1.0/24 via 198.18.0.3 (direct)"
        );
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m: Mac = "0a:58:0a:f4:01:00".parse().expect("mac");
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:00");
        assert!("0a:58".parse::<Mac>().is_err());
        assert!("zz:58:0a:f4:01:00".parse::<Mac>().is_err());
        assert_eq!(overlay_mtu(1500), 1450);
    }
}
