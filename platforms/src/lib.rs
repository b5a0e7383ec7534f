//! Where hosts come from and how Strata reaches them.
//!
//! `local`: machines created on this computer as systemd-nspawn containers, each booting
//! real systemd in its own network namespace on a shared bridge. They are the embedded
//! default platform and the test bed of the end-to-end tests.
#![forbid(unsafe_code)]

pub mod local;
pub mod ssh;
