//! The long run of the highly available control plane (`bash e2e/ha-long.sh`, about fifteen
//! minutes; CI runs `ha_local` instead): three etcd and control-plane hosts and a worker,
//! installed at once with a virtual IP (the apply time from booted hosts is printed). The
//! update operator reboots the three control-plane nodes, one at a time and each only while
//! the etcd members are healthy and another API server is ready, while a writer outside the
//! cluster writes through the virtual IP: the longest gap is printed, every acknowledged write
//! is kept. Then cp3 is replaced by cp4 in the Cluster file while it runs: cp4 joins before
//! cp3's member is removed; three healthy members, cp3's gone, no data lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strata_e2e::ha::{Writer, longest_gap, members, missing};
use strata_e2e::{kubectl, ok, on_machine, require_root, strata, wait_for};

const NAME: &str = "e2e-ha-long";
const VIP: &str = "198.18.0.100";
const CONTROL_PLANE: [&str; 3] = ["cp1", "cp2", "cp3"];

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-ha-long}
spec:
  platform: {local: {}}
  controlPlane: {vip: 198.18.0.100}
  hosts:
  - {name: cp1, address: 198.18.0.2, roles: [etcd, control-plane]}
  - {name: cp2, address: 198.18.0.3, roles: [etcd, control-plane]}
  - {name: cp3, address: 198.18.0.4, roles: [etcd, control-plane]}
  - {name: w1, address: 198.18.0.5, roles: [worker]}
  addons:
    updateOperator:
      policy: {maxUnavailable: 1}
";

fn node_updates(kc: &std::path::Path) -> serde_json::Value {
    let out = ok(
        &kubectl(kc, &["get", "nodeupdates", "-o", "json"]),
        "nodeupdates",
    );
    serde_json::from_str(&out).expect("json")
}

/// Of the control-plane nodes: (name, phase, reboots, etcd healthy as read by its agent).
fn control_plane_updates(kc: &std::path::Path) -> Vec<(String, String, u64, bool)> {
    let all = node_updates(kc);
    let mut out = Vec::new();
    for item in all["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        if CONTROL_PLANE.contains(&name) {
            let st = &item["status"];
            out.push((
                name.to_owned(),
                st["phase"].as_str().unwrap_or_default().to_owned(),
                st["reboots"].as_u64().unwrap_or(0),
                st["controlPlane"]["etcdHealthy"].as_bool().unwrap_or(false),
            ));
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "long (about fifteen minutes): run by bash e2e/ha-long.sh"]
fn control_plane_nodes_reboot_one_at_a_time_and_a_host_is_replaced() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, CLUSTER).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);
    let _down = strata_e2e::LocalDown(dir.path());
    ok(&strata(dir.path(), &["local", "up"]), "local up");
    let started = Instant::now();
    ok(&strata(dir.path(), &["apply"]), "apply");
    println!(
        "HA cluster (3 etcd/control-plane hosts, 1 worker) applied from booted hosts in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let kc = dir.path().join(format!("{NAME}/auth/kubeconfig"));
    let kc = kc.as_path();

    // Every control-plane node's agent reads its etcd member healthy.
    wait_for(
        "control-plane health read by the agents",
        Duration::from_secs(180),
        || {
            let u = control_plane_updates(kc);
            u.len() == 3 && u.iter().all(|(_, _, _, etcd)| *etcd)
        },
    )
    .expect("agents report etcd health");

    // The three control-plane nodes need a reboot; a writer writes through the virtual IP.
    let writer = Writer::start(
        dir.path().join(NAME),
        format!("{VIP}:6443"),
        "reboot".into(),
        Duration::from_secs(20 * 60),
    );
    std::thread::sleep(Duration::from_secs(2));
    for host in CONTROL_PLANE {
        on_machine(NAME, host, "touch /run/reboot-required");
    }
    let rollout = Instant::now();
    let mut most_at_once = 0;
    let mut seen_waiting = BTreeSet::new();
    wait_for(
        "three control-plane reboots",
        Duration::from_secs(15 * 60),
        || {
            let u = control_plane_updates(kc);
            let busy: Vec<&str> = u
                .iter()
                .filter(|(_, phase, _, _)| {
                    matches!(phase.as_str(), "Draining" | "Rebooting" | "Verifying")
                })
                .map(|(n, _, _, _)| n.as_str())
                .collect();
            most_at_once = most_at_once.max(busy.len());
            for (n, phase, _, _) in &u {
                if phase == "WaitingForLock" {
                    seen_waiting.insert(n.clone());
                }
            }
            u.len() == 3
                && u.iter()
                    .all(|(_, phase, reboots, _)| *reboots >= 1 && phase == "Done")
        },
    )
    .expect("every control-plane node rebooted");
    let acked = writer.stop();
    let gap = longest_gap(&acked);
    println!(
        "rolling reboot of 3 control-plane nodes in {:.0}s: {} writes acknowledged through the \
         virtual IP, longest gap {:.1}s; at most {most_at_once} control-plane node(s) rebooting \
         at once; waited for the lock: {seen_waiting:?}",
        rollout.elapsed().as_secs_f64(),
        acked.len(),
        gap.as_secs_f64()
    );
    assert!(
        most_at_once <= 1,
        "{most_at_once} control-plane nodes at once"
    );
    assert!(gap < Duration::from_secs(60), "writes stopped for {gap:?}");
    let listed = strata_e2e::ha::configmaps(kc);
    assert_eq!(
        missing(&acked, &listed),
        Vec::<&str>::new(),
        "acknowledged writes lost"
    );

    // cp3 replaced by cp4: three healthy members, cp3's gone, nothing lost.
    let replaced = std::fs::read_to_string(&file).expect("read").replace(
        "  - {name: cp3, address: 198.18.0.4, roles: [etcd, control-plane]}\n",
        "  - {name: cp4, address: 198.18.0.6, roles: [etcd, control-plane]}\n",
    );
    std::fs::write(&file, replaced).expect("write");
    ok(&strata(dir.path(), &["local", "up"]), "local up of cp4");
    let out = ok(
        &strata(dir.path(), &["apply"]),
        "apply with cp3 replaced by cp4",
    );
    // cp3 runs: it keeps its vote until cp4 has one (four voters, never two).
    let joined = out.find("joined etcd as a learner").unwrap_or(usize::MAX);
    let removed = out.find("removed member cp3").unwrap_or(0);
    assert!(joined < removed, "cp4 joined, then cp3 removed: {out}");
    let want: Vec<(String, bool)> = ["cp1", "cp2", "cp4"]
        .iter()
        .map(|n| ((*n).to_owned(), false))
        .collect();
    assert_eq!(members(NAME, "cp1"), want);
    let health = on_machine(
        NAME,
        "cp4",
        &format!("{} endpoint health --cluster 2>&1", strata_e2e::ha::ETCDCTL),
    );
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let listed = strata_e2e::ha::configmaps(kc);
    assert_eq!(missing(&acked, &listed), Vec::<&str>::new(), "data lost");
}
