//! The updates console (`strata updates console`) in headless Chromium from the distribution,
//! on a local cluster whose update operator reboots its two workers: the page passes
//! axe-core's WCAG 2.0/2.1 A and AA rules; the test reads the DOM as the rollout goes and
//! sees each worker's phase change until Done (a screenshot is written mid-rollout); the
//! policy is paused from the page with the keyboard only (no slot is granted meanwhile) and
//! resumed (the waiting node reboots); a user bound to a read-only role sees the page and is
//! refused the actions in the API's words; with gates on the policy, a node waiting at its
//! before-reboot and then its after-reboot gate is let through by the Approve button, with the
//! keyboard.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_e2e::browser::Browser;
use strata_e2e::{
    kubectl, kubectl_json, node_updates, ok, on_machine, require_root, strata, strata_bin, wait_for,
};

const NAME: &str = "e2e-console";
const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: e2e-console}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker]}
  addons:
    updateOperator:
      policy: {maxUnavailable: 1}
";
const WORKERS: [&str; 2] = ["w1", "w2"];
/// axe-core, vendored from the npm registry (e2e/vendor/axe-core/README.md).
const AXE: &str = include_str!("../vendor/axe-core/axe.min.js");

/// A running `strata updates console`, stopped when dropped.
struct Console {
    child: Child,
    url: String,
}

impl Console {
    fn start(dir: &Path, kubeconfig: Option<&Path>) -> Self {
        let mut cmd = Command::new(strata_bin());
        cmd.current_dir(dir)
            .args(["updates", "console", "--no-browser"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(k) = kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        let mut child = cmd.spawn().expect("strata updates console");
        let out = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(out)
            .read_line(&mut first)
            .expect("the console's URL");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .to_owned();
        Self { child, url }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn holders(kc: &Path) -> usize {
    kubectl_json(kc, &["rebootlock", "default"])["status"]["holders"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The phase of `node`'s slot in the default policy's lock.
fn holder_phase(kc: &Path, node: &str) -> Option<String> {
    kubectl_json(kc, &["rebootlock", "default"])["status"]["holders"]
        .as_array()?
        .iter()
        .find(|h| h["node"] == node)
        .and_then(|h| h["phase"].as_str().map(str::to_owned))
}

fn paused(kc: &Path) -> bool {
    kubectl_json(kc, &["updatepolicy", "default"])["spec"]["paused"] == true
}

/// Each node's phase as the page shows it.
fn shown_phases(b: &mut Browser) -> BTreeMap<String, String> {
    let v = b.eval(
        "JSON.stringify([...document.querySelectorAll('#nodes tr[data-node]')]\
         .map(r => [r.dataset.node, r.querySelector('[data-field=phase]').textContent]))",
    );
    let pairs: Vec<(String, String)> =
        serde_json::from_str(v.as_str().unwrap_or("[]")).expect("phases");
    pairs.into_iter().collect()
}

fn message(b: &mut Browser) -> String {
    b.eval("document.getElementById('message').textContent")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn sentinel(host: &str) {
    on_machine(NAME, host, "touch /run/reboot-required");
}

/// axe-core's WCAG 2.0 and 2.1 A and AA rules on the page: the violations, none expected.
fn accessibility_violations(b: &mut Browser) -> Vec<String> {
    b.eval(AXE);
    let v = b.eval(
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
         .then(r => JSON.stringify({violations: r.violations.map(v => v.id + ' (' + v.impact + '): ' \
         + v.nodes.map(n => n.target.join(' ')).join(', ')), passes: r.passes.length}))",
    );
    let r: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).expect("axe result");
    println!("axe-core: {} rule(s) passed", r["passes"]);
    assert!(
        r["passes"].as_u64().unwrap_or(0) > 10,
        "axe ran no rules: {r}"
    );
    r["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_console_follows_a_rollout_and_acts_with_the_users_rights() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    std::fs::write(d.join("cluster.yaml"), CLUSTER).expect("write");
    let _ = strata(d, &["local", "down", "--yes"]);
    let _down = strata_e2e::LocalDown(d);
    ok(&strata(d, &["local", "up"]), "local up");
    ok(&strata(d, &["apply"]), "apply");
    let kc: PathBuf = d.join(NAME).join("auth/kubeconfig");
    wait_for("a NodeUpdate per node", Duration::from_secs(180), || {
        node_updates(&kc).len() == 3
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let console = Console::start(d, None);
    let mut b = Browser::start();
    b.goto(&console.url);
    b.wait_until(
        "every node on the page",
        Duration::from_secs(30),
        "document.querySelectorAll('#nodes tr[data-node]').length === 3",
    );
    let size = b.eval("document.documentElement.outerHTML.length");
    println!("the console page: {size} characters with the view in it");
    let violations = accessibility_violations(&mut b);
    assert!(violations.is_empty(), "WCAG violations: {violations:#?}");
    // axe's script is gone with a reload.
    b.goto(&console.url);
    b.wait_until(
        "every node on the page again",
        Duration::from_secs(30),
        "document.querySelectorAll('#nodes tr[data-node]').length === 3",
    );

    // The rollout, as the page shows it.
    for w in WORKERS {
        sentinel(w);
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut screenshot = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        for (node, phase) in shown_phases(&mut b) {
            let phase = phase.split(" (").next().unwrap_or_default().to_owned();
            let list = seen.entry(node).or_default();
            if list.last() != Some(&phase) {
                list.push(phase.clone());
            }
            if screenshot.is_none() && (phase == "Draining" || phase == "Rebooting") {
                let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-rollout.png");
                b.screenshot(&path);
                screenshot = Some(path);
            }
        }
        let updates = node_updates(&kc);
        let done = WORKERS.iter().all(|w| {
            updates[*w]["status"]["reboots"] == 1 && updates[*w]["status"]["phase"] == "Done"
        });
        let shown_done = WORKERS.iter().all(|w| {
            seen.get(*w)
                .and_then(|l| l.last())
                .is_some_and(|p| p == "Done")
        });
        if done && shown_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish in 10 minutes; the page showed {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("phases the page showed: {seen:?}");
    for w in WORKERS {
        let list = &seen[w];
        assert!(
            list.iter()
                .any(|p| ["WaitingForLock", "Draining", "Rebooting", "Verifying"]
                    .contains(&p.as_str())),
            "{w}: the page never showed it in progress: {list:?}"
        );
        assert_eq!(
            list.last().map(String::as_str),
            Some("Done"),
            "{w}: {list:?}"
        );
    }
    let shot = screenshot.expect("a screenshot mid-rollout");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!(
        "screenshot mid-rollout: {} ({} bytes)",
        shot.display(),
        png.len()
    );
    let versions = b.eval(
        "[...document.querySelectorAll('#versions [data-field=nodes]')].map(e => e.textContent).join(',')",
    );
    assert_eq!(versions, "3", "every node on one OS version");
    for w in WORKERS {
        let shown = b.eval(&format!(
            "document.querySelector('tr[data-node={w}] [data-field=last-reboot]').textContent"
        ));
        let reported = &node_updates(&kc)[w]["status"]["lastReboot"];
        assert_eq!(&shown, reported, "{w}: the page's last reboot");
    }
    // The operator's version breakdown, as kubectl shows the policies.
    let table = ok(
        &kubectl(&kc, &["get", "updatepolicies"]),
        "kubectl get updatepolicies",
    );
    println!("{table}");
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("VERSIONS"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("default") && l.contains(": 3 ")),
        "{table}"
    );

    // Pause with the keyboard only: no slot is granted while paused.
    b.tab_to("button[data-action=\"pause\"]");
    b.press("Enter");
    wait_for("the policy paused", Duration::from_secs(15), || paused(&kc))
        .unwrap_or_else(|e| panic!("{e}"));
    b.wait_until(
        "the page says so",
        Duration::from_secs(15),
        "document.getElementById('message').textContent.includes('paused') \
         && document.querySelector('button[data-action=\"resume\"]') !== null",
    );
    sentinel("w1");
    wait_for("w1 to wait for the lock", Duration::from_secs(60), || {
        node_updates(&kc)["w1"]["status"]["phase"] == "WaitingForLock"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(holders(&kc), 0, "a slot was granted while paused");
    b.wait_until(
        "the page shows w1 waiting",
        Duration::from_secs(15),
        "document.querySelector('tr[data-node=w1] [data-field=phase]').textContent.startsWith('WaitingForLock')",
    );
    // Resume, with the keyboard too: w1 reboots.
    b.tab_to("button[data-action=\"resume\"]");
    b.press("Enter");
    wait_for("the policy resumed", Duration::from_secs(15), || {
        !paused(&kc)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for("w1 rebooted again", Duration::from_secs(300), || {
        let u = &node_updates(&kc)["w1"];
        u["status"]["reboots"] == 2 && u["status"]["phase"] == "Done"
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // A user bound to a read-only role: the page, and a refusal naming the permission.
    ok(
        &kubectl(
            &kc,
            &[
                "create",
                "clusterrole",
                "update-viewer",
                "--verb=get,list,watch",
                "--resource=updatepolicies.update.strata.dev,rebootlocks.update.strata.dev,nodeupdates.update.strata.dev,nodes,events",
            ],
        ),
        "read-only role",
    );
    ok(
        &kubectl(
            &kc,
            &[
                "create",
                "clusterrolebinding",
                "update-viewer",
                "--clusterrole=update-viewer",
                "--user=viewer",
            ],
        ),
        "its binding",
    );
    // The admin's kubeconfig acting as the user "viewer" (impersonation): RBAC is viewer's.
    let admin = std::fs::read_to_string(&kc).expect("admin kubeconfig");
    let viewer_kc = d.join("viewer.conf");
    let viewer_text = admin.replacen("  user:\n", "  user:\n    as: viewer\n", 1);
    assert_ne!(viewer_text, admin, "no user entry in {admin}");
    std::fs::write(&viewer_kc, viewer_text).expect("write");
    let viewer = Console::start(d, Some(&viewer_kc));
    let mut vb = Browser::start();
    vb.goto(&viewer.url);
    vb.wait_until(
        "the viewer sees every node",
        Duration::from_secs(30),
        "document.querySelectorAll('#nodes tr[data-node]').length === 3",
    );
    vb.tab_to("button[data-action=\"pause\"]");
    vb.press("Enter");
    vb.wait_until(
        "the refusal",
        Duration::from_secs(15),
        "document.getElementById('message').textContent.includes('refused')",
    );
    let said = message(&mut vb);
    println!("the viewer was told: {said}");
    assert!(
        said.contains("User \"viewer\" cannot patch resource \"updatepolicies\""),
        "{said}"
    );
    assert!(!paused(&kc), "the viewer paused the policy");

    // Gates: w2 waits at the before-reboot gate, whose annotation nobody sets.
    ok(
        &kubectl(
            &kc,
            &[
                "patch",
                "updatepolicy",
                "default",
                "--type=merge",
                "-p",
                r#"{"spec":{"gates":{"beforeReboot":["example.com/ready"],"afterReboot":["example.com/checked"]}}}"#,
            ],
        ),
        "gates on the policy",
    );
    sentinel("w2");
    wait_for("w2 granted, at its gate", Duration::from_secs(120), || {
        holder_phase(&kc, "w2").as_deref() == Some("Granted")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let gate_shown = |stage: &str| {
        format!(
            "(() => {{ const g = document.querySelector('tr[data-node=w2] [data-field=gate]'); \
             return g !== null && g.textContent.startsWith('{stage}: waiting for example.com/'); }})()"
        )
    };
    let approve = "tr[data-node=\"w2\"] button[data-action=\"approve-gate\"]";
    // The viewer: refused, in the API's words.
    vb.wait_until(
        "the viewer sees w2 at its gate",
        Duration::from_secs(30),
        &gate_shown("before-reboot"),
    );
    vb.tab_to(approve);
    vb.press("Enter");
    vb.wait_until(
        "the refusal of the approval",
        Duration::from_secs(15),
        "document.getElementById('message').textContent.includes('nodeupdates')",
    );
    let said = message(&mut vb);
    println!("the viewer was told: {said}");
    assert!(
        said.contains("User \"viewer\" cannot patch resource \"nodeupdates\""),
        "{said}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(holder_phase(&kc, "w2").as_deref(), Some("Granted"));
    // The admin, with the keyboard: w2 goes on, reboots, and waits at the after-reboot gate.
    b.wait_until(
        "the page shows w2 at its before-reboot gate",
        Duration::from_secs(30),
        &gate_shown("before-reboot"),
    );
    b.tab_to(approve);
    b.press("Enter");
    b.wait_until(
        "the page says it approved",
        Duration::from_secs(15),
        "document.getElementById('message').textContent.startsWith('approved the before-reboot gate of node w2')",
    );
    wait_for(
        "w2 back, at its after-reboot gate",
        Duration::from_secs(300),
        || holder_phase(&kc, "w2").as_deref() == Some("Verifying"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.wait_until(
        "the page shows w2 at its after-reboot gate",
        Duration::from_secs(30),
        &gate_shown("after-reboot"),
    );
    // The command line, meaning the gate w2 has left: refused, nothing approved.
    let moved = strata(d, &["updates", "approve", "w2", "--stage", "before-reboot"]);
    let said = String::from_utf8_lossy(&moved.stderr);
    assert!(
        !moved.status.success() && said.contains("waits at the after-reboot gate"),
        "strata updates approve --stage before-reboot: {said}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder_phase(&kc, "w2").as_deref(), Some("Verifying"));
    b.tab_to(approve);
    b.press("Enter");
    wait_for(
        "w2 done, its slot released",
        Duration::from_secs(60),
        || holder_phase(&kc, "w2").is_none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let u = &node_updates(&kc)["w2"];
    assert_eq!(u["status"]["reboots"], 2, "{u}");
    let approvals = ok(
        &kubectl(
            &kc,
            &[
                "get",
                "events",
                "-A",
                "--field-selector=reason=GateApproved",
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ],
        ),
        "GateApproved events",
    );
    println!("GateApproved events:\n{approvals}");
    for stage in ["before-reboot", "after-reboot"] {
        assert!(
            approvals
                .lines()
                .any(|l| l.starts_with(&format!("w2: {stage} gate approved"))
                    && l.contains("example.com/")),
            "no {stage} approval event: {approvals}"
        );
    }
}
