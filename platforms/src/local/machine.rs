//! One local machine: an overlay of the base image (per-machine upper directory), booted by
//! systemd-nspawn in the host's network namespace under a small supervisor that boots it
//! again when it reboots itself (nspawn exits with 133 on `systemctl reboot`).
//!
//! /var/lib/containerd is a directory of this computer bound into the machine: containerd's
//! overlayfs snapshotter cannot put its upper directories on the machine's own overlay root
//! (the kernel refuses: "failed to mount rootfs component ... invalid argument").

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::cgroup::{CgroupError, MachineCgroups};
use super::cmd::{CommandError, run};
use super::image::BaseImage;
use super::network::HostNetwork;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("machine {host}: {source}")]
    Command {
        host: String,
        #[source]
        source: CommandError,
    },
    #[error("machine {host}: {path}: {source}")]
    Io {
        host: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {host}: cgroups: {source}")]
    Cgroup {
        host: String,
        #[source]
        source: CgroupError,
    },
    #[error("machine {host}: {what} (console log: {log})")]
    Boot {
        host: String,
        what: String,
        log: String,
    },
}

/// A machine of a local cluster.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cluster: String,
    pub host: String,
    pub network: HostNetwork,
    /// machines/<cluster>/<host>
    pub dir: PathBuf,
}

impl Machine {
    pub fn new(machines: &Path, cluster: &str, host: &str, address: Ipv4Addr) -> Self {
        Self {
            cluster: cluster.into(),
            host: host.into(),
            network: HostNetwork::new(cluster, host, address),
            dir: machines.join(cluster).join(host),
        }
    }

    /// The machine's root filesystem as seen from this computer (an overlay mount).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn io(&self, path: &Path, source: std::io::Error) -> MachineError {
        MachineError::Io {
            host: self.host.clone(),
            path: path.display().to_string(),
            source,
        }
    }

    fn cgroup(&self, source: CgroupError) -> MachineError {
        MachineError::Cgroup {
            host: self.host.clone(),
            source,
        }
    }

    /// Where the machine's cgroups are recorded (the caller of a later `down` may be in
    /// other cgroups than the caller of `up`).
    fn cgroups_file(&self) -> PathBuf {
        self.dir.join("cgroups")
    }

    /// Fresh cgroups for a boot, below this process's own (so that limits set on the
    /// caller hold): what an earlier boot left in the recorded ones is killed and they are
    /// removed first. Named by cluster, host and machine directory, so that no two machines
    /// share one (`:` is in neither name).
    fn fresh_cgroups(&self) -> Result<MachineCgroups, MachineError> {
        if let Some(old) = MachineCgroups::load(&self.cgroups_file()) {
            old.kill_all(Duration::from_secs(10))
                .map_err(|e| self.cgroup(e))?;
            let _ = old.remove();
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.dir, &mut h);
        let name = format!(
            "strata:{}:{}:{:08x}",
            self.cluster,
            self.host,
            std::hash::Hasher::finish(&h) as u32
        );
        let c = MachineCgroups::below_self(&name).map_err(|e| self.cgroup(e))?;
        c.save(&self.cgroups_file()).map_err(|e| self.cgroup(e))?;
        Ok(c)
    }

    fn cmd(&self, source: CommandError) -> MachineError {
        MachineError::Command {
            host: self.host.clone(),
            source,
        }
    }

    fn mounted(&self) -> bool {
        let root = self.root();
        std::fs::read_to_string("/proc/mounts")
            .map(|m| {
                m.lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(&*root.to_string_lossy()))
            })
            .unwrap_or(false)
    }

    /// Creates the overlay root (idempotent) and gives the machine its identity.
    pub fn prepare(&self, base: &BaseImage) -> Result<(), MachineError> {
        for d in ["upper", "work", "root", "containerd"] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| self.io(&p, e))?;
        }
        if !self.mounted() {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                base.root.display(),
                self.dir.join("upper").display(),
                self.dir.join("work").display()
            );
            run(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(self.root()))
            .map_err(|e| self.cmd(e))?;
        }
        let id = self.root().join("etc/machine-id");
        if std::fs::read_to_string(&id)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            let mut b = [0u8; 16];
            let r = std::fs::read("/proc/sys/kernel/random/uuid").map_err(|e| self.io(&id, e))?;
            let hex: String = String::from_utf8_lossy(&r)
                .chars()
                .filter(char::is_ascii_hexdigit)
                .collect();
            for (i, byte) in b.iter_mut().enumerate() {
                *byte =
                    u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
            }
            let text: String = b.iter().map(|x| format!("{x:02x}")).collect();
            std::fs::write(&id, format!("{text}\n")).map_err(|e| self.io(&id, e))?;
        }
        let hostname = self.root().join("etc/hostname");
        std::fs::write(&hostname, format!("{}\n", self.host)).map_err(|e| self.io(&hostname, e))?;
        Ok(())
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The process recorded in `name`, if it still runs and is this machine's: a PID file
    /// left by a computer that restarted (or a killed session) may name an unrelated process
    /// now, which must be neither taken for the machine nor signalled.
    fn read_pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        // Both the supervisor's script and nspawn's arguments name a path under the
        // machine's directory ("<dir>/", so that w1 is not taken for w10).
        let dir = format!("{}/", self.dir.display());
        String::from_utf8_lossy(&cmdline)
            .contains(&dir)
            .then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.read_pid("supervisor.pid").is_some()
    }

    /// Boots the machine in the background (returns once nspawn runs).
    pub fn boot(&self) -> Result<(), MachineError> {
        if self.is_running() {
            return Ok(());
        }
        let root = self.root();
        let cgroups = self.fresh_cgroups()?;
        cgroups.create().map_err(|e| self.cgroup(e))?;
        let join: String = cgroups
            .procs_files()
            .iter()
            .map(|f| {
                format!(
                    "echo $$ > '{f}' 2>>'{log}' || {{ echo 'strata: cannot join {f}' >>'{log}'; exit 1; }}\n",
                    f = f.display(),
                    log = self.console_log().display()
                )
            })
            .collect();
        let script = format!(
            "{join}echo $$ > '{sup}'\n\
             while :; do\n  \
               SYSTEMD_SECCOMP=0 SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 systemd-nspawn -D '{root}' --boot \
             --register=no --keep-unit --network-namespace-path='{netns}' --capability=all \
             --bind=/dev/kmsg --bind='{containerd}:/var/lib/containerd' \
             --property=DeviceAllow='char-* rwm' --hostname='{host}' \
             --machine='{host}' --console=read-only >>'{log}' 2>&1 &\n  \
               echo $! > '{nspawn}'\n  \
               wait $!; rc=$?\n  \
               echo \"strata: machine exited with status $rc\" >>'{log}'\n  \
               [ \"$rc\" -eq 133 ] || break\n\
             done\n\
             rm -f '{nspawn}' '{sup}'\n",
            sup = self.pid_file("supervisor.pid").display(),
            nspawn = self.pid_file("nspawn.pid").display(),
            root = root.display(),
            containerd = self.dir.join("containerd").display(),
            netns = self.network.netns_path(),
            host = self.host,
            log = self.console_log().display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.io(Path::new("setsid"), e))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read_pid("nspawn.pid").is_none() {
            if Instant::now() > deadline {
                return Err(MachineError::Boot {
                    host: self.host.clone(),
                    what: "systemd-nspawn did not start".into(),
                    log: self.console_log().display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// PID of the machine's init (systemd), as seen from this computer.
    pub fn leader(&self) -> Option<u32> {
        let nspawn = self.read_pid("nspawn.pid")?;
        let children =
            std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Runs a command inside the machine (all of its namespaces).
    pub fn exec(&self, argv: &[&str]) -> Result<Output, MachineError> {
        let leader = self.leader().ok_or_else(|| MachineError::Boot {
            host: self.host.clone(),
            what: "not running".into(),
            log: self.console_log().display().to_string(),
        })?;
        run(Command::new("nsenter")
            .args([
                "-t",
                &leader.to_string(),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
            ])
            .args(argv))
        .map_err(|e| self.cmd(e))
    }

    /// SIGKILL to every process left in the machine's cgroups; its pid files removed.
    fn kill_the_rest(&self) -> Result<(), MachineError> {
        if let Some(cgroups) = MachineCgroups::load(&self.cgroups_file()) {
            cgroups
                .kill_all(Duration::from_secs(10))
                .map_err(|e| self.cgroup(e))?;
        }
        let _ = std::fs::remove_file(self.pid_file("nspawn.pid"));
        let _ = std::fs::remove_file(self.pid_file("supervisor.pid"));
        Ok(())
    }

    /// Cuts the machine's power: every process killed at once (no shutdown inside) and its
    /// network namespace gone with the addresses it held. `boot` (after the network is made
    /// again, as `strata local up` does) starts it again with its disk as it was.
    pub fn kill(&self) -> Result<(), MachineError> {
        for pid in ["supervisor.pid", "nspawn.pid"] {
            if let Some(p) = self.read_pid(pid) {
                let _ = run(Command::new("kill").args(["-KILL", &p.to_string()]));
            }
        }
        self.kill_the_rest()?;
        self.network.delete().map_err(|e| self.cmd(e))
    }

    /// Removes the machine: its power cut (no shutdown inside: the disk goes too, so there is
    /// nothing to keep consistent), then its root, network namespace and files.
    pub fn destroy(&self) -> Result<(), MachineError> {
        for pid in ["supervisor.pid", "nspawn.pid"] {
            if let Some(p) = self.read_pid(pid) {
                let _ = run(Command::new("kill").args(["-KILL", &p.to_string()]));
            }
        }
        self.kill_the_rest()?;
        if let Some(cgroups) = MachineCgroups::load(&self.cgroups_file()) {
            // The kernel ends the machine's last processes just after its init.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = cgroups.remove() {
                if Instant::now() > deadline {
                    return Err(self.cgroup(e));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if self.mounted() {
            run(Command::new("umount").arg(self.root())).map_err(|e| self.cmd(e))?;
        }
        self.network.delete().map_err(|e| self.cmd(e))?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        }
        Ok(())
    }
}
