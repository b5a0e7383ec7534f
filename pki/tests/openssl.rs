//! openssl, an independent implementation, confirms chains, usages, SANs and key pairs.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use strata_pki::{StateDir, generate, leaf_certificates};
use time::OffsetDateTime;

fn openssl(args: &[&str], files: &[&Path]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .args(files)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} {files:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(cert: &Path) -> String {
    openssl(&["x509", "-noout", "-text", "-in"], &[cert])
}

#[test]
fn chains_usages_and_sans_as_openssl_sees_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let inputs = common::three_hosts();
    generate(&inputs, &state, OffsetDateTime::now_utc()).expect("generate");

    // Every leaf verifies against its own CA, and not against another one.
    for spec in leaf_certificates(&inputs) {
        let ca = state.cert(spec.ca.name());
        let leaf = state.cert(&spec.name);
        let ok = openssl(&["verify", "-CAfile"], &[&ca, &leaf]);
        assert!(ok.contains(": OK"), "{}: {ok}", spec.name);
        let wrong = if spec.ca.name() == "ca" {
            "etcd/ca"
        } else {
            "ca"
        };
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(state.cert(wrong))
            .arg(&leaf)
            .output()
            .expect("openssl");
        assert!(
            !out.status.success(),
            "{} verified against {wrong}",
            spec.name
        );

        // The key belongs to the certificate.
        let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in"], &[&leaf]);
        let key_pub = openssl(&["pkey", "-pubout", "-in"], &[&state.key(&spec.name)]);
        assert_eq!(cert_pub, key_pub, "{}", spec.name);
    }

    let ca = text(&state.cert("ca"));
    assert!(ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Subject: CN = kubernetes"), "{ca}");
    assert!(ca.contains("Certificate Sign"), "{ca}");

    let api = text(&state.cert("apiserver"));
    for needle in [
        "Subject: CN = kube-apiserver",
        "TLS Web Server Authentication",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:cp1",
        "IP Address:10.96.0.1",
        "IP Address:198.18.0.2",
        "IP Address:127.0.0.1",
        "CA:FALSE",
        "ecdsa-with-SHA256",
    ] {
        assert!(api.contains(needle), "apiserver lacks {needle}:\n{api}");
    }
    assert!(!api.contains("TLS Web Client Authentication"));

    let kubelet = text(&state.cert("kubelet/w1"));
    assert!(
        kubelet.contains("Subject: O = system:nodes, CN = system:node:w1"),
        "{kubelet}"
    );
    assert!(kubelet.contains("TLS Web Client Authentication"));
    assert!(!kubelet.contains("TLS Web Server Authentication"));

    let etcd = text(&state.cert("etcd/server-cp1"));
    for needle in [
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "DNS:cp1",
        "DNS:localhost",
        "IP Address:198.18.0.2",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(etcd.contains(needle), "etcd server lacks {needle}:\n{etcd}");
    }
    let serving = text(&state.cert("kubelet/w1-serving"));
    assert!(
        serving.contains("TLS Web Server Authentication")
            && serving.contains("IP Address:198.18.0.3")
    );
    let kac = text(&state.cert("apiserver-kubelet-client"));
    assert!(
        kac.contains("Subject: CN = kube-apiserver-kubelet-client"),
        "not system:masters: {kac}"
    );
    let fp = text(&state.cert("front-proxy-client"));
    assert!(
        fp.contains("Issuer: CN = front-proxy-ca")
            && fp.contains("Subject: CN = front-proxy-client")
    );
    let admin = text(&state.cert("admin"));
    assert!(admin.contains("Subject: O = system:masters, CN = kubernetes-admin"));

    // Service-account key pair: the public key matches the private key.
    let sa_pub = std::fs::read_to_string(state.sa_pub()).expect("sa.pub");
    assert_eq!(
        sa_pub,
        openssl(&["pkey", "-pubout", "-in"], &[&state.sa_key()])
    );
}

#[test]
fn serials_are_random_and_validity_explicit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let inputs = common::three_hosts();
    let now = OffsetDateTime::now_utc();
    generate(&inputs, &state, now).expect("generate");
    let serial = |n: &str| openssl(&["x509", "-noout", "-serial", "-in"], &[&state.cert(n)]);
    let serials: Vec<String> = ["ca", "apiserver", "kubelet/w1", "kubelet/w2"]
        .iter()
        .map(|n| serial(n))
        .collect();
    for s in &serials {
        // serial=<32 hex digits>: 128 random bits, never derived from the key.
        assert_eq!(s.trim().len(), "serial=".len() + 32, "{s}");
    }
    let mut uniq = serials.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), serials.len());

    let dates = openssl(
        &["x509", "-noout", "-startdate", "-enddate", "-in"],
        &[&state.cert("apiserver")],
    );
    let year = now.year();
    assert!(dates.contains(&format!("{}", year + 1)), "{dates}");
    assert!(
        !dates.contains("1975") && !dates.contains("4096"),
        "{dates}"
    );
}

#[test]
fn kubeconfigs_embed_the_ca_and_the_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    generate(&common::three_hosts(), &state, OffsetDateTime::now_utc()).expect("generate");
    let kc = std::fs::read_to_string(state.file("kubeconfigs/kubelet-w2.conf")).expect("read");
    assert!(kc.starts_with("apiVersion: v1\nkind: Config\n"), "{kc}");
    // The node-local API load balancer.
    assert!(kc.contains("server: https://127.0.0.1:7445"), "{kc}");
    assert_eq!(
        strata_pki::kubeconfig_server(&kc),
        Some("https://127.0.0.1:7445")
    );
    let moved = strata_pki::kubeconfig_with_server(&kc, "https://198.18.0.9:6443");
    assert_eq!(
        strata_pki::kubeconfig_server(&moved),
        Some("https://198.18.0.9:6443")
    );
    assert_eq!(moved.lines().count(), kc.lines().count(), "{moved}");
    let admin = std::fs::read_to_string(state.file("auth/kubeconfig")).expect("read");
    assert!(admin.contains("server: https://198.18.0.2:6443"), "{admin}");
    let cm =
        std::fs::read_to_string(state.file("kubeconfigs/controller-manager.conf")).expect("read");
    assert!(cm.contains("server: https://127.0.0.1:6443"), "{cm}");
    assert!(kc.contains("current-context: system:node:w2@demo"), "{kc}");
    let field = |name: &str| {
        let line = kc
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {kc}"));
        let b64 = line.split_once(':').expect("colon").1.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        String::from_utf8(bytes).expect("utf8")
    };
    assert_eq!(
        field("certificate-authority-data"),
        std::fs::read_to_string(state.cert("ca")).expect("ca")
    );
    assert_eq!(
        field("client-certificate-data"),
        std::fs::read_to_string(state.cert("kubelet/w2")).expect("crt")
    );
    assert_eq!(
        field("client-key-data"),
        std::fs::read_to_string(state.key("kubelet/w2")).expect("key")
    );
}
