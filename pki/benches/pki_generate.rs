//! Prints how long a full PKI takes to generate: 3 and 100 hosts, ECDSA P-256 and RSA-2048,
//! written to a temporary state directory (keys fsynced, as in real runs), and how long a
//! re-run that keeps everything takes. Run: `cargo bench -p strata-pki`.
//! Target: 100 hosts with ECDSA under 1 second on a 2-core machine.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use strata_pki::{Address, Inputs, KeyAlgorithm, Node, StateDir, generate};
use time::OffsetDateTime;

fn inputs(hosts: usize, alg: KeyAlgorithm) -> Inputs {
    let nodes = (0..hosts)
        .map(|i| {
            let ip = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 2)) + i as u32;
            Node {
                name: format!("node{i}"),
                address: Some(Address::Ip(IpAddr::V4(ip.into()))),
                // 3 etcd members, 3 control-plane hosts, the rest workers.
                etcd: i < 3,
                control_plane: i < 3,
            }
        })
        .collect();
    Inputs {
        cluster_name: "bench".into(),
        api_endpoint: "198.18.0.2:6443".into(),
        same_host_api: "127.0.0.1:6443".into(),
        node_balancer: "127.0.0.1:7445".into(),
        vip: None,
        api_service_ip: IpAddr::from([10, 96, 0, 1]),
        cluster_domain: "cluster.local".into(),
        nodes,
        extra_api_sans: vec![],
        key_algorithm: alg,
        ca_validity: Duration::from_secs(87_600 * 3600),
        cert_validity: Duration::from_secs(8_760 * 3600),
        kubernetes_ca: None,
    }
}

fn main() {
    println!(
        "{:<10} {:>6} {:>8} {:>14} {:>14}",
        "keys", "hosts", "files", "generate", "re-run"
    );
    for (alg, label, runs) in [
        (KeyAlgorithm::EcdsaP256, "ecdsa-p256", 5),
        (KeyAlgorithm::Rsa2048, "rsa-2048", 1),
    ] {
        for hosts in [3usize, 100] {
            let inp = inputs(hosts, alg);
            let mut best_gen = Duration::MAX;
            let mut best_rerun = Duration::MAX;
            let mut files = 0;
            for _ in 0..runs {
                let dir = tempfile::tempdir().expect("tempdir");
                let state = StateDir::new(dir.path());
                let t = Instant::now();
                let out = generate(&inp, &state, OffsetDateTime::now_utc()).expect("generate");
                best_gen = best_gen.min(t.elapsed());
                files = out.items.len();
                let t = Instant::now();
                let again = generate(&inp, &state, OffsetDateTime::now_utc()).expect("re-run");
                best_rerun = best_rerun.min(t.elapsed());
                assert_eq!(again.created().count() + again.reissued().count(), 0);
            }
            println!(
                "{label:<10} {hosts:>6} {files:>8} {:>11.1} ms {:>11.1} ms",
                best_gen.as_secs_f64() * 1e3,
                best_rerun.as_secs_f64() * 1e3
            );
        }
    }
}
