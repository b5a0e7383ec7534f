//! A real etcd and Kubernetes 1.20.2 kube-apiserver on loopback, without nodes, for the
//! tests of the crates that talk to the API (update operator, DNS): the PKI and cluster
//! objects come from Strata's own pki/ and manifests/ for the test's Cluster file, so the
//! RBAC under test is the RBAC `strata apply` installs. Needs the binaries of
//! .ci/build-kubernetes, etcd and kubectl (packages etcd-server, kubernetes-client); no root.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use strata_manifests::Cluster;
use strata_pki::StateDir;

#[derive(Debug)]
pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub state: StateDir,
    pub cluster: Cluster,
    children: Vec<Child>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

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

fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {}: {e}", program.display()))
}

impl ApiServer {
    /// Starts etcd and the API server for the Cluster file `cluster_yaml`, with the PKI
    /// Strata generates for it; returns once `/readyz` answers.
    pub fn start(cluster_yaml: &str) -> Self {
        let bin = kubernetes_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = strata_manifests::Context {
            file: "test.yaml".into(),
            base_dir: dir.path().to_path_buf(),
            home: None,
        };
        let cluster = strata_manifests::load_str(cluster_yaml, &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .cluster;
        let port = free_port();
        let mut inputs = strata_manifests::pki::inputs(&cluster, &ctx).expect("pki inputs");
        inputs.api_endpoint = format!("127.0.0.1:{port}");
        let state = StateDir::new(dir.path().join("state"));
        strata_pki::generate(&inputs, &state, time::OffsetDateTime::now_utc()).expect("pki");

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd = spawn(
            dir.path(),
            "etcd",
            Path::new("etcd"),
            &[
                "--name=t".into(),
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=t=http://127.0.0.1:{peer_port}"),
            ],
        );
        let pki = |f: &str| state.root.join("pki").join(f).display().to_string();
        // Owned (killed on drop) before anything else can fail.
        let mut s = Self {
            state: state.clone(),
            cluster,
            children: vec![etcd],
            dir,
        };
        let apiserver = spawn(
            s.dir.path(),
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", pki("apiserver.crt")),
                format!("--tls-private-key-file={}", pki("apiserver.key")),
                format!("--client-ca-file={}", pki("ca.crt")),
                format!("--service-account-key-file={}", pki("sa.pub")),
                format!("--service-account-signing-key-file={}", pki("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--anonymous-auth=false".into(),
                format!("--cert-dir={}", s.dir.path().join("certs").display()),
            ],
        );
        s.children.push(apiserver);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = s.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready; its log:\n{}",
                s.log("kube-apiserver")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        s
    }

    /// The process ids of etcd and the API server (a benchmark pauses them while it
    /// measures something else).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.file("auth/kubeconfig")
    }

    /// kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin_kubeconfig(), args)
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("kubectl (package kubernetes-client) must be installed")
    }

    /// Applies every cluster object `strata apply` would (server-side apply, as Strata).
    pub fn apply_cluster_objects(&self) {
        let objects = strata_manifests::objects::cluster_objects(&self.cluster).expect("render");
        for o in &objects {
            let path = self.dir.path().join(&o.file);
            std::fs::write(&path, &o.yaml).expect("write");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = self.kubectl(&[
                    "apply",
                    "--server-side",
                    "--field-manager=strata",
                    "--force-conflicts",
                    "-f",
                    &path.display().to_string(),
                ]);
                if out.status.success() {
                    break;
                }
                // A custom resource right after its CRD: wait until the CRD is served.
                assert!(
                    Instant::now() < deadline,
                    "{}: {}",
                    o.file,
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    pub async fn client(&self, kubeconfig: &Path) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        // As the binary does: a 429 is an answer, not something to retry.
        config.default_retry = false;
        Client::try_from(config).expect("client")
    }

    pub async fn admin(&self) -> Client {
        self.client(&self.admin_kubeconfig()).await
    }

    /// A kubeconfig the PKI wrote under kubeconfigs/ (e.g. `update-agent-n2`), naming this
    /// API server (on nodes, such kubeconfigs name the node-local balancer).
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.state.file(&format!("kubeconfigs/{name}.conf")))
            .expect("kubeconfig");
        let admin = std::fs::read_to_string(self.admin_kubeconfig()).expect("admin kubeconfig");
        let server = strata_pki::kubeconfig_server(&admin).expect("server");
        let out = self.dir.path().join(format!("{name}.conf"));
        std::fs::write(&out, strata_pki::kubeconfig_with_server(&text, server))
            .expect("write kubeconfig");
        out
    }

    /// A client of the cluster admin that acts as `user` (impersonation), e.g. a service
    /// account `system:serviceaccount:NS:NAME`: the RBAC of that user applies.
    pub async fn client_as(&self, user: &str) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kc = Kubeconfig::read_from(self.admin_kubeconfig()).expect("kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        config.auth_info.impersonate = Some(user.to_owned());
        Client::try_from(config).expect("client")
    }
}
