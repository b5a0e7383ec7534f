//! The `update.strata.dev/v1alpha1` API of Strata's update operator: the resources
//! ([`UpdatePolicy`], [`NodeUpdate`], [`RebootLock`]) and the typed values inside them
//! ([`GoDuration`], [`Time`], [`IntOrPercent`], [`Weekday`]).
//!
//! One crate, used by the Cluster model (the default policy), the installer (`strata updates`)
//! and the operator and agent, so that a value means the same everywhere and a bad one is
//! refused by the API server (schema `pattern`/`format`) rather than read differently by each
//! reader.
#![forbid(unsafe_code)]

mod crd;
mod values;

pub use crd::*;
pub use values::{
    DURATION_PATTERN, GoDuration, IntOrPercent, Time, Weekday, format_duration, parse_duration,
    parse_percent,
};
