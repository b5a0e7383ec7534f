//! Backup and restore on local machines: a backup of a running two-host cluster; objects made
//! after it; restores refused (a truncated file, a snapshot of another cluster, a snapshot
//! etcd cannot read while the file would stop units) with nothing stopped; a restore on the
//! running machine after the cluster changed (a host and an addon gone: their Node and
//! objects deleted, Strata's pods started again); every machine destroyed; new machines with
//! other addresses; `strata restore` brings back the objects of the backup (a Secret too) and
//! not the later ones, every node Ready at its new address, and kubectl works with the admin
//! kubeconfig.

use std::path::Path;
use std::time::{Duration, Instant};

use strata_e2e::{LocalDown, kubectl, ok, on_machine, require_root, strata, wait_for};

const NAME: &str = "e2e-restore";
/// The Cluster file's lines that turn the update operator off.
const OPERATOR_OFF: &str = "  addons: {updateOperator: {enabled: false}}\n";

fn cluster(cp1: &str, w1: &str) -> String {
    file_with(
        "",
        &format!("  - {{name: w1, address: {w1}, roles: [worker]}}\n"),
        cp1,
    )
}

/// The cluster changed since the backup: w1 gone from the file, the update operator off.
fn smaller(cp1: &str) -> String {
    file_with(OPERATOR_OFF, "", cp1)
}

/// The Cluster file: cp1 at `cp1`, then `more` hosts; `spec` lines before the hosts.
fn file_with(spec: &str, more: &str, cp1: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {{name: {NAME}}}
spec:
  platform: {{local: {{}}}}
{spec}  hosts:
  - {{name: cp1, address: {cp1}, roles: [etcd, control-plane]}}
{more}"
    )
}

/// The pods of Strata's overlay and DNS on cp1, with their creation times.
fn addon_pods(kubeconfig: &Path) -> String {
    ok(
        &kubectl(
            kubeconfig,
            &[
                "get",
                "pods",
                "--all-namespaces",
                "-l",
                "app.kubernetes.io/name in (strata-overlay,strata-dns)",
                // Pods of the backup bound to w1, gone, stay until Kubernetes collects them.
                "--field-selector=spec.nodeName=cp1",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.creationTimestamp}{\"\\n\"}{end}",
            ],
        ),
        "addon pods",
    )
}

/// A restore on the machines that run the cluster, after it changed: the objects of the
/// backup are back and the later one gone; what the backup's cluster had and the file no
/// longer wants is deleted (w1's Node, the update operator's objects); the pods of Strata's
/// workloads are new; plan has nothing to do.
fn restored_in_place(dir: &Path, file: &Path, backup: &Path, kubeconfig: &Path) {
    std::fs::write(file, smaller("198.18.0.2")).expect("write");
    ok(
        &strata(dir, &["apply"]),
        "apply without w1 and the update operator",
    );
    let operator = [
        "get",
        "deployment",
        "-n",
        "strata-system",
        "strata-update-operator",
    ];
    assert!(
        !kubectl(kubeconfig, &operator).status.success(),
        "operator still there"
    );
    let before = addon_pods(kubeconfig);
    let out = strata_e2e::restored(dir, backup, "restore in place on the running machine");
    assert!(out.contains("restored the backup of"), "{out}");
    assert!(
        out.contains("Nodes of hosts no longer in the file deleted: w1"),
        "{out}"
    );
    ok(
        &kubectl(kubeconfig, &["get", "configmap", "before-backup"]),
        "restored configmap",
    );
    assert!(
        !kubectl(kubeconfig, &["get", "configmap", "after-backup"])
            .status
            .success(),
        "the later configmap came back"
    );
    let gone = kubectl(kubeconfig, &operator);
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "the update operator the backup had is not deleted"
    );
    let nodes = ok(
        &kubectl(kubeconfig, &["get", "nodes", "-o", "name"]),
        "nodes",
    );
    assert_eq!(nodes.trim(), "node/cp1", "{nodes}");
    // The pods of the backup go (their grace period), new ones come.
    let all_new = || {
        let after = addon_pods(kubeconfig);
        !after.trim().is_empty() && after.lines().all(|l| !before.contains(l))
    };
    if let Err(e) = wait_for(
        "the addon pods started again",
        Duration::from_secs(90),
        all_new,
    ) {
        panic!("{e}: before\n{before}after\n{}", addon_pods(kubeconfig));
    }
    let plan = ok(&strata(dir, &["plan"]), "plan after the restore in place");
    assert!(plan.contains("Nothing to do"), "{plan}");
    std::fs::write(file, cluster("198.18.0.2", "198.18.0.3")).expect("write");
}

fn refused(dir: &Path, file: &Path) -> String {
    let o = strata(
        dir,
        &["restore", "--from", &file.to_string_lossy(), "--yes"],
    );
    assert!(
        !o.status.success(),
        "restore of {} went through",
        file.display()
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The control plane and etcd still run, the objects made after the backup still there.
fn nothing_stopped(kubeconfig: &Path) {
    let active = on_machine(
        NAME,
        "cp1",
        "systemctl is-active etcd kube-apiserver kube-controller-manager kube-scheduler",
    );
    assert_eq!(active.split_whitespace().collect::<Vec<_>>(), ["active"; 4]);
    ok(
        &kubectl(kubeconfig, &["get", "configmap", "after-backup"]),
        "the later object, untouched",
    );
}

#[test]
fn a_backup_restores_onto_new_machines_with_other_addresses() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, cluster("198.18.0.2", "198.18.0.3")).expect("write");
    let _down = LocalDown(dir);
    ok(&strata(dir, &["local", "up"]), "local up");
    ok(&strata(dir, &["apply"]), "apply");
    let kubeconfig = dir.join(format!("{NAME}/auth/kubeconfig"));
    ok(
        &kubectl(
            &kubeconfig,
            &["create", "configmap", "before-backup", "--from-literal=k=v"],
        ),
        "configmap",
    );
    ok(
        &kubectl(
            &kubeconfig,
            &[
                "create",
                "secret",
                "generic",
                "kept",
                "--from-literal=p=s3cret",
            ],
        ),
        "secret",
    );
    let backup = dir.join("backup.tar");
    let started = Instant::now();
    ok(
        &strata(dir, &["backup", "--out", &backup.to_string_lossy()]),
        "backup",
    );
    println!(
        "backup: {} bytes in {:.1} s",
        std::fs::metadata(&backup).map(|m| m.len()).unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    ok(
        &kubectl(&kubeconfig, &["create", "configmap", "after-backup"]),
        "configmap after",
    );

    // Refused, nothing stopped: a truncated file ...
    let bytes = std::fs::read(&backup).expect("backup");
    let cut = dir.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let e = refused(dir, &cut);
    assert!(e.contains("cut.tar") && e.contains("truncated"), "{e}");
    nothing_stopped(&kubeconfig);
    // ... and a snapshot of another cluster (its record says so).
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let tar = |args: &[&str]| {
        let o = std::process::Command::new("tar")
            .args(args)
            .output()
            .expect("tar");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    tar(&[
        "-xf",
        &backup.to_string_lossy(),
        "-C",
        &other.to_string_lossy(),
    ]);
    let record = other.join("record.json");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
    r["cluster"] = "someone-else".into();
    r["caSha256"] = "00".repeat(32).into();
    std::fs::write(&record, serde_json::to_vec(&r).expect("json")).expect("write");
    let other_tar = dir.join("other.tar");
    tar(&[
        "-cf",
        &other_tar.to_string_lossy(),
        "-C",
        &other.to_string_lossy(),
        "record.json",
        "etcd-snapshot.db",
    ]);
    let e = refused(dir, &other_tar);
    assert!(
        e.contains("someone-else") && e.contains("another cluster"),
        "{e}"
    );
    nothing_stopped(&kubeconfig);
    // ... and a snapshot etcd cannot read (bbolt's two meta pages zeroed) whose record
    // matches it, so that only etcd's own check finds it, while the file turns the update
    // operator off: the units that change would stop still run after the refusal.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    tar(&[
        "-xf",
        &backup.to_string_lossy(),
        "-C",
        &broken.to_string_lossy(),
    ]);
    let db = broken.join("etcd-snapshot.db");
    let mut snapshot = std::fs::read(&db).expect("snapshot");
    snapshot[..8192].fill(0);
    std::fs::write(&db, &snapshot).expect("write");
    let record = broken.join("record.json");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
    r["snapshotSha256"] = strata_pki::sha256_hex(&snapshot).into();
    std::fs::write(&record, serde_json::to_vec(&r).expect("json")).expect("write");
    let broken_tar = dir.join("broken.tar");
    tar(&[
        "-cf",
        &broken_tar.to_string_lossy(),
        "-C",
        &broken.to_string_lossy(),
        "record.json",
        "etcd-snapshot.db",
    ]);
    std::fs::write(
        &file,
        file_with(
            OPERATOR_OFF,
            "  - {name: w1, address: 198.18.0.3, roles: [worker]}\n",
            "198.18.0.2",
        ),
    )
    .expect("write");
    let e = refused(dir, &broken_tar);
    assert!(e.contains("etcd refuses the snapshot"), "{e}");
    nothing_stopped(&kubeconfig);
    for host in ["cp1", "w1"] {
        let units = on_machine(
            NAME,
            host,
            "systemctl is-active strata-reboot.path strata-update-engine-check.timer; \
             ls /etc/systemd/system/strata-reboot.path; ls -A /var/lib/strata/backup 2>/dev/null; true",
        );
        assert_eq!(
            units.split_whitespace().collect::<Vec<_>>(),
            ["active", "active", "/etc/systemd/system/strata-reboot.path"],
            "{host}: the update agent's units and no snapshot left: {units}"
        );
    }
    restored_in_place(dir, &file, &backup, &kubeconfig);

    // Every machine gone (its time printed); new ones at other addresses.
    let started = Instant::now();
    ok(&strata(dir, &["local", "down", "--yes"]), "local down");
    println!(
        "local down of the running two-host cluster: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&file, cluster("198.18.0.12", "198.18.0.13")).expect("write");
    ok(&strata(dir, &["local", "up"]), "local up, new machines");
    let out = strata_e2e::restored(dir, &backup, "restore onto two new machines");
    assert!(out.contains("restored the backup of"), "{out}");

    // The objects of the backup, not the later one; the Secret readable.
    ok(
        &kubectl(&kubeconfig, &["get", "configmap", "before-backup"]),
        "restored configmap",
    );
    let later = kubectl(&kubeconfig, &["get", "configmap", "after-backup"]);
    assert!(
        !later.status.success() && String::from_utf8_lossy(&later.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&later.stdout)
    );
    let secret = ok(
        &kubectl(
            &kubeconfig,
            &["get", "secret", "kept", "-o", "jsonpath={.data.p}"],
        ),
        "restored secret",
    );
    assert_eq!(secret.trim(), "czNjcmV0", "base64 of s3cret");
    // Every node Ready at its new address.
    let nodes = || {
        String::from_utf8_lossy(
            &kubectl(
                &kubeconfig,
                &[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.status.addresses[?(@.type==\"InternalIP\")].address} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ],
            )
            .stdout,
        )
        .into_owned()
    };
    wait_for(
        "every node Ready at its new address",
        Duration::from_secs(120),
        || nodes().trim() == "cp1 198.18.0.12 True\nw1 198.18.0.13 True",
    )
    .unwrap_or_else(|e| panic!("{e}: {}", nodes()));
    // Converged: nothing left to do.
    let plan = ok(&strata(dir, &["plan"]), "plan after the restore");
    assert!(plan.contains("Nothing to do"), "{plan}");
}
