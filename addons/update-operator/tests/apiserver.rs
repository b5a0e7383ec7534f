//! The operator, the agent, the lock, the lease and FleetLock against a real etcd and
//! Kubernetes 1.20.2 kube-apiserver (no kubelets: Nodes are objects the test writes). One
//! API server for all steps, which run in order.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use strata_update_operator::agent::{Agent, REBOOT_REQUEST, SENTINEL};
use strata_update_operator::crd::{
    NodeUpdate, NodeUpdateStatus, Phase, RebootLock, RebootLockSpec, RebootLockStatus,
};
use strata_update_operator::lease::LeaderLease;
use strata_update_operator::metrics::Metrics;
use strata_update_operator::operator::Operator;
use strata_update_operator::{drain, fleetlock, lock};

use common::{ApiServer, CLUSTER};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn make_node(client: &Client, name: &str, boot_id: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    set_boot_id(client, name, boot_id).await;
}

/// What a kubelet would report: Ready, and its boot id.
async fn set_boot_id(client: &Client, name: &str, boot_id: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"bootID": boot_id, "machineID": name, "systemUUID": name,
                     "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                     "containerRuntimeVersion": "containerd://1.6", "kubeletVersion": "v1.20.2",
                     "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                     "architecture": "amd64"},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

async fn holders(client: &Client, name: &str) -> Vec<String> {
    let locks: Api<RebootLock> = Api::all(client.clone());
    locks
        .get(name)
        .await
        .expect("lock")
        .status
        .unwrap_or_default()
        .holders
        .into_iter()
        .map(|h| h.node)
        .collect()
}

async fn approved(client: &Client) -> Vec<String> {
    let updates: Api<NodeUpdate> = Api::all(client.clone());
    let mut v: Vec<String> = updates
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|u| u.spec.approved)
        .filter_map(|u| u.metadata.name)
        .collect();
    v.sort();
    v
}

/// Writes a NodeUpdate status with the agent's own identity (as its agent would).
async fn report(agent: &Client, node: &str, st: NodeUpdateStatus) {
    let updates: Api<NodeUpdate> = Api::all(agent.clone());
    let mut nu = updates.get(node).await.expect("get own NodeUpdate");
    nu.status = Some(st);
    updates
        .replace_status(node, &PostParams::default(), &nu)
        .await
        .expect("own status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_agent_lock_and_fleetlock_on_a_real_api_server() {
    let t0 = std::time::Instant::now();
    let mark = |what: &str| eprintln!("{:>6.1}s {what}", t0.elapsed().as_secs_f64());
    let s = ApiServer::start(CLUSTER);
    s.apply_cluster_objects();
    let admin = s.admin().await;
    let agent_n2 = s.client(&s.kubeconfig("update-agent-n2")).await;
    let agent_n3 = s.client(&s.kubeconfig("update-agent-n3")).await;
    for n in ["n1", "n2", "n3"] {
        make_node(&admin, n, &format!("{n}-boot-1")).await;
    }

    mark("RBAC: each agent");
    // --- RBAC: each agent may read its own Node and write its own NodeUpdate's status; no
    // write on Nodes, Pods or evictions (the operator cordons and drains).
    let kc2 = s.kubeconfig("update-agent-n2");
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        String::from_utf8_lossy(&s.kubectl_as(&kc2, &a).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(can(&["get", "nodes/n2"]), "yes");
    for verb in ["patch", "update", "delete"] {
        assert_eq!(can(&[verb, "nodes/n2"]), "no", "{verb} its own Node");
        assert_eq!(can(&[verb, "nodes/n1"]), "no", "{verb} another Node");
        assert_eq!(can(&[verb, "pods", "-n", "default"]), "no", "{verb} pods");
    }
    assert_eq!(can(&["create", "pods", "-n", "default"]), "no");
    assert_eq!(can(&["list", "pods", "-A"]), "no");
    assert_eq!(
        can(&[
            "update",
            "nodeupdates.update.strata.dev/n2",
            "--subresource=status"
        ]),
        "yes"
    );
    assert_eq!(
        can(&[
            "update",
            "nodeupdates.update.strata.dev/n1",
            "--subresource=status"
        ]),
        "no"
    );
    assert_eq!(
        can(&["update", "nodeupdates.update.strata.dev/n2"]),
        "no",
        "spec is the operator's"
    );
    assert_eq!(
        can(&[
            "update",
            "rebootlocks.update.strata.dev/default",
            "--subresource=status"
        ]),
        "no"
    );
    assert_eq!(
        can(&["create", "pods", "--subresource=eviction", "-n", "default"]),
        "no"
    );
    let nodes_as_n2: Api<Node> = Api::all(agent_n2.clone());
    let cordon = json!({"spec": {"unschedulable": true}});
    for node in ["n1", "n2"] {
        match nodes_as_n2
            .patch(node, &PatchParams::default(), &Patch::Merge(&cordon))
            .await
        {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
            other => panic!("n2's agent cordoned {node}: {other:?}"),
        }
    }

    mark("Many writers racing");
    // --- Many writers racing for a RebootLock never exceed maxHolders.
    let locks: Api<RebootLock> = Api::all(admin.clone());
    let race = RebootLock::new("race", RebootLockSpec { max_holders: 2 });
    locks
        .create(&PostParams::default(), &race)
        .await
        .expect("race lock");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let recorder = {
        let seen = seen.clone();
        let api = locks.clone();
        tokio::spawn(async move {
            let mut w = watcher::watch_object(api, "race").boxed();
            while let Some(Ok(Some(l))) = w.next().await {
                let n = l.status.map(|s| s.holders.len()).unwrap_or(0);
                seen.lock().expect("seen").push(n);
            }
        })
    };
    for round in 0..4 {
        let mut tasks = Vec::new();
        for i in 0..24 {
            let api = locks.clone();
            tasks.push(tokio::spawn(async move {
                lock::try_acquire(
                    &api,
                    "race",
                    &format!("r{round}-n{i}"),
                    Default::default(),
                    None,
                    strata_update_operator::crd::Time::now(),
                )
                .await
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.expect("task").expect("acquire") == lock::SlotOutcome::Done {
                won += 1;
            }
        }
        assert_eq!(won, 2, "round {round}: exactly maxHolders writers win");
        let h = holders(&admin, "race").await;
        assert_eq!(h.len(), 2, "round {round}: {h:?}");
        let l = locks.get("race").await.expect("lock");
        assert!(
            lock::write(&locks, &l, RebootLockStatus::default())
                .await
                .expect("clear")
                .is_some()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let seen = seen.lock().expect("seen").clone();
    assert!(seen.len() >= 8, "the watcher saw the rounds: {seen:?}");
    assert!(
        seen.iter().all(|n| *n <= 2),
        "a version exceeded maxHolders: {seen:?}"
    );

    mark("Leader lease: one winner");
    // --- Leader lease: one winner; the other takes over only after expiry or release.
    let leases = Api::namespaced(admin.clone(), "strata-system");
    let a = LeaderLease::new(leases.clone(), "t-lease", "a", Duration::from_secs(3));
    let b = LeaderLease::new(leases.clone(), "t-lease", "b", Duration::from_secs(3));
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert!(ra ^ rb, "exactly one leads: a={ra} b={rb}");
    let (leader, other) = if ra { (&a, &b) } else { (&b, &a) };
    assert!(leader.try_acquire_or_renew().await.expect("renew"));
    assert!(!other.try_acquire_or_renew().await.expect("other"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        other.try_acquire_or_renew().await.expect("after expiry"),
        "expired lease taken"
    );
    assert!(
        !leader.try_acquire_or_renew().await.expect("old leader"),
        "old leader lost it"
    );
    other.release().await.expect("release");
    assert!(leader.try_acquire_or_renew().await.expect("after release"));

    mark("The operator: NodeUpdates");
    // --- The operator: NodeUpdates for every node, one grant, and a restart grants nothing new.
    let metrics = Arc::new(Metrics::default());
    let op = Operator::new(admin.clone(), metrics.clone(), "op-1");
    op.reconcile().await.expect("reconcile");
    let updates: Api<NodeUpdate> = Api::all(admin.clone());
    let names: BTreeSet<String> = updates
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|u| u.metadata.name)
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"].map(String::from).into());
    assert!(holders(&admin, "default").await.is_empty());
    let waiting = |boot: &str| NodeUpdateStatus {
        phase: Phase::RebootRequired,
        boot_id: boot.into(),
        last_transition_time: Some(strata_update_operator::crd::Time::now()),
        ..Default::default()
    };
    report(&agent_n2, "n2", waiting("n2-boot-1")).await;
    report(&agent_n3, "n3", waiting("n3-boot-1")).await;
    op.reconcile().await.expect("reconcile");
    assert_eq!(holders(&admin, "default").await, ["n2"]);
    assert_eq!(approved(&admin).await, ["n2"]);
    drop(op);
    let op = Operator::new(admin.clone(), metrics.clone(), "op-2");
    for _ in 0..3 {
        op.reconcile().await.expect("reconcile after restart");
    }
    assert_eq!(
        holders(&admin, "default").await,
        ["n2"],
        "no second grant after a restart"
    );
    assert_eq!(approved(&admin).await, ["n2"]);

    // n2 rebooted (new boot id), reports Done: released, and n3 gets the slot.
    set_boot_id(&admin, "n2", "n2-boot-2").await;
    report(
        &agent_n2,
        "n2",
        NodeUpdateStatus {
            phase: Phase::Done,
            boot_id: "n2-boot-2".into(),
            reboots: 1,
            ..Default::default()
        },
    )
    .await;
    op.reconcile().await.expect("reconcile");
    assert_eq!(holders(&admin, "default").await, ["n3"]);
    assert_eq!(approved(&admin).await, ["n3"]);
    let lock_status = locks
        .get("default")
        .await
        .expect("lock")
        .status
        .expect("status");
    assert!(
        lock_status
            .history
            .iter()
            .any(|h| h.contains("n2 released: rebooted")),
        "{:?}",
        lock_status.history
    );

    mark("The agent on n3");
    // --- The agent on n3 (its own identity): a PodDisruptionBudget holds the drain.
    let policies: Api<strata_update_operator::crd::UpdatePolicy> = Api::all(admin.clone());
    // A value the operator and agent could not read is refused by the API server itself.
    for bad in [
        json!({"spec": {"drain": {"timeout": "ten minutes"}}}),
        json!({"spec": {"soak": "1.5h"}}),
        json!({"spec": {"maxUnavailable": "0%"}}),
        json!({"spec": {"windows": [{"days": ["Someday"], "start": "02:00", "duration": "1h"}]}}),
    ] {
        let refused = policies
            .patch("default", &PatchParams::default(), &Patch::Merge(&bad))
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422),
            "{bad} was not refused: {refused:?}"
        );
    }
    let policy_patch = json!({"spec": {"drain": {"gracePeriodSeconds": 0, "timeout": "10m"}}});
    policies
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&policy_patch),
        )
        .await
        .expect("policy");
    // No controller-manager here: the namespace's default ServiceAccount is the test's to make.
    let sa = s.kubectl(&["create", "serviceaccount", "default"]);
    assert!(sa.status.success(), "{}", text(&sa));
    let pod = s.kubectl(&[
        "run",
        "web",
        "--image=strata.dev/none",
        "--labels=app=web",
        "--overrides={\"spec\":{\"nodeName\":\"n3\",\"automountServiceAccountToken\":false}}",
    ]);
    assert!(pod.status.success(), "{}", text(&pod));
    // What its kubelet would report: running and ready (a pending pod ignores budgets).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), "default");
    let running = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("pod status");
    let pdb = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'apiVersion: policy/v1beta1\\nkind: PodDisruptionBudget\\nmetadata: {{name: web, namespace: default}}\\nspec: {{minAvailable: 1, selector: {{matchLabels: {{app: web}}}}}}\\n' | kubectl --kubeconfig {} apply -f -",
            s.admin_kubeconfig().display()
        ))
        .output()
        .expect("sh");
    assert!(pdb.status.success(), "{}", text(&pdb));
    let run_dir = tempfile::tempdir().expect("run dir");
    std::fs::write(run_dir.path().join(SENTINEL), "").expect("sentinel");
    let eviction_version = drain::eviction_version(&admin).await.expect("discovery");
    assert_eq!(
        eviction_version, "policy/v1beta1",
        "Kubernetes 1.20 serves Eviction as v1beta1"
    );
    let agent = Agent {
        client: agent_n3.clone(),
        node: "n3".into(),
        dir: run_dir.path().to_path_buf(),
        local_api: None,
        etcd_health: None,
    };
    // The agent takes the approval; the operator cordons and drains.
    assert_eq!(agent.step().await.expect("step"), Phase::Draining);
    let nodes: Api<Node> = Api::all(admin.clone());
    let n3 = nodes.get("n3").await.expect("n3");
    assert_ne!(
        n3.spec.and_then(|s| s.unschedulable),
        Some(true),
        "the agent does not cordon"
    );
    op.reconcile().await.expect("reconcile");
    let n3 = nodes.get("n3").await.expect("n3");
    assert_eq!(
        n3.spec.and_then(|s| s.unschedulable),
        Some(true),
        "cordoned by the operator"
    );
    let spec = updates.get("n3").await.expect("nu").spec;
    assert!(spec.cordoned && !spec.drained, "{spec:?}");
    let blocked = spec.drain.expect("progress").blocked_by;
    assert!(
        blocked.iter().any(|b| b.starts_with("default/web:")),
        "the PDB holds the drain: {blocked:?}"
    );
    assert_eq!(
        agent.step().await.expect("step"),
        Phase::Draining,
        "no reboot before the drain is done"
    );
    assert!(!run_dir.path().join(REBOOT_REQUEST).exists());
    let del = s.kubectl(&["delete", "pdb", "web"]);
    assert!(del.status.success(), "{}", text(&del));
    let mut drained = false;
    for _ in 0..20 {
        op.reconcile().await.expect("reconcile");
        if updates.get("n3").await.expect("nu").spec.drained {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(drained, "evicted once the budget allows it");
    assert!(
        !text(&s.kubectl(&["get", "pods"])).contains("web"),
        "the pod was evicted"
    );
    assert_eq!(agent.step().await.expect("step"), Phase::Rebooting);
    assert!(
        run_dir.path().join(REBOOT_REQUEST).exists(),
        "reboot requested from the host"
    );
    // The host reboots: /run is empty again and the kubelet reports a new boot id.
    std::fs::remove_file(run_dir.path().join(REBOOT_REQUEST)).expect("rm");
    std::fs::remove_file(run_dir.path().join(SENTINEL)).expect("rm");
    set_boot_id(&admin, "n3", "n3-boot-2").await;
    assert_eq!(agent.step().await.expect("step"), Phase::Verifying);
    op.reconcile().await.expect("reconcile");
    let n3 = nodes.get("n3").await.expect("n3");
    assert_eq!(
        n3.spec.and_then(|s| s.unschedulable),
        Some(true),
        "cordoned until its agent reports it back"
    );
    assert_eq!(agent.step().await.expect("step"), Phase::Done);
    op.reconcile().await.expect("reconcile");
    let n3 = nodes.get("n3").await.expect("n3");
    assert_ne!(
        n3.spec.and_then(|s| s.unschedulable),
        Some(true),
        "uncordoned by the operator"
    );
    assert!(!updates.get("n3").await.expect("nu").spec.cordoned);
    assert!(holders(&admin, "default").await.is_empty());
    assert!(approved(&admin).await.is_empty());

    mark("kubectl at a glance");
    // --- kubectl at a glance.
    let get = text(&s.kubectl(&["get", "updatepolicies,nodeupdates,rebootlocks"]));
    for want in [
        "MAX",
        "PAUSED",
        "NEXT-WINDOW",
        "PHASE",
        "APPROVED",
        "MAX-HOLDERS",
        "HOLDERS",
        "Done",
    ] {
        assert!(get.contains(want), "missing {want}:\n{get}");
    }
    let events = text(&s.kubectl(&["get", "events", "-A"]));
    for want in ["LockGranted", "Approved", "LockReleased"] {
        assert!(events.contains(want), "no {want} Event:\n{events}");
    }

    mark("FleetLock over HTTP");
    // --- FleetLock over HTTP, with curl, on the same lock.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = fleetlock::router(admin.clone(), metrics.clone())
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // n1 and n2 are at 127.0.0.1 and 127.0.0.2 (loopback: requests come from there).
    let nodes: Api<Node> = Api::all(admin.clone());
    for (n, ip) in [("n1", "127.0.0.1"), ("n2", "127.0.0.2")] {
        let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
        nodes
            .patch_status(n, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node address");
    }
    let curl_from = |from: &'static str, path: &'static str, id: &'static str, header: bool| async move {
        let mut c = tokio::process::Command::new("curl");
        c.args(["--interface", from]);
        c.args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
        ]);
        if header {
            c.args(["-H", "fleet-lock-protocol: true"]);
        }
        c.args([
            "-d",
            &format!("{{\"client_params\":{{\"id\":\"{id}\",\"group\":\"default\"}}}}"),
        ]);
        c.arg(format!("http://127.0.0.1:{port}{path}"));
        let out = c.output().await.expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let curl = |path: &'static str, id: &'static str, header: bool| {
        curl_from("127.0.0.1", path, id, header)
    };
    assert_eq!(
        curl_from("127.0.0.9", "/v1/pre-reboot", "z1", true).await,
        "403",
        "not a node's address (a pod's would be refused the same way)"
    );
    assert!(holders(&admin, "default").await.is_empty());
    assert_eq!(
        curl("/v1/pre-reboot", "z1", false).await,
        "400",
        "header required"
    );
    assert_eq!(curl("/v1/pre-reboot", "z1", true).await, "200");
    assert_eq!(holders(&admin, "default").await, ["fleetlock/z1"]);
    assert_eq!(
        curl("/v1/pre-reboot", "z1", true).await,
        "200",
        "idempotent"
    );
    assert_eq!(
        curl("/v1/pre-reboot", "z2", true).await,
        "409",
        "the one slot is taken"
    );
    // A node asking now waits: the FleetLock host counts against maxUnavailable.
    report(&agent_n2, "n2", waiting("n2-boot-2")).await;
    op.reconcile().await.expect("reconcile");
    assert_eq!(holders(&admin, "default").await, ["fleetlock/z1"]);
    assert_eq!(
        curl_from("127.0.0.2", "/v1/pre-reboot", "z1", true).await,
        "409",
        "z1 is held from n1"
    );
    assert_eq!(
        curl_from("127.0.0.2", "/v1/steady-state", "z1", true).await,
        "403",
        "only n1 releases z1"
    );
    assert_eq!(holders(&admin, "default").await, ["fleetlock/z1"]);
    assert_eq!(curl("/v1/steady-state", "z1", true).await, "200");
    assert!(
        holders(&admin, "default").await.is_empty() || holders(&admin, "default").await == ["n2"]
    );
    op.reconcile().await.expect("reconcile");
    assert_eq!(
        holders(&admin, "default").await,
        ["n2"],
        "the slot went to the waiting node"
    );
    let m = metrics.render();
    assert!(
        m.contains(
            "strata_update_fleetlock_requests_total{operation=\"pre-reboot\",code=\"409\"} 2"
        ),
        "{m}"
    );
    assert!(
        m.contains("strata_update_lock_holders{policy=\"default\"}"),
        "{m}"
    );
    server.abort();

    mark("The running operator reads its watch stores");
    // --- The operator as it runs (leader lease, passes from reflector stores): a node that
    // joins gets its NodeUpdate without anyone listing.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(strata_update_operator::operator::run(
        admin.clone(),
        "strata-system",
        "op-running",
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    make_node(&admin, "n4", "n4-boot-1").await;
    let started = std::time::Instant::now();
    while updates.get_opt("n4").await.expect("get").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no NodeUpdate for n4 from the running operator"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    running
        .await
        .expect("join")
        .expect("the operator stopped cleanly");
}
