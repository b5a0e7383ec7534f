//! Backup and restore on local machines: a backup of a running two-host cluster; objects made
//! after it; restores refused (a truncated file, a snapshot of another cluster) with nothing
//! stopped; every machine destroyed; new machines with other addresses; `strata restore`
//! brings back the objects of the backup (a Secret too) and not the later ones, every node
//! Ready at its new address, and kubectl works with the admin kubeconfig.

use std::path::Path;
use std::time::{Duration, Instant};

use strata_e2e::{LocalDown, kubectl, ok, on_machine, require_root, strata, wait_for};

const NAME: &str = "e2e-restore";

fn cluster(cp1: &str, w1: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {{name: {NAME}}}
spec:
  platform: {{local: {{}}}}
  hosts:
  - {{name: cp1, address: {cp1}, roles: [etcd, control-plane]}}
  - {{name: w1, address: {w1}, roles: [worker]}}
"
    )
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

    // Every machine gone; new ones at other addresses.
    ok(&strata(dir, &["local", "down", "--yes"]), "local down");
    std::fs::write(&file, cluster("198.18.0.12", "198.18.0.13")).expect("write");
    ok(&strata(dir, &["local", "up"]), "local up, new machines");
    let started = Instant::now();
    let out = ok(
        &strata(
            dir,
            &[
                "restore",
                "--from",
                &backup.to_string_lossy(),
                "--yes",
                "--output",
                "json",
            ],
        ),
        "restore",
    );
    assert!(out.contains("restored the backup of"), "{out}");
    println!(
        "restore onto two new machines: {:.1} s",
        started.elapsed().as_secs_f64()
    );

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
