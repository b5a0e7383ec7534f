//! A highly available control plane on local machines, grown from one control-plane host:
//! cp1 (etcd, control plane) and w1 are installed, objects are made, then cp2 and cp3 (etcd,
//! control plane) and a virtual IP are added to the Cluster file and apply runs again.
//! Shown: the objects are still there; etcd has three started voting members (cp2 and cp3
//! joined as learners and were promoted); every node's kubelet and kube-proxy reach the API
//! through the node's local balancer, which lists the three API servers; with cp1's API
//! server stopped, w1 keeps renewing its node lease through the balancer; a further apply
//! changes no membership. Then the machine that holds the virtual IP and leads etcd (the
//! leadership is handed to the virtual IP's holder first) loses its power while a writer
//! outside the cluster writes through the virtual IP and another, in a pod on w1, through
//! the `kubernetes` Service: both gaps are printed, every acknowledged write is kept, the
//! other nodes stay Ready, and the machine started again rejoins by itself. Last, a backup
//! taken with the three members is restored on them: a new etcd cluster of the three, the
//! backup's objects back and a later one gone, every node Ready.

use std::path::Path;
use std::time::{Duration, Instant};

use strata_e2e::ha::{ETCDCTL, Writer, etcd_leader, longest_gap, missing};
use strata_e2e::{kubectl, ok, on_machine, require_root, strata, wait_for};
use strata_platforms::local::Machine;

const NAME: &str = "e2e-ha";

const ONE: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-ha}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
";

/// The control plane's virtual IP: on the machines' bridge, no machine's address.
const VIP: &str = "198.18.0.100";

const THREE: &str = "  - {name: cp2, roles: [etcd, control-plane]}
  - {name: cp3, roles: [etcd, control-plane]}
";

/// (name, is learner) of every member, as `host`'s member lists them.
fn member_names(host: &str) -> Vec<(String, bool)> {
    strata_e2e::ha::members(NAME, host)
}

fn lease_renewed(kc: &Path, server: &str, node: &str) -> String {
    let out = kubectl(
        kc,
        &[
            "--server",
            server,
            "-n",
            "kube-node-lease",
            "get",
            "lease",
            node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_control_plane_host_grown_to_three_through_the_node_local_balancers() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, ONE).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);
    let _down = strata_e2e::LocalDown(dir.path());
    ok(&strata(dir.path(), &["local", "up"]), "local up");
    ok(
        &strata(dir.path(), &["apply"]),
        "apply of one control-plane host",
    );
    let kc = dir.path().join(format!("{NAME}/auth/kubeconfig"));
    let kc = kc.as_path();
    for i in 0..5 {
        ok(
            &kubectl(
                kc,
                &[
                    "create",
                    "configmap",
                    &format!("before-{i}"),
                    &format!("--from-literal=n={i}"),
                ],
            ),
            "configmap",
        );
    }
    assert_eq!(member_names("cp1"), [("cp1".to_owned(), false)]);

    // Grown to three control-plane hosts by editing the file.
    let grown = ONE.replace(
        "  hosts:\n",
        &format!("  controlPlane: {{vip: {VIP}}}\n  hosts:\n"),
    );
    std::fs::write(&file, format!("{grown}{THREE}")).expect("write");
    ok(
        &strata(dir.path(), &["local", "up"]),
        "local up of cp2, cp3",
    );
    let started = Instant::now();
    let out = ok(
        &strata(dir.path(), &["apply"]),
        "apply of three control-plane hosts",
    );
    println!("grown to three in {:.1}s", started.elapsed().as_secs_f64());
    for host in ["cp2", "cp3"] {
        let joined =
            format!(r#""host":"{host}","step":"joined etcd as a learner, caught up, promoted""#);
        assert!(out.contains(&joined), "{out}");
    }
    the_first_objects_are_there(kc, "after growing");
    let want: Vec<(String, bool)> = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| ((*n).to_owned(), false))
        .collect();
    for host in ["cp1", "cp2", "cp3"] {
        assert_eq!(member_names(host), want, "members seen from {host}");
        let health = on_machine(NAME, host, &format!("{ETCDCTL} endpoint health 2>&1"));
        assert!(health.contains("is healthy"), "{host}: {health}");
    }
    let nodes = ok(&kubectl(kc, &["get", "nodes", "--no-headers"]), "nodes");
    assert_eq!(
        nodes
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .count(),
        4,
        "{nodes}"
    );

    // Every node's kubelet and kube-proxy talk to the API through the node's balancer,
    // which knows the three API servers; none of them to an API server directly.
    for host in ["cp1", "w1", "cp2", "cp3"] {
        let backends = on_machine(NAME, host, "grep -v '^#' /etc/strata/api-balancer/backends");
        assert_eq!(backends.lines().count(), 3, "{host}: {backends}");
        let kubeconfig = on_machine(NAME, host, "grep server: /etc/kubernetes/kubelet.conf");
        assert!(
            kubeconfig.contains("https://127.0.0.1:7445"),
            "{host}: {kubeconfig}"
        );
        let conns = on_machine(
            NAME,
            host,
            "ss -tnpH state established | grep -E 'kubelet|kube-proxy' || true",
        );
        for program in ["kubelet", "kube-proxy"] {
            let mine: Vec<&str> = conns
                .lines()
                .filter(|l| l.contains(&format!("\"{program}\"")))
                .collect();
            assert!(
                mine.iter().any(|l| l.contains("127.0.0.1:7445")),
                "{host}: {program} has no connection to the balancer: {conns}"
            );
            assert!(
                !mine.iter().any(|l| l.contains(":6443")),
                "{host}: {program} talks to an API server directly: {conns}"
            );
        }
    }

    // cp1's API server stops: w1 keeps renewing its lease through its balancer.
    let cp2 = "https://198.18.0.4:6443";
    on_machine(NAME, "cp1", "systemctl stop kube-apiserver.service");
    let stopped = lease_renewed(kc, cp2, "w1");
    let waited = wait_for(
        "w1's lease renewed without cp1",
        Duration::from_secs(60),
        || {
            let now = lease_renewed(kc, cp2, "w1");
            !now.is_empty() && now != stopped
        },
    );
    on_machine(NAME, "cp1", "systemctl start kube-apiserver.service");
    let waited = waited.expect("lease renewed through another API server");
    println!(
        "w1 renewed its lease {:.1}s after cp1's API server stopped",
        waited.as_secs_f64()
    );
    let journal = on_machine(
        NAME,
        "w1",
        "journalctl -u strata-api-balancer --no-pager -o cat | tail -n 20",
    );
    assert!(journal.contains("API server dropped"), "{journal}");

    // Once more: nothing about the membership changes.
    let again = ok(&strata(dir.path(), &["apply"]), "apply again");
    assert!(
        !again.contains("joined etcd") && !again.contains("removed member"),
        "{again}"
    );
    assert_eq!(member_names("cp1"), want);
    let admin = std::fs::read_to_string(kc).expect("admin kubeconfig");
    assert!(
        admin.contains(&format!("server: https://{VIP}:6443")),
        "{admin}"
    );
    // A backup of the three members, restored at the end.
    let backup = dir.path().join("three-members.tar");
    ok(
        &strata(dir.path(), &["backup", "--out", &backup.to_string_lossy()]),
        "backup of three members",
    );

    // Renewed certificates rolled out: the API servers and etcd members restart one host at
    // a time, the balancers read their renewed identity: no request through w1's balancer
    // fails.
    let probe = strata_e2e::renew_under_probe(
        dir.path(),
        NAME,
        "w1",
        &["cp1", "w1", "cp2", "cp3"],
        &format!("{VIP}:6443"),
        ("cp1", "198.18.0.2"),
    );
    assert_eq!(probe.failed, 0, "{probe}");

    leader_killed(dir.path(), kc);
    restored_on_three_members(dir.path(), kc, &backup);
}

/// The configmaps made on the first control-plane host, `before-0` to `before-4`, hold their
/// values (`when`: the step of the test).
fn the_first_objects_are_there(kc: &Path, when: &str) {
    for i in 0..5 {
        let v = ok(
            &kubectl(
                kc,
                &[
                    "get",
                    "configmap",
                    &format!("before-{i}"),
                    "-o",
                    "jsonpath={.data.n}",
                ],
            ),
            &format!("configmap before-{i} {when}"),
        );
        assert_eq!(v, i.to_string(), "before-{i} {when}");
    }
}

/// The etcd cluster id, as `host`'s member says.
fn cluster_id(host: &str) -> String {
    let out = on_machine(NAME, host, &format!("{ETCDCTL} member list -w json"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("member list json");
    v["header"]["cluster_id"].to_string()
}

/// The backup of the three members restored on the running cluster: a new etcd cluster of
/// the same three (each a started voting member, healthy, under a new cluster id), the objects
/// of the backup back and the one made later gone, every node Ready, plan with nothing to do.
fn restored_on_three_members(dir: &Path, kc: &Path, backup: &Path) {
    ok(
        &kubectl(kc, &["create", "configmap", "after-backup"]),
        "configmap after the backup",
    );
    let id_before = cluster_id("cp1");
    let out = strata_e2e::restored(
        dir,
        backup,
        "restore in place on three etcd members and a worker",
    );
    assert!(out.contains("on 3 member(s)"), "{out}");
    let want: Vec<(String, bool)> = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| ((*n).to_owned(), false))
        .collect();
    let id = cluster_id("cp1");
    assert_ne!(id, id_before, "the restored etcd cluster kept its id");
    for host in ["cp1", "cp2", "cp3"] {
        assert_eq!(member_names(host), want, "members seen from {host}");
        assert_eq!(cluster_id(host), id, "{host}'s cluster id");
        let health = on_machine(NAME, host, &format!("{ETCDCTL} endpoint health 2>&1"));
        assert!(health.contains("is healthy"), "{host}: {health}");
    }
    the_first_objects_are_there(kc, "after the restore");
    let later = kubectl(kc, &["get", "configmap", "after-backup"]);
    assert!(
        !later.status.success() && String::from_utf8_lossy(&later.stderr).contains("NotFound"),
        "the later configmap came back"
    );
    let ready = || {
        let nodes = String::from_utf8_lossy(&kubectl(kc, &["get", "nodes", "--no-headers"]).stdout)
            .into_owned();
        nodes
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .count()
            == 4
    };
    wait_for(
        "every node Ready after the restore",
        Duration::from_secs(120),
        ready,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = ok(&strata(dir, &["plan"]), "plan after the restore");
    assert!(plan.contains("Nothing to do"), "{plan}");
}

/// The machine holding the virtual IP and etcd's leadership loses its power while a writer
/// writes through the virtual IP:
/// writes resume after a bounded gap, every acknowledged write is there, the other nodes
/// stay Ready; the machine started again rejoins without any other step.
fn leader_killed(dir: &Path, kc: &Path) {
    let leader = etcd_leader(NAME, &["cp1", "cp2", "cp3"]);
    let holder = ok(
        &kubectl(
            kc,
            &[
                "-n",
                "kube-system",
                "get",
                "lease",
                "strata-vip",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        ),
        "VIP holder",
    );
    // The machine to lose holds both the virtual IP and etcd's leadership: both move.
    if leader != holder {
        strata_e2e::ha::move_leader(NAME, &leader, &holder, &["cp1", "cp2", "cp3"]);
    }
    let leader = holder;
    println!("{leader} holds the virtual IP and leads etcd");
    // The writer in a pod on w1, through the `kubernetes` Service.
    strata_e2e::import_image(NAME, &["w1"], "curl", &curl_image());
    let objects = dir.join("writer.yaml");
    std::fs::write(&objects, POD_WRITER).expect("write");
    ok(
        &kubectl(kc, &["apply", "-f", &objects.display().to_string()]),
        "the pod writer",
    );
    ok(
        &kubectl(
            kc,
            &[
                "wait",
                "--for=condition=Ready",
                "pod/writer",
                "--timeout=120s",
            ],
        ),
        "the pod writer running",
    );
    let writer = Writer::start(
        dir.join(NAME),
        format!("{VIP}:6443"),
        "ha-write".into(),
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(3));
    let index = ["cp1", "w1", "cp2", "cp3"]
        .iter()
        .position(|h| *h == leader)
        .expect("leader index");
    let machine = Machine::new(
        Path::new(strata_e2e::MACHINES),
        NAME,
        &leader,
        strata_e2e::local_address(u32::try_from(index).expect("index")),
    );
    machine.kill().expect("kill the leader's machine");
    let killed = Instant::now();
    let killed_uptime = uptime();
    std::thread::sleep(Duration::from_secs(25));
    let acked = writer.stop();
    let before = acked.iter().filter(|(_, t)| *t < killed).count();
    let first = acked
        .iter()
        .map(|(_, t)| *t)
        .find(|t| *t >= killed)
        .unwrap_or_else(|| panic!("no write succeeded after {leader} died"));
    assert!(before > 0, "no write before the kill");
    println!(
        "{leader} killed: first write through the virtual IP {:.1}s after the kill (longest \
         gap between acknowledged writes {:.1}s; target under 10 s), {} writes acknowledged",
        first.duration_since(killed).as_secs_f64(),
        longest_gap(&acked).as_secs_f64(),
        acked.len()
    );
    assert!(
        longest_gap(&acked) < Duration::from_secs(30),
        "writes stopped for {:?}",
        longest_gap(&acked)
    );
    let listed = strata_e2e::ha::configmaps(kc);
    assert_eq!(
        missing(&acked, &listed),
        Vec::<&str>::new(),
        "acknowledged writes lost"
    );
    // The pod's writes.
    let pod = pod_writes(kc);
    let pod_first = pod
        .iter()
        .map(|(_, t)| *t)
        .find(|t| *t >= killed_uptime)
        .unwrap_or_else(|| panic!("no write from the pod succeeded after {leader} died"));
    let pod_gap = pod
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0_f64, f64::max);
    println!(
        "the pod's writer (through the kubernetes Service): first write {:.1}s after the kill, \
         longest gap {pod_gap:.1}s, {} writes acknowledged",
        pod_first - killed_uptime,
        pod.len()
    );
    let pod_acked: Vec<(String, Instant)> = pod.iter().map(|(n, _)| (n.clone(), killed)).collect();
    // Listed again: the pod writes on.
    let listed = strata_e2e::ha::configmaps(kc);
    assert_eq!(
        missing(&pod_acked, &listed),
        Vec::<&str>::new(),
        "the pod's acknowledged writes lost"
    );
    let nodes = ok(&kubectl(kc, &["get", "nodes", "--no-headers"]), "nodes");
    for line in nodes.lines() {
        let mut f = line.split_whitespace();
        let (name, status) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        if name != leader {
            assert_eq!(status, "Ready", "{name} after {leader} died: {nodes}");
        }
    }

    let alive: Vec<&str> = ["cp1", "cp2", "cp3"]
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    assert_eq!(
        vip_holders(&alive).len(),
        1,
        "the virtual IP after the kill"
    );

    // Started again: its member rejoins, its node is Ready, nothing else done.
    ok(
        &strata(dir, &["local", "up"]),
        "local up of the killed machine",
    );
    let witness = if leader == "cp1" { "cp2" } else { "cp1" };
    let witness_machine = Machine::new(
        Path::new(strata_e2e::MACHINES),
        NAME,
        witness,
        strata_e2e::local_address(0),
    );
    wait_for(
        "the killed member healthy again",
        Duration::from_secs(180),
        || {
            witness_machine
                .exec(&["sh", "-c", &format!("{ETCDCTL} endpoint health --cluster")])
                .is_ok_and(|o| o.status.success())
        },
    )
    .expect("etcd healthy with the restarted member");
    ok(
        &kubectl(
            kc,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("node/{leader}"),
                "--timeout=180s",
            ],
        ),
        "the restarted node Ready",
    );
    assert_eq!(member_names(witness).len(), 3);
    assert_eq!(
        vip_holders(&["cp1", "cp2", "cp3"]).len(),
        1,
        "the virtual IP once the killed machine is back"
    );
}

/// The machines among `hosts` that have the virtual IP on an interface.
fn vip_holders<'a>(hosts: &[&'a str]) -> Vec<&'a str> {
    hosts
        .iter()
        .filter(|h| on_machine(NAME, h, "ip -4 -o addr show").contains(&format!(" {VIP}/")))
        .copied()
        .collect()
}

/// The writer inside the cluster: a pod on w1 that creates a ConfigMap every 200 ms through
/// the `kubernetes` Service with its service account, printing each answer with the
/// kernel's uptime (the machines share this computer's kernel, so the test can compare).
const POD_WRITER: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: writer, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: writer, namespace: default}
rules:
- {apiGroups: [''], resources: [configmaps], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: writer, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: writer}
subjects:
- {kind: ServiceAccount, name: writer, namespace: default}
---
apiVersion: v1
kind: Pod
metadata: {name: writer, namespace: default}
spec:
  serviceAccountName: writer
  nodeSelector: {kubernetes.io/hostname: w1}
  securityContext: {runAsUser: 65534, runAsNonRoot: true}
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: writer
    image: strata.dev/e2e/curl:1
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      t=/var/run/secrets/kubernetes.io/serviceaccount
      i=0
      while [ $i -lt 900 ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert $t/ca.crt \
          -H "Authorization: Bearer $(cat $t/token)" -H 'Content-Type: application/json' \
          -d "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"pod-write-$i\"}}" \
          https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/configmaps)
        echo "$i $code $(cut -d' ' -f1 /proc/uptime)"
        i=$((i + 1))
        sleep 0.2
      done
"#;

fn curl_image() -> Vec<u8> {
    // curl: package curl.
    strata_e2e::busybox_image(
        "strata.dev/e2e/curl:1",
        &["sh", "sleep", "cat", "cut"],
        &["/usr/bin/curl"],
    )
}

/// This kernel's uptime in seconds (the pods' clock above).
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The pod writer's acknowledged writes: (name, uptime).
fn pod_writes(kc: &Path) -> Vec<(String, f64)> {
    let logs = ok(&kubectl(kc, &["logs", "writer"]), "writer logs");
    logs.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (i, code, at) = (f.next()?, f.next()?, f.next()?.parse::<f64>().ok()?);
            (code == "201").then(|| (format!("pod-write-{i}"), at))
        })
        .collect()
}
