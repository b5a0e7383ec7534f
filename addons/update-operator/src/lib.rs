//! The update operator's library. So far: maintenance-window arithmetic ([`window`]), the
//! part of the rollout's state machine that decides *when* a node may be rebooted.
#![forbid(unsafe_code)]

pub mod window;
