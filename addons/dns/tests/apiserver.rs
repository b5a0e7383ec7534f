//! The server against a real kube-apiserver 1.20.2 (strata-test-apiserver) with real Service
//! and Endpoints objects, acting as its own service account (the RBAC `strata apply`
//! installs): a table of questions asked over UDP and TCP, then changes to the objects seen
//! in the answers without a restart. Needs the binaries of .ci/build-kubernetes, etcd and
//! kubectl; no root.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use strata_dns::metrics::Metrics;
use strata_dns::serve::{Options, serve};
use strata_test_apiserver::ApiServer;

use common::{question, tcp, udp};

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: dns}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
";

/// web (ClusterIP, named ports http/TCP and metrics/UDP), db (headless, a StatefulSet's
/// endpoints: db-0 and db-1 ready with hostnames, db-2 not ready), warm (headless,
/// publishNotReadyAddresses, only a not-ready endpoint), empty (headless, no endpoints),
/// ext (ExternalName).
const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: metrics, port: 9090, protocol: UDP}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses: [{ip: 10.244.1.5}]
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: shop}
subsets:
- addresses:
  - {ip: 10.244.1.7, hostname: db-0}
  - {ip: 10.244.2.7, hostname: db-1}
  notReadyAddresses:
  - {ip: 10.244.3.7, hostname: db-2}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: warm, namespace: shop}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: warm, namespace: shop}
subsets:
- notReadyAddresses: [{ip: 10.244.3.9}]
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: api.example.org}
";

/// An answer as the test compares it: the code, then each answer record as "name type
/// data", sorted.
fn seen(m: &Message) -> Vec<String> {
    let mut records: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    records.sort();
    let mut out = vec![m.metadata.response_code.to_string()];
    out.extend(records);
    out
}

fn want(code: ResponseCode, records: &[&str]) -> Vec<String> {
    let mut r: Vec<String> = records.iter().map(|s| (*s).to_owned()).collect();
    r.sort();
    let mut out = vec![code.to_string()];
    out.extend(r);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn kubectl_ok(s: &ApiServer, args: &[&str]) {
    let out = s.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn ask(dns: SocketAddr, name: &str, rtype: RecordType) -> Vec<String> {
    seen(&udp(dns, &question(name, rtype, true)).await)
}

/// Asks until the answer is `expected` (the index follows the watches within a moment).
async fn eventually(dns: SocketAddr, name: &str, rtype: RecordType, expected: &[String]) -> f64 {
    let start = Instant::now();
    loop {
        let got = ask(dns, name, rtype).await;
        if got == expected {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} {rtype}: still {got:?}, want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_a_real_api_server_and_follows_its_changes() {
    let s = ApiServer::start(CLUSTER);
    s.apply_cluster_objects();
    let objects = s.dir.path().join("objects.yaml");
    std::fs::write(&objects, OBJECTS).expect("write");
    kubectl_ok(&s, &["apply", "-f", &objects.display().to_string()]);

    // As the Deployment runs it: its service account, with the rights apply gave it.
    let client = s
        .client_as("system:serviceaccount:kube-system:strata-dns")
        .await;
    let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());
    let options = Options {
        zone: "cluster.local".into(),
        listen: dns,
        upstreams: Vec::new(),
        reverse: vec![
            "10.96.0.0/12".parse().expect("net"),
            "10.244.0.0/16".parse().expect("net"),
        ],
        recursion_for: Vec::new(),
        endpoint_slices: false,
    };
    let server = tokio::spawn(serve(client, options, ready.clone(), metrics.clone()));
    let start = Instant::now();
    while !ready.load(Ordering::Relaxed) {
        assert!(
            !server.is_finished(),
            "the server stopped: {:?}",
            server.await
        );
        assert!(start.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    use RecordType::{A, AAAA, CNAME, PTR, SRV, TXT};
    let ok = ResponseCode::NoError;
    let nx = ResponseCode::NXDomain;
    let web = "web.shop.svc.cluster.local.";
    let table: Vec<(&str, RecordType, Vec<String>)> = vec![
        (
            "dns-version.cluster.local.",
            TXT,
            want(ok, &["dns-version.cluster.local. TXT 1.1.0"]),
        ),
        // The Services the API server and apply made themselves.
        (
            "kubernetes.default.svc.cluster.local.",
            A,
            want(ok, &["kubernetes.default.svc.cluster.local. A 10.96.0.1"]),
        ),
        (
            "kube-dns.kube-system.svc.cluster.local.",
            A,
            want(
                ok,
                &["kube-dns.kube-system.svc.cluster.local. A 10.96.0.10"],
            ),
        ),
        (
            "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
            SRV,
            want(
                ok,
                &[
                    "_dns._udp.kube-dns.kube-system.svc.cluster.local. SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.",
                ],
            ),
        ),
        (
            web,
            A,
            want(ok, &["web.shop.svc.cluster.local. A 10.96.0.20"]),
        ),
        (
            "WEB.Shop.SVC.Cluster.Local.",
            A,
            want(ok, &["web.shop.svc.cluster.local. A 10.96.0.20"]),
        ),
        (web, AAAA, want(ok, &[])),
        (
            "_http._tcp.web.shop.svc.cluster.local.",
            SRV,
            want(
                ok,
                &[
                    "_http._tcp.web.shop.svc.cluster.local. SRV 0 100 80 web.shop.svc.cluster.local.",
                ],
            ),
        ),
        (
            "_metrics._udp.web.shop.svc.cluster.local.",
            SRV,
            want(
                ok,
                &[
                    "_metrics._udp.web.shop.svc.cluster.local. SRV 0 100 9090 web.shop.svc.cluster.local.",
                ],
            ),
        ),
        (
            "_metrics._tcp.web.shop.svc.cluster.local.",
            SRV,
            want(nx, &[]),
        ),
        (
            "20.0.96.10.in-addr.arpa.",
            PTR,
            want(
                ok,
                &["20.0.96.10.in-addr.arpa. PTR web.shop.svc.cluster.local."],
            ),
        ),
        (
            "db.shop.svc.cluster.local.",
            A,
            want(
                ok,
                &[
                    "db.shop.svc.cluster.local. A 10.244.1.7",
                    "db.shop.svc.cluster.local. A 10.244.2.7",
                ],
            ),
        ),
        (
            "db-0.db.shop.svc.cluster.local.",
            A,
            want(ok, &["db-0.db.shop.svc.cluster.local. A 10.244.1.7"]),
        ),
        ("db-2.db.shop.svc.cluster.local.", A, want(nx, &[])),
        (
            "_pg._tcp.db.shop.svc.cluster.local.",
            SRV,
            want(
                ok,
                &[
                    "_pg._tcp.db.shop.svc.cluster.local. SRV 0 50 5432 db-0.db.shop.svc.cluster.local.",
                    "_pg._tcp.db.shop.svc.cluster.local. SRV 0 50 5432 db-1.db.shop.svc.cluster.local.",
                ],
            ),
        ),
        (
            "7.2.244.10.in-addr.arpa.",
            PTR,
            want(
                ok,
                &["7.2.244.10.in-addr.arpa. PTR db-1.db.shop.svc.cluster.local."],
            ),
        ),
        (
            "warm.shop.svc.cluster.local.",
            A,
            want(ok, &["warm.shop.svc.cluster.local. A 10.244.3.9"]),
        ),
        ("empty.shop.svc.cluster.local.", A, want(nx, &[])),
        (
            "ext.shop.svc.cluster.local.",
            CNAME,
            want(ok, &["ext.shop.svc.cluster.local. CNAME api.example.org."]),
        ),
        (
            "10-244-1-5.shop.pod.cluster.local.",
            A,
            want(ok, &["10-244-1-5.shop.pod.cluster.local. A 10.244.1.5"]),
        ),
        ("nothing.shop.svc.cluster.local.", A, want(nx, &[])),
        // Outside the zone, from a client without recursion: refused.
        ("example.com.", A, want(ResponseCode::Refused, &[])),
    ];
    let mut wrong = Vec::new();
    for (name, rtype, expected) in &table {
        let q = question(name, *rtype, true);
        for (how, got) in [
            ("UDP", seen(&udp(dns, &q).await)),
            ("TCP", seen(&tcp(dns, &q).await)),
        ] {
            if &got != expected {
                wrong.push(format!(
                    "{name} {rtype} over {how}:\n  want {expected:?}\n  got  {got:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        table.len() * 2,
        wrong.join("\n")
    );

    // Changes reach the answers through the watches, without a restart.
    kubectl_ok(
        &s,
        &[
            "-n",
            "shop",
            "patch",
            "endpoints",
            "db",
            "--type=json",
            "-p",
            r#"[{"op":"move","from":"/subsets/0/notReadyAddresses/0","path":"/subsets/0/addresses/2"}]"#,
        ],
    );
    let t = eventually(
        dns,
        "db-2.db.shop.svc.cluster.local.",
        A,
        &want(ok, &["db-2.db.shop.svc.cluster.local. A 10.244.3.7"]),
    )
    .await;
    eprintln!("an endpoint turned ready was answered after {t:.2}s");
    kubectl_ok(&s, &["-n", "shop", "delete", "service", "web"]);
    let t = eventually(dns, web, A, &want(nx, &[])).await;
    eprintln!("a deleted Service was gone after {t:.2}s");
    kubectl_ok(
        &s,
        &[
            "-n",
            "shop",
            "create",
            "service",
            "clusterip",
            "late",
            "--tcp=443:8443",
        ],
    );
    let out = s.kubectl(&[
        "-n",
        "shop",
        "get",
        "service",
        "late",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let t = eventually(
        dns,
        "late.shop.svc.cluster.local.",
        A,
        &want(ok, &[&format!("late.shop.svc.cluster.local. A {ip}")]),
    )
    .await;
    eprintln!("a new Service was answered after {t:.2}s");

    let text = metrics.encode();
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"strata_dns_queries_total{type="SRV",rcode="NOERROR",source="cluster"}"#
        )),
        "{text}"
    );
    assert!(
        !text.contains("strata_dns_index_rebuilds_total 0"),
        "{text}"
    );
    server.abort();
}
