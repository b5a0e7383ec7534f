//! strata-dns: the cluster's DNS server. [`records`] is the Kubernetes DNS specification as a
//! pure function over an [`index::Index`] of Services and Endpoints; [`server`] serves it
//! with hickory over UDP and TCP and forwards other names through [`forward`].
#![forbid(unsafe_code)]

pub mod forward;
pub mod index;
pub mod records;
pub mod server;
