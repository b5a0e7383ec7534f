//! Validation of whole Cluster files: located errors, examples, round trips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use strata_manifests::{Context, Report, load_str};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A home directory holding ~/.ssh/id_ed25519 with the given mode.
fn home_with_key(mode: u32) -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    let ssh = home.path().join(".ssh");
    std::fs::create_dir(&ssh).expect("mkdir");
    let key = ssh.join("id_ed25519");
    std::fs::write(
        &key,
        "not a real key; only its presence and mode are checked\n",
    )
    .expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
    home
}

fn ctx(file: &str, home: &Path) -> Context {
    Context {
        file: file.into(),
        base_dir: std::env::temp_dir(),
        home: Some(home.to_path_buf()),
    }
}

fn errors(r: &Report) -> Vec<(usize, String)> {
    r.errors()
        .map(|d| (d.location.map(|l| l.line).unwrap_or(0), d.path.clone()))
        .collect()
}

#[test]
fn five_mistakes_give_five_located_errors() {
    let home = home_with_key(0o600);
    let text = std::fs::read_to_string(repo_file("manifests/tests/data/five-mistakes.yaml"))
        .expect("read");
    let report = load_str(&text, &ctx("five-mistakes.yaml", home.path())).expect_err("invalid");
    let shown = report.to_string();
    assert_eq!(
        errors(&report),
        vec![
            (7, "spec.kubernetes.version".into()),
            (12, "spec.hosts[0].lables".into()),
            (13, "spec.hosts[1].name".into()),
            (15, "spec.hosts[1].roles[0]".into()),
            (18, "spec.network.serviceCIDR".into()),
        ],
        "{shown}"
    );
    // Every line names file:line:column and the hints point at the fix.
    for needle in [
        "five-mistakes.yaml:7:14: error: spec.kubernetes.version: Kubernetes 1.19.4 is not supported",
        "five-mistakes.yaml:12:7: error: spec.hosts[0].lables: unknown field `lables`",
        "did you mean `labels`?",
        "duplicate host name `cp1` (also at line 9)",
        "`master` is not allowed here",
        "allowed: etcd, control-plane, worker",
        "service CIDR 10.96.0.0/12 overlaps the pod CIDR 10.0.0.0/8",
        "5 errors, 0 warnings",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
}

#[test]
fn examples_are_valid() {
    let home = home_with_key(0o600);
    for name in ["examples/ssh-minimal.yaml", "examples/local.yaml"] {
        let text = std::fs::read_to_string(repo_file(name)).expect("read");
        let loaded = load_str(&text, &ctx(name, home.path()))
            .unwrap_or_else(|r| panic!("{name} is invalid:\n{r}"));
        assert_eq!(loaded.report.diagnostics, vec![], "{name}");
        assert_eq!(loaded.cluster.spec.hosts.len(), 3);
        assert_eq!(
            loaded.cluster.api_endpoint().as_deref(),
            Some("198.18.0.2:6443")
        );
    }
    let name = "examples/ha-local.yaml";
    let text = std::fs::read_to_string(repo_file(name)).expect("read");
    let loaded =
        load_str(&text, &ctx(name, home.path())).unwrap_or_else(|r| panic!("{name}:\n{r}"));
    assert_eq!(loaded.report.diagnostics, vec![], "{name}");
    assert_eq!(
        loaded.cluster.api_endpoint().as_deref(),
        Some("198.18.0.100:6443")
    );
}

#[test]
fn private_key_must_exist_and_be_private() {
    let text = std::fs::read_to_string(repo_file("examples/ssh-minimal.yaml")).expect("read");
    let open = home_with_key(0o644);
    let r = load_str(&text, &ctx("c.yaml", open.path())).expect_err("mode 0644");
    let shown = r.to_string();
    assert!(
        shown.contains("accessible by other users (mode 0644)"),
        "{shown}"
    );
    assert!(shown.contains("chmod 600"), "{shown}");

    let empty = tempfile::tempdir().expect("tempdir");
    let r = load_str(&text, &ctx("c.yaml", empty.path())).expect_err("missing key");
    assert!(r.to_string().contains("does not exist"), "{r}");
    assert_eq!(errors(&r), vec![(7, "spec.ssh.privateKey".into())], "{r}");
}

fn minimal(hosts: &str, extra: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: t\nspec:\n  \
         platform: {{local: {{}}}}\n  hosts:\n{hosts}{extra}"
    )
}

fn check(text: &str) -> Result<strata_manifests::Loaded, Report> {
    let home = home_with_key(0o600);
    load_str(text, &ctx("t.yaml", home.path()))
}

#[test]
fn even_etcd_members_warn_but_pass() {
    let hosts =
        "    - {name: a, roles: [etcd, control-plane]}\n    - {name: b, roles: [etcd, worker]}\n";
    let loaded = check(&minimal(hosts, "")).expect("valid with a warning");
    let w: Vec<_> = loaded.report.warnings().collect();
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("even number"), "{}", w[0].message);
}

#[test]
fn a_cluster_without_workers_warns_that_workloads_cannot_run() {
    let hosts = "    - {name: a, roles: [etcd, control-plane]}\n";
    let loaded = check(&minimal(hosts, "")).expect("valid with a warning");
    let w: Vec<_> = loaded.report.warnings().collect();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].message.contains("no host has the role worker"),
        "{}",
        w[0].message
    );
    let one_host = "    - {name: a, roles: [etcd, control-plane, worker]}\n";
    let loaded = check(&minimal(one_host, "")).expect("valid");
    assert_eq!(loaded.report.warnings().count(), 0);
}

#[test]
fn roles_are_required_in_the_cluster() {
    let r = check(&minimal("    - {name: a, roles: [worker]}\n", "")).expect_err("no etcd, no cp");
    let s = r.to_string();
    assert!(s.contains("no host has the role etcd"), "{s}");
    assert!(s.contains("no host has the role control-plane"), "{s}");
    let r = check(&minimal("    - {name: a, roles: []}\n", "")).expect_err("empty roles");
    assert!(r.to_string().contains("has no roles"), "{r}");
}

#[test]
fn structural_and_format_problems_are_all_reported() {
    let text = minimal(
        "    - {name: Bad_Name, roles: [etcd, control-plane], address: 300.1.1.1}\n    - {name: b, address: 198.18.0.2, roles: [worker], ssh: {port: x, hostKey: MD5:x}}\n",
        "  network:\n    podCIDR: 10.244.0.1/16\n    overlay: {vni: 0}\n  pki:\n    keyAlgorithm: rsa-1024\n    caValidity: 365d\n  addons:\n    updateOperator:\n      policy:\n        maxUnavailable: 150%\n        windows: [{start: '25:00', duration: 4h, timeZone: Mars/Base, days: [Sat, Caturday]}]\n  images:\n    overlay: Strata/Overlay:1\n",
    );
    let r = check(&text).expect_err("invalid");
    let s = r.to_string();
    let expect = [
        "spec.hosts[0].name: `Bad_Name` is not a DNS-1123 label",
        "for example `bad-name`",
        "spec.hosts[0].address: `300.1.1.1` is not a valid IPv4 address",
        "spec.hosts[1].ssh.port: expected integer, found a string",
        "spec.hosts[1].ssh.hostKey: `MD5:x` is not a SHA256 fingerprint",
        "spec.network.podCIDR: `10.244.0.1/16` has bits set after the /16 prefix; did you mean 10.244.0.0/16?",
        "spec.network.overlay.vni: must be at least 1",
        "spec.pki.keyAlgorithm: `rsa-1024` is not allowed here",
        "spec.pki.caValidity: `365d`: days are not a unit here; write hours, e.g. 8760h",
        "spec.addons.updateOperator.policy.maxUnavailable: `150%` is not a percentage",
        "windows[0].start: `25:00` is not a time of day",
        "windows[0].timeZone: `Mars/Base` is not an IANA time zone",
        "windows[0].days[1]: `Caturday` is not allowed here",
        "spec.images.overlay: `Strata/Overlay:1` is not an image reference",
    ];
    for e in expect {
        assert!(s.contains(e), "missing {e:?} in:\n{s}");
    }
    assert_eq!(r.errors().count(), expect.len() - 1, "{s}");
    assert!(r.errors().all(|d| d.location.is_some()), "{s}");
}

#[test]
fn addresses_must_be_unique_and_outside_cluster_ranges() {
    let hosts = "    - {name: a, address: 198.18.0.2, roles: [etcd, control-plane]}\n    - {name: b, address: 198.18.0.2, roles: [worker]}\n    - {name: c, address: 10.244.3.3, roles: [worker]}\n    - {name: d, address: 10.96.0.10, roles: [worker]}\n";
    let r = check(&minimal(hosts, "")).expect_err("invalid");
    let s = r.to_string();
    assert!(
        s.contains("address 198.18.0.2 is also used by host `a` (line 8)"),
        "{s}"
    );
    assert!(s.contains("10.244.3.3 lies inside the pod CIDR"), "{s}");
    assert!(s.contains("10.96.0.10 lies inside the service CIDR"), "{s}");
    assert_eq!(r.errors().count(), 3, "{s}");
}

#[test]
fn ssh_hosts_need_addresses_and_yaml_problems_are_located() {
    let text = "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  hosts:\n    - {name: a, roles: [etcd, control-plane]}\n";
    let r = check(text).expect_err("no address");
    assert!(r.to_string().contains("host `a` has no address"), "{r}");

    let r =
        check("apiVersion: strata.dev/v1alpha1\nkind: Cluster\nkind: Cluster\n").expect_err("dup");
    let s = r.to_string();
    assert!(
        s.contains("t.yaml:3:1: error: kind: duplicate key `kind` (first defined at line 2)"),
        "{s}"
    );
    assert!(s.contains("missing required field `metadata`"), "{s}");

    let r = check("spec: [\n").expect_err("syntax");
    assert!(
        r.to_string().contains("t.yaml:2:1: error: YAML syntax"),
        "{r}"
    );
    let r = check("").expect_err("empty");
    assert!(r.to_string().contains("the file is empty"), "{r}");
    let r = check(&minimal(
        "    - {name: a, roles: [etcd, control-plane]}\n",
        "  kubernetes: {version: 1.20}\n",
    ))
    .expect_err("float");
    assert!(r.to_string().contains("put it in quotes"), "{r}");
}

#[test]
fn written_yaml_round_trips() {
    let home = home_with_key(0o600);
    let text = std::fs::read_to_string(repo_file("examples/local.yaml")).expect("read");
    let first = load_str(&text, &ctx("a.yaml", home.path()))
        .expect("valid")
        .cluster;
    let written = serde_saphyr::to_string(&first).expect("serialize");
    let again = load_str(&written, &ctx("b.yaml", home.path()))
        .unwrap_or_else(|r| panic!("{r}\n{written}"))
        .cluster;
    assert_eq!(first, again, "{written}");
}

#[test]
fn local_hosts_without_addresses_get_free_ones() {
    let hosts = "    - {name: a, roles: [etcd, control-plane]}\n    - {name: b, address: 198.18.0.3, roles: [worker]}\n    - {name: c, roles: [worker]}\n";
    let c = check(&minimal(hosts, "")).expect("valid").cluster;
    let addrs: Vec<String> = c
        .spec
        .hosts
        .iter()
        .map(|h| {
            h.address
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(addrs, ["198.18.0.2", "198.18.0.3", "198.18.0.4"]);
    assert_eq!(c.api_endpoint().as_deref(), Some("198.18.0.2:6443"));
}

#[test]
fn a_local_range_gives_the_addresses_and_holds_them_all() {
    let with = |range: &str, hosts: &str| {
        minimal(hosts, "").replace("local: {}", &format!("local: {{range: {range}}}"))
    };
    let two = "    - {name: a, roles: [etcd, control-plane]}\n    - {name: b, roles: [worker]}\n";
    let c = check(&with("198.18.4.0/24", two)).expect("valid").cluster;
    let addrs: Vec<String> = c
        .spec
        .hosts
        .iter()
        .filter_map(|h| h.address.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(addrs, ["198.18.4.2", "198.18.4.3"]);
    let strata_manifests::model::Platform::Local(local) = &c.spec.platform else {
        panic!("local platform");
    };
    assert_eq!(local.range().to_string(), "198.18.4.0/24");
    assert_eq!(local.machine_prefix(), 24);
    let outside = "    - {name: a, address: 198.18.0.2, roles: [etcd, control-plane]}\n";
    let s = check(&with("198.18.4.0/24", outside))
        .expect_err("outside")
        .to_string();
    assert!(
        s.contains("198.18.0.2 is outside the cluster's local range 198.18.4.0/24"),
        "{s}"
    );
    for bad in ["10.0.0.0/24", "198.18.4.0/30", "fd00::/64"] {
        let s = check(&with(bad, two)).expect_err(bad).to_string();
        assert!(s.contains("spec.platform.local.range"), "{bad}: {s}");
    }
    let three = format!(
        "{two}    - {{name: c, roles: [worker]}}\n    - {{name: d, roles: [worker]}}\n    - {{name: e, roles: [worker]}}\n    - {{name: f, roles: [worker]}}\n"
    );
    let s = check(&with("198.18.4.0/29", &three))
        .expect_err("full")
        .to_string();
    assert!(
        s.contains("198.18.4.0/29 has room for 5 machines; the cluster has 6"),
        "{s}"
    );
}

#[test]
fn local_subnets_keep_their_router_address_free() {
    let two = |prefix: &str, b: &str| {
        minimal(
            &format!(
                "    - {{name: a, address: 198.18.0.2, roles: [etcd, control-plane]}}\n    \
                 - {{name: b, address: {b}, roles: [worker]}}\n"
            ),
            "",
        )
        .replace("local: {}", &format!("local: {{prefixLength: {prefix}}}"))
    };
    let c = check(&two("24", "198.18.1.2"))
        .expect("two subnets")
        .cluster;
    let strata_manifests::model::Platform::Local(local) = &c.spec.platform else {
        panic!("local platform");
    };
    assert_eq!(local.prefix_length, Some(24));
    assert_eq!(local.machine_prefix(), 24);
    let s = check(&two("24", "198.18.1.1"))
        .expect_err("the router's address")
        .to_string();
    assert!(
        s.contains("198.18.1.1 is the network, broadcast or router address of its local subnet 198.18.1.0/24"),
        "{s}"
    );
    let s = check(&two("31", "198.18.1.2"))
        .expect_err("too long")
        .to_string();
    assert!(s.contains("prefixLength"), "{s}");
}

#[test]
fn reserved_labels_the_kubelet_would_refuse_are_errors() {
    let hosts = "    - name: a\n      roles: [etcd, control-plane]\n      labels: {node-role.kubernetes.io/master: '', topology.kubernetes.io/zone: z1, node.kubernetes.io/pool: p, example.com/tier: db}\n";
    let r = check(&minimal(hosts, "")).expect_err("reserved label");
    let s = r.to_string();
    assert!(
        s.contains("label `node-role.kubernetes.io/master` is in a reserved namespace"),
        "{s}"
    );
    assert_eq!(r.errors().count(), 1, "{s}");
}

#[test]
fn asset_downloads_must_be_pinned_and_encrypted() {
    let host = "    - {name: a, roles: [etcd, control-plane]}\n";
    let r = check(&minimal(
        host,
        "  assets: {source: \"https://assets.example/strata/1.20.2.tar.gz\"}\n",
    ))
    .expect_err("no sha256");
    assert!(r.to_string().contains("needs spec.assets.sha256"), "{r}");
    let r = check(&minimal(
        host,
        "  assets: {source: \"http://assets.example/x/\", sha256: \"abc\"}\n",
    ))
    .expect_err("bad digest, plain http");
    let s = r.to_string();
    assert!(s.contains("is not a sha256 digest"), "{s}");
    assert!(s.contains("plain http is only allowed"), "{s}");
    let pinned = format!(
        "  assets: {{source: \"http://127.0.0.1:8080/x/\", sha256: \"{}\"}}\n",
        "a".repeat(64)
    );
    check(&minimal(host, &pinned)).expect("loopback http with a pin");
    let r = check(&minimal(
        host,
        "  assets: {source: upstream, mirror: \"https://mirror.example/releases\"}\n",
    ))
    .expect_err("upstream carries no Strata image");
    let s = r.to_string();
    assert!(
        s.contains(
            "`source: upstream` carries no overlay image and spec.images.overlay names none"
        ),
        "{s}"
    );
    assert!(
        s.contains("carries no update-operator image and spec.images.updateOperator names none"),
        "{s}"
    );
    assert!(
        s.contains("carries no dns image and spec.images.dns names none"),
        "{s}"
    );
    check(&minimal(
        host,
        "  assets: {source: upstream, mirror: \"https://mirror.example/releases\"}\n  \
         images: {overlay: r.example/strata/overlay:1}\n  \
         addons: {updateOperator: {enabled: false}, dns: {enabled: false}}\n",
    ))
    .expect("official releases through a mirror, Strata's image from a registry");
    let r = check(&minimal(
        host,
        "  assets: {source: ./assets, mirror: \"https://mirror.example/releases\"}\n",
    ))
    .expect_err("mirror without upstream");
    assert!(
        r.to_string().contains("only used with `source: upstream`"),
        "{r}"
    );
}

#[test]
fn agent_and_bastion_are_part_of_the_ssh_settings() {
    let home = home_with_key(0o600);
    let text = "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  \
                platform: {ssh: {}}\n  ssh:\n    agent: true\n    privateKey: /nonexistent\n    \
                bastion: {address: 198.51.100.1, user: jump, hostKey: \"SHA256:UR4FriShGBHfY2hgZX6whiTzOhf9v2ql7RT3QLjUNVA\"}\n  \
                hosts:\n  - {name: a, address: 10.0.0.5, roles: [etcd, control-plane]}\n";
    let loaded = load_str(text, &ctx("t.yaml", home.path())).expect("agent: no key file needed");
    let c = &loaded.cluster;
    let ssh = c.ssh_for(&c.spec.hosts[0]);
    assert!(ssh.agent);
    let b = ssh.bastion.expect("bastion");
    assert_eq!(
        (b.address.as_str(), b.port, b.user.as_deref()),
        ("198.51.100.1", 22, Some("jump"))
    );
    let r = load_str(
        &text.replace("user: jump", "usr: jump"),
        &ctx("t.yaml", home.path()),
    )
    .expect_err("typo");
    assert!(r.to_string().contains("did you mean `user`"), "{r}");
}

#[test]
fn a_virtual_ip_is_the_endpoint_and_never_a_host_address() {
    // Local hosts get addresses around it; the admin kubeconfig names it.
    let hosts = "    - {name: a, roles: [etcd, control-plane]}\n    - {name: b, roles: [etcd, control-plane]}\n    - {name: c, roles: [etcd, control-plane]}\n";
    let c = check(&minimal(hosts, "  controlPlane: {vip: 198.18.0.3}\n"))
        .expect("valid")
        .cluster;
    let addrs: Vec<String> = c
        .spec
        .hosts
        .iter()
        .filter_map(|h| h.address.as_ref().map(|a| a.to_string()))
        .collect();
    assert_eq!(addrs, ["198.18.0.2", "198.18.0.4", "198.18.0.5"]);
    assert_eq!(c.api_endpoint().as_deref(), Some("198.18.0.3:6443"));
    assert_eq!(c.first_api_server().as_deref(), Some("198.18.0.2:6443"));

    // A host's own address, or one of the cluster's ranges: refused, located.
    let hosts = "    - {name: a, address: 198.18.0.2, roles: [etcd, control-plane]}\n";
    let r = check(&minimal(hosts, "  controlPlane: {vip: 198.18.0.2}\n")).expect_err("host's");
    let s = r.to_string();
    assert!(
        s.contains("virtual IP 198.18.0.2 is host a's own address"),
        "{s}"
    );
    assert_eq!(errors(&r), vec![(9, "spec.controlPlane.vip".into())], "{s}");
    let r = check(&minimal(hosts, "  controlPlane: {vip: 10.96.0.20}\n")).expect_err("range");
    assert!(
        r.to_string().contains("inside the pod or service CIDR"),
        "{r}"
    );
    // Not an IPv4 address: the schema says so.
    let r = check(&minimal(hosts, "  controlPlane: {vip: 'fd00::9'}\n")).expect_err("v6");
    assert!(r.to_string().contains("vip"), "{r}");
    // An endpoint (an external load balancer) stays what clients use.
    let c = check(&minimal(
        hosts,
        "  controlPlane: {vip: 198.18.0.9, endpoint: 'lb.example.com:443'}\n",
    ))
    .expect("valid")
    .cluster;
    assert_eq!(c.api_endpoint().as_deref(), Some("lb.example.com:443"));
}
