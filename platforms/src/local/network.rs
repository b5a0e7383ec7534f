//! The local network: one bridge per cluster on this computer and, per host, a network
//! namespace joined to it by a veth pair. Addresses come from the benchmarking range
//! 198.18.0.0/15, which is no real network's; each cluster has its own part of it (its
//! range, all of it by default), so that clusters whose ranges do not overlap run at once.
//! Machines are on one subnet (the range) unless given a longer prefix: the first address of
//! each subnet is on the bridge as its router, and this computer forwards between the
//! subnets (on that bridge only).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::cmd::{CommandError, ip};

/// Prefix length of the whole local range (the default range of a cluster).
pub const PREFIX: u8 = 15;
/// This computer's address on the bridge of a cluster with the default range.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// The whole local range, 198.18.0.0/15.
pub fn whole_range() -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), PREFIX)
}

/// Whether two networks share an address.
pub fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Short stable hash for interface names (at most 15 characters on Linux).
fn short_hash(parts: &[&str]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    format!("{h:08x}")
}

fn exists_link(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}

/// The bridge all machines of a cluster hang off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn for_cluster(cluster: &str) -> Self {
        Self {
            name: format!("stb-{}", short_hash(&[cluster])),
        }
    }

    /// Creates the bridge if it does not exist and gives it this computer's addresses: the
    /// router of `range` and of each of `subnets` narrower than it (the machines' subnets,
    /// with forwarding between them on this bridge, without ICMP redirects: a machine must
    /// keep going through its router). An address it holds beyond those (a range the cluster
    /// had before) is removed. Other interfaces' forwarding is untouched.
    pub fn ensure(&self, range: Ipv4Net, subnets: &[Ipv4Net]) -> Result<(), CommandError> {
        if !exists_link(&self.name) {
            ip(&["link", "add", &self.name, "type", "bridge"])?;
        }
        let mut want: Vec<String> = vec![format!("{}/{}", router_of(range), range.prefix_len())];
        let narrower: Vec<&Ipv4Net> = subnets
            .iter()
            .filter(|n| n.prefix_len() > range.prefix_len())
            .collect();
        for net in &narrower {
            let router = format!("{}/{}", router_of(**net), net.prefix_len());
            if !want.contains(&router) {
                want.push(router);
            }
        }
        let held = addresses(&String::from_utf8_lossy(
            &ip(&["-o", "-4", "addr", "show", "dev", &self.name])?.stdout,
        ));
        for (_, net) in &held {
            let text = format!("{}/{}", net.addr(), net.prefix_len());
            if !want.contains(&text) {
                ip(&["addr", "del", &text, "dev", &self.name])?;
            }
        }
        for addr in &want {
            if !held
                .iter()
                .any(|(_, n)| format!("{}/{}", n.addr(), n.prefix_len()) == *addr)
            {
                ip(&["addr", "add", addr, "dev", &self.name])?;
            }
        }
        ip(&["link", "set", &self.name, "up"])?;
        if narrower.is_empty() {
            return Ok(());
        }
        for (key, value) in [("forwarding", "1"), ("send_redirects", "0")] {
            let path = format!("/proc/sys/net/ipv4/conf/{}/{key}", self.name);
            std::fs::write(&path, value).map_err(|e| CommandError {
                command: format!("echo {value} > {path}"),
                status: "failed".into(),
                output: e.to_string(),
            })?;
        }
        Ok(())
    }

    pub fn delete(&self) -> Result<(), CommandError> {
        if exists_link(&self.name) {
            ip(&["link", "del", &self.name])?;
        }
        Ok(())
    }

    /// Removes the bridge and the machines' veth pairs attached to it (`stv-*`, with their
    /// `strata-*` namespaces); any other port is only detached, with the bridge.
    pub fn delete_with_ports(&self) -> Result<(), CommandError> {
        if !exists_link(&self.name) {
            return Ok(());
        }
        for (port, netns) in self.ports()? {
            if !port.starts_with("stv-") {
                continue;
            }
            ip(&["link", "del", &port])?;
            if let Some(ns) = netns.filter(|n| n.starts_with("strata-")) {
                ip(&["netns", "del", &ns])?;
            }
        }
        self.delete()
    }

    /// The links attached to the bridge, each with the network namespace of its peer.
    pub fn ports(&self) -> Result<Vec<(String, Option<String>)>, CommandError> {
        let shown = ip(&["-o", "link", "show", "master", &self.name])?;
        Ok(ports_of(&String::from_utf8_lossy(&shown.stdout)))
    }

    /// The other interfaces of this computer with an address in `range` (another local
    /// cluster's bridge, whose range overlaps): the host would route the range to whichever
    /// came first. Each with the network of the address it holds there.
    pub fn rivals(&self, range: Ipv4Net) -> Result<Vec<(Bridge, Ipv4Net)>, CommandError> {
        let shown = ip(&["-o", "-4", "addr", "show"])?;
        let mut found: Vec<(Bridge, Ipv4Net)> = Vec::new();
        for (name, net) in addresses(&String::from_utf8_lossy(&shown.stdout)) {
            if name != self.name
                && overlap(net.trunc(), range)
                && !found.iter().any(|(b, _)| b.name == name)
            {
                found.push((Bridge { name }, net.trunc()));
            }
        }
        Ok(found)
    }
}

/// Every IPv4 address of `ip -o -4 addr show` ("3: eth0    inet 10.0.0.5/24 brd ..."), with
/// its interface.
pub fn addresses(text: &str) -> Vec<(String, Ipv4Net)> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "inet")?;
            let net: Ipv4Net = w.get(at + 1)?.parse().ok()?;
            Some(((*w.get(1)?).trim_end_matches(':').to_owned(), net))
        })
        .collect()
}

/// The first network of `prefix` bits in the local range that no address of this computer
/// is in (nor whose network contains one of them): a range a new local cluster can take.
pub fn free_range(prefix: u8) -> Result<Option<Ipv4Net>, CommandError> {
    let shown = ip(&["-o", "-4", "addr", "show"])?;
    let taken: Vec<Ipv4Net> = addresses(&String::from_utf8_lossy(&shown.stdout))
        .into_iter()
        .map(|(_, n)| n.trunc())
        .collect();
    Ok(whole_range()
        .subnets(prefix)
        .ok()
        .and_then(|mut all| all.find(|n| !taken.iter().any(|t| overlap(*t, *n)))))
}

/// Ports from `ip -o link show master BRIDGE` ("7: stv-1234@if6: <...> ... link-netns NS"):
/// each link's name and the network namespace its peer lives in.
fn ports_of(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim().split('@').next()?.to_owned();
            let words: Vec<&str> = l.split_whitespace().collect();
            let netns = words
                .iter()
                .position(|w| *w == "link-netns")
                .and_then(|i| words.get(i + 1))
                .map(|n| (*n).to_owned());
            (!name.is_empty()).then_some((name, netns))
        })
        .collect()
}

/// The router of a subnet: its first host address (GATEWAY for the whole range).
pub fn router_of(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

/// One host's network namespace, with `eth0` on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// Name under /run/netns.
    pub netns: String,
    pub address: Ipv4Addr,
    /// The prefix length of `address` (the local range's unless set by [`Self::with_prefix`]).
    pub prefix: u8,
    veth: String,
    peer: String,
}

impl HostNetwork {
    pub fn new(cluster: &str, host: &str, address: Ipv4Addr) -> Self {
        let h = short_hash(&[cluster, host]);
        Self {
            netns: format!("strata-{cluster}-{host}"),
            address,
            prefix: PREFIX,
            veth: format!("stv-{h}"),
            peer: format!("stp-{h}"),
        }
    }

    /// The same host on a subnet of `prefix` bits.
    #[must_use]
    pub fn with_prefix(mut self, prefix: u8) -> Self {
        self.prefix = prefix;
        self
    }

    /// The host's subnet.
    pub fn subnet(&self) -> Ipv4Net {
        Ipv4Net::new(self.address, self.prefix)
            .map_or_else(|_| Ipv4Net::from(self.address), |n| n.trunc())
    }

    /// Where the host's default route points: its subnet's router.
    pub fn gateway(&self) -> Ipv4Addr {
        router_of(self.subnet())
    }

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    fn in_ns(&self, args: &[&str]) -> Result<(), CommandError> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all).map(drop)
    }

    /// Creates the namespace and its link to `bridge` (idempotent).
    pub fn ensure(&self, bridge: &Bridge) -> Result<(), CommandError> {
        if !std::path::Path::new(&self.netns_path()).exists() {
            ip(&["netns", "add", &self.netns])?;
        }
        if !exists_link(&self.veth) {
            ip(&[
                "link", "add", &self.veth, "type", "veth", "peer", "name", &self.peer,
            ])?;
            ip(&["link", "set", &self.peer, "netns", &self.netns])?;
            self.in_ns(&["link", "set", &self.peer, "name", "eth0"])?;
        }
        ip(&["link", "set", &self.veth, "master", &bridge.name])?;
        ip(&["link", "set", &self.veth, "up"])?;
        let addr = format!("{}/{}", self.address, self.prefix);
        let shown = ip(&["-n", &self.netns, "-4", "addr", "show", "dev", "eth0"])?;
        if !String::from_utf8_lossy(&shown.stdout).contains(&addr) {
            self.in_ns(&["addr", "add", &addr, "dev", "eth0"])?;
        }
        self.in_ns(&["link", "set", "lo", "up"])?;
        self.in_ns(&["link", "set", "eth0", "up"])?;
        self.in_ns(&[
            "route",
            "replace",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        Ok(())
    }

    pub fn delete(&self) -> Result<(), CommandError> {
        if exists_link(&self.veth) {
            ip(&["link", "del", &self.veth])?;
        }
        if std::path::Path::new(&self.netns_path()).exists() {
            ip(&["netns", "del", &self.netns])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_differ() {
        let a = HostNetwork::new(
            "a-very-long-cluster-name",
            "worker-number-one",
            Ipv4Addr::LOCALHOST,
        );
        let b = HostNetwork::new(
            "a-very-long-cluster-name",
            "worker-number-two",
            Ipv4Addr::LOCALHOST,
        );
        assert!(a.veth.len() <= 15 && a.peer.len() <= 15);
        assert_ne!(a.veth, b.veth);
        assert!(Bridge::for_cluster("x").name.len() <= 15);
        let c = HostNetwork::new("x", "c", Ipv4Addr::new(198, 18, 1, 7));
        assert_eq!(c.gateway(), GATEWAY);
        let c = c.with_prefix(24);
        assert_eq!(c.subnet().to_string(), "198.18.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(Bridge::for_cluster("x"), Bridge::for_cluster("x"));
    }

    #[test]
    fn addresses_and_overlaps() {
        let shown = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                     7: stb-1234abcd    inet 198.18.0.1/15 scope global stb-1234abcd\n\
                     9: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\n";
        let a = addresses(shown);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].0, "stb-1234abcd");
        assert_eq!(a[1].1.trunc(), whole_range());
        let one: Ipv4Net = "198.18.1.0/24".parse().expect("net");
        let two: Ipv4Net = "198.18.2.0/24".parse().expect("net");
        assert!(overlap(whole_range(), one) && overlap(one, whole_range()));
        assert!(!overlap(one, two));
        assert_eq!(router_of(one), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(router_of(whole_range()), GATEWAY);
    }

    #[test]
    fn ports_come_with_their_peers_namespace() {
        let shown = "299: stv-06077454@if298: <BROADCAST,UP> mtu 1500 master stb-5e0eb86e state UP\\    link/ether d6:07:91:cf:65:b4 brd ff:ff:ff:ff:ff:ff link-netns strata-e2e-updates-cp1\n\
                     301: stv-87a4967a: <BROADCAST> mtu 1500 master stb-5e0eb86e\n";
        assert_eq!(
            ports_of(shown),
            [
                (
                    "stv-06077454".to_owned(),
                    Some("strata-e2e-updates-cp1".to_owned())
                ),
                ("stv-87a4967a".to_owned(), None)
            ]
        );
        assert!(ports_of("").is_empty());
    }
}
