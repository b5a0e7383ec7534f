//! A local cluster's machines as a whole: `strata local up | down | list`.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::image::{BaseImage, ImageError};
use super::machine::{Machine, MachineError};
use super::network::Bridge;
use crate::ssh::fingerprint;

/// Where images are cached and machines live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub cache: PathBuf,
    pub machines: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            cache: PathBuf::from("/var/cache/strata"),
            machines: PathBuf::from("/var/lib/strata/machines"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHost {
    pub name: String,
    pub address: Ipv4Addr,
    /// The prefix length of the host's subnet (the cluster's range's: one subnet).
    pub prefix: u8,
}

/// A machine that is up, with the fingerprint of the SSH host key it generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpHost {
    pub name: String,
    pub address: Ipv4Addr,
    /// `SHA256:...` of /etc/ssh/ssh_host_ed25519_key.pub, read from the machine's own disk.
    pub host_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the local platform needs root (machines and network namespaces); run with sudo")]
    NotRoot,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("network: {0}")]
    Network(#[from] super::cmd::CommandError),
    #[error("host {host}: {what} within {secs}s; see {log}{tail}")]
    Timeout {
        host: String,
        what: String,
        secs: u64,
        log: String,
        /// The end of the console log, so that the error alone tells what happened.
        tail: String,
    },
    #[error(
        "the local range {range} overlaps {theirs} of another local cluster (bridge {bridge}, \
         machines in network namespaces {namespaces}): stop that cluster first (`strata local \
         down` with its Cluster file), or give this one a range of its own in \
         spec.platform.local.range{suggestion}"
    )]
    RangeInUse {
        range: String,
        theirs: String,
        bridge: String,
        namespaces: String,
        /// ", e.g. <free range>" when one is free.
        suggestion: String,
    },
    #[error(
        "network interface {device} holds {net}, which overlaps the local range {range}, and is \
         not a Strata bridge; remove that address, or give the cluster another \
         spec.platform.local.range{suggestion}"
    )]
    RangeHeld {
        device: String,
        net: String,
        range: String,
        suggestion: String,
    },
    #[error(
        "bridge {bridge} holds {net}, which overlaps the local range {range}, and has a port \
         Strata did not make ({port}); remove the port or the bridge"
    )]
    ForeignPort {
        bridge: String,
        net: String,
        range: String,
        port: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|uid| uid == "0")
}

/// Lets `public_key` (an OpenSSH public key line) log in as root.
fn authorize(m: &Machine, public_key: &str) -> Result<(), LocalError> {
    let dir = m.root().join("root/.ssh");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    let file = dir.join("authorized_keys");
    std::fs::write(&file, format!("{}\n", public_key.trim())).map_err(io(&file))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(io(&file))?;
    Ok(())
}

fn wait(
    host: &str,
    what: &str,
    limit: Duration,
    log: &Path,
    mut ok: impl FnMut() -> bool,
) -> Result<(), LocalError> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return Err(LocalError::Timeout {
                host: host.into(),
                what: what.into(),
                secs: limit.as_secs(),
                log: log.display().to_string(),
                tail: console_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The last lines of a console log, indented under a heading ("" when there is none).
fn console_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let last = &lines[lines.len().saturating_sub(20)..];
    if last.is_empty() {
        return String::new();
    }
    let mut out = String::from("; its last lines:");
    for l in last {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

/// Another local cluster's bridge may hold addresses of `range`: the host would route them
/// there and never reach this cluster's machines. Such a network left behind (its machines
/// gone with a restarted computer or a killed session) is removed; one that any process
/// still uses (a machine, its supervisor between two boots) is refused, naming it and a free
/// range, and so is an interface Strata did not make.
pub fn free_range(bridge: &Bridge, range: Ipv4Net) -> Result<(), LocalError> {
    let rivals = bridge.rivals(range)?;
    if rivals.is_empty() {
        return Ok(());
    }
    let suggestion = || {
        super::network::free_range(range.prefix_len().max(24))
            .ok()
            .flatten()
            .map(|n| format!(", e.g. {n}"))
            .unwrap_or_default()
    };
    for (rival, net) in rivals {
        if !rival.name.starts_with("stb-") {
            return Err(LocalError::RangeHeld {
                device: rival.name,
                net: net.to_string(),
                range: range.to_string(),
                suggestion: suggestion(),
            });
        }
        let ports = rival.ports()?;
        let mut namespaces = Vec::new();
        for (port, netns) in &ports {
            match netns {
                Some(n) if port.starts_with("stv-") && n.starts_with("strata-") => {
                    namespaces.push(n.clone());
                }
                _ => {
                    return Err(LocalError::ForeignPort {
                        bridge: rival.name,
                        net: net.to_string(),
                        range: range.to_string(),
                        port: port.clone(),
                    });
                }
            }
        }
        let live: Vec<String> = namespaces.into_iter().filter(|n| in_use(n)).collect();
        if !live.is_empty() {
            return Err(LocalError::RangeInUse {
                range: range.to_string(),
                theirs: net.to_string(),
                bridge: rival.name,
                namespaces: live.join(", "),
                suggestion: suggestion(),
            });
        }
        rival.delete_with_ports()?;
    }
    Ok(())
}

/// Whether a process runs in the network namespace `/run/netns/<netns>` or names it to boot
/// a machine in it (nspawn, or the supervisor that boots the machine again after a reboot).
fn in_use(netns: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let path = format!("/run/netns/{netns}");
    let Ok(ns) = std::fs::metadata(&path) else {
        return false;
    };
    let named = format!("--network-namespace-path={path}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // Cannot tell: count it as used rather than remove a live machine's network.
        return true;
    };
    procs
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let inside = std::fs::metadata(e.path().join("ns/net"))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino());
            inside
                || std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&named))
        })
}

/// The local platform's lock (one `up` or `down` at a time on this computer), held while
/// the returned file is open.
fn lock(paths: &Paths) -> Result<std::fs::File, LocalError> {
    std::fs::create_dir_all(&paths.machines).map_err(io(&paths.machines))?;
    let path = paths.machines.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    Ok(file)
}

/// Reads the host key the machine generated and waits until sshd accepts connections.
pub fn wait_for_ssh(m: &Machine, limit: Duration) -> Result<String, LocalError> {
    let key = m.root().join("etc/ssh/ssh_host_ed25519_key.pub");
    let log = m.console_log();
    wait(&m.host, "no SSH host key", limit, &log, || key.exists())?;
    let addr = SocketAddr::from((m.network.address, 22));
    wait(
        &m.host,
        "sshd not listening on port 22",
        limit,
        &log,
        || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok(),
    )?;
    let line = std::fs::read_to_string(&key).map_err(io(&key))?;
    fingerprint(&line).map_err(|reason| LocalError::Io {
        path: key.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    })
}

/// The kernel's inotify limits are per user, and every machine's root is this computer's
/// root: each machine's systemd, journald, containerd and kubelet take inotify instances
/// from one budget (128 by default, which ten machines exceed: the kubelet then fails to
/// start cAdvisor, "inotify_init: too many open files"). What `machines` machines need, on
/// top of this computer's own use: (instances, watches).
fn inotify_needs(machines: usize) -> (u64, u64) {
    let machines = machines as u64;
    (128 + 64 * machines, 8192 + 65536 * machines)
}

/// Raises (never lowers) `fs.inotify.max_user_instances` and `max_user_watches` to what
/// `machines` machines need.
fn raise_inotify_limits(machines: usize) -> Result<(), LocalError> {
    let (instances, watches) = inotify_needs(machines);
    for (name, need) in [
        ("max_user_instances", instances),
        ("max_user_watches", watches),
    ] {
        let path = std::path::PathBuf::from(format!("/proc/sys/fs/inotify/{name}"));
        let now: u64 = std::fs::read_to_string(&path)
            .map_err(io(&path))?
            .trim()
            .parse()
            .unwrap_or(0);
        if now < need {
            std::fs::write(&path, need.to_string()).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Creates (or resumes) every machine of the cluster and boots it; idempotent.
pub fn up(
    cluster: &str,
    range: Ipv4Net,
    hosts: &[LocalHost],
    public_key: &str,
    paths: &Paths,
) -> Result<Vec<UpHost>, LocalError> {
    if !is_root() {
        return Err(LocalError::NotRoot);
    }
    let _lock = lock(paths)?;
    let base = BaseImage::ensure(&paths.cache)?;
    let bridge = Bridge::for_cluster(cluster);
    free_range(&bridge, range)?;
    let machines: Vec<Machine> = hosts
        .iter()
        .map(|h| {
            let mut m = Machine::new(&paths.machines, cluster, &h.name, h.address);
            m.network = m.network.with_prefix(h.prefix);
            m
        })
        .collect();
    let subnets: Vec<Ipv4Net> = machines.iter().map(|m| m.network.subnet()).collect();
    bridge.ensure(range, &subnets)?;
    // Machines of other local clusters count too.
    let others: usize = std::fs::read_dir(&paths.machines)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|c| c.file_name().to_string_lossy().into_owned())
                .filter(|c| c != cluster)
                .map(|c| existing(&c, paths).len())
                .sum()
        })
        .unwrap_or(0);
    raise_inotify_limits(others + machines.len())?;
    for m in &machines {
        m.network.ensure(&bridge)?;
        m.prepare(&base)?;
        authorize(m, public_key)?;
        m.boot()?;
    }
    machines
        .iter()
        .map(|m| {
            Ok(UpHost {
                name: m.host.clone(),
                address: m.network.address,
                host_key: wait_for_ssh(m, Duration::from_secs(120))?,
            })
        })
        .collect()
}

/// Names of the machines that exist for `cluster` (whether in the Cluster file or not).
pub fn existing(cluster: &str, paths: &Paths) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(paths.machines.join(cluster))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether the machine `host` of `cluster` is running.
pub fn running(cluster: &str, host: &str, paths: &Paths) -> bool {
    Machine::new(&paths.machines, cluster, host, Ipv4Addr::UNSPECIFIED).is_running()
}

/// Removes every machine of the cluster, their namespaces and the bridge.
pub fn down(cluster: &str, paths: &Paths) -> Result<Vec<String>, LocalError> {
    if !is_root() {
        return Err(LocalError::NotRoot);
    }
    let _lock = lock(paths)?;
    let names = existing(cluster, paths);
    // All at once; one machine that cannot be removed does not keep the others running.
    let results: Vec<Result<(), MachineError>> = std::thread::scope(|s| {
        let removing: Vec<_> = names
            .iter()
            .map(|n| {
                s.spawn(|| {
                    Machine::new(&paths.machines, cluster, n, Ipv4Addr::UNSPECIFIED).destroy()
                })
            })
            .collect();
        removing
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.into());
    }
    Bridge::for_cluster(cluster).delete()?;
    let _ = std::fs::remove_dir(paths.machines.join(cluster));
    Ok(names)
}
