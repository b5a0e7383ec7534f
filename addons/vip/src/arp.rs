//! Gratuitous ARP: "VIP is at MAC", broadcast, so that hosts and switches on the segment
//! send the virtual IP's traffic to its new holder at once.

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("no network interface with index {0}")]
    NoInterface(u32),
    #[error("interface {0} has no MAC address")]
    NoMac(String),
    #[error("opening a packet socket on {iface}: {source}")]
    Open {
        iface: String,
        source: std::io::Error,
    },
    #[error("interface {0} is not an Ethernet interface")]
    NotEthernet(String),
    #[error("sending on {iface}: {source}")]
    Send {
        iface: String,
        source: std::io::Error,
    },
}

/// The Ethernet frame of a gratuitous ARP request from `mac` for `ip` (sender and target
/// address both `ip`, RFC 5227's announcement).
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address zero, target protocol address the announced one.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Broadcasts the announcement of `ip` on the interface with index `index`.
pub fn announce(index: u32, ip: Ipv4Addr) -> Result<(), ArpError> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.index == index)
        .ok_or(ArpError::NoInterface(index))?;
    let mac = iface
        .mac
        .ok_or_else(|| ArpError::NoMac(iface.name.clone()))?;
    let channel =
        pnet_datalink::channel(&iface, pnet_datalink::Config::default()).map_err(|source| {
            ArpError::Open {
                iface: iface.name.clone(),
                source,
            }
        })?;
    let pnet_datalink::Channel::Ethernet(mut tx, _rx) = channel else {
        return Err(ArpError::NotEthernet(iface.name.clone()));
    };
    let f = frame(mac.octets(), ip);
    match tx.send_to(&f, None) {
        Some(Ok(())) => Ok(()),
        Some(Err(source)) => Err(ArpError::Send {
            iface: iface.name.clone(),
            source,
        }),
        None => Err(ArpError::Send {
            iface: iface.name.clone(),
            source: std::io::Error::other("the frame was not sent"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_as_arping_sends_it() {
        let f = frame([2, 0, 0, 0, 0, 5], Ipv4Addr::new(198, 18, 0, 100));
        // What `arping -U -I eth0 198.18.0.100` puts on the wire (tcpdump -xx).
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 5, 0x08, 0x06, //
            0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 5, 198, 18, 0, 100, //
            0, 0, 0, 0, 0, 0, 198, 18, 0, 100,
        ];
        assert_eq!(f, want);
    }
}
