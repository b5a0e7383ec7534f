//! The Strata cluster model: the `Cluster` document, its located validation and (later)
//! rendering of every host's files.
#![forbid(unsafe_code)]

pub mod addons;
pub mod catalog;
pub mod diagnostic;
pub mod formats;
pub mod images;
pub mod model;
pub mod objects;
pub mod pki;
pub mod plan;
pub mod pod_security;
pub mod pod_subnets;
pub mod render;
pub mod validate;
pub mod versions;
pub mod yaml;

pub use diagnostic::{Diagnostic, Location, Report, Severity};
pub use model::{Cluster, Host, Role};
pub use validate::{Context, Loaded, cluster_schema, load_file, load_str};
