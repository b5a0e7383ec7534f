//! The VXLAN overlay agent's core: what each node's kernel must hold ([`plan`]) and the
//! netlink calls that make it so ([`netlink`]), driven by the Node objects ([`agent`]); and
//! the node's CNI configuration ([`cni`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cni;
pub mod netlink;
pub mod plan;
