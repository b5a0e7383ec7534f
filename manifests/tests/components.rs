//! The rendered command lines and configuration files, run by the real programs: etcd 3.4
//! (package etcd-server) and the Kubernetes 1.20.2 kube-apiserver, kube-controller-manager
//! and kube-scheduler built by .ci/build-kubernetes. Each must come up healthy, not merely
//! parse its flags. Runs on loopback without root: the rendered absolute paths are
//! relocated into a temporary directory.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_manifests::render::{BIN_DIR, Rendered};

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: loop}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
";

struct Processes {
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Processes {
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Rendered paths moved under `root`; binaries from the build cache (etcd from the package).
struct Relocate {
    root: PathBuf,
    k8s_bin: PathBuf,
}

impl Relocate {
    fn text(&self, s: &str) -> String {
        let r = self.root.display().to_string();
        s.replace(&format!("{BIN_DIR}/etcd"), "\u{1}ETCD")
            .replace(BIN_DIR, "\u{1}BIN")
            .replace("/etc/", &format!("{r}/etc/"))
            .replace("/var/", &format!("{r}/var/"))
            .replace("\u{1}ETCD", "/usr/bin/etcd")
            .replace("\u{1}BIN", &self.k8s_bin.display().to_string())
    }

    /// Writes every file of the host below root, relocated.
    fn install(&self, r: &Rendered, host: &str) {
        let t = r.hosts.iter().find(|t| t.host == host).expect("host");
        for (path, f) in &t.files {
            let dest = self.root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            let content = if path.ends_with(".yaml") {
                self.text(&String::from_utf8_lossy(&f.content)).into_bytes()
            } else {
                f.content.clone()
            };
            std::fs::write(&dest, content).expect("write");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
                .expect("chmod");
        }
        for d in ["var/lib/etcd", "var/log/kubernetes"] {
            std::fs::create_dir_all(self.root.join(d)).expect("mkdir");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.root.join("var/lib/etcd"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
    }

    /// The unit's ExecStart as a relocated argument vector.
    fn command(&self, unit: &str) -> Vec<String> {
        let joined = unit.replace("\\\n", " ");
        let line = joined
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        self.text(line.trim_start_matches("ExecStart="))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

fn unit(r: &Rendered, name: &str) -> String {
    let t = &r.hosts[0];
    String::from_utf8_lossy(&t.files[&format!("/etc/systemd/system/{name}.service")].content)
        .into_owned()
}

fn start(p: &mut Processes, name: &str, argv: &[String]) {
    let log = std::fs::File::create(p.logs.join(format!("{name}.log"))).expect("log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {}: {e}", argv[0]));
    p.children.push((name.into(), child));
}

/// curl with the admin identity (or none); returns (http status, body).
fn curl(state: &strata_pki::StateDir, client: bool, args: &[&str]) -> (u32, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(state.cert("ca"));
    if client {
        c.arg("--cert")
            .arg(state.cert("admin"))
            .arg("--key")
            .arg(state.key("admin"));
    }
    let out = c.args(args).output().expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn wait(what: &str, p: &Processes, log: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ok() {
        if Instant::now() > deadline {
            panic!("{what} did not become healthy; {log}.log:\n{}", p.log(log));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn control_plane_components_run_from_the_rendered_units() {
    let bin = common::kubernetes_bin();
    let f = common::fixture(CLUSTER);
    let root = f.dir.path().join("root");
    let reloc = Relocate {
        root: root.clone(),
        k8s_bin: bin,
    };
    reloc.install(&f.rendered, "n1");
    let logs = f.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let mut p = Processes {
        children: Vec::new(),
        logs,
    };

    // etcd from its rendered configuration file, checked with the healthcheck identity.
    start(&mut p, "etcd", &reloc.command(&unit(&f.rendered, "etcd")));
    let pki = root.join("etc/kubernetes/pki/etcd");
    wait("etcd", &p, "etcd", || {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints=https://127.0.0.1:2379")
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                pki.join("healthcheck-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                pki.join("healthcheck-client.key").display()
            ))
            .args(["endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success())
    });

    start(
        &mut p,
        "kube-apiserver",
        &reloc.command(&unit(&f.rendered, "kube-apiserver")),
    );
    wait("kube-apiserver", &p, "kube-apiserver", || {
        curl(&f.state, true, &["https://127.0.0.1:6443/readyz"]) == (200, "ok".into())
    });
    // Anonymous requests are refused; the audit log records requests.
    let (code, _) = curl(&f.state, false, &["https://127.0.0.1:6443/api"]);
    assert_eq!(code, 401, "anonymous auth must be off");
    assert!(root.join("var/log/kubernetes/audit.log").exists());

    // The cluster objects, sent with server-side apply as `apply` will.
    for o in &f.rendered.objects {
        let path = root.join(&o.file);
        std::fs::write(&path, &o.yaml).expect("write");
        let url = format!(
            "https://127.0.0.1:6443{}?fieldManager=strata&force=true",
            o.api_path
        );
        let (code, body) = curl(
            &f.state,
            true,
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/apply-patch+yaml",
                "--data-binary",
                &format!("@{}", path.display()),
                &url,
            ],
        );
        assert!(
            code == 200 || code == 201,
            "{}: HTTP {code}: {body}",
            o.file
        );
    }

    start(
        &mut p,
        "kube-controller-manager",
        &reloc.command(&unit(&f.rendered, "kube-controller-manager")),
    );
    start(
        &mut p,
        "kube-scheduler",
        &reloc.command(&unit(&f.rendered, "kube-scheduler")),
    );
    for (name, port) in [
        ("kube-controller-manager", 10257),
        ("kube-scheduler", 10259),
    ] {
        wait(name, &p, name, || {
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "--max-time",
                    "3",
                    &format!("https://127.0.0.1:{port}/healthz"),
                ])
                .output();
            out.is_ok_and(|o| o.stdout == b"ok")
        });
        // Leader election went through the API with the component's own identity.
        wait(&format!("{name} leader lease"), &p, name, || {
            let (code, body) = curl(
                &f.state,
                true,
                &[&format!(
                    "https://127.0.0.1:6443/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}"
                )],
            );
            code == 200 && body.contains("holderIdentity")
        });
    }
    // Insecure ports stay closed (--port=0 on 1.20).
    for port in [10251, 10252] {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}/healthz"),
            ])
            .output()
            .expect("curl");
        assert!(out.stdout.is_empty(), "insecure port {port} answered");
    }
    // Every process is still running.
    for (name, c) in &mut p.children {
        assert!(c.try_wait().expect("wait").is_none(), "{name} exited");
    }
}
