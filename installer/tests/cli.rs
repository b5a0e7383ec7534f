//! The `strata` binary as users and CI run it: exit codes, messages, files written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn home_with_key() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(home.path().join(".ssh")).expect("mkdir");
    let key = home.path().join(".ssh/id_ed25519");
    std::fs::write(&key, "placeholder\n").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    home
}

fn strata(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("HOME", home)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run strata")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_reports_five_located_errors_and_fails() {
    let home = home_with_key();
    let file = repo("manifests/tests/data/five-mistakes.yaml");
    let out = strata(
        &["validate", "-f", &file.display().to_string()],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("five-mistakes.yaml:") && l.contains(": error: "))
        .collect();
    assert_eq!(located.len(), 5, "{err}");
    for l in located {
        // file:line:column: error: field.path: message
        let rest = l.split("five-mistakes.yaml:").nth(1).expect("location");
        let mut parts = rest.splitn(3, ':');
        assert!(
            parts.next().and_then(|n| n.parse::<usize>().ok()).is_some(),
            "{l}"
        );
        assert!(
            parts.next().and_then(|n| n.parse::<usize>().ok()).is_some(),
            "{l}"
        );
    }
    assert!(err.contains("5 errors, 0 warnings"), "{err}");
}

#[test]
fn validate_accepts_the_examples() {
    let home = home_with_key();
    for f in ["examples/ssh-minimal.yaml", "examples/local.yaml"] {
        let out = strata(
            &["validate", "-f", &repo(f).display().to_string()],
            home.path(),
        );
        assert!(out.status.success(), "{f}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid: cluster"), "{f}");
    }
}

#[test]
fn validate_json_output_is_machine_readable() {
    let home = home_with_key();
    let file = repo("manifests/tests/data/five-mistakes.yaml");
    let out = strata(
        &[
            "validate",
            "--output",
            "json",
            "-f",
            &file.display().to_string(),
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    let diags = v["diagnostics"].as_array().expect("list");
    assert_eq!(diags.len(), 5);
    assert!(diags.iter().all(|d| d["location"]["line"].is_u64()));
}

#[test]
fn validate_names_a_missing_file() {
    let home = home_with_key();
    let out = strata(
        &["validate", "-f", "/nonexistent/cluster.yaml"],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/cluster.yaml: error: cannot read the file"));
}

#[test]
fn init_without_a_terminal_points_to_the_alternatives() {
    let home = home_with_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("c.yaml");
    let out = strata(
        &["init", "-o", &out_file.display().to_string()],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--non-interactive"), "{err}");
    assert!(err.contains("examples/"), "{err}");
    assert!(!out_file.exists());
}

#[test]
fn init_non_interactive_writes_a_valid_file_and_refuses_bad_answers() {
    let home = home_with_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    let f = file.display().to_string();
    let out = strata(
        &[
            "init",
            "--non-interactive",
            "-o",
            &f,
            "--name",
            "ci",
            "--platform",
            "ssh",
            "--host",
            "cp1@198.18.0.2:etcd,control-plane",
            "--host",
            "w1@198.18.0.3:worker",
        ],
        home.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = strata(&["validate", "-f", &f], home.path());
    assert!(check.status.success(), "{}", text(&check.stderr));

    // Existing file: refused without --force.
    let again = strata(
        &[
            "init",
            "--non-interactive",
            "-o",
            &f,
            "--name",
            "ci",
            "--host",
            "a@198.18.0.9:etcd,control-plane",
        ],
        home.path(),
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("--force"));

    // Invalid answers: the full report, and nothing written.
    let bad = dir.path().join("bad.yaml");
    let out = strata(
        &[
            "init",
            "--non-interactive",
            "-o",
            &bad.display().to_string(),
            "--name",
            "ci",
            "--host",
            "cp1@198.18.0.2:etcd,control-plane",
            "--host",
            "cp1@198.18.0.2:worker",
            "--pod-cidr",
            "10.96.0.0/16",
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("duplicate host name `cp1`"), "{err}");
    assert!(err.contains("also used by host `cp1`"), "{err}");
    assert!(err.contains("overlaps the pod CIDR"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn schema_and_completions_print() {
    let home = home_with_key();
    let out = strata(&["schema"], home.path());
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json schema");
    assert_eq!(schema["title"], "Strata Cluster");
    assert!(schema["$defs"]["Host"]["properties"]["roles"].is_object());
    for shell in ["bash", "zsh", "fish"] {
        let out = strata(&["completions", shell], home.path());
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("validate") && script.contains("init"),
            "{shell}"
        );
    }
}

#[test]
fn certs_generate_check_and_renew() {
    let home = home_with_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    std::fs::copy(repo("examples/local.yaml"), &file).expect("copy");
    let f = file.display().to_string();
    // A state directory created beforehand with a loose mode is tightened.
    std::fs::create_dir(dir.path().join("local")).expect("mkdir");
    std::fs::set_permissions(
        dir.path().join("local"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");

    let out = strata(&["certs", "generate", "-f", &f], home.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let so = text(&out.stdout);
    assert!(so.contains("43 created, 0 re-issued, 0 kept"), "{so}");
    // Default state directory: next to the file, named after the cluster.
    let state = dir.path().join("local");
    let mode = |p: &str| {
        std::fs::metadata(state.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("pki/ca.key"), 0o600);
    assert_eq!(mode("auth/kubeconfig"), 0o600);
    assert_eq!(mode("pki"), 0o700);
    assert_eq!(mode(""), 0o700);

    let again = strata(&["certs", "generate", "-f", &f], home.path());
    assert!(text(&again.stdout).contains("0 created, 0 re-issued, 43 kept"));

    let check = strata(&["certs", "check", "-f", &f], home.path());
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("all 27 certificates valid for at least 30 days"));
    // Leaves live a year: asking for 400 days of margin fails and says what to do.
    let strict = strata(
        &["certs", "check", "-f", &f, "--within", "400d"],
        home.path(),
    );
    assert_eq!(strict.status.code(), Some(1));
    assert!(text(&strict.stdout).contains("expires within 400 days"));
    assert!(text(&strict.stderr).contains("strata certs renew"));

    let renew = strata(&["certs", "renew", "-f", &f, "apiserver"], home.path());
    assert!(renew.status.success(), "{}", text(&renew.stderr));
    assert!(text(&renew.stdout).contains("re-issued  apiserver: renewed"));
    let bad = strata(&["certs", "renew", "-f", &f, "etcd/ca"], home.path());
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("never touches a CA"),
        "{}",
        text(&bad.stderr)
    );
    let none = strata(&["certs", "renew", "-f", &f], home.path());
    assert_eq!(none.status.code(), Some(2), "NAME or --all is required");

    // kubeconfig --out over a file anyone may read: a new private file takes its place.
    let copy = dir.path().join("admin.kubeconfig");
    std::fs::write(&copy, "old\n").expect("write");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = strata(
        &["kubeconfig", "-f", &f, "--out", &copy.display().to_string()],
        home.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&copy).expect("copy").permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&copy)
            .expect("copy")
            .contains("client-key-data")
    );

    // --state-dir puts the PKI elsewhere.
    let other = dir.path().join("elsewhere");
    let out = strata(
        &[
            "certs",
            "generate",
            "-f",
            &f,
            "--state-dir",
            &other.display().to_string(),
        ],
        home.path(),
    );
    assert!(out.status.success());
    assert!(other.join("pki/ca.crt").exists());
}

/// Every file below `dir`, with its size (what "nothing written" is compared on).
fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    out.sort();
    out
}

#[test]
fn plan_on_a_fresh_cluster_file_writes_nothing_and_lists_every_action() {
    let home = home_with_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(assets.join("bin")).expect("mkdir");
    std::fs::write(assets.join("bin/etcd"), b"etcd").expect("write");
    std::fs::write(
        assets.join("manifest.json"),
        format!(
            r#"{{"kubernetes": "1.20.2", "files": {{"bin/etcd": {{"sha256": "{}"}}}}}}"#,
            "c38cbd92fce41312f3fbdce60510013b7f0d4004a03b45c8e762f98f1ed4006c"
        ),
    )
    .expect("manifest");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(
        &file,
        "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {name: fresh}\nspec:\n  \
         hosts:\n  - {name: cp1, address: 198.18.0.2, roles: [etcd, control-plane, worker]}\n  \
         addons: {overlay: {enabled: false}, updateOperator: {enabled: false}, dns: {enabled: false}}\n  \
         assets: {source: assets}\n",
    )
    .expect("write");
    let before = tree(dir.path());
    let f = file.display().to_string();
    let out = strata(&["plan", "-f", &f, "--output", "json"], home.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tree(dir.path()), before, "plan wrote something");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let actions = doc["actions"].as_array().expect("actions");
    let has = |kind: &str, path: &str| {
        actions
            .iter()
            .any(|a| a["kind"] == kind && a["path"] == path)
    };
    assert!(has("create", "/etc/kubernetes/pki/ca.crt"), "{doc}");
    assert!(has("create", "/etc/systemd/system/etcd.service"), "{doc}");
    assert!(has("restart", "kube-apiserver.service"), "{doc}");
    assert!(has("create", "/opt/strata/bin/etcd"), "{doc}");
    assert!(
        has(
            "apply",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/strata:kube-proxy"
        ),
        "{doc}"
    );
    // apply --dry-run is the same plan, and writes nothing either.
    let dry = strata(
        &["apply", "-f", &f, "--dry-run", "--output", "json"],
        home.path(),
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(dry["actions"].as_array().map(Vec::len), Some(actions.len()));
    assert_eq!(tree(dir.path()), before, "apply --dry-run wrote something");
}
