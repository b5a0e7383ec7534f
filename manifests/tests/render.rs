//! The rendered files: snapshots, systemd's own unit checker, strict decoding of component
//! configuration with the upstream types, version differences, and plans.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{Fixture, ONE_HOST, THREE_HOSTS, fixture};
use strata_manifests::Context;
use strata_manifests::catalog;
use strata_manifests::plan::{Action, ActionKind, AppliedState, departed_hosts, plan};
use strata_manifests::render::{Rendered, render, write_out};

fn is_kubeconfig(path: &str) -> bool {
    (path.starts_with("/etc/kubernetes/")
        && path.ends_with(".conf")
        && path.matches('/').count() == 3)
        || path == "/etc/strata/update-agent/kubeconfig"
        || path == "/etc/strata/overlay/kubeconfig"
}

/// The rendering as text, with keys, certificates and kubeconfigs (random) redacted.
fn snapshot_text(r: &Rendered) -> String {
    let mut s = String::new();
    for t in &r.hosts {
        s.push_str(&format!("######## host {}\n", t.host));
        for (path, f) in &t.files {
            s.push_str(&format!("==== {path} ({:o})\n", f.mode));
            let secret = [".crt", ".key", ".pub", "/encryption-config.yaml"]
                .iter()
                .any(|e| path.ends_with(e))
                || is_kubeconfig(path);
            if secret {
                s.push_str("<redacted: generated PKI material>\n");
            } else {
                s.push_str(&String::from_utf8_lossy(&f.content));
            }
        }
    }
    for o in &r.objects {
        s.push_str(&format!(
            "######## cluster/{} -> {}\n{}",
            o.file, o.api_path, o.yaml
        ));
    }
    s
}

#[test]
fn one_host_snapshot() {
    let f = fixture(ONE_HOST);
    insta::assert_snapshot!("one_host", snapshot_text(&f.rendered));
}

#[test]
fn three_hosts_snapshot() {
    let f = fixture(THREE_HOSTS);
    insta::assert_snapshot!("three_hosts", snapshot_text(&f.rendered));
}

/// What apply sends (JSON) is what it writes to cluster/ and records (YAML).
#[test]
fn every_cluster_object_is_the_same_object_in_json_and_yaml() {
    let f = fixture(THREE_HOSTS);
    assert!(!f.rendered.objects.is_empty());
    for o in &f.rendered.objects {
        let json: serde_json::Value = serde_json::from_str(&o.json).expect("json");
        let yaml: serde_json::Value = serde_saphyr::from_str(&o.yaml).expect("yaml");
        assert_eq!(json, yaml, "{}", o.file);
        assert!(
            json["apiVersion"].is_string() && json["kind"].is_string(),
            "{}",
            o.file
        );
    }
}

/// Each host's own objects (its agents' identities, its OverlayNode) say whose they are: they
/// leave the cluster with it, after its drain.
#[test]
fn each_hosts_own_objects_name_it() {
    let f = fixture(THREE_HOSTS);
    let names: Vec<&str> = f
        .cluster
        .spec
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let mut per_host = std::collections::BTreeMap::<&str, usize>::new();
    for o in &f.rendered.objects {
        let named = names
            .iter()
            .find(|h| o.file.contains(&format!("-{h}.")))
            .copied();
        assert_eq!(o.host.as_deref(), named, "{}", o.file);
        if let Some(h) = named {
            *per_host.entry(h).or_default() += 1;
        }
    }
    // Overlay: role, binding, OverlayNode; update agent: role, binding.
    assert_eq!(
        per_host.values().copied().collect::<Vec<_>>(),
        vec![5, 5, 5]
    );
}

#[test]
fn secrets_have_private_modes_and_workers_get_no_control_plane_keys() {
    let f = fixture(THREE_HOSTS);
    for t in &f.rendered.hosts {
        for (path, file) in &t.files {
            let private = path.ends_with(".key")
                || is_kubeconfig(path)
                || path.ends_with("/encryption-config.yaml");
            let expect = if private {
                0o600
            } else if path == strata_manifests::addons::UPDATE_ENGINE_CHECK_PATH {
                0o755
            } else {
                0o644
            };
            assert_eq!(file.mode, expect, "{}:{path}", t.host);
        }
    }
    let w1 = f
        .rendered
        .hosts
        .iter()
        .find(|t| t.host == "w1")
        .expect("w1");
    for p in w1.files.keys() {
        assert!(
            !p.contains("ca.key")
                && !p.contains("sa.key")
                && !p.contains("apiserver")
                && !p.contains("etcd")
                && !p.contains("encryption"),
            "worker w1 must not receive {p}"
        );
    }
    let cp = f
        .rendered
        .hosts
        .iter()
        .find(|t| t.host == "cp1")
        .expect("cp1");
    assert!(
        !cp.files.contains_key("/etc/kubernetes/pki/etcd/ca.key"),
        "etcd CA key stays home"
    );
    assert!(
        !cp.files
            .contains_key("/etc/kubernetes/pki/front-proxy-ca.key")
    );
    // Each host's kubelet identity is its own.
    let kubelet = |h: &str| {
        f.rendered
            .hosts
            .iter()
            .find(|t| t.host == h)
            .expect("host")
            .files["/etc/kubernetes/kubelet.conf"]
            .content
            .clone()
    };
    assert_ne!(kubelet("w1"), kubelet("w2"));
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let f = fixture(THREE_HOSTS);
    let root = f.dir.path().join("verify");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let mut units = 0;
    for t in &f.rendered.hosts {
        let dir = root.join(&t.host);
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Services first: verifying a path unit needs the service it starts.
        let mut unit_files: Vec<_> = t
            .files
            .iter()
            .filter(|(p, _)| {
                [".service", ".path", ".timer"]
                    .iter()
                    .any(|k| p.ends_with(k))
            })
            .collect();
        unit_files.sort_by_key(|(p, _)| (!p.ends_with(".service"), p.as_str()));
        for (path, file) in unit_files {
            // systemd checks that ExecStart exists: point it at stand-in executables.
            let text = String::from_utf8_lossy(&file.content)
                .replace(
                    strata_manifests::render::BIN_DIR,
                    &bin.display().to_string(),
                )
                .replace(
                    strata_manifests::addons::UPDATE_ENGINE_CHECK_PATH,
                    &bin.join("update-engine-check").display().to_string(),
                );
            for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
                let exe = line
                    .trim_start_matches("ExecStart=")
                    .split_whitespace()
                    .next()
                    .expect("exe");
                // Only Strata's own binaries get stand-ins, inside the test's directory; a
                // system program (/bin/sh, /bin/systemctl) must exist as it is.
                if Path::new(exe).starts_with(&bin) {
                    std::fs::write(exe, "#!/bin/sh\n").expect("stub");
                    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                } else {
                    assert!(Path::new(exe).exists(), "{}:{path}: {exe} missing", t.host);
                }
            }
            let name = path.rsplit('/').next().expect("name");
            let unit = dir.join(name);
            std::fs::write(&unit, text).expect("unit");
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .expect("systemd-analyze (package systemd)");
            let stderr = String::from_utf8_lossy(&out.stderr);
            // verify exits 0 on unknown keys; any line it prints is a complaint.
            let complaints: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                out.status.success() && complaints.is_empty(),
                "{}:{path}: {stderr}",
                t.host
            );
            units += 1;
        }
    }
    assert_eq!(
        units,
        7 + 3 + 3 + 3 * 8,
        "cp1: etcd and 3 control-plane units + 3 node units per host + per host the API \
         balancer, the pod \
         masquerade, the update agent's 2 path units and their 2 services, the update_engine \
         timer and its service"
    );
}

fn config_check(kind: &str, path: &std::path::Path) {
    let checker = common::kubernetes_bin().join("strata-config-check");
    let out = Command::new(&checker)
        .arg(kind)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", checker.display()));
    assert!(
        out.status.success(),
        "{kind} {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn component_configuration_decodes_strictly_with_the_upstream_1_20_types() {
    for text in [ONE_HOST, THREE_HOSTS] {
        let f = fixture(text);
        let out = f.dir.path().join("out");
        strata_manifests::render::write_out(&f.rendered, &out).expect("write");
        for t in &f.rendered.hosts {
            let host = out.join("hosts").join(&t.host).join("etc/kubernetes");
            config_check("kubelet", &host.join("kubelet/config.yaml"));
            config_check("kube-proxy", &host.join("kube-proxy/config.yaml"));
            if t.files.contains_key("/etc/kubernetes/audit-policy.yaml") {
                config_check("audit-policy", &host.join("audit-policy.yaml"));
            }
        }
    }
    // The checker is strict: a misspelt field fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPorts: 0\n",
    )
    .expect("write");
    let checker = common::kubernetes_bin().join("strata-config-check");
    let out = Command::new(checker)
        .arg("kubelet")
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a misspelt field must be rejected");
}

fn file(r: &Rendered, host: &str, path: &str) -> String {
    let t = r.hosts.iter().find(|t| t.host == host).expect("host");
    String::from_utf8_lossy(&t.files[path].content).into_owned()
}

#[test]
fn flags_follow_the_version_table() {
    for minor in strata_manifests::versions::SUPPORTED_MINORS {
        let text = ONE_HOST.replace(
            "  platform: {local: {}}",
            &format!("  kubernetes: {{version: \"1.{minor}.0\"}}\n  platform: {{local: {{}}}}"),
        );
        let f = fixture(&text);
        let kubelet = file(&f.rendered, "n1", "/etc/systemd/system/kubelet.service");
        let config = file(&f.rendered, "n1", "/etc/kubernetes/kubelet/config.yaml");
        let cm = file(
            &f.rendered,
            "n1",
            "/etc/systemd/system/kube-controller-manager.service",
        );
        let containerd = file(&f.rendered, "n1", "/etc/containerd/config.toml");
        assert_eq!(
            kubelet.contains("--container-runtime=remote"),
            minor <= 23,
            "1.{minor}"
        );
        assert_eq!(
            kubelet.contains("--container-runtime-endpoint="),
            minor <= 26,
            "1.{minor}"
        );
        assert_eq!(
            config.contains("containerRuntimeEndpoint:"),
            minor >= 27,
            "1.{minor}"
        );
        assert_eq!(cm.contains("--port=0"), minor <= 21, "1.{minor}");
        // Local machines share this computer's cgroups (v1 here): allowed explicitly where
        // the kubelet would refuse them.
        assert_eq!(
            config.contains("failCgroupV1: false"),
            minor >= 35,
            "1.{minor}"
        );
        assert!(containerd.contains(&strata_manifests::versions::pause_image(minor)));
    }
}

/// Pod security per release: PodSecurityPolicy and its objects through 1.24, Pod Security
/// admission (baseline enforced, restricted warned) from 1.25; control-plane taints by the
/// release's keys on the control-plane-only host, none on workers.
#[test]
fn pod_security_follows_the_version_table() {
    for minor in strata_manifests::versions::SUPPORTED_MINORS {
        let text = THREE_HOSTS.replace("1.20.2", &format!("1.{minor}.0"));
        let f = fixture(&text);
        let api = file(
            &f.rendered,
            "cp1",
            "/etc/systemd/system/kube-apiserver.service",
        );
        let psp = minor <= 24;
        assert_eq!(
            api.contains("--enable-admission-plugins=NodeRestriction,PodSecurityPolicy "),
            psp,
            "1.{minor}"
        );
        let psp_objects = f
            .rendered
            .objects
            .iter()
            .filter(|o| o.api_path.contains("/podsecuritypolicies/"))
            .count();
        assert_eq!(psp_objects, if psp { 2 } else { 0 }, "1.{minor}");
        let cp1 = f
            .rendered
            .hosts
            .iter()
            .find(|t| t.host == "cp1")
            .expect("cp1");
        let admission = cp1.files.get("/etc/kubernetes/admission.yaml");
        assert_eq!(admission.is_some(), !psp, "1.{minor}");
        if let Some(a) = admission {
            let a = String::from_utf8_lossy(&a.content);
            assert!(
                a.contains("enforce: baseline") && a.contains("warn: restricted"),
                "{a}"
            );
            assert!(api.contains("--admission-control-config-file=/etc/kubernetes/admission.yaml"));
        }
        let kubelet = file(&f.rendered, "cp1", "/etc/systemd/system/kubelet.service");
        let taints = kubelet
            .lines()
            .find_map(|l| l.trim().strip_prefix("--register-with-taints="))
            .unwrap_or_default()
            .trim_end_matches(" \\")
            .to_owned();
        let expected = match minor {
            ..=23 => "node-role.kubernetes.io/master:NoSchedule",
            24 => {
                "node-role.kubernetes.io/master:NoSchedule,node-role.kubernetes.io/control-plane:NoSchedule"
            }
            _ => "node-role.kubernetes.io/control-plane:NoSchedule",
        };
        assert_eq!(taints, expected, "1.{minor}");
        let w2 = file(&f.rendered, "w2", "/etc/systemd/system/kubelet.service");
        assert!(!w2.contains("node-role.kubernetes.io"), "1.{minor}: {w2}");
    }
}

/// The Node `apply` creates ahead of a kubelet carries the labels and taints that kubelet's
/// flags register (a kubelet keeps those of a Node that exists).
#[test]
fn the_node_created_ahead_says_what_the_kubelet_registers() {
    for minor in strata_manifests::versions::SUPPORTED_MINORS {
        let text = THREE_HOSTS.replace("1.20.2", &format!("1.{minor}.0"));
        let f = fixture(&text);
        for h in &f.cluster.spec.hosts {
            let kubelet = file(
                &f.rendered,
                h.name.as_str(),
                "/etc/systemd/system/kubelet.service",
            );
            let flag = |name: &str| {
                kubelet
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("--{name}=")))
                    .unwrap_or_default()
                    .trim_end_matches(" \\")
                    .to_owned()
            };
            let node = strata_manifests::pod_security::registered_node(h, minor);
            assert_eq!(node.metadata.name.as_deref(), Some(h.name.as_str()));
            let labels: Vec<String> = node
                .metadata
                .labels
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            assert_eq!(
                labels.join(","),
                flag("node-labels"),
                "1.{minor} {}",
                h.name
            );
            let taints: Vec<String> = node
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .iter()
                .map(|t| match &t.value {
                    Some(v) => format!("{}={v}:{}", t.key, t.effect),
                    None => format!("{}:{}", t.key, t.effect),
                })
                .collect();
            assert_eq!(
                taints.join(","),
                flag("register-with-taints"),
                "1.{minor} {}",
                h.name
            );
        }
    }
}

/// The room of a Node created ahead is what a kubelet reported for that host (measured:
/// a 1.20.2 kubelet on a local machine of this computer, 2 processors, MemTotal 24684084 kB).
#[test]
fn the_node_created_ahead_has_the_room_its_kubelet_reports() {
    let room = strata_manifests::pod_security::kubelet_room(2, 24_684_084).expect("known");
    let text = |m: Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        m.unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.0))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(text(room.capacity), "cpu=2,memory=24684084Ki,pods=110");
    assert_eq!(text(room.allocatable), "cpu=2,memory=24581684Ki,pods=110");
    // Unknown facts: no room claimed (the kubelet's first status gives it).
    assert!(strata_manifests::pod_security::kubelet_room(0, 24_684_084).is_none());
    assert!(strata_manifests::pod_security::kubelet_room(2, 0).is_none());
    for h in ["cp1", "w1"] {
        let f = fixture(THREE_HOSTS);
        assert!(
            file(&f.rendered, h, "/etc/kubernetes/kubelet/config.yaml").contains("maxPods: 110\n")
        );
    }
}

/// Cluster DNS per release: endpoints from EndpointSlices (argument and RBAC) from 1.21,
/// core/v1 Endpoints before, never both; its PodDisruptionBudget as policy/v1 from 1.21.
#[test]
fn cluster_dns_follows_the_version_table() {
    for minor in strata_manifests::versions::SUPPORTED_MINORS {
        let text = THREE_HOSTS.replace("1.20.2", &format!("1.{minor}.0"));
        let f = fixture(&text);
        let object = |path: &str| {
            f.rendered
                .objects
                .iter()
                .find(|o| o.api_path.ends_with(path))
                .unwrap_or_else(|| panic!("1.{minor}: no {path}"))
                .yaml
                .clone()
        };
        let role = object("/clusterroles/strata:dns");
        let deployment = object("/deployments/strata-dns");
        let slices = minor >= 21;
        assert_eq!(role.contains("endpointslices"), slices, "1.{minor}: {role}");
        assert_eq!(role.contains("- endpoints\n"), !slices, "1.{minor}: {role}");
        assert_eq!(
            deployment.contains("--endpoint-slices"),
            slices,
            "1.{minor}"
        );
        let pdb = object("/poddisruptionbudgets/strata-dns");
        let version = if slices {
            "policy/v1\n"
        } else {
            "policy/v1beta1\n"
        };
        assert!(
            pdb.contains(&format!("apiVersion: {version}")),
            "1.{minor}: {pdb}"
        );
    }
}

#[test]
fn write_out_refuses_planted_links_and_keeps_keys_private() {
    use std::os::unix::fs::symlink;
    let f = fixture(ONE_HOST);
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    let out = tempfile::tempdir().expect("tempdir");
    let victim = out.path().join("victim");
    std::fs::write(&victim, "keep").expect("write");
    // A link planted where the CA key goes.
    let key = out.path().join("hosts/n1/etc/kubernetes/pki/ca.key");
    std::fs::create_dir_all(key.parent().expect("dir")).expect("mkdir");
    symlink(&victim, &key).expect("link");
    let err = write_out(&f.rendered, out.path()).expect_err("a planted file link");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
    // A link planted as a directory on the way.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(out.path().join("hosts/n1/etc")).expect("mkdir");
    symlink(elsewhere.path(), out.path().join("hosts/n1/etc/kubernetes")).expect("link");
    let err = write_out(&f.rendered, out.path()).expect_err("a planted directory link");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).expect("dir").count(), 0);
    // An existing directory every user may write (without /tmp's sticky bit): refused.
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = write_out(&f.rendered, out.path()).expect_err("a directory anyone may write");
    assert!(err.to_string().contains("writable by every user"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).expect("dir").count(), 0);
    // A fresh directory: keys 0600, directories 0700.
    let out = tempfile::tempdir().expect("tempdir");
    write_out(&f.rendered, out.path()).expect("written");
    let pki = out.path().join("hosts/n1/etc/kubernetes/pki");
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join("ca.crt")), 0o644);
}

#[test]
fn registry_references_replace_the_images_strata_builds() {
    let built = fixture(ONE_HOST);
    let text = format!(
        "{ONE_HOST}  images:\n    pause: 10.0.0.1:5000/strata/pause:3.2\n    \
         overlay: 10.0.0.1:5000/strata/overlay:1\n    \
         dns: 10.0.0.1:5000/strata/dns:1\n    \
         updateOperator: 10.0.0.1:5000/strata/update-operator@sha256:{}\n",
        "0a".repeat(32)
    );
    let named = fixture(&text);
    let images = |r: &Rendered| -> Vec<String> {
        let mut v: Vec<String> = r
            .objects
            .iter()
            .flat_map(|o| {
                o.yaml
                    .lines()
                    .map(str::trim)
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.starts_with("image:"))
            .collect();
        v.sort();
        v
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        images(&built.rendered),
        [
            format!("image: strata.dev/dns:{version}"),
            format!("image: strata.dev/overlay:{version}"),
            format!("image: strata.dev/update-operator:{version}"),
            format!("image: strata.dev/update-operator:{version}"),
        ]
    );
    assert_eq!(
        images(&named.rendered),
        [
            "image: 10.0.0.1:5000/strata/dns:1".to_string(),
            "image: 10.0.0.1:5000/strata/overlay:1".to_string(),
            format!(
                "image: 10.0.0.1:5000/strata/update-operator@sha256:{}",
                "0a".repeat(32)
            ),
            format!(
                "image: 10.0.0.1:5000/strata/update-operator@sha256:{}",
                "0a".repeat(32)
            ),
        ]
    );
    let containerd = |r: &Rendered| file(r, "n1", "/etc/containerd/config.toml");
    assert!(containerd(&built.rendered).contains("sandbox_image = \"k8s.gcr.io/pause:3.2\""));
    assert!(
        containerd(&named.rendered).contains("sandbox_image = \"10.0.0.1:5000/strata/pause:3.2\"")
    );
}

/// What runs on each host of `c` (the plan's restart decisions need it).
fn running(c: &strata_manifests::Cluster) -> impl Fn(&str) -> Vec<&'static catalog::Spec> + '_ {
    move |host: &str| catalog::on_host_named(c, host)
}

/// The plan as `kind host path` lines.
fn shown(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| format!("{} {} {}", a.kind.sign(), a.host, a.path))
        .collect()
}

#[test]
fn plan_compares_with_what_was_applied() {
    let f = fixture(THREE_HOSTS);
    let want = AppliedState::of(&f.rendered);
    let fresh = plan(&want, &AppliedState::default(), running(&f.cluster));
    assert!(fresh.iter().all(|a| {
        [
            ActionKind::Create,
            ActionKind::Restart,
            ActionKind::Apply,
            ActionKind::Reencrypt,
        ]
        .contains(&a.kind)
    }));
    // Every started unit of every host starts from its new files.
    let restarts: Vec<&Action> = fresh
        .iter()
        .filter(|a| a.kind == ActionKind::Restart)
        .collect();
    assert!(
        restarts
            .iter()
            .any(|a| a.host == "cp1" && a.path == "etcd.service")
    );
    assert!(
        !restarts
            .iter()
            .any(|a| a.host == "w1" && a.path == "etcd.service")
    );
    assert!(plan(&want, &want, running(&f.cluster)).is_empty());

    // Drop w2 and give w1 another label: w1's kubelet unit changes and the kubelet restarts;
    // w2 is drained and deleted, then each of its files removed.
    let text = THREE_HOSTS
        .replace("  - {name: w2, address: 198.18.0.4, roles: [worker]}\n", "")
        .replace("labels: {zone: a}", "labels: {zone: b}");
    let c = common::cluster(&text);
    let r = render(&c, &f.state).expect("render");
    let next = AppliedState::of(&r);
    let planned = plan(&next, &want, running(&c));
    let (w2, others): (Vec<Action>, Vec<Action>) =
        planned.into_iter().partition(|a| a.host == "w2");
    assert_eq!(shown(&w2[..1]), ["drain and delete w2 Node w2"]);
    let removed: Vec<&str> = w2[1..]
        .iter()
        .filter(|a| a.kind == ActionKind::Remove)
        .map(|a| a.path.as_str())
        .collect();
    let files: Vec<&str> = want.hosts["w2"].keys().map(String::as_str).collect();
    assert_eq!(removed, files);
    assert_eq!(w2.len(), 1 + files.len());
    assert_eq!(
        shown(&others),
        [
            "~ w1 /etc/systemd/system/kubelet.service",
            "restart w1 kubelet.service",
            // w2's own overlay data and agents' identities are pruned from the cluster.
            "delete cluster /apis/overlay.strata.dev/v1alpha1/overlaynodes/w2",
            "delete cluster /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/strata:overlay:w2",
            "delete cluster /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/strata:update-agent:w2",
            "delete cluster /apis/rbac.authorization.k8s.io/v1/clusterroles/strata:overlay:w2",
            "delete cluster /apis/rbac.authorization.k8s.io/v1/clusterroles/strata:update-agent:w2",
        ]
    );
    assert_eq!(departed_hosts(&next, &want), ["w2"]);
    // A state file round-trips through JSON.
    let path = f.dir.path().join("state.json");
    want.save(&path).expect("save");
    assert_eq!(AppliedState::load(&path).expect("load"), want);
    std::fs::write(&path, "{not json").expect("write");
    assert!(
        AppliedState::load(&path)
            .expect_err("bad")
            .to_string()
            .contains("not a Strata state file")
    );
}

/// A one-host cluster's state before and after `strata certs renew NAMES`.
fn renewed(names: &[&str]) -> (Fixture, AppliedState, AppliedState) {
    let f = fixture(ONE_HOST);
    let before = AppliedState::of(&f.rendered);
    let ctx = Context {
        file: "test.yaml".into(),
        base_dir: f.dir.path().to_path_buf(),
        home: None,
    };
    let inputs = strata_manifests::pki::inputs(&f.cluster, &ctx).expect("inputs");
    strata_pki::renew(
        &inputs,
        &f.state,
        time::OffsetDateTime::now_utc(),
        &strata_pki::Selection::Names(names.iter().map(|n| (*n).to_owned()).collect()),
    )
    .expect("renew");
    let after = AppliedState::of(&render(&f.cluster, &f.state).expect("render"));
    (f, before, after)
}

/// Restarts follow from which component reads a file: a renewed apiserver-etcd-client
/// certificate restarts the API server and nothing else, even on a host that runs every
/// component (etcd's own files and the etcd tools are not touched).
#[test]
fn renewing_the_apiserver_etcd_client_certificate_restarts_only_the_api_server() {
    let (f, before, after) = renewed(&["apiserver-etcd-client"]);
    assert_eq!(
        shown(&plan(&after, &before, running(&f.cluster))),
        [
            "~ n1 /etc/kubernetes/pki/apiserver-etcd-client.crt",
            "restart n1 kube-apiserver.service"
        ]
    );
    // The CA every component reads restarts each of them once.
    let users = &after.hosts["n1"]["/etc/kubernetes/pki/ca.crt"].users;
    assert!(users.contains(&catalog::Component::Kubelet), "{users:?}");
    assert!(
        users.contains(&catalog::Component::KubeApiserver),
        "{users:?}"
    );
    assert!(!users.contains(&catalog::Component::Etcd), "{users:?}");
}

/// The node-local balancer reads its renewed identity while it runs, and etcd its serving
/// and peer certificates for each new connection: renewing them writes the files and
/// restarts nothing (a restarted balancer refuses the node's API connections for a moment, a
/// restarted etcd leader fails the reads in flight).
#[test]
fn renewing_the_balancers_and_etcds_certificates_restarts_nothing() {
    let (f, before, after) = renewed(&["api-balancer", "etcd/server-n1", "etcd/peer-n1"]);
    assert_eq!(
        shown(&plan(&after, &before, running(&f.cluster))),
        [
            "~ n1 /etc/kubernetes/pki/etcd/peer.crt",
            "~ n1 /etc/kubernetes/pki/etcd/server.crt",
            "~ n1 /etc/strata/api-balancer/client.crt"
        ]
    );
}

/// Several API servers: each, told to stop, fails /readyz for five seconds while it still
/// serves, so that the balancers leave it first; one API server stops at once.
#[test]
fn several_api_servers_leave_the_balancers_before_they_stop() {
    let unit = |text: &str| {
        let f = fixture(text);
        let file = &f.rendered.hosts[0].files["/etc/systemd/system/kube-apiserver.service"];
        String::from_utf8(file.content.clone()).expect("utf-8")
    };
    let one = unit(ONE_HOST);
    assert!(!one.contains("shutdown-delay-duration"), "{one}");
    assert!(one.contains("TimeoutStopSec=5"), "{one}");
    let two = ONE_HOST.replace(
        "  - {name: n1, address: 198.18.0.2, roles: [etcd, control-plane, worker]}\n",
        "  - {name: n1, address: 198.18.0.2, roles: [etcd, control-plane, worker]}\n  \
         - {name: n2, address: 198.18.0.3, roles: [etcd, control-plane, worker]}\n",
    );
    let two = unit(&two);
    assert!(two.contains("--shutdown-delay-duration=5s"), "{two}");
    assert!(two.contains("TimeoutStopSec=10"), "{two}");
}

/// `strata plan` renders with a state directory kept in memory: the PKI it needs is
/// generated, and nothing reaches the disk.
#[test]
fn a_pki_kept_in_memory_renders_and_writes_nothing() {
    let c = common::cluster(ONE_HOST);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    let state = strata_pki::StateDir::in_memory(&root);
    let ctx = Context {
        file: "test.yaml".into(),
        base_dir: dir.path().to_path_buf(),
        home: None,
    };
    let inputs = strata_manifests::pki::inputs(&c, &ctx).expect("inputs");
    let out = strata_pki::generate(&inputs, &state, time::OffsetDateTime::now_utc()).expect("pki");
    assert!(out.created().count() > 10);
    let r = render(&c, &state).expect("render");
    assert!(r.hosts[0].files.contains_key("/etc/kubernetes/pki/ca.crt"));
    assert!(!root.exists(), "the state directory was created");
}

/// The host-side update_engine check, run as rendered with a stand-in `busctl` that answers
/// like update_engine would (a mock: no host here runs update_engine): only a status of
/// UPDATE_STATUS_UPDATED_NEED_REBOOT leaves the sentinel; no update_engine leaves nothing.
#[test]
fn the_update_engine_check_leaves_the_sentinel_only_when_a_reboot_is_due() {
    let f = fixture(ONE_HOST);
    let script = &f.rendered.hosts[0].files[strata_manifests::addons::UPDATE_ENGINE_CHECK_PATH];
    assert_eq!(script.mode, 0o755);
    let dir = tempfile::tempdir().expect("tempdir");
    let check = dir.path().join("check");
    std::fs::write(&check, &script.content).expect("write");
    let stub = dir.path().join("bin");
    std::fs::create_dir(&stub).expect("mkdir");
    for (answer, due) in [
        (
            "echo 'xdssx 0 1 \"UPDATE_STATUS_UPDATED_NEED_REBOOT\" \"3033.2.4\" 0'",
            true,
        ),
        ("echo 'xdssx 0 0 \"UPDATE_STATUS_IDLE\" \"\" 0'", false),
        (
            "echo 'Call failed: The name com.coreos.update1 was not provided' >&2; exit 1",
            false,
        ),
    ] {
        let busctl = stub.join("busctl");
        std::fs::write(&busctl, format!("#!/bin/sh\n{answer}\n")).expect("stub");
        std::fs::set_permissions(&busctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let run = dir.path().join("run");
        let _ = std::fs::remove_dir_all(&run);
        let out = Command::new("sh")
            .arg(&check)
            .env("PATH", format!("{}:/usr/bin:/bin", stub.display()))
            .env("DIR", &run)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{answer}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(run.join("reboot-required").exists(), due, "{answer}");
    }
}
