//! The base image every local machine boots: Debian bookworm built once with debootstrap
//! from the archive this computer's apt already uses, prepared for Kubernetes nodes, and
//! cached by version outside any clone.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cmd::{CommandError, run};

/// Bump when the package list or the preparation changes: a new directory is built.
pub const IMAGE_VERSION: &str = "bookworm-2";

const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "kmod",
    "procps",
    "curl",
    // Hosts reached as a user other than root (tests of sudo).
    "sudo",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "no Debian archive found in the apt configuration (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); the local platform builds its image from it"
    )]
    NoMirror,
    #[error("building the base image: {0}")]
    Command(#[from] CommandError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The archive to bootstrap from, as this machine's apt is configured (never hard-coded).
pub fn mirror_from_apt(dir: &Path, legacy: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let types = field("Types:").unwrap_or_default();
            let suites = field("Suites:").unwrap_or_default();
            if types.split_whitespace().any(|t| t == "deb")
                && suites.split_whitespace().any(|s| s == "bookworm")
                && let Some(uri) =
                    field("URIs:").and_then(|u| u.split_whitespace().next().map(str::to_owned))
            {
                return Some(uri);
            }
        }
    }
    let text = std::fs::read_to_string(legacy).ok()?;
    text.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&"deb") && w.get(2) == Some(&"bookworm")).then(|| w[1].to_owned())
    })
}

const CGROUP_UNIT: &str = "\
# Kubernetes in a container needs writable cgroup hierarchies. Written by Strata.
[Unit]
Description=Make cgroup hierarchies writable (Strata local machine)
DefaultDependencies=no
Before=containerd.service kubelet.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$c\"; done'
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

const HOST_KEYS_UNIT: &str = "\
# Each machine gets its own SSH host keys on first boot. Written by Strata.
[Unit]
Description=Generate SSH host keys (Strata local machine)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// A prepared base root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub root: PathBuf,
}

impl BaseImage {
    /// The cached image under `cache`, built first if missing (about 3 minutes).
    pub fn ensure(cache: &Path) -> Result<Self, ImageError> {
        let dir = cache.join("images").join(IMAGE_VERSION);
        let root = dir.join("root");
        if dir.join("ready").exists() {
            return Ok(Self { root });
        }
        let mirror = mirror_from_apt(
            Path::new("/etc/apt/sources.list.d"),
            Path::new("/etc/apt/sources.list"),
        )
        .ok_or(ImageError::NoMirror)?;
        let tmp = dir.join("root.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        run(Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("bookworm")
            .arg(&tmp)
            .arg(&mirror))?;
        prepare(&tmp)?;
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io(&root))?;
        }
        std::fs::rename(&tmp, &root).map_err(io(&root))?;
        std::fs::write(
            dir.join("ready"),
            format!("{IMAGE_VERSION} from {mirror}\n"),
        )
        .map_err(io(&dir))?;
        Ok(Self { root })
    }
}

fn write(path: &Path, text: &str) -> Result<(), ImageError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

fn enable(root: &Path, unit: &str) -> Result<(), ImageError> {
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(io(&wants))?;
    let link = wants.join(unit);
    if !link.exists() {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link)
            .map_err(io(&link))?;
    }
    Ok(())
}

/// Makes a fresh debootstrap tree a node image.
fn prepare(root: &Path) -> Result<(), ImageError> {
    write(
        &root.join("etc/systemd/system/strata-cgroup-rw.service"),
        CGROUP_UNIT,
    )?;
    enable(root, "strata-cgroup-rw.service")?;
    write(
        &root.join("etc/systemd/system/strata-ssh-host-keys.service"),
        HOST_KEYS_UNIT,
    )?;
    enable(root, "strata-ssh-host-keys.service")?;
    // Host keys and machine id must be each machine's own.
    for e in std::fs::read_dir(root.join("etc/ssh"))
        .map_err(io(root))?
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
        }
    }
    write(&root.join("etc/machine-id"), "")?;
    // The distribution's containerd starts only once Strata installs its configuration.
    let _ = std::fs::remove_file(
        root.join("etc/systemd/system/multi-user.target.wants/containerd.service"),
    );
    // CNI plugins: the archive installs them in /usr/lib/cni; containerd looks in /opt/cni/bin.
    std::fs::create_dir_all(root.join("opt/cni")).map_err(io(root))?;
    let link = root.join("opt/cni/bin");
    if !link.exists() {
        std::os::unix::fs::symlink("/usr/lib/cni", &link).map_err(io(&link))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_comes_from_the_apt_configuration() {
        let d = tempfile::tempdir().expect("tempdir");
        let sources = d.path().join("sources.list.d");
        std::fs::create_dir(&sources).expect("mkdir");
        std::fs::write(
            sources.join("debian.sources"),
            "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n\
             Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
        )
        .expect("write");
        assert_eq!(
            mirror_from_apt(&sources, &d.path().join("none")).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        let legacy = d.path().join("sources.list");
        std::fs::write(
            &legacy,
            "# comment\ndeb http://other.invalid/debian bookworm main\n",
        )
        .expect("write");
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert_eq!(
            mirror_from_apt(&empty, &legacy).as_deref(),
            Some("http://other.invalid/debian")
        );
        assert_eq!(mirror_from_apt(&empty, &d.path().join("none")), None);
    }
}
