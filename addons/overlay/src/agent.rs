//! The agent's loop on one node: find its own Node (pod subnet, underlay address), create
//! the VXLAN device, write the node's CNI configuration (its pod subnet, the overlay's MTU),
//! publish its VTEP MAC and underlay address in its node's `OverlayNode` (the only object its
//! identity, `strata:overlay:<node>`, may write), then keep the kernel's peer entries equal to
//! what the Nodes and OverlayNodes say (watches into stores, plus a full pass every minute).
//! Restarting it changes nothing that is already right.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use strata_overlay_api::{OverlayNode, OverlayNodeSpec, Underlay, VtepMac};
use tokio::sync::Notify;

use crate::netlink::{Device, connect, ensure_device, reconcile};
use crate::plan::{Mac, NodeInfo, desired, gateway};

/// What the overlay needs of a Node and its OverlayNode, when they have all of it.
pub fn node_info(n: &Node, endpoint: Option<&OverlayNode>) -> Option<NodeInfo> {
    let name = n.metadata.name.clone()?;
    let pod_cidr = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let spec = &endpoint?.spec;
    let vtep_mac: Mac = spec.vtep_mac.as_ref()?.0.parse().ok()?;
    let underlay = spec.underlay?.0;
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
    /// wrote it (the OverlayNode's own identity, or an administrator) is not trusted to
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
pub fn peer(n: &Node, endpoint: Option<&OverlayNode>) -> Result<NodeInfo, NotAPeer> {
    let info = node_info(n, endpoint).ok_or(NotAPeer::Incomplete)?;
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

/// A store of `K` kept current by a watch; each change wakes `notify`.
fn watched<K>(api: Api<K>, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        let mut events = reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => eprintln!("strata-overlay: watching {}: {e}; retrying", K::plural(&())),
            }
        }
    });
    store
}

/// How the agent is run (`strata-overlay run`'s options).
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub device: &'a str,
    pub vni: u32,
    pub port: u16,
    pub cni_dir: &'a Path,
    /// Peers on this node's underlay subnet are routed without the tunnel.
    pub direct_routing: bool,
}

/// Runs until the process is stopped.
pub async fn run(node: &str, opts: &Options<'_>) -> Result<()> {
    let Options {
        device,
        vni,
        port,
        cni_dir,
        direct_routing,
    } = *opts;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let nodes: Api<Node> = Api::all(client.clone());
    let endpoints: Api<OverlayNode> = Api::all(client);
    // Our own Node, once the controller-manager gave it a pod subnet.
    // The API may not be reachable yet when the node starts: wait rather than exit and be
    // restarted with a back-off.
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
            // Usually there already (apply creates the Node with its subnet before the
            // kubelet starts, and the kubelet posts its addresses when it registers).
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
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
    eprintln!(
        "strata-overlay: {node}: {device} {} on {underlay}, pod subnet {pod_cidr}, mtu {}",
        st.mac, st.mtu
    );
    // The segment whose peers are reached without the tunnel.
    let direct = direct_routing.then_some(st.underlay_net);
    if let Some(net) = direct {
        eprintln!("strata-overlay: {node}: direct routing to the peers in {net}");
    }
    let mine = OverlayNodeSpec {
        underlay: Some(Underlay(underlay)),
        vtep_mac: Some(VtepMac(st.mac.to_string())),
    };

    let notify = Arc::new(Notify::new());
    let node_store = watched(nodes, notify.clone());
    let endpoint_store = watched(endpoints.clone(), notify.clone());
    node_store
        .wait_until_ready()
        .await
        .context("the Node watch")?;
    endpoint_store
        .wait_until_ready()
        .await
        .context("the OverlayNode watch")?;
    let mut refused: BTreeMap<String, NotAPeer> = BTreeMap::new();
    loop {
        // Ours as it should be (again, if the object was re-created or changed).
        let published = endpoint_store.get(&ObjectRef::new(node));
        if published.as_deref().map(|e| &e.spec) != Some(&mine) {
            let patch = serde_json::json!({ "spec": mine });
            match endpoints
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => eprintln!("strata-overlay: {node}: published {underlay} {}", st.mac),
                Err(e) => eprintln!("strata-overlay: publishing OverlayNode {node}: {e}; retrying"),
            }
        }
        let mut peers = Vec::new();
        for n in node_store.state() {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let endpoint = endpoint_store.get(&ObjectRef::new(&name));
            match peer(&n, endpoint.as_deref()) {
                Ok(i) => {
                    refused.remove(&name);
                    peers.push(i);
                }
                Err(why) => {
                    // Said once per change, not at every pass.
                    if why != NotAPeer::Incomplete && refused.get(&name) != Some(&why) {
                        eprintln!("strata-overlay: not programming peer {name}: {why}");
                    }
                    refused.insert(name, why);
                }
            }
        }
        match reconcile(&h, &st, &desired(node, &peers, direct)).await {
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
        let _ = tokio::time::timeout(Duration::from_secs(60), notify.notified()).await;
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(underlay: Option<&str>, mac: Option<&str>) -> OverlayNode {
        OverlayNode::new(
            "w1",
            OverlayNodeSpec {
                underlay: underlay.map(|u| Underlay(u.parse().expect("ip"))),
                vtep_mac: mac.map(|m| VtepMac(m.into())),
            },
        )
    }

    #[test]
    fn a_node_counts_once_it_has_subnet_mac_and_underlay() {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
        }))
        .expect("node");
        assert_eq!(node_info(&n, None), None, "nothing published");
        let partial = endpoint(None, Some("0a:58:00:00:00:01"));
        assert_eq!(node_info(&n, Some(&partial)), None, "no underlay yet");
        let full = endpoint(Some("198.18.0.3"), Some("0a:58:00:00:00:01"));
        let i = node_info(&n, Some(&full)).expect("complete");
        assert_eq!(i.underlay, Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(i.pod_cidr.to_string(), "10.244.1.0/24");
        // Its kubelet reports another address: not a peer, and why.
        n.status = serde_json::from_value(serde_json::json!(
            {"addresses": [{"type": "InternalIP", "address": "198.18.0.4"}]}
        ))
        .expect("status");
        let why = peer(&n, Some(&full)).expect_err("foreign underlay");
        assert_eq!(
            why.to_string(),
            "its published underlay address 198.18.0.3 is none of its Node's addresses (198.18.0.4)"
        );
        n.status = serde_json::from_value(serde_json::json!(
            {"addresses": [{"type": "InternalIP", "address": "198.18.0.3"}]}
        ))
        .expect("status");
        assert_eq!(
            peer(&n, Some(&full)).map(|p| p.underlay),
            Ok(Ipv4Addr::new(198, 18, 0, 3))
        );
        assert_eq!(peer(&n, None), Err(NotAPeer::Incomplete));
    }
}
