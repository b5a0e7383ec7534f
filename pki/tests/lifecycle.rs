//! generate / check / renew over time: reuse, targeted re-issue, CA protection, BYO CA.

mod common;

use std::net::IpAddr;

use common::{changed, node, snapshot, three_hosts};
use strata_pki::{
    Action, Address, ExternalCa, PkiError, Selection, StateDir, check, generate, renew,
};
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let first = generate(&three_hosts(), &state, now()).expect("generate");
    assert_eq!(first.created().count(), 43, "{first:?}");
    let before = snapshot(dir.path());
    let second = generate(&three_hosts(), &state, now()).expect("again");
    assert_eq!(second.created().count(), 0);
    assert_eq!(second.reissued().count(), 0, "{second:?}");
    assert_eq!(
        changed(&before, &snapshot(dir.path())),
        Vec::<String>::new()
    );
}

#[test]
fn adding_a_worker_touches_only_its_own_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut inputs = three_hosts();
    generate(&inputs, &state, now()).expect("generate");
    let before = snapshot(dir.path());
    inputs.nodes.push(node("w3", [198, 18, 0, 5], false, false));
    let out = generate(&inputs, &state, now()).expect("generate");
    assert_eq!(
        changed(&before, &snapshot(dir.path())),
        [
            "kubeconfigs/kubelet-w3.conf",
            "kubeconfigs/overlay-w3.conf",
            "kubeconfigs/update-agent-w3.conf",
            "pki/kubelet/w3-serving.crt",
            "pki/kubelet/w3-serving.key",
            "pki/kubelet/w3.crt",
            "pki/kubelet/w3.key",
            "pki/overlay/w3.crt",
            "pki/overlay/w3.key",
            "pki/update-agent/w3.crt",
            "pki/update-agent/w3.key"
        ]
    );
    assert_eq!(out.reissued().count(), 0);
}

#[test]
fn adding_a_control_plane_host_reissues_the_apiserver_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut inputs = three_hosts();
    generate(&inputs, &state, now()).expect("generate");
    let before = snapshot(dir.path());
    inputs.nodes.push(node("cp2", [198, 18, 0, 6], true, true));
    let out = generate(&inputs, &state, now()).expect("generate");
    let reissued: Vec<(&str, &str)> = out.reissued().collect();
    assert_eq!(reissued, [("apiserver", "SANs changed (+cp2 +198.18.0.6)")]);
    let mut expect = vec![
        "kubeconfigs/kubelet-cp2.conf",
        "kubeconfigs/overlay-cp2.conf",
        "kubeconfigs/update-agent-cp2.conf",
        "pki/apiserver.crt",
        "pki/etcd/peer-cp2.crt",
        "pki/etcd/peer-cp2.key",
        "pki/etcd/server-cp2.crt",
        "pki/etcd/server-cp2.key",
        "pki/kubelet/cp2-serving.crt",
        "pki/kubelet/cp2-serving.key",
        "pki/kubelet/cp2.crt",
        "pki/kubelet/cp2.key",
        "pki/overlay/cp2.crt",
        "pki/overlay/cp2.key",
        "pki/update-agent/cp2.crt",
        "pki/update-agent/cp2.key",
    ];
    expect.sort_unstable();
    assert_eq!(changed(&before, &snapshot(dir.path())), expect);
}

#[test]
fn changing_an_address_reissues_what_carries_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut inputs = three_hosts();
    generate(&inputs, &state, now()).expect("generate");
    let before = snapshot(dir.path());
    inputs.nodes[0].address = Some(Address::Ip(IpAddr::from([198, 18, 0, 9])));
    inputs.api_endpoint = "198.18.0.9:6443".into();
    let out = generate(&inputs, &state, now()).expect("generate");
    let mut names: Vec<&str> = out.reissued().map(|(n, _)| n).collect();
    names.sort_unstable();
    // Certificates with the address, and the admin kubeconfig (its server URL changed);
    // the components' kubeconfigs name loopback (the same host's API server or the
    // node-local balancer) and stay.
    assert_eq!(
        names,
        [
            "apiserver",
            "auth/kubeconfig",
            "etcd/peer-cp1",
            "etcd/server-cp1",
            "kubelet/cp1-serving",
        ]
    );
    let after = snapshot(dir.path());
    // Re-issued with the same keys; no CA changed.
    for f in [
        "pki/apiserver.key",
        "pki/etcd/server-cp1.key",
        "pki/ca.crt",
        "pki/ca.key",
    ] {
        assert_eq!(before.get(f), after.get(f), "{f}");
    }
}

#[test]
fn a_ca_is_never_replaced_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    generate(&three_hosts(), &state, now()).expect("generate");

    // Key missing: error, nothing recreated.
    let key = state.key("etcd/ca");
    let saved = std::fs::read(&key).expect("read");
    std::fs::remove_file(&key).expect("rm");
    let e = generate(&three_hosts(), &state, now()).expect_err("incomplete CA");
    assert!(matches!(e, PkiError::CaIncomplete { .. }), "{e}");
    assert!(e.to_string().contains("Restore"), "{e}");
    assert!(!key.exists());

    // Wrong key: error naming both files.
    std::fs::write(&key, std::fs::read(state.key("ca")).expect("read")).expect("write");
    let e = generate(&three_hosts(), &state, now()).expect_err("mismatch");
    assert!(matches!(e, PkiError::CaKeyMismatch { .. }), "{e}");
    std::fs::write(&key, saved).expect("restore");
    generate(&three_hosts(), &state, now()).expect("restored pair works again");

    // Expired CA (seen from 11 years later): error with what to do.
    let later = now() + time::Duration::days(11 * 365);
    let e = generate(&three_hosts(), &state, later).expect_err("expired");
    assert!(matches!(e, PkiError::CaExpired { .. }), "{e}");
}

#[test]
fn expired_or_foreign_leaves_are_reissued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    generate(&three_hosts(), &state, now()).expect("generate");
    // Two years later every leaf has expired (the CAs have not).
    let later = now() + time::Duration::days(2 * 365);
    let out = generate(&three_hosts(), &state, later).expect("generate");
    let expired = out
        .reissued()
        .filter(|(_, why)| why.starts_with("expired on"))
        .count();
    assert_eq!(expired, 24, "{out:?}");

    // A leaf signed by another cluster's CA is re-issued by ours.
    let other = tempfile::tempdir().expect("tempdir");
    generate(&three_hosts(), &StateDir::new(other.path()), now()).expect("other");
    for ext in ["crt", "key"] {
        std::fs::copy(
            other.path().join(format!("pki/apiserver.{ext}")),
            dir.path().join(format!("pki/apiserver.{ext}")),
        )
        .expect("copy");
    }
    let out = generate(&three_hosts(), &state, later).expect("generate");
    let r: Vec<(&str, &str)> = out.reissued().collect();
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].1.starts_with("not signed by the current CA"), "{r:?}");
}

#[test]
fn renew_changes_serials_and_dates_but_not_keys_or_cas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let inputs = three_hosts();
    generate(&inputs, &state, now()).expect("generate");
    let before = snapshot(dir.path());
    let later = now() + time::Duration::days(300);
    let out = renew(
        &inputs,
        &state,
        later,
        &Selection::Names(vec!["apiserver".into(), "kubelet/w1".into()]),
    )
    .expect("renew");
    assert_eq!(
        out.changed(),
        ["apiserver", "kubelet/w1", "kubeconfigs/kubelet-w1.conf"]
    );
    assert_eq!(
        changed(&before, &snapshot(dir.path())),
        [
            "kubeconfigs/kubelet-w1.conf",
            "pki/apiserver.crt",
            "pki/kubelet/w1.crt"
        ]
    );
    let rows = check(&inputs, &state, now()).expect("check");
    let days = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .and_then(|r| r.days_left)
            .expect("row")
    };
    assert!(
        days("apiserver") >= 664,
        "renewed from 300 days on: {}",
        days("apiserver")
    );
    assert!(days("kubelet/w2") <= 365);

    let e = renew(&inputs, &state, later, &Selection::Names(vec!["ca".into()])).expect_err("ca");
    assert!(matches!(e, PkiError::CannotRenewCa { .. }), "{e}");
    let e = renew(
        &inputs,
        &state,
        later,
        &Selection::Names(vec!["nope".into()]),
    )
    .expect_err("unknown");
    assert!(
        e.to_string()
            .contains("apiserver, apiserver-kubelet-client"),
        "{e}"
    );

    let all = renew(&inputs, &state, later, &Selection::All).expect("all");
    assert_eq!(
        all.reissued().count(),
        24 + 13,
        "24 leaves and 13 kubeconfigs"
    );
    assert_eq!(
        all.items
            .iter()
            .filter(|(n, _)| n.ends_with(".key") || n.contains("ca"))
            .count(),
        0
    );
}

#[test]
fn check_reports_expiry_and_missing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let inputs = three_hosts();
    let rows = check(&inputs, &state, now()).expect("check empty");
    assert!(rows.iter().all(|r| r.problem.as_deref() == Some("missing")));
    generate(&inputs, &state, now()).expect("generate");
    let rows = check(&inputs, &state, now() + time::Duration::days(350)).expect("check");
    let leaf = rows
        .iter()
        .find(|r| r.name == "etcd/server-cp1")
        .expect("row");
    assert!(
        leaf.days_left.is_some_and(|d| (13..=15).contains(&d)),
        "{leaf:?}"
    );
    assert_eq!(leaf.problem, None);
    let ca = rows.iter().find(|r| r.name == "ca").expect("ca");
    assert!(ca.days_left.is_some_and(|d| d > 3000));
}

#[test]
fn changing_the_key_algorithm_reissues_leaves_with_new_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut inputs = three_hosts();
    generate(&inputs, &state, now()).expect("generate");
    let before = snapshot(dir.path());
    inputs.key_algorithm = strata_pki::KeyAlgorithm::Rsa2048;
    let out = generate(&inputs, &state, now()).expect("generate");
    assert_eq!(
        out.reissued()
            .filter(|(_, w)| w.contains("key algorithm changed to rsa-2048"))
            .count(),
        24
    );
    let after = snapshot(dir.path());
    assert_ne!(
        before.get("pki/apiserver.key"),
        after.get("pki/apiserver.key")
    );
    assert_eq!(
        before.get("pki/ca.key"),
        after.get("pki/ca.key"),
        "CAs stay"
    );
    assert!(matches!(out.items[0].1, Action::Kept));
}

#[test]
fn bring_your_own_ca_signs_the_leaves() {
    // A CA made by another tool (openssl), PKCS#8 key.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("my-ca");
    std::fs::create_dir(&ca_dir).expect("mkdir");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=corp-kubernetes-ca",
            "-keyout",
        ])
        .arg(ca_dir.join("ca.key"))
        .arg("-out")
        .arg(ca_dir.join("ca.crt"))
        .output()
        .expect("openssl must be installed");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut inputs = three_hosts();
    inputs.kubernetes_ca = Some(ExternalCa {
        cert_pem: std::fs::read_to_string(ca_dir.join("ca.crt")).expect("read"),
        key_pem: std::fs::read_to_string(ca_dir.join("ca.key")).expect("read"),
        source: ca_dir.join("ca.crt").display().to_string(),
    });
    let state_root = dir.path().join("state");
    let state = StateDir::new(&state_root);
    generate(&inputs, &state, now()).expect("generate");
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca_dir.join("ca.crt"))
        .arg(state.cert("apiserver"))
        .arg(state.cert("kubelet/w1"))
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Re-run: unchanged. A different CA in the file: refused.
    let before = snapshot(&state_root);
    generate(&inputs, &state, now()).expect("again");
    assert!(changed(&before, &snapshot(&state_root)).is_empty());
    let other = tempfile::tempdir().expect("tempdir");
    generate(&three_hosts(), &StateDir::new(other.path()), now()).expect("other");
    inputs.kubernetes_ca = Some(ExternalCa {
        cert_pem: std::fs::read_to_string(other.path().join("pki/ca.crt")).expect("read"),
        key_pem: std::fs::read_to_string(other.path().join("pki/ca.key")).expect("read"),
        source: "other/ca.crt".into(),
    });
    let e = generate(&inputs, &state, now()).expect_err("changed CA");
    assert!(matches!(e, PkiError::CaChanged { .. }), "{e}");
}
