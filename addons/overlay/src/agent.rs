//! The agent's loop on one node: find its own Node (pod subnet, underlay address), create
//! the VXLAN device, write the node's CNI configuration (its pod subnet, the overlay's MTU),
//! publish its VTEP MAC and underlay address as annotations on its Node,
//! then keep the kernel's peer entries equal to what the Node objects say (a watch, plus a
//! full resync every minute). Restarting it changes nothing that is already right.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;

use crate::netlink::{Device, connect, ensure_device, reconcile};
use crate::plan::{Mac, NodeInfo, desired, gateway};

/// Annotation holding a node's VTEP MAC.
pub const VTEP_MAC: &str = "overlay.strata.dev/vtep-mac";
/// Annotation holding a node's underlay address.
pub const UNDERLAY: &str = "overlay.strata.dev/underlay-ip";

/// What the overlay needs of a Node, when it has all of it.
pub fn node_info(n: &Node) -> Option<NodeInfo> {
    let name = n.metadata.name.clone()?;
    let pod_cidr = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let ann = n.metadata.annotations.as_ref()?;
    let vtep_mac: Mac = ann.get(VTEP_MAC)?.parse().ok()?;
    let underlay: Ipv4Addr = ann.get(UNDERLAY)?.parse().ok()?;
    Some(NodeInfo {
        name,
        pod_cidr,
        underlay,
        vtep_mac,
    })
}

/// Why a Node is not programmed as a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAPeer {
    /// No pod subnet, VTEP MAC or underlay address published yet.
    Incomplete,
    /// The published underlay address is none of the addresses its kubelet reports: whoever
    /// wrote the annotation (any overlay agent may annotate any Node) is not trusted to
    /// redirect that node's pod traffic elsewhere.
    ForeignUnderlay {
        published: Ipv4Addr,
        addresses: Vec<String>,
    },
}

impl std::fmt::Display for NotAPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAPeer::Incomplete => f.write_str("not published yet"),
            NotAPeer::ForeignUnderlay {
                published,
                addresses,
            } => write!(
                f,
                "its published underlay address {published} is none of its Node's addresses ({})",
                if addresses.is_empty() {
                    "none reported".to_owned()
                } else {
                    addresses.join(", ")
                }
            ),
        }
    }
}

/// The Node as a peer: complete, and with an underlay address its own kubelet reports (the
/// Node's status, which only that node's identity may write).
pub fn peer(n: &Node) -> Result<NodeInfo, NotAPeer> {
    let info = node_info(n).ok_or(NotAPeer::Incomplete)?;
    let addresses: Vec<String> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().map(|a| a.address.clone()).collect())
        .unwrap_or_default();
    if addresses
        .iter()
        .any(|a| a.parse::<IpAddr>() == Ok(IpAddr::V4(info.underlay)))
    {
        Ok(info)
    } else {
        Err(NotAPeer::ForeignUnderlay {
            published: info.underlay,
            addresses,
        })
    }
}

/// The node's first IPv4 InternalIP.
fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v)) => Some(v),
            _ => None,
        })
}

/// Runs until the process is stopped.
pub async fn run(node: &str, device: &str, vni: u32, port: u16, cni_dir: &Path) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let nodes: Api<Node> = Api::all(client);
    // Our own Node, once the controller-manager gave it a pod subnet.
    // The API may not be reachable yet when the node starts (kube-proxy still programming the
    // Service address): wait rather than exit and be restarted with a back-off.
    let (pod_cidr, underlay) = loop {
        let me = match nodes.get(node).await {
            Ok(me) => me,
            Err(e) => {
                eprintln!("strata-overlay: reading Node {node}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let cidr = me.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        match (cidr, internal_ip(&me)) {
            (Some(c), Some(ip)) => break (c, ip),
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    };
    let pod_cidr: ipnet::Ipv4Net = pod_cidr
        .parse()
        .with_context(|| format!("Node {node}: podCIDR {pod_cidr}"))?;
    let h = connect()?;
    let dev = Device {
        name: device.to_owned(),
        vni,
        port,
        underlay,
    };
    let st = ensure_device(&h, &dev, gateway(pod_cidr)).await?;
    let conf = crate::cni::conflist(&pod_cidr.to_string(), st.mtu);
    if crate::cni::write(cni_dir, &conf)
        .with_context(|| format!("writing the CNI configuration in {}", cni_dir.display()))?
    {
        eprintln!(
            "strata-overlay: {node}: wrote {}/{}",
            cni_dir.display(),
            crate::cni::FILE
        );
    }
    let patch = serde_json::json!({"metadata": {"annotations": {
        VTEP_MAC: st.mac.to_string(),
        UNDERLAY: underlay.to_string(),
    }}});
    while let Err(e) = nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        eprintln!("strata-overlay: annotating Node {node}: {e}; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "strata-overlay: {node}: {device} {} on {underlay}, pod subnet {pod_cidr}, mtu {}",
        st.mac, st.mtu
    );

    let mut known: BTreeMap<String, NodeInfo> = BTreeMap::new();
    let mut refused: BTreeMap<String, NotAPeer> = BTreeMap::new();
    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut resync = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            ev = events.next() => {
                match ev {
                    Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => {
                        if let Some(name) = n.metadata.name.clone() {
                            match peer(&n) {
                                Ok(i) => {
                                    refused.remove(&name);
                                    known.insert(name, i);
                                }
                                Err(why) => {
                                    known.remove(&name);
                                    // Said once per change, not at every event.
                                    if why != NotAPeer::Incomplete
                                        && refused.get(&name) != Some(&why)
                                    {
                                        eprintln!("strata-overlay: not programming peer {name}: {why}");
                                    }
                                    refused.insert(name, why);
                                }
                            }
                        }
                    }
                    Some(Ok(watcher::Event::Delete(n))) => {
                        if let Some(name) = n.metadata.name.as_ref() {
                            known.remove(name);
                        }
                    }
                    Some(Ok(watcher::Event::Init)) => known.clear(),
                    Some(Ok(watcher::Event::InitDone)) => {}
                    Some(Err(e)) => {
                        eprintln!("strata-overlay: watching Nodes: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                    None => bail!("the Node watch ended"),
                }
            }
            _ = resync.tick() => {}
        }
        let all: Vec<NodeInfo> = known.values().cloned().collect();
        match reconcile(&h, st.index, &desired(node, &all)).await {
            Ok(c) => {
                for what in &c.added {
                    eprintln!("strata-overlay: added {what}");
                }
                for what in &c.removed {
                    eprintln!("strata-overlay: removed {what}");
                }
            }
            Err(e) => eprintln!("strata-overlay: {e}; retrying at the next change or resync"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_counts_once_it_has_subnet_mac_and_underlay() {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w1", "annotations": {VTEP_MAC: "0a:58:00:00:00:01"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
        }))
        .expect("node");
        assert_eq!(node_info(&n), None, "no underlay yet");
        n.metadata
            .annotations
            .get_or_insert_default()
            .insert(UNDERLAY.into(), "198.18.0.3".into());
        let i = node_info(&n).expect("complete");
        assert_eq!(i.underlay, Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(i.pod_cidr.to_string(), "10.244.1.0/24");
        // Its kubelet reports another address: not a peer, and why.
        n.status = serde_json::from_value(serde_json::json!(
            {"addresses": [{"type": "InternalIP", "address": "198.18.0.4"}]}
        ))
        .expect("status");
        let why = peer(&n).expect_err("foreign underlay");
        assert_eq!(
            why.to_string(),
            "its published underlay address 198.18.0.3 is none of its Node's addresses (198.18.0.4)"
        );
        n.status = serde_json::from_value(serde_json::json!(
            {"addresses": [{"type": "InternalIP", "address": "198.18.0.3"}]}
        ))
        .expect("status");
        assert_eq!(
            peer(&n).map(|p| p.underlay),
            Ok(Ipv4Addr::new(198, 18, 0, 3))
        );
    }
}
