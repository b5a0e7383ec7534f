//! strata-dns against NSD with dnsperf, on loopback, in one run (`cargo bench -p strata-dns
//! --bench dnsperf`; needs the packages dnsperf, nsd, etcd-server, kubernetes-client and the
//! Kubernetes 1.20.2 binaries of .ci/build-kubernetes).
//!
//! 1,000 Services live in a real kube-apiserver; the release strata-dns binary serves them
//! from its watches, NSD serves the same A records as a static zone. Each server is pinned to
//! core 0 (taskset) and dnsperf to core 1; etcd and the API server are paused meanwhile. For each: the maximum rate (queries per second),
//! then latency percentiles at half of strata-dns's maximum rate. Then 9,000 more Services:
//! strata-dns's resident memory with 10,000. Prints the figures and whether the targets of
//! issue #16 hold (at least half of NSD's rate, p99 under 2 ms at half its own maximum, under
//! 50 MB with 10,000 Services).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, PostParams};
use strata_test_apiserver::ApiServer;

const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: bench}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
";
const NAMESPACES: usize = 10;
const SECONDS: &str = "10";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .expect("service")
}

/// Creates Services `svc-<i>` for i in `range`, spread over the namespaces; their names and
/// cluster IPs.
async fn create(client: &kube::Client, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    futures::stream::iter(range)
        .map(|i| {
            let api: Api<Service> =
                Api::namespaced(client.clone(), &format!("ns-{}", i % NAMESPACES));
            async move {
                let s = api
                    .create(&PostParams::default(), &service(&format!("svc-{i}")))
                    .await?;
                let ip = s.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
                Ok::<_, kube::Error>((format!("svc-{i}.ns-{}.svc", i % NAMESPACES), ip))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .expect("create Services")
}

/// Runs dnsperf on core 1 against `server`; its whole report.
fn dnsperf(server: SocketAddr, queries: &Path, extra: &[&str]) -> String {
    let out = Command::new("taskset")
        .args(["-c", "1", "dnsperf", "-s", &server.ip().to_string()])
        .args(["-p", &server.port().to_string(), "-l", SECONDS])
        .arg("-d")
        .arg(queries)
        .args(extra)
        .output()
        .expect("dnsperf (package dnsperf) and taskset");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dnsperf: {text}");
    text
}

fn field(report: &str, name: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
}

struct Rates {
    qps: f64,
    lost: f64,
}

fn max_rate(server: SocketAddr, queries: &Path) -> Rates {
    let r = dnsperf(server, queries, &[]);
    Rates {
        qps: field(&r, "Queries per second:"),
        lost: field(&r, "Queries lost:"),
    }
}

/// Latencies in milliseconds at `qps`, from dnsperf's per-query lines; (p50, p99, p99.9,
/// answered, not NOERROR).
fn percentiles(server: SocketAddr, queries: &Path, qps: f64) -> (f64, f64, f64, usize, usize) {
    let r = dnsperf(server, queries, &["-v", "-Q", &format!("{}", qps as u64)]);
    let mut ms: Vec<f64> = Vec::new();
    let mut bad = 0;
    for l in r.lines().filter_map(|l| l.strip_prefix("> ")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first() != Some(&"NOERROR") {
            bad += 1;
        }
        if let Some(s) = w.last().and_then(|s| s.parse::<f64>().ok()) {
            ms.push(s * 1000.0);
        }
    }
    assert!(!ms.is_empty(), "no per-query lines:\n{r}");
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    (at(0.5), at(0.99), at(0.999), ms.len(), bad)
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn metric(http: SocketAddr, name: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{http}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn nsd(dir: &Path, records: &[(String, String)]) -> (Running, SocketAddr) {
    let port = free_port();
    let mut zone = std::fs::File::create(dir.join("cluster.local.zone")).expect("zone");
    writeln!(
        zone,
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ IN NS ns.dns.cluster.local."
    )
    .expect("zone");
    for (name, ip) in records {
        writeln!(zone, "{name} IN A {ip}").expect("zone");
    }
    let d = dir.display();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  server-count: 1\n  \
             rrl-ratelimit: 0\n  verbosity: 0\nremote-control:\n  control-enable: no\n\
             zone:\n  name: cluster.local\n  zonefile: cluster.local.zone\n"
        ),
    )
    .expect("nsd.conf");
    let child = Command::new("taskset")
        .args(["-c", "0", "nsd", "-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nsd.log")).expect("log"))
        .spawn()
        .expect("nsd (package nsd)");
    (Running(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` would too: only run when
    // asked for by name or by `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let api = ApiServer::start(CLUSTER);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(api.admin());
    let t = Instant::now();
    let records = rt.block_on(async {
        let ns: Api<Namespace> = Api::all(client.clone());
        for i in 0..NAMESPACES {
            let n: Namespace = serde_json::from_value(
                serde_json::json!({"metadata": {"name": format!("ns-{i}")}}),
            )
            .expect("namespace");
            ns.create(&PostParams::default(), &n)
                .await
                .expect("namespace");
        }
        create(&client, 0..1000).await
    });
    println!("1000 Services created in {:.1}s", t.elapsed().as_secs_f64());
    let dir = api.dir.path();
    let queries = dir.join("queries");
    let mut q = std::fs::File::create(&queries).expect("queries");
    for (name, _) in &records {
        writeln!(q, "{name}.cluster.local A").expect("queries");
    }
    drop(q);

    let (dns_port, http_port) = (free_port(), free_port());
    let dns_addr = SocketAddr::from(([127, 0, 0, 1], dns_port));
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let strata = Running(
        Command::new("taskset")
            .args(["-c", "0", env!("CARGO_BIN_EXE_strata-dns")])
            .args([
                "--listen",
                &dns_addr.to_string(),
                "--http",
                &http.to_string(),
            ])
            .args(["--reverse", "10.96.0.0/12", "--resolv-conf", "/dev/null"])
            .env("KUBECONFIG", api.admin_kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("strata-dns.log")).expect("log"))
            .spawn()
            .expect("strata-dns"),
    );
    let pid = strata.0.id();
    let start = Instant::now();
    while metric(http, "strata_dns_services").unwrap_or(0.0) < 1001.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "strata-dns not synced; its log:\n{}",
            std::fs::read_to_string(dir.join("strata-dns.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (nsd_child, nsd_addr) = nsd(dir, &records);
    std::thread::sleep(Duration::from_secs(1));

    // etcd and the API server are paused while the servers are measured (strata-dns answers
    // from its index; its watches wait).
    let signal = |sig: &str| {
        for pid in api.pids() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    };
    signal("-STOP");
    let s = max_rate(dns_addr, &queries);
    let n = max_rate(nsd_addr, &queries);
    let half = s.qps / 2.0;
    let (s50, s99, s999, s_count, s_bad) = percentiles(dns_addr, &queries, half);
    let (n50, n99, n999, n_count, n_bad) = percentiles(nsd_addr, &queries, half);
    drop(nsd_child);
    println!(
        "dnsperf on loopback, server on core 0, dnsperf on core 1, {SECONDS} s per run, 1000 names"
    );
    println!(
        "strata-dns: max {:.0} qps ({} lost); at {half:.0} qps: p50 {s50:.3} ms, p99 {s99:.3} ms, p99.9 {s999:.3} ms ({s_count} answers, {s_bad} not NOERROR)",
        s.qps, s.lost
    );
    println!(
        "NSD 4.6:    max {:.0} qps ({} lost); at {half:.0} qps: p50 {n50:.3} ms, p99 {n99:.3} ms, p99.9 {n999:.3} ms ({n_count} answers, {n_bad} not NOERROR)",
        n.qps, n.lost
    );
    let idle_rss = rss_kb(pid, "VmRSS:");
    signal("-CONT");

    let t = Instant::now();
    let more = rt.block_on(create(&client, 1000..10_000));
    println!(
        "{} more Services created in {:.1}s",
        more.len(),
        t.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    while metric(http, "strata_dns_services").unwrap_or(0.0) < 10_001.0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "strata-dns has not seen 10,000 Services"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Answers still right, then memory.
    let sample = dnsperf(dns_addr, &queries, &["-n", "1"]);
    let rss = rss_kb(pid, "VmRSS:");
    let hwm = rss_kb(pid, "VmHWM:");
    println!(
        "strata-dns resident memory: {:.1} MB with 1,000 Services, {:.1} MB with 10,000 (peak {:.1} MB); a pass over 1000 names then: {} completed",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        field(&sample, "Queries completed:")
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: rate >= half of NSD's: {}; p99 < 2 ms at half its maximum: {}; < 50 MB with 10,000 Services: {}",
        verdict(s.qps >= n.qps / 2.0),
        verdict(s99 < 2.0),
        verdict(rss < 50 * 1024)
    );
    drop(strata);
}
