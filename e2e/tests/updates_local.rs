//! The update operator on a local cluster with three workers, installed by `strata apply`
//! (the real binary and images). With `/run/reboot-required` on every worker, each worker
//! reboots exactly once (a new boot id) while a watcher records every Node transition, and at
//! no instant is more than maxUnavailable=1 node cordoned or NotReady; all are uncordoned at
//! the end. A PodDisruptionBudget holds a drain until the budget allows it; the operator pod
//! is killed mid-rollout; a closed window and `strata updates pause` hold everything back;
//! FleetLock requests made with curl take and release a slot of the same lock. Prints the
//! rollout's time beside the sum of the nodes' unavailable times, and the memory of the
//! operator and the agents.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_e2e::{
    kubectl, kubectl_json, node_updates, ok, on_machine, require_root, strata, wait_for,
};

const NAME: &str = "e2e-updates";
const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-updates}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker]}
  - {name: w3, roles: [worker]}
  addons:
    updateOperator:
      policy: {maxUnavailable: 1}
";
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];

fn on(host: &str, script: &str) -> String {
    strata_e2e::on_machine(NAME, host, script)
}

/// One observed state of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeState {
    ready: bool,
    unschedulable: bool,
    boot_id: String,
}

#[derive(Debug, Clone)]
struct Record {
    at: Instant,
    node: String,
    state: NodeState,
}

fn node_state(o: &serde_json::Value) -> NodeState {
    let ready = o["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    NodeState {
        ready,
        unschedulable: o["spec"]["unschedulable"].as_bool().unwrap_or(false),
        boot_id: o["status"]["nodeInfo"]["bootID"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    }
}

/// `kubectl get nodes --watch` in the background; every event is recorded (the watch is
/// restarted, with a fresh list, should it end).
struct NodeWatch {
    records: Arc<Mutex<Vec<Record>>>,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<Mutex<bool>>,
}

impl NodeWatch {
    fn start(kubeconfig: &Path) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let child = Arc::new(Mutex::new(None::<Child>));
        let stop = Arc::new(Mutex::new(false));
        let (r, c, st, kc) = (
            records.clone(),
            child.clone(),
            stop.clone(),
            kubeconfig.to_owned(),
        );
        std::thread::spawn(move || {
            while !*st.lock().expect("stop") {
                let mut ch = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kc)
                    .args([
                        "get",
                        "nodes",
                        "--watch",
                        "--output-watch-events",
                        "-o",
                        "json",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("kubectl watch");
                let out = ch.stdout.take().expect("stdout");
                *c.lock().expect("child") = Some(ch);
                let stream = serde_json::Deserializer::from_reader(BufReader::new(out))
                    .into_iter::<serde_json::Value>();
                for ev in stream.map_while(Result::ok) {
                    let o = &ev["object"];
                    let Some(name) = o["metadata"]["name"].as_str() else {
                        continue;
                    };
                    r.lock().expect("records").push(Record {
                        at: Instant::now(),
                        node: name.to_owned(),
                        state: node_state(o),
                    });
                }
            }
        });
        Self {
            records,
            child,
            stop,
        }
    }

    fn stop(&self) -> Vec<Record> {
        *self.stop.lock().expect("stop") = true;
        if let Some(mut c) = self.child.lock().expect("child").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.records.lock().expect("records").clone()
    }
}

fn lock_holders(kubeconfig: &Path) -> Vec<String> {
    kubectl_json(kubeconfig, &["rebootlock", "default"])["status"]["holders"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["node"].as_str().map(str::to_owned))
        .collect()
}

fn apply_yaml(kubeconfig: &Path, name: &str, yaml: &str) {
    let path = kubeconfig.with_file_name(name);
    std::fs::write(&path, yaml).expect("write");
    ok(
        &kubectl(kubeconfig, &["apply", "-f", path.to_str().expect("utf-8")]),
        &format!("kubectl apply {name}"),
    );
}

/// Resident memory (kB) of every process whose command line contains `pattern`.
fn rss_kb(pattern: &str) -> Vec<u64> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .collect()
}

fn sentinel(host: &str) {
    on(host, "touch /run/reboot-required");
}

/// Removes the sentinel and its mirror (what a reboot does to /run).
fn clear_sentinel(host: &str) {
    on(
        host,
        "rm -f /run/reboot-required /run/strata/update-agent/reboot-required",
    );
}

#[test]
fn each_worker_reboots_once_and_never_more_than_one_is_unavailable() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("cluster.yaml"), CLUSTER).expect("write");
    let _ = strata(d, &["local", "down", "--yes"]);
    ok(&strata(d, &["local", "up"]), "local up");
    ok(&strata(d, &["apply"]), "apply");
    let kc: PathBuf = d.join(NAME).join("auth/kubeconfig");

    // The operator and one agent per node run from the project's images.
    wait_for(
        "the operator and 4 agents",
        Duration::from_secs(180),
        || {
            let dep = kubectl_json(
                &kc,
                &[
                    "deployment",
                    "-n",
                    "strata-system",
                    "strata-update-operator",
                ],
            );
            let ds = kubectl_json(
                &kc,
                &["daemonset", "-n", "strata-system", "strata-update-agent"],
            );
            dep["status"]["availableReplicas"] == 1 && ds["status"]["numberReady"] == 4
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for("a NodeUpdate per node", Duration::from_secs(60), || {
        node_updates(&kc).len() == 4
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // RBAC, with each node's own identity as its agent uses it: its own Node read, its own
    // NodeUpdate status written, no write on Nodes, Pods or evictions.
    for node in ["cp1", "w1", "w2", "w3"] {
        let agent_kc = strata_e2e::from_workstation(
            &d.join(NAME)
                .join(format!("kubeconfigs/update-agent-{node}.conf")),
            &kc,
        );
        let can = |args: &[&str]| {
            let mut a = vec!["auth", "can-i"];
            a.extend_from_slice(args);
            String::from_utf8_lossy(&kubectl(&agent_kc, &a).stdout)
                .trim()
                .to_owned()
        };
        let own = format!("nodes/{node}");
        assert_eq!(can(&["get", &own]), "yes", "{node}");
        let status = format!("nodeupdates.update.strata.dev/{node}");
        assert_eq!(can(&["patch", &status, "--subresource=status"]), "yes");
        for verb in ["create", "update", "patch", "delete"] {
            for what in [own.as_str(), "nodes", "pods"] {
                assert_eq!(can(&[verb, what, "-A"]), "no", "{node}: {verb} {what}");
            }
        }
        assert_eq!(
            can(&["create", "pods", "--subresource=eviction", "-A"]),
            "no",
            "{node}: evictions"
        );
        // (`kubectl cordon` exits 0 when its patch is refused: the patch itself.)
        let cordon = r#"{"spec":{"unschedulable":true}}"#;
        let refused = kubectl(&agent_kc, &["patch", "node", node, "-p", cordon]);
        assert!(!refused.status.success(), "{node}'s agent cordoned itself");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));
    }
    // The operator runs beside the control plane only.
    let pods = kubectl_json(
        &kc,
        &[
            "pods",
            "-n",
            "strata-system",
            "-l",
            "app.kubernetes.io/name=strata-update-operator",
        ],
    );
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    assert!(!pods.is_empty(), "no operator pod");
    for p in pods {
        assert_eq!(p["spec"]["nodeName"], "cp1", "the operator's pod: {p}");
    }

    // A workload whose budget allows no disruption at first.
    apply_yaml(
        &kc,
        "web.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      # The restricted pod security policy: not root.
      securityContext: {{runAsUser: 65534}}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}}
      containers:
      - {{name: pause, image: "strata.dev/pause:{v}", imagePullPolicy: Never}}
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: default}}
spec:
  minAvailable: 2
  selector: {{matchLabels: {{app: web}}}}
"#,
            v = env!("CARGO_PKG_VERSION")
        ),
    );
    ok(
        &kubectl(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
        ),
        "web rollout",
    );

    let before: BTreeMap<String, String> = kubectl_json(&kc, &["nodes"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                node_state(n).boot_id,
            )
        })
        .collect();
    let watch = NodeWatch::start(&kc);
    std::thread::sleep(Duration::from_secs(2));

    // The rollout.
    let started = Instant::now();
    for w in WORKERS {
        sentinel(w);
    }
    let mut pdb_held = None::<String>;
    let mut operator_killed = false;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let updates = node_updates(&kc);
        let done = WORKERS.iter().all(|w| {
            updates[*w]["status"]["reboots"] == 1 && updates[*w]["status"]["phase"] == "Done"
        });
        if done && lock_holders(&kc).is_empty() {
            break;
        }
        for (name, u) in &updates {
            let blocked = u["spec"]["drain"]["blockedBy"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if pdb_held.is_none()
                && blocked
                    .iter()
                    .any(|b| b.as_str().is_some_and(|b| b.contains("/web-")))
            {
                // Held by the budget; let it allow one disruption.
                pdb_held = Some(name.clone());
                ok(
                    &kubectl(&kc, &["scale", "deployment/web", "--replicas=3"]),
                    "scale",
                );
            }
        }
        let rebooted = WORKERS
            .iter()
            .filter(|w| updates[**w]["status"]["reboots"] == 1)
            .count();
        if rebooted >= 1 && !operator_killed {
            // Kill the operator mid-rollout.
            ok(
                &kubectl(
                    &kc,
                    &[
                        "delete",
                        "pod",
                        "-n",
                        "strata-system",
                        "-l",
                        "app.kubernetes.io/name=strata-update-operator",
                        "--grace-period=0",
                        "--force",
                        "--wait=false",
                    ],
                ),
                "kill the operator",
            );
            operator_killed = true;
        }
        if Instant::now() > deadline {
            let status = strata(d, &["updates", "status"]);
            panic!(
                "the rollout did not finish in 15 minutes:\n{}{}",
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let rollout = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let records = watch.stop();

    // The invariant over the whole record: never more than one node unavailable.
    let mut state: BTreeMap<String, NodeState> = BTreeMap::new();
    let mut worst = 0;
    let mut boots: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut down_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut unavailable_total = Duration::ZERO;
    for r in &records {
        state.insert(r.node.clone(), r.state.clone());
        boots
            .entry(r.node.clone())
            .or_default()
            .insert(r.state.boot_id.clone());
        let down = !r.state.ready || r.state.unschedulable;
        match (down, down_since.get(&r.node)) {
            (true, None) => {
                down_since.insert(r.node.clone(), r.at);
            }
            (false, Some(t)) => {
                unavailable_total += r.at - *t;
                down_since.remove(&r.node);
            }
            _ => {}
        }
        let n = state
            .values()
            .filter(|s| !s.ready || s.unschedulable)
            .count();
        worst = worst.max(n);
        assert!(
            n <= 1,
            "{n} nodes unavailable at once after {} changed: {state:?}",
            r.node
        );
    }
    assert!(
        records.len() > 10,
        "the watcher saw the rollout: {records:?}"
    );
    for w in WORKERS {
        let seen = &boots[w];
        assert_eq!(
            seen.len(),
            2,
            "{w} rebooted exactly once: boot ids {seen:?}"
        );
        assert!(seen.contains(&before[w]));
    }
    assert_eq!(boots["cp1"].len(), 1, "cp1 had nothing to do");
    let end = kubectl_json(&kc, &["nodes"]);
    for n in end["items"].as_array().expect("nodes") {
        let s = node_state(n);
        assert!(s.ready && !s.unschedulable, "{n}");
    }
    let held = pdb_held.expect("a drain was held by the PodDisruptionBudget");
    assert!(operator_killed);
    let events = ok(&kubectl(&kc, &["get", "events", "-n", "default"]), "events");
    for want in ["LockGranted", "Approved", "LockReleased"] {
        assert!(events.contains(want), "no {want} Event:\n{events}");
    }

    let operator_rss = rss_kb("strata-update-operator operator");
    let agent_rss = rss_kb("strata-update-operator agent");
    println!(
        "rollout of 3 workers: {:.1} s; sum of their unavailable times (cordon to Ready and \
         uncordoned, the floor with maxUnavailable=1): {:.1} s; drain held by the budget on {held}",
        rollout.as_secs_f64(),
        unavailable_total.as_secs_f64()
    );
    println!("memory: operator RSS {operator_rss:?} kB, agents RSS {agent_rss:?} kB");
    assert!(
        operator_rss.iter().all(|k| *k < 64 * 1024),
        "{operator_rss:?}"
    );

    // A closed window holds everything back.
    let closed_day =
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][((weekday_utc() + 3) % 7) as usize];
    ok(
        &kubectl(
            &kc,
            &[
                "patch",
                "updatepolicy",
                "default",
                "--type=merge",
                "-p",
                &format!(
                    r#"{{"spec":{{"windows":[{{"days":["{closed_day}"],"start":"00:00","duration":"1h","timeZone":"UTC"}}]}}}}"#
                ),
            ],
        ),
        "close the window",
    );
    wait_for(
        "the policy to see its window closed",
        Duration::from_secs(30),
        || {
            let p = kubectl_json(&kc, &["updatepolicy", "default"]);
            p["status"]["nextWindow"].is_string()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sentinel("w1");
    wait_for("w1 to wait for the lock", Duration::from_secs(30), || {
        node_updates(&kc)["w1"]["status"]["phase"] == "WaitingForLock"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(15));
    assert!(lock_holders(&kc).is_empty(), "granted outside the window");
    assert_eq!(node_updates(&kc)["w1"]["spec"]["approved"], false);

    // Paused: the window opens (no windows), still nothing.
    ok(&strata(d, &["updates", "pause"]), "updates pause");
    ok(
        &kubectl(
            &kc,
            &[
                "patch",
                "updatepolicy",
                "default",
                "--type=merge",
                "-p",
                r#"{"spec":{"windows":[]}}"#,
            ],
        ),
        "open the window",
    );
    wait_for(
        "no next window once none is closed",
        Duration::from_secs(30),
        || kubectl_json(&kc, &["updatepolicy", "default"])["status"]["nextWindow"].is_null(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(10));
    assert!(lock_holders(&kc).is_empty(), "granted while paused");
    let status = ok(&strata(d, &["updates", "status"]), "updates status");
    println!("{status}");
    assert!(status.contains("WaitingForLock"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("default") && l.contains("true")),
        "{status}"
    );
    clear_sentinel("w1");
    wait_for("w1 idle again", Duration::from_secs(30), || {
        node_updates(&kc)["w1"]["status"]["phase"] == "Idle"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    ok(&strata(d, &["updates", "resume"]), "updates resume");

    // FleetLock, with curl from cp1 to the operator's Service, on the same lock.
    let ip = kubectl_json(
        &kc,
        &["service", "-n", "strata-system", "strata-update-operator"],
    )["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_owned();
    let fleetlock = |path: &str, id: &str| {
        on_machine(
            NAME,
            "cp1",
            &format!(
                "curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' -X POST \
                 -H 'fleet-lock-protocol: true' \
                 -d '{{\"client_params\":{{\"id\":\"{id}\",\"group\":\"default\"}}}}' \
                 http://{ip}/v1/{path}"
            ),
        )
    };
    assert_eq!(fleetlock("pre-reboot", "zincati-1"), "200");
    assert_eq!(lock_holders(&kc), ["fleetlock/zincati-1"]);
    assert_eq!(
        fleetlock("pre-reboot", "zincati-2"),
        "409",
        "maxUnavailable=1"
    );
    assert_eq!(fleetlock("steady-state", "zincati-1"), "200");
    assert!(lock_holders(&kc).is_empty());
    // A FleetLock host that never comes back: an operator frees its slot.
    assert_eq!(fleetlock("pre-reboot", "zincati-gone"), "200");
    ok(
        &strata(d, &["updates", "release", "fleetlock/zincati-gone"]),
        "updates release",
    );
    assert!(lock_holders(&kc).is_empty());
    // From a pod (a web pod's network namespace, on whichever worker has one): refused.
    let from_pod = ["w1", "w2", "w3"]
        .iter()
        .map(|w| {
            on_machine(
                NAME,
                w,
                &format!(
                    "host=$(readlink /proc/1/ns/net); for p in $(pgrep pause); do \
                     [ \"$(readlink /proc/$p/ns/net)\" = \"$host\" ] && continue; \
                     exec nsenter --net=/proc/$p/ns/net curl -sS --max-time 10 -o /dev/null \
                     -w '%{{http_code}}' -X POST -H 'fleet-lock-protocol: true' \
                     -d '{{\"client_params\":{{\"id\":\"from-a-pod\",\"group\":\"default\"}}}}' \
                     http://{ip}/v1/pre-reboot; done; echo none"
                ),
            )
        })
        .find(|r| r.trim() != "none")
        .expect("a pod on some worker");
    assert_eq!(from_pod.trim(), "403", "a pod took a FleetLock slot");
    assert!(lock_holders(&kc).is_empty());
    let metrics = on_machine(
        NAME,
        "cp1",
        &format!("curl -sS --max-time 10 http://{ip}/metrics"),
    );
    assert!(
        metrics.contains("strata_update_releases_total"),
        "{metrics}"
    );

    ok(&strata(d, &["local", "down", "--yes"]), "local down");
}

/// Today's weekday in UTC, 0 = Monday (from the system clock, without a date library).
fn weekday_utc() -> u64 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    (days + 3) % 7
}
