//! The virtual IP on the interface that holds the host's own address (as a /32: no route
//! is added, the host's subnet route already covers it).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {0}")]
    Connect(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("no interface holds {0}")]
    NoInterface(Ipv4Addr),
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

fn holds(a: &AddressMessage, ip: Ipv4Addr) -> bool {
    a.attributes.iter().any(|at| {
        matches!(at, AddressAttribute::Address(IpAddr::V4(v)) | AddressAttribute::Local(IpAddr::V4(v)) if *v == ip)
    })
}

async fn find(h: &Handle, ip: Ipv4Addr) -> Result<Option<AddressMessage>, NetlinkError> {
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(req("listing addresses"))? {
        if holds(&a, ip) {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// The index of the interface that holds `host` (the host's own address).
pub async fn interface_of(h: &Handle, host: Ipv4Addr) -> Result<u32, NetlinkError> {
    find(h, host)
        .await?
        .map(|a| a.header.index)
        .ok_or(NetlinkError::NoInterface(host))
}

/// Whether `vip` is on the host.
pub async fn present(h: &Handle, vip: Ipv4Addr) -> Result<bool, NetlinkError> {
    Ok(find(h, vip).await?.is_some())
}

/// Adds `vip`/32 to interface `index`; true when it was not there.
pub async fn add(h: &Handle, index: u32, vip: Ipv4Addr) -> Result<bool, NetlinkError> {
    if present(h, vip).await? {
        return Ok(false);
    }
    h.address()
        .add(index, IpAddr::V4(vip), 32)
        .execute()
        .await
        .map_err(req(format!("adding {vip}")))?;
    Ok(true)
}

/// Removes `vip` wherever it is; true when it was there.
pub async fn remove(h: &Handle, vip: Ipv4Addr) -> Result<bool, NetlinkError> {
    let Some(a) = find(h, vip).await? else {
        return Ok(false);
    };
    h.address()
        .del(a)
        .execute()
        .await
        .map_err(req(format!("removing {vip}")))?;
    Ok(true)
}
