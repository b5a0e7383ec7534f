//! Local machines as `strata local up` makes them: reachable over real SSH with the
//! cluster's key, host keys pinned from the machines' own disks (a wrong key is refused),
//! a reboot from inside comes back with a new boot id, and `down` leaves nothing behind;
//! a cluster whose processes died (a restarted computer, a killed session) does not keep
//! another from the address range, and one that runs is named.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use strata_e2e::{keygen, local_address, require_root, wait_for};
use strata_platforms::local::Bridge;
use strata_platforms::local::Machine;
use strata_platforms::local::cluster::{self, LocalError, LocalHost, Paths};
use strata_platforms::local::network::whole_range;

const CLUSTER: &str = "e2e-machines";

/// known_hosts for `address` from a scan, accepted only if it matches the pin.
fn known_hosts(dir: &Path, address: &str, pin: &str) -> std::path::PathBuf {
    let scan = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", address])
        .output()
        .expect("ssh-keyscan");
    let line = String::from_utf8_lossy(&scan.stdout).trim().to_owned();
    let key_part = line.split_once(' ').map(|(_, k)| k).expect("scanned key");
    assert_eq!(
        strata_platforms::ssh::fingerprint(key_part).expect("fingerprint"),
        pin,
        "the scanned key is the pinned one"
    );
    let file = dir.join(format!("known_hosts-{address}"));
    std::fs::write(&file, format!("{line}\n")).expect("write");
    file
}

fn ssh(key: &Path, known: &Path, address: &str, command: &str) -> Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
        ])
        .arg(format!("root@{address}"))
        .arg(command)
        .output()
        .expect("ssh")
}

#[test]
fn machines_boot_take_ssh_with_pinned_keys_and_survive_a_reboot() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let paths = Paths::default();
    let _ = cluster::down(CLUSTER, &paths);
    let hosts: Vec<LocalHost> = ["m1", "m2"]
        .iter()
        .enumerate()
        .map(|(i, n)| LocalHost {
            name: (*n).into(),
            address: local_address(i as u32),
            prefix: strata_platforms::local::network::PREFIX,
        })
        .collect();

    let _down = Down(&paths, &[CLUSTER]);
    let up = cluster::up(CLUSTER, whole_range(), &hosts, &public, &paths).expect("up");
    assert_eq!(up.len(), 2);
    assert_ne!(
        up[0].host_key, up[1].host_key,
        "each machine has its own host key"
    );
    // Idempotent: a second `up` keeps the running machines and their keys.
    let again = cluster::up(CLUSTER, whole_range(), &hosts, &public, &paths).expect("up again");
    assert_eq!(again, up);

    let a = up[0].address.to_string();
    let known = known_hosts(dir.path(), &a, &up[0].host_key);
    let out = ssh(
        &key,
        &known,
        &a,
        "hostname; cat /proc/sys/kernel/random/boot_id; systemctl is-system-running --wait; \
         systemctl --failed --no-legend --plain; journalctl -b --no-pager -p warning | tail -40",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "m1");
    assert_eq!(lines[2], "running", "no failed units: {text}");
    let boot_id = lines[1].to_owned();

    // The other machine's key for this address: refused.
    let b = up[1].address.to_string();
    let other = known_hosts(dir.path(), &b, &up[1].host_key);
    let wrong = dir.path().join("wrong");
    let line = std::fs::read_to_string(&other)
        .expect("read")
        .replacen(&b, &a, 1);
    std::fs::write(&wrong, line).expect("write");
    let refused = ssh(&key, &wrong, &a, "true");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Each machine has cgroups of its own: a unit of one is never the same cgroup as the
    // same unit of another (which would let one machine's systemd kill the other's
    // processes).
    let b_known = known_hosts(dir.path(), &b, &up[1].host_key);
    let init_cgroup = |host: &LocalHost| {
        let m = Machine::new(&paths.machines, CLUSTER, &host.name, host.address);
        let pid = m.leader().expect("machine runs");
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        text.lines()
            .find(|l| l.contains(":name=systemd:") || l.starts_with("0::"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{}'s init cgroup: {text}", host.name))
    };
    let (ca, cb) = (init_cgroup(&hosts[0]), init_cgroup(&hosts[1]));
    assert_ne!(ca, cb, "m1 and m2 share their cgroups");
    let m2_before = ssh(
        &key,
        &b_known,
        &b,
        "systemctl show -p MainPID,NRestarts ssh",
    );

    // A reboot from inside: the machine comes back by itself with a new boot id.
    let _ = ssh(&key, &known, &a, "systemctl reboot");
    let t = wait_for("m1 back after reboot", Duration::from_secs(90), || {
        let o = ssh(&key, &known, &a, "cat /proc/sys/kernel/random/boot_id");
        o.status.success() && {
            let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            !id.is_empty() && id != boot_id
        }
    })
    .expect("reboot");
    eprintln!(
        "m1 rebooted and answered SSH again after {:.1}s",
        t.as_secs_f64()
    );
    // m2 did not notice: its sshd is the same process, never restarted, nothing failed.
    let m2_after = ssh(
        &key,
        &b_known,
        &b,
        "systemctl show -p MainPID,NRestarts ssh; systemctl is-system-running",
    );
    assert_eq!(
        String::from_utf8_lossy(&m2_after.stdout),
        format!("{}running\n", String::from_utf8_lossy(&m2_before.stdout)),
        "m2's services after m1's reboot"
    );

    let removed = cluster::down(CLUSTER, &paths).expect("down");
    assert_eq!(removed, ["m1", "m2"]);
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(CLUSTER));
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&format!("/machines/{CLUSTER}/")));
    assert!(!paths.machines.join(CLUSTER).exists());
}

#[test]
fn a_dead_clusters_network_gives_way_and_a_running_one_is_named() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let paths = Paths {
        machines: dir.path().join("machines"),
        ..Paths::default()
    };
    // Declared after `dir`, dropped before it: the machines go before their directory.
    let _down = Down(&paths, &["e2e-new", "e2e-old"]);
    let old = [LocalHost {
        name: "o1".into(),
        address: local_address(0),
        prefix: strata_platforms::local::network::PREFIX,
    }];
    let new = [LocalHost {
        name: "n1".into(),
        address: local_address(1),
        prefix: strata_platforms::local::network::PREFIX,
    }];
    cluster::up("e2e-old", whole_range(), &old, &public, &paths).expect("up e2e-old");

    // While e2e-old runs, a second cluster whose range overlaps is refused, naming it.
    let err =
        cluster::up("e2e-new", whole_range(), &new, &public, &paths).expect_err("range in use");
    assert!(
        matches!(&err, LocalError::RangeInUse { namespaces, .. } if namespaces == "strata-e2e-old-o1"),
        "{err}"
    );
    assert!(
        err.to_string().contains("spec.platform.local.range"),
        "{err}"
    );
    assert!(!paths.machines.join("e2e-new").exists());

    // e2e-old's processes die as a stopped session's do (supervisor first, so that nothing
    // tidies up): its bridge, veth and namespace stay, its PID files name dead processes.
    let m = Machine::new(&paths.machines, "e2e-old", "o1", old[0].address);
    let leader = m.leader().expect("o1 runs");
    for pid_file in ["supervisor.pid", "nspawn.pid"] {
        let pid = std::fs::read_to_string(m.dir.join(pid_file)).expect("pid file");
        kill(pid.trim());
    }
    kill(&leader.to_string());
    wait_for("o1 gone", Duration::from_secs(30), || {
        !cluster::running("e2e-old", "o1", &paths)
    })
    .expect("o1 stops");
    // The kernel ends the machine's other processes once its init is gone.
    wait_for(
        "no process left in o1's namespace",
        Duration::from_secs(30),
        || {
            Command::new("ip")
                .args(["netns", "pids", "strata-e2e-old-o1"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
        },
    )
    .expect("o1's processes end");
    assert!(link_exists(&Bridge::for_cluster("e2e-old").name));

    let up = cluster::up("e2e-new", whole_range(), &new, &public, &paths).expect("up e2e-new");
    assert_eq!(up[0].address, new[0].address, "n1 answered SSH");
    let dead = strata_platforms::local::HostNetwork::new("e2e-old", "o1", old[0].address);
    assert!(
        !link_exists(&Bridge::for_cluster("e2e-old").name),
        "the dead cluster's bridge was removed"
    );
    assert!(!Path::new(&dead.netns_path()).exists(), "and its namespace");

    assert_eq!(cluster::down("e2e-new", &paths).expect("down new"), ["n1"]);
    assert_eq!(cluster::down("e2e-old", &paths).expect("down old"), ["o1"]);
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !listed.contains("e2e-old") && !listed.contains("e2e-new"),
        "{listed}"
    );
}

/// Removes the clusters' machines when dropped (also when the test panics).
struct Down<'a>(&'a Paths, &'a [&'a str]);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for c in self.1 {
            let _ = cluster::down(c, self.0);
        }
    }
}

fn kill(pid: &str) {
    let out = Command::new("kill")
        .args(["-KILL", pid])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill {pid}");
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("ip")
        .status
        .success()
}
