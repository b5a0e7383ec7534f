//! Shared helpers of the PKI tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use strata_pki::{Address, Inputs, KeyAlgorithm, Node};

pub fn node(name: &str, ip: [u8; 4], etcd: bool, cp: bool) -> Node {
    Node {
        name: name.into(),
        address: Some(Address::Ip(IpAddr::from(ip))),
        etcd,
        control_plane: cp,
    }
}

/// One control-plane+etcd host and two workers, like examples/local.yaml.
pub fn three_hosts() -> Inputs {
    Inputs {
        cluster_name: "demo".into(),
        api_endpoint: "198.18.0.2:6443".into(),
        same_host_api: "127.0.0.1:6443".into(),
        node_balancer: "127.0.0.1:7445".into(),
        vip: None,
        api_service_ip: IpAddr::from([10, 96, 0, 1]),
        cluster_domain: "cluster.local".into(),
        nodes: vec![
            node("cp1", [198, 18, 0, 2], true, true),
            node("w1", [198, 18, 0, 3], false, false),
            node("w2", [198, 18, 0, 4], false, false),
        ],
        extra_api_sans: vec![],
        key_algorithm: KeyAlgorithm::EcdsaP256,
        ca_validity: Duration::from_secs(87_600 * 3600),
        cert_validity: Duration::from_secs(8_760 * 3600),
        kubernetes_ca: None,
    }
}

/// Every file below `root` with its bytes.
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// Files whose bytes differ between two snapshots (added, removed or changed).
pub fn changed(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut names: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    names.sort();
    names.dedup();
    names.into_iter().filter(|n| a.get(n) != b.get(n)).collect()
}
