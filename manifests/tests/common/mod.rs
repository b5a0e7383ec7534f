//! Shared helpers: a Cluster from YAML text, its PKI in a temporary state directory, and
//! its rendering.
#![allow(dead_code)]

use std::path::PathBuf;

use strata_manifests::render::{Rendered, render};
use strata_manifests::{Cluster, Context, load_str};
use strata_pki::StateDir;

pub const ONE_HOST: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: solo}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 198.18.0.2, roles: [etcd, control-plane, worker]}
";

pub const THREE_HOSTS: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: trio}
spec:
  kubernetes: {version: \"1.20.2\"}
  platform: {ssh: {}}
  ssh: {privateKey: id_test}
  hosts:
  - {name: cp1, address: 198.18.0.2, roles: [etcd, control-plane]}
  - name: w1
    address: 198.18.0.3
    roles: [worker]
    labels: {zone: a}
    taints: [{key: dedicated, value: batch, effect: NoSchedule}]
  - {name: w2, address: 198.18.0.4, roles: [worker]}
";

/// A directory holding the SSH key file `id_test` (0600) the SSH examples refer to.
fn key_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("strata-test-{}", std::process::id()));
    let key = dir.join("id_test");
    if !key.exists() {
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(&key, "placeholder: only presence and mode are checked\n").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    dir
}

pub fn cluster(text: &str) -> Cluster {
    let ctx = Context {
        file: "test.yaml".into(),
        base_dir: key_dir(),
        home: None,
    };
    load_str(text, &ctx)
        .unwrap_or_else(|r| panic!("{r}"))
        .cluster
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cluster: Cluster,
    pub state: StateDir,
    pub rendered: Rendered,
}

pub fn fixture(text: &str) -> Fixture {
    let cluster = cluster(text);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path().join("state"));
    let ctx = Context {
        file: "test.yaml".into(),
        base_dir: dir.path().to_path_buf(),
        home: None,
    };
    let inputs = strata_manifests::pki::inputs(&cluster, &ctx).expect("inputs");
    strata_pki::generate(&inputs, &state, time::OffsetDateTime::now_utc()).expect("pki");
    let rendered = render(&cluster, &state).expect("render");
    Fixture {
        dir,
        cluster,
        state,
        rendered,
    }
}

/// The Kubernetes binaries built by .ci/build-kubernetes.
pub fn kubernetes_bin() -> PathBuf {
    let dir = std::env::var_os("STRATA_KUBERNETES_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/strata/kubernetes/1.20.2/bin"));
    assert!(
        dir.join("kube-apiserver").exists(),
        "Kubernetes 1.20.2 binaries not found in {}: run `bash .ci/build-kubernetes` (as root) \
         or set STRATA_KUBERNETES_BIN",
        dir.display()
    );
    dir
}
