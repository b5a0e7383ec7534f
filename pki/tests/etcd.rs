//! The generated etcd certificates against real etcd 3.4 (package etcd-server): a
//! three-member cluster on loopback with client and peer certificate authentication.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_pki::{StateDir, generate};
use time::OffsetDateTime;

struct Etcd {
    children: Vec<Child>,
}

impl Drop for Etcd {
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
        .expect("a free port")
}

fn etcdctl(endpoints: &str, certs: Option<(&Path, &Path, &Path)>, args: &[&str]) -> Output {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s");
    if let Some((ca, cert, key)) = certs {
        c.arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()));
    }
    c.args(args)
        .output()
        .expect("etcdctl must be installed (apt-get install etcd-client)")
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn etcd_accepts_only_clients_of_its_own_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path().join("state"));
    let mut inputs = common::three_hosts();
    inputs.nodes = vec![
        common::node("e1", [198, 18, 0, 2], true, true),
        common::node("e2", [198, 18, 0, 3], true, false),
        common::node("e3", [198, 18, 0, 4], true, false),
    ];
    generate(&inputs, &state, OffsetDateTime::now_utc()).expect("generate");

    let names = ["e1", "e2", "e3"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, peer))| format!("{n}=https://127.0.0.1:{peer}"))
        .collect();
    let ca = state.cert("etcd/ca");
    let mut etcd = Etcd {
        children: Vec::new(),
    };
    for (n, (client, peer)) in names.iter().zip(&ports) {
        let data = dir.path().join(format!("data-{n}"));
        let log = std::fs::File::create(dir.path().join(format!("{n}.log"))).expect("log");
        let child = Command::new("etcd")
            .arg(format!("--name={n}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
            .arg(format!(
                "--advertise-client-urls=https://127.0.0.1:{client}"
            ))
            .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg(format!(
                "--cert-file={}",
                state.cert(&format!("etcd/server-{n}")).display()
            ))
            .arg(format!(
                "--key-file={}",
                state.key(&format!("etcd/server-{n}")).display()
            ))
            .arg("--peer-client-cert-auth")
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .arg(format!(
                "--peer-cert-file={}",
                state.cert(&format!("etcd/peer-{n}")).display()
            ))
            .arg(format!(
                "--peer-key-file={}",
                state.key(&format!("etcd/peer-{n}")).display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (apt-get install etcd-server)");
        etcd.children.push(child);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("https://127.0.0.1:{c}"))
        .collect();
    let all = endpoints.join(",");
    let health: (PathBuf, PathBuf) = (
        state.cert("etcd/healthcheck-client"),
        state.key("etcd/healthcheck-client"),
    );

    // The members find each other over peer TLS: every endpoint becomes healthy.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = etcdctl(
            &all,
            Some((&ca, &health.0, &health.1)),
            &["endpoint", "health"],
        );
        if ok(&o) {
            break;
        }
        if Instant::now() > deadline {
            let logs: String = names
                .iter()
                .map(|n| {
                    std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default()
                })
                .collect();
            panic!("etcd did not become healthy: {}\n{logs}", show(&o));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let members = etcdctl(&all, Some((&ca, &health.0, &health.1)), &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&members.stdout).lines().count(),
        3,
        "{}",
        show(&members)
    );

    // The API server's client certificate writes and reads.
    let api = (
        state.cert("apiserver-etcd-client"),
        state.key("apiserver-etcd-client"),
    );
    let put = etcdctl(
        &endpoints[0],
        Some((&ca, &api.0, &api.1)),
        &["put", "/strata/test", "hello"],
    );
    assert!(ok(&put), "{}", show(&put));
    let get = etcdctl(
        &endpoints[2],
        Some((&ca, &api.0, &api.1)),
        &["get", "/strata/test", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "hello",
        "{}",
        show(&get)
    );

    // A client certificate from another cluster's etcd CA is refused.
    let other = StateDir::new(dir.path().join("other"));
    generate(&inputs, &other, OffsetDateTime::now_utc()).expect("other PKI");
    let foreign = etcdctl(
        &endpoints[0],
        Some((
            &ca,
            &other.cert("apiserver-etcd-client"),
            &other.key("apiserver-etcd-client"),
        )),
        &["get", "/strata/test"],
    );
    assert!(!ok(&foreign), "foreign client accepted: {}", show(&foreign));

    // A client certificate of the right cluster but from the Kubernetes CA is refused too.
    let wrong_ca = etcdctl(
        &endpoints[0],
        Some((&ca, &state.cert("admin"), &state.key("admin"))),
        &["get", "/strata/test"],
    );
    assert!(
        !ok(&wrong_ca),
        "kubernetes-CA client accepted: {}",
        show(&wrong_ca)
    );

    // Plain HTTP gets no data.
    let port = ports[0].0;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /v2/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        !reply.contains("200 OK") && !reply.contains("hello"),
        "{reply}"
    );
    let http = etcdctl(
        &format!("http://127.0.0.1:{port}"),
        None,
        &["get", "/strata/test"],
    );
    assert!(!ok(&http), "plain HTTP accepted: {}", show(&http));
}
