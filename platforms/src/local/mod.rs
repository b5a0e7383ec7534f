//! Local machines: a Debian base image built once (debootstrap), one overlay root per host,
//! a network namespace per host on a shared bridge, and systemd-nspawn booting each.
//!
//! Every quirk of running Kubernetes nodes in nspawn on this kind of machine (listed in
//! platforms/README.md) is handled here: /dev/kmsg, writable cgroup hierarchies, CNI plugins
//! in /usr/lib/cni, and reboots (nspawn exits 133; the supervisor boots the machine again).

mod cgroup;
pub mod cluster;
mod cmd;
pub mod image;
pub mod machine;
pub mod network;

pub use cgroup::{CgroupError, MachineCgroups};
pub use cmd::CommandError;
pub use image::BaseImage;
pub use machine::Machine;
pub use network::{Bridge, HostNetwork};
