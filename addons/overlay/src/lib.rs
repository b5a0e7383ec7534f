//! The VXLAN overlay agent's core: what each node's kernel must hold ([`plan`]) and the
//! netlink calls that make it so ([`netlink`]).
#![forbid(unsafe_code)]

pub mod netlink;
pub mod plan;
