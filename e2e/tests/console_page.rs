//! The console's page in headless Chromium against a real etcd and Kubernetes 1.20.2 API
//! server, without a cluster (seconds, where `console_local` takes minutes): Pause and Resume
//! with the keyboard only while the view keeps changing (keyboard focus survives the live
//! re-renders), and Approve of a node waiting at its before-reboot gate, with the keyboard,
//! writing the approval of exactly that gate of that slot.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use strata_e2e::browser::Browser;
use strata_test_apiserver::ApiServer;
use strata_update_api::{
    GateApproval, GateStage, NodeUpdate, NodeUpdateSpec, RebootLock, RebootLockSpec, Time,
    UpdatePolicy,
};

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: console-page}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
";

const TOKEN: &str = "fedcba9876543210";

fn message(b: &mut Browser) -> String {
    b.eval("document.getElementById('message').textContent")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for `ok`, failing with what the page said.
fn wait(b: &mut Browser, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 15 s; the page says {:?}, focus on {}",
            message(b),
            b.eval("document.activeElement.outerHTML")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_page_is_operated_with_the_keyboard_while_it_changes() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let api = ApiServer::start(CLUSTER);
    api.apply_cluster_objects();
    let admin = rt.block_on(api.admin());
    let updates: Api<NodeUpdate> = Api::all(admin.clone());
    let policies: Api<UpdatePolicy> = Api::all(admin.clone());
    let locks: Api<RebootLock> = Api::all(admin.clone());
    let slot: Time = "2026-12-02T01:00:00.5Z".parse().expect("time");
    rt.block_on(async {
        for n in ["n1", "n2"] {
            let nu = NodeUpdate::new(
                n,
                NodeUpdateSpec {
                    policy: "default".into(),
                    ..NodeUpdateSpec::default()
                },
            );
            updates
                .create(&PostParams::default(), &nu)
                .await
                .expect("NodeUpdate");
        }
        policies
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"gates": {"beforeReboot": ["example.com/ok"]}}})),
            )
            .await
            .expect("gates");
        if locks.get_opt("default").await.expect("lock").is_none() {
            locks
                .create(
                    &PostParams::default(),
                    &RebootLock::new("default", RebootLockSpec { max_holders: 1 }),
                )
                .await
                .expect("lock");
        }
        locks
            .patch_status(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"holders": [
                    {"node": "n1", "acquiredAt": slot, "phase": "Granted"}
                ]}})),
            )
            .await
            .expect("holder");
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(strata_update_console::serve(admin.clone(), listener, TOKEN));
    // The view changes twice a second meanwhile (n2's status), as during a rollout.
    let churn = {
        let updates = updates.clone();
        rt.spawn(async move {
            for i in 0u32.. {
                let _ = updates
                    .patch_status(
                        "n2",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": "Idle", "reboots": i}})),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let mut b = Browser::start();
    b.goto(&format!("http://{addr}/?token={TOKEN}"));
    b.wait_until(
        "n1 at its gate",
        Duration::from_secs(30),
        "(() => { const g = document.querySelector('tr[data-node=n1] [data-field=gate]'); \
         return g !== null && g.textContent.startsWith('before-reboot: waiting for example.com/ok'); })()",
    );
    let paused = || {
        rt.block_on(policies.get("default"))
            .expect("policy")
            .spec
            .paused
    };
    b.tab_to("button[data-action=\"pause\"]");
    b.press("Enter");
    wait(&mut b, "paused with Enter", paused);
    b.tab_to("button[data-action=\"resume\"]");
    b.press("Enter");
    wait(&mut b, "resumed with Enter", || !paused());
    b.tab_to("tr[data-node=\"n1\"] button[data-action=\"approve-gate\"]");
    b.press("Enter");
    let approval = || {
        rt.block_on(updates.get("n1"))
            .expect("n1")
            .spec
            .gate_approval
    };
    wait(&mut b, "approved with Enter", || approval().is_some());
    assert_eq!(
        approval(),
        Some(GateApproval {
            stage: GateStage::BeforeReboot,
            slot_acquired_at: slot,
        })
    );
    b.wait_until(
        "the page says so",
        Duration::from_secs(15),
        "document.getElementById('message').textContent.startsWith('approved the before-reboot gate of node n1')",
    );
    churn.abort();
}
