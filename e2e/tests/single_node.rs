//! One machine with every role booted from the rendered units under real systemd:
//! etcd, the 1.20.2 control plane, containerd, the kubelet (registers its Node) and
//! kube-proxy (programs the Service rules), all healthy.

use std::time::Duration;

use strata_e2e::{LocalCluster, wait_for};

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-solo}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 198.18.0.2, roles: [etcd, control-plane, worker]}
";

fn diagnose(c: &LocalCluster) -> String {
    let m = c.machine("n1");
    let mut s = std::fs::read_to_string(m.console_log()).unwrap_or_default();
    if let Ok(o) = m.exec(&["systemctl", "--no-pager", "--failed"]) {
        s.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    for unit in [
        "etcd",
        "kube-apiserver",
        "kubelet",
        "kube-proxy",
        "containerd",
    ] {
        if let Ok(o) = m.exec(&["journalctl", "--no-pager", "-n", "25", "-u", unit]) {
            s.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    s
}

#[test]
fn every_component_runs_from_its_rendered_unit() {
    let c = LocalCluster::up(CLUSTER);
    let m = c.machine("n1");
    let api = "https://198.18.0.2:6443";
    let limit = Duration::from_secs(180);
    let check = |what: &str, r: Result<Duration, String>| match r {
        Ok(t) => eprintln!("{what}: {:.1}s", t.as_secs_f64()),
        Err(e) => panic!("{e}\n{}", diagnose(&c)),
    };

    check(
        "kube-apiserver ready",
        wait_for("kube-apiserver /readyz", limit, || {
            c.curl_admin(&format!("{api}/readyz"), &[]) == (200, "ok".into())
        }),
    );
    // The kubelet registers its Node with its own identity (Node authorizer).
    check(
        "node registered",
        wait_for("Node n1", limit, || {
            let (code, body) = c.curl_admin(&format!("{api}/api/v1/nodes/n1"), &[]);
            code == 200 && body.contains("\"kubeletVersion\": \"v1.20.2\"")
        }),
    );
    // Its Cluster file makes it a worker too: no control-plane taint, workloads may run.
    let (_, node) = c.curl_admin(&format!("{api}/api/v1/nodes/n1"), &[]);
    assert!(!node.contains("node-role.kubernetes.io"), "{node}");
    check(
        "kubelet healthz",
        wait_for("kubelet :10248/healthz", limit, || {
            m.exec(&["curl", "-s", "http://127.0.0.1:10248/healthz"])
                .is_ok_and(|o| o.stdout == b"ok")
        }),
    );
    // The kubelet serves with its certificate from the cluster CA and the API server
    // verifies it. The API server's kubelet client is not system:masters: until RBAC grants
    // it the kubelet API, the kubelet refuses it.
    let proxy = format!("{api}/api/v1/nodes/n1/proxy/healthz");
    let (code, body) = c.curl_admin(&proxy, &[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("user=kube-apiserver-kubelet-client"),
        "{body}"
    );
    for (file, code, body) in c.apply_objects(api) {
        assert!(code == 200 || code == 201, "{file}: HTTP {code}: {body}");
    }
    check(
        "kubelet API through the API server",
        wait_for("nodes/n1/proxy/healthz", limit, || {
            c.curl_admin(&format!("{api}/api/v1/nodes/n1/proxy/healthz"), &[]) == (200, "ok".into())
        }),
    );
    check(
        "kube-proxy healthz",
        wait_for("kube-proxy :10256/healthz", limit, || {
            let (code, _) = c.curl_admin("http://198.18.0.2:10256/healthz", &[]);
            code == 200
        }),
    );
    check(
        "Service rules",
        wait_for("KUBE-SERVICES has the kubernetes Service", limit, || {
            m.exec(&["iptables", "-t", "nat", "-S", "KUBE-SERVICES"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("10.96.0.1/32"))
        }),
    );
    for unit in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "containerd",
        "kubelet",
        "kube-proxy",
    ] {
        let o = m
            .exec(&["systemctl", "is-active", unit])
            .unwrap_or_else(|e| panic!("{unit}: {e}\n{}", diagnose(&c)));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "active",
            "{unit}"
        );
    }
}
