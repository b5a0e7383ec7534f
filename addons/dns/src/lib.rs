//! strata-dns: the cluster's DNS server. [`records`] is the Kubernetes DNS specification as a
//! pure function over an [`index::Index`] of Services and Endpoints; [`server`] serves it
//! with hickory over UDP and TCP and forwards other names through [`forward`]; [`metrics`]
//! counts what it does.
#![forbid(unsafe_code)]

pub mod forward;
pub mod index;
pub mod metrics;
pub mod records;
pub mod serve;
pub mod server;
