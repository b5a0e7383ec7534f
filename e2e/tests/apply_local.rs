//! The main job: `strata local up` and `strata apply` on a three-host local cluster, run as
//! users run them (the real binary, no terminal: JSON events). Then a second apply converges
//! without writing or restarting anything, `plan` has nothing to do, kubectl works with the
//! admin kubeconfig, and `local down` cleans up.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_e2e::require_root;

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-apply}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker], labels: {example.com/pool: batch}}
";

fn strata_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("STRATA_BIN").expect("STRATA_BIN: the strata binary (set by .ci/e2e)"),
    );
    assert!(p.exists(), "{}", p.display());
    p
}

fn strata(dir: &Path, args: &[&str]) -> Output {
    Command::new(strata_bin())
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run strata")
}

fn ok(o: &Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The JSON events of an apply.
fn events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event: {l}: {e}")))
        .collect()
}

#[test]
fn local_up_apply_converges_and_kubectl_works() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);

    ok(&strata(dir.path(), &["local", "up"]), "local up");
    let first = events(&ok(&strata(dir.path(), &["apply"]), "apply"));
    let phases: Vec<&str> = first
        .iter()
        .filter(|e| e["event"] == "phase-started")
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        [
            "connect",
            "preflight",
            "upload",
            "etcd",
            "control-plane",
            "nodes",
            "addons",
            "pod-network",
            "wait-ready",
            "kubeconfig"
        ]
    );
    // apply succeeds only with every node Ready.
    let ready = first
        .iter()
        .filter(|e| e["phase"] == "wait-ready" && e["step"] == "Ready")
        .count();
    assert_eq!(ready, 3, "{first:?}");

    // Again: everything is in place, so nothing is written or restarted.
    let second = events(&ok(&strata(dir.path(), &["apply"]), "second apply"));
    for e in second.iter().filter(|e| e["event"] == "step") {
        let step = e["step"].as_str().unwrap_or_default();
        if e["phase"] == "upload" {
            assert_eq!(step, "0 file(s) written", "{e}");
        }
        assert!(!step.contains("restarted"), "{e}");
    }
    let plan = ok(&strata(dir.path(), &["plan"]), "plan");
    assert!(plan.contains("Nothing to do"), "{plan}");

    let kubeconfig = dir.path().join("e2e-apply/auth/kubeconfig");
    let nodes = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes", "-o", "custom-columns=NAME:.metadata.name,VERSION:.status.nodeInfo.kubeletVersion,CP:.metadata.labels.node-role\\.kubernetes\\.io/control-plane,POOL:.metadata.labels.example\\.com/pool,READY:.status.conditions[?(@.type==\"Ready\")].status", "--no-headers"])
        .output()
        .expect("kubectl (package kubernetes-client)");
    let text = ok(&nodes, "kubectl get nodes");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            // cp1's control-plane label is empty, so its column is blank.
            vec!["cp1", "v1.20.2", "<none>", "True"],
            vec!["w1", "v1.20.2", "<none>", "<none>", "True"],
            vec!["w2", "v1.20.2", "<none>", "batch", "True"],
        ],
        "{text}"
    );

    ok(
        &strata(dir.path(), &["local", "down", "--yes"]),
        "local down",
    );
    let list = ok(&strata(dir.path(), &["local", "list"]), "local list");
    assert_eq!(list.matches("absent").count(), 3, "{list}");
}
