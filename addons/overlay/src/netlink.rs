//! Programs a node's kernel through netlink (rtnetlink): the VXLAN device, and the routes,
//! neighbour entries and forwarding-database entries of [`crate::plan::Desired`]. Each call
//! converges: what is missing is added, what differs is replaced, what is no longer wanted
//! on the device is deleted; entries already right are left alone, so traffic that is
//! flowing is not disturbed.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::plan::{Desired, Fdb, Mac, Neighbour, Path, Route, overlay_mtu};

/// The protocol number the agent's routes carry (`ip route` shows `proto 83`): how the
/// direct routes it made on the underlay interface are told from everyone else's there.
pub const ROUTE_PROTOCOL: u8 = 83;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no network interface holds the underlay address {0}")]
    NoUnderlay(Ipv4Addr),
    #[error("the device {0} has no MAC address")]
    NoMac(String),
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A netlink connection in the current network namespace.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The VXLAN device of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// This node's underlay address (VXLAN packets leave from it).
    pub underlay: Ipv4Addr,
}

/// What [`ensure_device`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// The interface holding the underlay address, and the subnet of that address (the
    /// segment whose peers direct routing reaches without the tunnel).
    pub underlay_index: u32,
    pub underlay_net: ipnet::Ipv4Net,
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(req(format!("looking up {name}"))(e)),
    }
}

fn mtu_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn mac_of(l: &LinkMessage) -> Option<Mac> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(Mac(m))
        }
        _ => None,
    })
}

/// The interface holding `addr`: its index, its MTU and the subnet of `addr` on it.
async fn underlay_link(
    h: &Handle,
    addr: Ipv4Addr,
) -> Result<(u32, u32, ipnet::Ipv4Net), NetlinkError> {
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(req("listing addresses"))? {
        let holds = a.attributes.iter().any(|at| {
            matches!(at, AddressAttribute::Address(IpAddr::V4(v)) | AddressAttribute::Local(IpAddr::V4(v)) if *v == addr)
        });
        if holds {
            let index = a.header.index;
            let mut links = h.link().get().match_index(index).execute();
            let l = links
                .try_next()
                .await
                .map_err(req("reading the underlay interface"))?
                .ok_or(NetlinkError::NoUnderlay(addr))?;
            let net = ipnet::Ipv4Net::new(addr, a.header.prefix_len)
                .map_err(|_| NetlinkError::NoUnderlay(addr))?
                .trunc();
            return Ok((index, mtu_of(&l).unwrap_or(1500), net));
        }
    }
    Err(NetlinkError::NoUnderlay(addr))
}

/// Creates the VXLAN device when missing (learning off: peers are programmed, not learnt),
/// gives it `gateway`/32 and the underlay MTU minus 50, and brings it up.
pub async fn ensure_device(
    h: &Handle,
    dev: &Device,
    gateway: Ipv4Addr,
) -> Result<DeviceState, NetlinkError> {
    let (underlay_index, underlay_mtu, underlay_net) = underlay_link(h, dev.underlay).await?;
    let mtu = overlay_mtu(underlay_mtu);
    let link = match link_by_name(h, &dev.name).await? {
        Some(l) => l,
        None => {
            h.link()
                .add(
                    LinkVxlan::new(&dev.name, dev.vni)
                        .dev(underlay_index)
                        .port(dev.port)
                        .local(dev.underlay)
                        .learning(false)
                        .mtu(mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(req(format!("creating {}", dev.name)))?;
            link_by_name(h, &dev.name)
                .await?
                .ok_or_else(|| NetlinkError::NoMac(dev.name.clone()))?
        }
    };
    let index = link.header.index;
    if mtu_of(&link) != Some(mtu) {
        h.link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("setting the MTU of {}", dev.name)))?;
    }
    let mut have = h.address().get().set_link_index_filter(index).execute();
    let mut has_gateway = false;
    while let Some(a) = have.try_next().await.map_err(req("listing addresses"))? {
        has_gateway |= a
            .attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V4(v)) if *v == gateway));
    }
    if !has_gateway {
        h.address()
            .add(index, IpAddr::V4(gateway), 32)
            .execute()
            .await
            .map_err(req(format!("adding {gateway}/32 to {}", dev.name)))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(req(format!("bringing {} up", dev.name)))?;
    let mac = mac_of(&link).ok_or_else(|| NetlinkError::NoMac(dev.name.clone()))?;
    Ok(DeviceState {
        index,
        mac,
        mtu,
        underlay_index,
        underlay_net,
    })
}

/// What a reconcile changed (for events and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

fn route_message(dev: &DeviceState, r: &Route) -> RouteMessage {
    let b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .gateway(r.via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    match r.path {
        // The VTEP address is no subnet's of the device: the route says it is on the link.
        Path::Vxlan => b.output_interface(dev.index).onlink(),
        Path::Direct => b.output_interface(dev.underlay_index),
    }
    .build()
}

/// The overlay's own route in `m`, if it is one: any route on the VXLAN device, and routes
/// on the underlay interface that carry [`ROUTE_PROTOCOL`].
fn our_route(dev: &DeviceState, m: &RouteMessage) -> Option<Route> {
    let oif = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })?;
    let path = if oif == dev.index {
        Path::Vxlan
    } else if oif == dev.underlay_index && m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
    {
        Path::Direct
    } else {
        return None;
    };
    route_of(m, path)
}

fn route_of(m: &RouteMessage, path: Path) -> Option<Route> {
    let mut dst = None;
    let mut via = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = Some(*v),
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => via = Some(*v),
            _ => {}
        }
    }
    let dst = ipnet::Ipv4Net::new(dst?, m.header.destination_prefix_length).ok()?;
    Some(Route {
        dst,
        via: via?,
        path,
    })
}

fn neighbour_of(m: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(IpAddr::V4(*v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                ip = Some(IpAddr::V6(*v))
            }
            // Forwarding entries (bridge family) carry the address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = match b.len() {
                    4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                };
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut x = [0u8; 6];
                x.copy_from_slice(b);
                mac = Some(Mac(x));
            }
            _ => {}
        }
    }
    (ip, mac)
}

/// Whether a netlink request failed with ESRCH (no such route: already gone).
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -3)
}

/// Makes the overlay's routes, and the VXLAN device's neighbour and forwarding entries,
/// exactly `want`.
pub async fn reconcile(
    h: &Handle,
    dev: &DeviceState,
    want: &Desired,
) -> Result<Changes, NetlinkError> {
    let index = dev.index;
    let mut c = Changes::default();

    // The overlay's routes: through the VXLAN device, and direct ones on the underlay.
    let mut have_routes = Vec::new();
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = routes.try_next().await.map_err(req("listing routes"))? {
        if let Some(r) = our_route(dev, &m) {
            have_routes.push((r, m));
        }
    }
    for r in &want.routes {
        if !have_routes.iter().any(|(h, _)| h == r) {
            // Replaces a route to the same subnet by the other path in one step.
            h.route()
                .add(route_message(dev, r))
                .replace()
                .execute()
                .await
                .map_err(req(r.to_string()))?;
            c.added.push(r.to_string());
        }
    }
    for (r, m) in have_routes {
        if !want.routes.contains(&r) {
            match h.route().del(m).execute().await {
                Ok(()) => c.removed.push(r.to_string()),
                // Replaced above by the route of the other path.
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(req(format!("deleting {r}"))(e)),
            }
        }
    }

    // Neighbour entries (IPv4) and forwarding-database entries (bridge family) on the device.
    let mut have_neigh: Vec<(Neighbour, NeighbourMessage)> = Vec::new();
    let mut have_fdb: Vec<(Fdb, NeighbourMessage)> = Vec::new();
    let mut neighbours = h.neighbours().get().execute();
    while let Some(m) = neighbours
        .try_next()
        .await
        .map_err(req("listing neighbours"))?
    {
        if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
            continue;
        }
        match (m.header.family, neighbour_of(&m)) {
            (AddressFamily::Inet, (Some(IpAddr::V4(ip)), Some(mac))) => {
                have_neigh.push((Neighbour { ip, mac }, m));
            }
            (AddressFamily::Bridge, (Some(dst), Some(mac))) => {
                have_fdb.push((Fdb { mac, dst }, m));
            }
            _ => {}
        }
    }
    let mut fdb = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(m) = fdb
        .try_next()
        .await
        .map_err(req("listing forwarding entries"))?
    {
        if m.header.ifindex != index {
            continue;
        }
        if let (Some(dst), Some(mac)) = neighbour_of(&m) {
            let e = Fdb { mac, dst };
            if !have_fdb.iter().any(|(h, _)| *h == e) {
                have_fdb.push((e, m));
            }
        }
    }
    for n in &want.neighbours {
        if !have_neigh.iter().any(|(h, _)| h == n) {
            h.neighbours()
                .add(index, IpAddr::V4(n.ip))
                .link_layer_address(&n.mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(req(format!("neighbour {} is {}", n.ip, n.mac)))?;
            c.added.push(format!("neighbour {} is {}", n.ip, n.mac));
        }
    }
    for f in &want.fdb {
        if !have_fdb.iter().any(|(h, _)| h == f) {
            h.neighbours()
                .add_bridge(index, &f.mac.0)
                .destination(f.dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(req(format!("forwarding {} to {}", f.mac, f.dst)))?;
            c.added.push(format!("forwarding {} to {}", f.mac, f.dst));
        }
    }
    for (n, m) in have_neigh {
        if !want.neighbours.contains(&n) {
            h.neighbours()
                .del(m)
                .execute()
                .await
                .map_err(req(format!("deleting neighbour {}", n.ip)))?;
            c.removed.push(format!("neighbour {} is {}", n.ip, n.mac));
        }
    }
    for (f, m) in have_fdb {
        if !want.fdb.contains(&f) {
            h.neighbours()
                .del(m)
                .execute()
                .await
                .map_err(req(format!("deleting forwarding entry {}", f.mac)))?;
            c.removed.push(format!("forwarding {} to {}", f.mac, f.dst));
        }
    }
    Ok(c)
}
