//! The console against a real etcd and Kubernetes 1.20.2 kube-apiserver with the cluster
//! objects `strata apply` installs: the page (self-contained, small) only with the token and
//! the console's own Host; the live view as server-sent events following the API; pause and
//! resume with the admin's rights; the gate a node waits at approved (its NodeUpdate names
//! the stage and slot), refused for a node at no gate; a user bound to a read-only role sees
//! the view and is refused the actions in the API's own words.

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use strata_test_apiserver::ApiServer;
use strata_update_api::{
    GateApproval, GateStage, NodeUpdate, NodeUpdateSpec, NodeUpdateStatus, Phase, RebootLock,
    RebootLockSpec, Time, UpdatePolicy,
};

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: console}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
";

const TOKEN: &str = "0123456789abcdef";

/// A console serving with `client`, its address.
async fn console(client: kube::Client) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = strata_update_console::serve(client, listener, TOKEN).await;
    });
    addr
}

/// The next `view` event of a server-sent event stream.
async fn next_view(resp: &mut reqwest::Response, buf: &mut String) -> Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: view") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).expect("view JSON");
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("a view within 30 s")
            .expect("stream")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Views until one satisfies `ok`.
async fn view_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let v = next_view(resp, buf).await;
        if ok(&v) {
            return v;
        }
    }
}

fn phase_of(v: &Value, node: &str) -> String {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .map(|n| n["phase"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_follows_the_api_and_acts_with_the_users_rights() {
    let api = ApiServer::start(CLUSTER);
    api.apply_cluster_objects();
    let admin = api.admin().await;
    let updates: Api<NodeUpdate> = Api::all(admin.clone());
    let mut nu = NodeUpdate::new(
        "n1",
        NodeUpdateSpec {
            policy: "default".into(),
            ..NodeUpdateSpec::default()
        },
    );
    nu.status = None;
    updates
        .create(&PostParams::default(), &nu)
        .await
        .expect("create NodeUpdate");
    let report = |phase: Phase| NodeUpdateStatus {
        phase,
        os_id: "Container Linux 2512.3.0".into(),
        os_version: "5.4.0".into(),
        boot_id: "b1".into(),
        ..NodeUpdateStatus::default()
    };
    updates
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": report(Phase::Idle) })),
        )
        .await
        .expect("status");

    let addr = console(admin.clone()).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    // The page: only with the token, only at its own address; self-contained and small.
    let url = format!("http://{addr}/?token={TOKEN}");
    let page = http.get(&url).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.len() < 100_000, "{} bytes", html.len());
    for external in ["http://", "https://", "<link", " src="] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let bare = http
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("no token");
    assert_eq!(bare.status(), 403);
    let rebound = http
        .get(&url)
        .header("Host", "attacker.example")
        .send()
        .await
        .expect("other host");
    assert_eq!(rebound.status(), 403);
    let forged = http
        .post(format!(
            "http://{addr}/api/policies/default/pause?token={TOKEN}"
        ))
        .send()
        .await
        .expect("action without the header");
    assert_eq!(
        forged.status(),
        403,
        "an action needs the token in its header"
    );

    // The live view follows the API.
    let mut stream = http
        .get(format!("http://{addr}/events?token={TOKEN}"))
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), 200);
    let mut buf = String::new();
    let v = view_until(&mut stream, &mut buf, |v| phase_of(v, "n1") == "Idle").await;
    assert_eq!(v["policies"][0]["name"], "default");
    assert_eq!(v["policies"][0]["paused"], false);
    assert_eq!(
        v["policies"][0]["versions"][0]["version"],
        "Container Linux 2512.3.0"
    );
    for phase in [Phase::RebootRequired, Phase::Rebooting] {
        updates
            .patch_status(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": report(phase) })),
            )
            .await
            .expect("status");
        view_until(&mut stream, &mut buf, |v| {
            phase_of(v, "n1") == phase.as_str()
        })
        .await;
    }

    // Pause and resume with the admin's rights.
    let act = |addr: &str, action: &str| {
        http.post(format!("http://{addr}/api/policies/default/{action}"))
            .header(strata_update_console::TOKEN_HEADER, TOKEN)
            .send()
    };
    let r = act(&addr, "pause").await.expect("pause");
    assert_eq!(r.status(), 200);
    let policies: Api<UpdatePolicy> = Api::all(admin.clone());
    assert!(policies.get("default").await.expect("policy").spec.paused);
    view_until(&mut stream, &mut buf, |v| {
        v["policies"][0]["paused"] == true
    })
    .await;
    let r = act(&addr, "resume").await.expect("resume");
    assert_eq!(r.status(), 200);
    assert!(!policies.get("default").await.expect("policy").spec.paused);

    // n1 holds a slot and waits at the policy's before-reboot gate (as the operator leaves
    // it): the view shows the gate and the missing annotation; the admin approves it.
    policies
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gates": {"beforeReboot": ["example.com/ok"]}}})),
        )
        .await
        .expect("gates");
    let locks: Api<RebootLock> = Api::all(admin.clone());
    if locks.get_opt("default").await.expect("lock").is_none() {
        locks
            .create(
                &PostParams::default(),
                &RebootLock::new("default", RebootLockSpec { max_holders: 1 }),
            )
            .await
            .expect("create lock");
    }
    let slot: Time = "2026-12-01T10:00:00.123456789Z".parse().expect("time");
    // n1's slot of the lock, at `phase` (as the operator writes it).
    let hold = |phase: &'static str| {
        let locks = locks.clone();
        async move {
            let holders = json!({"status": {"holders": [
                {"node": "n1", "acquiredAt": slot, "phase": phase}
            ]}});
            locks
                .patch_status("default", &PatchParams::default(), &Patch::Merge(holders))
                .await
                .expect("holder");
        }
    };
    hold("Granted").await;
    let gate_of = |v: &Value| {
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == "n1")
            .map(|n| n["gate"].clone())
            .unwrap_or_default()
    };
    let v = view_until(&mut stream, &mut buf, |v| !gate_of(v).is_null()).await;
    assert_eq!(
        gate_of(&v),
        json!({
            "stage": "before-reboot",
            "missing": ["example.com/ok"],
            "approved": false,
            "approval": {"stage": "BeforeReboot", "slotAcquiredAt": "2026-12-01T10:00:00.123456789Z"},
        })
    );
    // What the page's button sends: the gate it shows.
    let before = gate_of(&v)["approval"].clone();
    let approve = |addr: &str, node: &str, shown: &Value| {
        http.post(format!("http://{addr}/api/nodes/{node}/approve-gate"))
            .header(strata_update_console::TOKEN_HEADER, TOKEN)
            .header("content-type", "application/json")
            .body(shown.to_string())
            .send()
    };
    let r = approve(&addr, "n1", &before).await.expect("approve");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        updates.get("n1").await.expect("n1").spec.gate_approval,
        Some(GateApproval {
            stage: GateStage::BeforeReboot,
            slot_acquired_at: slot,
        })
    );
    view_until(&mut stream, &mut buf, |v| gate_of(v)["approved"] == true).await;
    // Past its gates, or no NodeUpdate at all: refused, with the reason.
    hold("Approved").await;
    let r = approve(&addr, "n1", &before).await.expect("approve");
    assert_eq!(r.status(), 409);
    let body = r.text().await.expect("body");
    assert!(
        body.contains("waits at no gate") && body.contains("past its gates"),
        "{body}"
    );
    let r = approve(&addr, "n9", &before).await.expect("approve");
    assert_eq!(r.status(), 404);
    let body = r.text().await.expect("body");
    assert!(body.contains("n9 has no NodeUpdate"), "{body}");
    hold("Verifying").await;
    // At the after-reboot gate now: an approval of the before-reboot gate shown earlier is
    // refused (it would pass a gate nobody saw), and so is a request without the gate.
    let r = approve(&addr, "n1", &before).await.expect("approve");
    assert_eq!(r.status(), 409);
    let body = r.text().await.expect("body");
    assert!(
        body.contains("waits at the after-reboot gate") && body.contains("look again"),
        "{body}"
    );
    let r = http
        .post(format!("http://{addr}/api/nodes/n1/approve-gate"))
        .header(strata_update_console::TOKEN_HEADER, TOKEN)
        .send()
        .await
        .expect("approve without a body");
    assert_eq!(r.status(), 400);
    let after = json!({"stage": "AfterReboot", "slotAcquiredAt": slot});

    // A user bound to a read-only role: the view, and a refusal naming the permission.
    let role = api.kubectl(&[
        "create",
        "clusterrole",
        "update-viewer",
        "--verb=get,list,watch",
        "--resource=updatepolicies.update.strata.dev,rebootlocks.update.strata.dev,nodeupdates.update.strata.dev,nodes,events",
    ]);
    assert!(
        role.status.success(),
        "{}",
        String::from_utf8_lossy(&role.stderr)
    );
    let bind = api.kubectl(&[
        "create",
        "clusterrolebinding",
        "update-viewer",
        "--clusterrole=update-viewer",
        "--user=viewer",
    ]);
    assert!(
        bind.status.success(),
        "{}",
        String::from_utf8_lossy(&bind.stderr)
    );
    let viewer = console(api.client_as("viewer").await).await;
    let mut stream = http
        .get(format!("http://{viewer}/events?token={TOKEN}"))
        .send()
        .await
        .expect("events");
    let mut buf = String::new();
    let v = view_until(&mut stream, &mut buf, |v| phase_of(v, "n1") == "Rebooting").await;
    assert_eq!(v["problems"], json!([]), "{v}");
    let r = act(&viewer, "pause").await.expect("pause as viewer");
    assert_eq!(r.status(), 403);
    let said: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let error = said["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("User \"viewer\" cannot patch resource \"updatepolicies\""),
        "{error}"
    );
    assert!(!policies.get("default").await.expect("policy").spec.paused);
    // n1 now waits at the after-reboot gate: the viewer is refused the approval.
    let r = approve(&viewer, "n1", &after)
        .await
        .expect("approve as viewer");
    assert_eq!(r.status(), 403);
    let said: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let error = said["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("approve the after-reboot gate of node n1")
            && error.contains("User \"viewer\" cannot patch resource \"nodeupdates\""),
        "{error}"
    );
    assert_eq!(
        updates
            .get("n1")
            .await
            .expect("n1")
            .spec
            .gate_approval
            .map(|a| a.stage),
        Some(GateStage::BeforeReboot)
    );
}
