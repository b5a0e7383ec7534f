//! A cgroup of its own for each local machine, in every hierarchy of this computer.
//!
//! nspawn runs with `--keep-unit` (this computer need not run systemd), so without this every
//! machine's systemd would take the caller's cgroup as its own and the machines would share
//! `…/system.slice/ssh.service` and the rest: a unit ending in one machine kills the
//! processes of the same unit in the others, and a reboot of one stops the others' services.
//! The machine's supervisor moves itself into `<caller's cgroup>/strata-<cluster>-<host>`
//! before it starts nspawn, so limits set on the caller still hold.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy found in /proc/self/mountinfo (machines need cgroups)")]
    NoHierarchy,
    #[error("processes {pids:?} are still in {dir} after SIGKILL")]
    Busy { dir: String, pids: Vec<u32> },
    #[error("kill: {0}")]
    Kill(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directories of the cgroups a process is in, one per mounted hierarchy, from its
/// `/proc/PID/mountinfo` and `/proc/PID/cgroup`.
pub fn current(mountinfo: &str, proc_cgroup: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let sup: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(mount), Some(fstype), Some(options)) =
            (fields.get(3), fields.get(4), sup.first(), sup.get(2))
        else {
            continue;
        };
        let path = match *fstype {
            "cgroup2" => proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")),
            "cgroup" => {
                let options: Vec<&str> = options.split(',').collect();
                proc_cgroup.lines().find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    (!controllers.is_empty()
                        && controllers.split(',').all(|c| options.contains(&c)))
                    .then_some(path)
                })
            }
            _ => None,
        };
        let Some(path) = path else { continue };
        // A hierarchy mounted from below its root shows paths relative to that root.
        let relative = if *root == "/" {
            path
        } else {
            match path.strip_prefix(root) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                _ => continue,
            }
        };
        let dir = Path::new(mount).join(relative.trim_start_matches('/'));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// One machine's cgroups: a child of this process's cgroup in every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCgroups {
    pub dirs: Vec<PathBuf>,
}

impl MachineCgroups {
    /// The cgroups for machine `name` below this process's own.
    pub fn below_self(name: &str) -> Result<Self, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let cgroup = Path::new("/proc/self/cgroup");
        let m = std::fs::read_to_string(mountinfo).map_err(io(mountinfo))?;
        let c = std::fs::read_to_string(cgroup).map_err(io(cgroup))?;
        let dirs: Vec<PathBuf> = current(&m, &c).into_iter().map(|d| d.join(name)).collect();
        if dirs.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Self { dirs })
    }

    /// The cgroups recorded in `file` (one directory per line), as `save` wrote them.
    pub fn load(file: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(file).ok()?;
        let dirs: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        (!dirs.is_empty()).then_some(Self { dirs })
    }

    pub fn save(&self, file: &Path) -> Result<(), CgroupError> {
        let text: String = self
            .dirs
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        std::fs::write(file, text).map_err(io(file))
    }

    /// Creates the cgroups (idempotent). A new cpuset cgroup has no CPUs and no memory
    /// nodes, and no process can join it until it gets its parent's.
    pub fn create(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            std::fs::create_dir_all(d).map_err(io(d))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = d.join(file);
                let Ok(value) = std::fs::read_to_string(&own) else {
                    continue;
                };
                if !value.trim().is_empty() {
                    continue;
                }
                if let Some(parent) = d.parent() {
                    let inherited = parent.join(file);
                    let value = std::fs::read_to_string(&inherited).map_err(io(&inherited))?;
                    std::fs::write(&own, value.trim()).map_err(io(&own))?;
                }
            }
        }
        Ok(())
    }

    /// The files a process writes its PID to, to join every cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every process in the cgroups or below them.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for d in &self.dirs {
            collect_pids(d, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills (SIGKILL) every process left in the machine's cgroups: what its init did not
    /// end, such as container processes whose shims are gone, or an init left behind when
    /// nspawn itself was killed. Waits until the cgroups are empty (at most `timeout`).
    pub fn kill_all(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    dir: self
                        .dirs
                        .first()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    pids,
                });
            }
            // cgroup v2 kills a whole cgroup at once, with no window for a PID to be reused.
            for d in &self.dirs {
                let kill = d.join("cgroup.kill");
                if kill.exists() {
                    std::fs::write(&kill, "1").map_err(io(&kill))?;
                }
            }
            // A process may end between the listing and the signal: kill's status is moot.
            std::process::Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(CgroupError::Kill)?;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Removes the cgroups and whatever the machine's systemd made below them, deepest
    /// first. Call once the machine's processes are gone; a cgroup that still holds one
    /// stays (and is named in the error).
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for d in &self.dirs {
            if let Err(e) = remove_tree(d)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        // 0 stands for a process outside this PID namespace: never a PID to signal.
        out.extend(
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .filter(|p| *p != 0),
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    // Cgroup directories are removed with rmdir even though they list files.
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw
";

    #[test]
    fn hierarchies_of_a_hybrid_host_with_the_process_in_a_memory_cgroup() {
        let cgroup = "9:name=systemd:/\n4:memory:/process_api/b26e\n3:cpuset:/\n1:cpu:/\n0::/\n";
        assert_eq!(
            current(HYBRID_MOUNTINFO, cgroup),
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory/process_api/b26e",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn co_mounted_controllers_and_a_hierarchy_mounted_below_its_root() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 /lxc/box /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let cgroup = "2:cpu,cpuacct:/user.slice\n1:memory:/lxc/box/inner\n";
        // (A path that merely starts with the same letters is not below the root.)
        assert_eq!(
            current(mountinfo, "1:memory:/lxc/boxer\n"),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            current(mountinfo, cgroup),
            [
                "/sys/fs/cgroup/cpu,cpuacct/user.slice",
                "/sys/fs/cgroup/memory/inner"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn unified_only_host() {
        let mountinfo = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            current(mountinfo, "0::/user.slice/session-3.scope\n"),
            [PathBuf::from("/sys/fs/cgroup/user.slice/session-3.scope")]
        );
    }

    #[test]
    fn the_record_of_a_machines_cgroups_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cgroups");
        let c = MachineCgroups {
            dirs: vec!["/sys/fs/cgroup/cpu/strata-a-b".into()],
        };
        c.save(&file).expect("save");
        assert_eq!(MachineCgroups::load(&file), Some(c));
        assert_eq!(MachineCgroups::load(&dir.path().join("missing")), None);
    }

    #[test]
    fn processes_are_read_from_every_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = dir.path().join("strata-a-b");
        std::fs::create_dir_all(top.join("payload/kubepods")).expect("mkdir");
        std::fs::write(top.join("cgroup.procs"), "12\n").expect("write");
        std::fs::write(top.join("payload/kubepods/cgroup.procs"), "40\n12\n0\n").expect("write");
        let c = MachineCgroups { dirs: vec![top] };
        assert_eq!(c.processes(), [12, 40]);
    }

    #[test]
    fn remove_takes_nested_directories_deepest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = dir.path().join("strata-a-b");
        std::fs::create_dir_all(top.join("payload/system.slice")).expect("mkdir");
        let c = MachineCgroups {
            dirs: vec![top.clone()],
        };
        c.remove().expect("remove");
        assert!(!top.exists());
        c.remove().expect("already gone is fine");
    }
}
