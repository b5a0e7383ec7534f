//! Each node's pod subnet: a `/24` (IPv4) or `/64` (IPv6) of the cluster's pod CIDR.
//!
//! The controller manager allocates them (`--allocate-node-cidrs`) for Nodes that register
//! without one; Strata gives each Node it creates ahead of its kubelet its subnet at once
//! ([`allocate`]), so that a first install does not wait for the controller manager's
//! leader election and IPAM start. The controller manager marks the subnets of Nodes that
//! have one as used (at start and when it sees a Node), so the two never hand out the same
//! subnet as long as Strata allocates around every subnet in use.

use ipnet::IpNet;

/// Why no subnet could be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "the pod CIDR {cidr} has no free /{prefix} left for {wanted} more node(s) ({used} in use)"
    )]
    Exhausted {
        cidr: IpNet,
        prefix: u8,
        wanted: usize,
        used: usize,
    },
}

/// The prefix length of one node's pod subnet within the cluster's pod CIDR `pod` (the
/// controller manager's `--node-cidr-mask-size`).
pub fn node_prefix(pod: IpNet) -> u8 {
    match pod {
        IpNet::V4(_) => 24,
        IpNet::V6(_) => 64,
    }
}

/// `wanted` free node subnets of `pod`, lowest first, none overlapping a subnet of `used`
/// (the subnets Nodes have now; those outside `pod` are ignored).
pub fn allocate(pod: IpNet, used: &[IpNet], wanted: usize) -> Result<Vec<IpNet>, Error> {
    let prefix = node_prefix(pod);
    let exhausted = || Error::Exhausted {
        cidr: pod,
        prefix,
        wanted,
        used: used.len(),
    };
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let free = pod
        .subnets(prefix)
        .map_err(|_| exhausted())?
        .filter(|s| !used.iter().any(|u| u.contains(s) || s.contains(u)))
        .take(wanted)
        .collect::<Vec<_>>();
    if free.len() < wanted {
        return Err(exhausted());
    }
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a CIDR")
    }

    #[test]
    fn the_lowest_free_subnets_are_given_in_order() {
        let got = allocate(
            net("10.244.0.0/16"),
            &[net("10.244.1.0/24"), net("10.244.3.0/24")],
            3,
        )
        .expect("room");
        assert_eq!(
            got,
            [
                net("10.244.0.0/24"),
                net("10.244.2.0/24"),
                net("10.244.4.0/24")
            ]
        );
    }

    #[test]
    fn a_used_range_of_another_size_blocks_what_it_overlaps() {
        let got = allocate(net("10.244.0.0/16"), &[net("10.244.0.0/23")], 1).expect("room");
        assert_eq!(got, [net("10.244.2.0/24")]);
        let got = allocate(net("10.244.0.0/16"), &[net("10.244.0.128/25")], 1).expect("room");
        assert_eq!(got, [net("10.244.1.0/24")]);
    }

    #[test]
    fn ipv6_nodes_get_a_64() {
        let got = allocate(net("fd00:10::/48"), &[], 2).expect("room");
        assert_eq!(got, [net("fd00:10::/64"), net("fd00:10:0:1::/64")]);
    }

    #[test]
    fn a_full_range_is_an_error_naming_it() {
        let used: Vec<IpNet> = net("10.244.0.0/22").subnets(24).expect("subnets").collect();
        let err = allocate(net("10.244.0.0/22"), &used, 1).expect_err("full");
        assert_eq!(
            err.to_string(),
            "the pod CIDR 10.244.0.0/22 has no free /24 left for 1 more node(s) (4 in use)"
        );
        assert_eq!(allocate(net("10.244.0.0/22"), &used, 0), Ok(Vec::new()));
    }
}
