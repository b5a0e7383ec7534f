//! Cluster DNS as a pod sees it, on a local cluster (cp1, w1, w2) installed by `strata
//! apply`: dig from the distribution, in a pod, asks for kubernetes.default by its short name
//! (the kubelet's search path, ndots:5) and its full name, a Service of another namespace, the
//! SRV of a named port, a StatefulSet's pod by its hostname through the headless Service, the
//! PTR of a Service address, an ExternalName's CNAME and a name outside the cluster (answered
//! by dnsmasq on a host in a network namespace this test made, the cluster's configured
//! upstream), over UDP and over TCP. Then the server of one of the two DNS pods is killed
//! (SIGKILL on its node) while the pod asks ten times a second: the longest time without an
//! answer is measured (at most 2 s).
//!
//! w2 is on a subnet of its own (198.18.1.0/24, routed through this computer): the overlay
//! routes cp1 and w1 to each other directly and reaches w2 through the VXLAN tunnel, which
//! carries traffic; the DNS answers cross it.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_e2e::{kubectl, ok, require_root, strata, wait_for};
use strata_platforms::local::Bridge;

const NAME: &str = "e2e-dns";
/// The upstream DNS server's address: on the cluster's network, no machine's.
const UPSTREAM: &str = "198.18.0.60";

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-dns}
spec:
  platform: {local: {prefixLength: 24}}
  network:
    dns: {upstreams: [198.18.0.60]}
  hosts:
  - {name: cp1, address: 198.18.0.2, roles: [etcd, control-plane]}
  - {name: w1, address: 198.18.0.3, roles: [worker]}
  - {name: w2, address: 198.18.1.2, roles: [worker]}
";

/// The pods of the test: `dig` (asks), a StatefulSet `db` behind the headless Service `db`,
/// and the ExternalName Service `ext`.
const OBJECTS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: dig, namespace: default}
spec:
  securityContext: {runAsUser: 65534, runAsNonRoot: true}
  terminationGracePeriodSeconds: 1
  containers:
  - name: dig
    image: strata.dev/e2e/dig:1
    imagePullPolicy: Never
    command: [sleep, '3600']
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      securityContext: {runAsUser: 65534, runAsNonRoot: true}
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: strata.dev/e2e/dig:1
        imagePullPolicy: Never
        command: [sleep, '3600']
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: outside.test}
";

/// dnsmasq in a network namespace of its own, joined to the cluster's bridge: it answers
/// `outside.test` (and names below it) with 192.0.2.77 and logs every query.
struct Upstream {
    netns: String,
    veth: String,
    child: Child,
    log: std::path::PathBuf,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Upstream {
    fn start(dir: &Path) -> Self {
        let netns = "strata-e2e-dns-upstream".to_owned();
        let veth = "ste2e-dnsup".to_owned();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        ip(&["netns", "add", &netns]);
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "ste2e-dnsup-p",
        ]);
        ip(&["link", "set", "ste2e-dnsup-p", "netns", &netns]);
        ip(&["-n", &netns, "link", "set", "ste2e-dnsup-p", "name", "eth0"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{UPSTREAM}/15"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&[
            "link",
            "set",
            &veth,
            "master",
            &Bridge::for_cluster(NAME).name,
        ]);
        ip(&["link", "set", &veth, "up"]);
        let log = dir.join("dnsmasq.log");
        // --log-facility=- logs to standard error.
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg(format!("--listen-address={UPSTREAM}"))
            .args(["--bind-interfaces", "--address=/outside.test/192.0.2.77"])
            .args(["--log-queries", "--log-facility=-"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("dnsmasq (package dnsmasq-base)");
        Self {
            netns,
            veth,
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// An image with the distribution's dig (and every library it loads) and busybox.
fn dig_image() -> Vec<u8> {
    // dig: package bind9-dnsutils.
    strata_e2e::busybox_image(
        "strata.dev/e2e/dig:1",
        &["sh", "sleep", "grep", "seq"],
        &["/usr/bin/dig"],
    )
}

/// `dig +short ARGS` in the dig pod: its answer lines.
fn dig(kubeconfig: &Path, args: &[&str]) -> Vec<String> {
    let mut a = vec![
        "exec",
        "dig",
        "--",
        "dig",
        "+short",
        "+timeout=2",
        "+tries=2",
    ];
    a.extend_from_slice(args);
    let out = ok(&kubectl(kubeconfig, &a), &format!("dig {args:?}"));
    out.lines().map(str::to_owned).collect()
}

/// The status of the answer (NOERROR, NXDOMAIN, ...).
fn status(kubeconfig: &Path, args: &[&str]) -> String {
    let mut a = vec!["exec", "dig", "--", "dig", "+timeout=2", "+tries=2"];
    a.extend_from_slice(args);
    let out = ok(&kubectl(kubeconfig, &a), &format!("dig {args:?}"));
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .to_owned()
}

fn jsonpath(kubeconfig: &Path, args: &[&str]) -> String {
    ok(&kubectl(kubeconfig, args), "kubectl get")
        .trim()
        .to_owned()
}

/// `ip ARGS` in machine `host`'s network namespace: its output.
fn on(host: &str, args: &[&str]) -> String {
    let netns = format!("strata-{NAME}-{host}");
    let out = Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(args)
        .output()
        .expect("ip netns exec");
    ok(&out, &format!("{args:?} on {host}"))
}

/// Packets `host`'s VXLAN device has sent.
fn tunnelled(host: &str) -> u64 {
    let n = on(
        host,
        &["cat", "/sys/class/net/strata.1/statistics/tx_packets"],
    );
    n.trim()
        .parse()
        .unwrap_or_else(|e| panic!("tx_packets `{n}`: {e}"))
}

/// w1 reaches cp1's pod subnet straight through eth0 (same subnet) and w2's through the
/// tunnel (another subnet); pings across the tunnel both ways go through and are counted on
/// the VXLAN device.
fn direct_within_a_subnet_tunnelled_across(kc: &Path) {
    let cidr = |node: &str| jsonpath(kc, &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
    let (cp1, w2) = (cidr("cp1"), cidr("w2"));
    let routes = || on("w1", &["ip", "route", "show", "proto", "83"]);
    wait_for("w1's overlay routes", Duration::from_secs(30), || {
        let r = routes();
        r.contains(&cp1) && r.contains(&w2)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", routes()));
    let to_cp1 = on("w1", &["ip", "route", "show", &cp1]);
    assert!(
        to_cp1.contains("via 198.18.0.2 dev eth0"),
        "cp1's pods directly: {to_cp1}"
    );
    let to_w2 = on("w1", &["ip", "route", "show", &w2]);
    assert!(
        to_w2.contains("dev strata.1"),
        "w2's pods through the tunnel: {to_w2}"
    );
    let gateway = |c: &str| c.split('/').next().unwrap_or_default().to_owned();
    for (from, to) in [("w1", gateway(&w2)), ("w2", gateway(&cp1))] {
        let before = tunnelled(from);
        on(from, &["ping", "-c", "3", "-W", "2", &to]);
        let sent = tunnelled(from) - before;
        println!("overlay: {from} pinged {to} across subnets: {sent} packets through the tunnel");
        assert!(
            sent >= 3,
            "{from} to {to}: {sent} packets through the tunnel"
        );
    }
}

#[test]
fn pods_resolve_the_cluster_and_the_world_through_strata_dns() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);
    let _down = strata_e2e::LocalDown(dir.path());
    ok(&strata(dir.path(), &["local", "up"]), "local up");
    let upstream = Upstream::start(dir.path());
    // w2 refuses its peers the asset port: what it would pass on comes from this computer.
    let block = [
        "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "10263", "-j", "REJECT",
    ];
    on("w2", &block);
    let applied = ok(&strata(dir.path(), &["apply"]), "apply");
    let unblock: Vec<&str> = ["iptables", "-D"]
        .iter()
        .chain(&block[2..])
        .copied()
        .collect();
    on("w2", &unblock);
    assert!(
        applied.contains(
            "could not get every asset from its peers (is TCP port 10263 open between the hosts?)"
        ),
        "{applied}"
    );
    let kc = dir.path().join(format!("{NAME}/auth/kubeconfig"));
    let kc = kc.as_path();

    strata_e2e::import_image(NAME, &["w1", "w2"], "dig", &dig_image());
    let objects = dir.path().join("objects.yaml");
    std::fs::write(&objects, OBJECTS).expect("write");
    ok(
        &kubectl(kc, &["apply", "-f", &objects.display().to_string()]),
        "objects",
    );
    // db-0 exists once the StatefulSet controller made it.
    wait_for("pod db-0", Duration::from_secs(60), || {
        kubectl(kc, &["get", "pod", "db-0"]).status.success()
    })
    .expect("db-0 created");
    for (what, args) in [
        (
            "the dig pod",
            vec!["wait", "--for=condition=Ready", "pod/dig", "--timeout=120s"],
        ),
        (
            "db-0",
            vec![
                "wait",
                "--for=condition=Ready",
                "pod/db-0",
                "--timeout=120s",
            ],
        ),
        (
            "cluster DNS",
            vec![
                "-n",
                "kube-system",
                "rollout",
                "status",
                "deployment/strata-dns",
                "--timeout=120s",
            ],
        ),
    ] {
        ok(&kubectl(kc, &args), what);
    }
    let db0 = jsonpath(
        kc,
        &["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"],
    );
    direct_within_a_subnet_tunnelled_across(kc);

    // Over UDP, then the same over TCP.
    for transport in ["+notcp", "+tcp"] {
        let t = |args: &[&str]| {
            let mut a = vec![transport];
            a.extend_from_slice(args);
            dig(kc, &a)
        };
        assert_eq!(
            t(&["+search", "kubernetes.default"]),
            ["10.96.0.1"],
            "short name"
        );
        assert_eq!(
            t(&["+search", "kubernetes"]),
            ["10.96.0.1"],
            "shortest name"
        );
        assert_eq!(t(&["kubernetes.default.svc.cluster.local"]), ["10.96.0.1"]);
        assert_eq!(
            t(&["kube-dns.kube-system.svc.cluster.local"]),
            ["10.96.0.10"],
            "another namespace"
        );
        assert_eq!(
            t(&["SRV", "_https._tcp.kubernetes.default.svc.cluster.local"]),
            ["0 100 443 kubernetes.default.svc.cluster.local."]
        );
        assert_eq!(
            t(&["db-0.db.default.svc.cluster.local"]),
            [db0.as_str()],
            "the StatefulSet's pod by hostname"
        );
        assert_eq!(t(&["db.default.svc.cluster.local"]), [db0.as_str()]);
        assert_eq!(
            t(&["-x", "10.96.0.1"]),
            ["kubernetes.default.svc.cluster.local."]
        );
        assert_eq!(
            t(&["CNAME", "ext.default.svc.cluster.local"]),
            ["outside.test."]
        );
        assert_eq!(t(&["outside.test"]), ["192.0.2.77"], "forwarded upstream");
        assert_eq!(
            t(&["www.outside.test"]),
            ["192.0.2.77"],
            "forwarded upstream"
        );
        assert_eq!(
            status(kc, &[transport, "nothing.default.svc.cluster.local"]),
            "NXDOMAIN"
        );
    }
    let log = upstream.log();
    assert!(
        log.contains("query[A] outside.test") && log.contains("query[A] www.outside.test"),
        "the upstream in its network namespace answered: {log}"
    );
    assert!(
        !log.contains("cluster.local"),
        "cluster names never leave the cluster: {log}"
    );

    one_dns_pod_killed(kc);
    drop(upstream);
    ok(
        &strata(dir.path(), &["local", "down", "--yes"]),
        "local down",
    );
}

/// Asks ten times a second (each try waits at most 1 s) while one of the two DNS pods is
/// killed; the longest time between two answers is the gap.
fn one_dns_pod_killed(kc: &Path) {
    let pods = jsonpath(
        kc,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let pods: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let script = "for i in $(seq 200); do \
        if dig +short +timeout=1 +tries=1 kubernetes.default.svc.cluster.local | grep -q 10.96.0.1; \
        then echo ok; else echo fail; fi; sleep 0.1; done";
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .args(["exec", "dig", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kubectl exec");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    // The server process of one pod is killed on its node (SIGKILL: no goodbye, its
    // endpoint stays until the kubelet sees the container die); the kubelet restarts it.
    let field = |path: &str| {
        jsonpath(
            kc,
            &[
                "-n",
                "kube-system",
                "get",
                "pod",
                pods[0],
                "-o",
                &format!("jsonpath={path}"),
            ],
        )
    };
    let (node, uid) = (field("{.spec.nodeName}"), field("{.metadata.uid}"));
    std::thread::sleep(Duration::from_secs(4));
    let killed = Instant::now();
    let out = strata_e2e::on_machine(
        NAME,
        &node,
        &format!(
            // `if`, not `&&`: the loop's status is its last command's, and the last
            // process listed may well be another pod's.
            "for p in $(pgrep -x strata-dns); do \
               if grep -q 'pod{uid}' /proc/$p/cgroup; then kill -KILL $p && echo killed $p; fi; \
             done"
        ),
    );
    assert!(
        out.contains("killed"),
        "no strata-dns of pod {} on {node}",
        pods[0]
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "the asking loop ended with {status}");
    let lines = reader.join().expect("reader");
    assert!(lines.len() >= 150, "{} answers", lines.len());
    let answered: Vec<Instant> = lines
        .iter()
        .filter(|(_, l)| l == "ok")
        .map(|(t, _)| *t)
        .collect();
    let failed = lines.iter().filter(|(_, l)| l != "ok").count();
    let gap = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let after_kill = answered.iter().filter(|t| **t > killed).count();
    println!(
        "one DNS pod killed: {} questions, {failed} unanswered, longest gap between answers {:.2}s",
        lines.len(),
        gap.as_secs_f64()
    );
    assert!(after_kill >= 100, "answers after the kill: {after_kill}");
    assert!(gap <= Duration::from_secs(2), "gap {gap:?}");
    // The kubelet restarts it.
    wait_for("two DNS pods again", Duration::from_secs(120), || {
        let o = kubectl(
            kc,
            &[
                "-n",
                "kube-system",
                "get",
                "deployment",
                "strata-dns",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim() == "2"
    })
    .expect("replaced");
    assert_eq!(
        field("{.status.containerStatuses[0].restartCount}"),
        "1",
        "the killed server was restarted once"
    );
}
