//! Reboot coordination for OS updates, the successor of locksmith and CLUO/FLUO: the API
//! types (crate `strata-update-api`, re-exported as [`crd`]), the operator's decisions ([`decide`]) with their maintenance windows
//! ([`window`]), the lock ([`lock`]) and leader lease ([`lease`]) on the API server, the
//! operator's loop ([`operator`]) with its metrics ([`metrics`]) and FleetLock endpoint
//! ([`fleetlock`]), and the node agent ([`agent`]) with its drain ([`drain`]).
#![forbid(unsafe_code)]

pub mod agent;
/// The `update.strata.dev` API (crate `strata-update-api`).
pub mod crd {
    pub use strata_update_api::*;
}
pub mod decide;
/// Draining through the Eviction API (a crate of its own: `strata apply` drains a host that
/// leaves the cluster with it too).
pub use strata_drain as drain;
pub mod events;
pub mod fleetlock;
pub mod lease;
pub mod lock;
pub mod metrics;
pub mod operator;
pub mod window;
