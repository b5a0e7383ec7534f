//! The control plane's virtual IP (`spec.controlPlane.vip`), as Talos and kube-vip keep
//! one: every control-plane host runs `strata-vip`; the one holding the Lease
//! `kube-system/strata-vip` (renewed through its own API server, so only a host whose API
//! server reaches an etcd quorum can hold it) adds the address to its interface and
//! announces it with gratuitous ARP. When the holder dies, another takes the Lease once it
//! has seen it unchanged for the lease duration; the holder drops the address before that
//! if it cannot renew. A host shutting down cleanly gives the Lease up at once.

#![forbid(unsafe_code)]

pub mod arp;
pub mod election;
pub mod netlink;
