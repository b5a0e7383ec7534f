//! Reboot coordination for OS updates, the successor of locksmith and CLUO/FLUO: the CRDs
//! ([`crd`]), the decisions of the operator ([`decide`]) with their maintenance windows
//! ([`window`]), the lock ([`lock`]), the operator's loop ([`operator`]), its FleetLock
//! endpoint ([`fleetlock`]) and the node agent ([`agent`]).
#![forbid(unsafe_code)]

pub mod crd;
pub mod decide;
pub mod window;
