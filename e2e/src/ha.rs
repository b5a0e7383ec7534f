//! Helpers of the highly-available control plane's tests: etcd as its members see it, and
//! writes through the control plane's virtual IP from this computer.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strata_pki::StateDir;

use crate::on_machine;

/// etcdctl on a member's host, with the health-check identity.
pub const ETCDCTL: &str = "ETCDCTL_API=3 /opt/strata/bin/etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key=/etc/kubernetes/pki/etcd/healthcheck-client.key";

/// (name, is learner) of every etcd member, as `host`'s member lists them, sorted.
pub fn members(cluster: &str, host: &str) -> Vec<(String, bool)> {
    let out = on_machine(cluster, host, &format!("{ETCDCTL} member list -w json"));
    let list: serde_json::Value = serde_json::from_str(&out).expect("member list json");
    let mut names: Vec<(String, bool)> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    names.sort();
    names
}

/// The host, among `hosts`, whose etcd member leads.
pub fn etcd_leader(cluster: &str, hosts: &[&str]) -> String {
    for host in hosts {
        let out = on_machine(cluster, host, &format!("{ETCDCTL} endpoint status -w json"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status json");
        let s = &v[0]["Status"];
        if s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"] {
            return (*host).to_owned();
        }
    }
    panic!("no etcd member leads");
}

/// Hands etcd's leadership from the member on `leader` (the leader) to the member named
/// `to`, and waits until `to` leads.
pub fn move_leader(cluster: &str, leader: &str, to: &str, hosts: &[&str]) {
    let out = on_machine(cluster, leader, &format!("{ETCDCTL} member list -w json"));
    let list: serde_json::Value = serde_json::from_str(&out).expect("member list json");
    let id = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == to)
        .and_then(|m| m["ID"].as_u64())
        .expect("the member to lead");
    on_machine(
        cluster,
        leader,
        &format!("{ETCDCTL} move-leader {id:x} >/dev/null"),
    );
    crate::wait_for("the new etcd leader", Duration::from_secs(30), || {
        etcd_leader(cluster, hosts) == to
    })
    .expect("leadership moved");
}

/// Writes through `server` (`host:port`) from this computer with the admin's identity: one
/// ConfigMap `name` created; true when acknowledged (201).
pub fn write(state: &StateDir, server: &str, name: &str) -> bool {
    let body = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"w":"1"}}}}"#
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ])
        .arg("--cacert")
        .arg(state.cert("ca"))
        .arg("--cert")
        .arg(state.cert("admin"))
        .arg("--key")
        .arg(state.key("admin"))
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg(format!(
            "https://{server}/api/v1/namespaces/default/configmaps"
        ))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim() == "201"
}

/// A writer outside the cluster: a ConfigMap every 200 ms through one address, until
/// stopped or `limit` passes.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(String, Instant)>>,
}

impl Writer {
    pub fn start(state_dir: PathBuf, server: String, prefix: String, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let state = StateDir::new(&state_dir);
            let start = Instant::now();
            let mut acked = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) && start.elapsed() < limit {
                let name = format!("{prefix}-{i}");
                if write(&state, &server, &name) {
                    acked.push((name, Instant::now()));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            acked
        });
        Self { stop, handle }
    }

    /// The names acknowledged, with when.
    pub fn stop(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer")
    }
}

/// The longest time between two acknowledged writes.
pub fn longest_gap(acked: &[(String, Instant)]) -> Duration {
    acked
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default()
}

/// The names of the ConfigMaps in the default namespace, through `kubeconfig`.
pub fn configmaps(kubeconfig: &std::path::Path) -> String {
    crate::ok(
        &crate::kubectl(
            kubeconfig,
            &[
                "get",
                "configmaps",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        ),
        "listing ConfigMaps",
    )
}

/// Every acknowledged name is among `listed` (names of ConfigMaps read afterwards).
pub fn missing<'a>(acked: &'a [(String, Instant)], listed: &str) -> Vec<&'a str> {
    let names: Vec<&str> = listed.split_whitespace().collect();
    acked
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !names.contains(n))
        .collect()
}
