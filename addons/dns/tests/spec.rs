//! The specification as a table: questions and the answers the cluster zone gives, from real
//! core/v1 Service objects and their endpoints, as core/v1 Endpoints (Kubernetes 1.20) and as
//! discovery.k8s.io/v1 EndpointSlices (from 1.21): the same table for both (the same
//! conversion the server's watches use).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use strata_dns::index::Index;
use strata_dns::records::{Answer, Data, QType, Rr, Zone};

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service")
}

fn endpoints(v: serde_json::Value) -> Endpoints {
    serde_json::from_value(v).expect("endpoints")
}

/// A cluster: kubernetes (ClusterIP, named port https), web in ns shop (dual-stack, ports
/// http/tcp and dns/udp), db (headless StatefulSet: db-0 ready with hostname, one ready pod
/// without, one not ready), db-all (headless, publishNotReadyAddresses), empty (headless, no
/// endpoints), ext (ExternalName).
fn services() -> Vec<Service> {
    vec![
        service(
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
        ),
        service(json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "protocol": "UDP"},
                               {"port": 9000}]}})),
        service(json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})),
        service(json!({"metadata": {"name": "db-all", "namespace": "shop"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                     "ports": [{"name": "pg", "port": 5432}]}})),
        service(json!({"metadata": {"name": "empty", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})),
        service(json!({"metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "Example.COM."}})),
    ]
}

fn zone() -> Zone {
    Zone {
        name: "cluster.local".into(),
        reverse: vec![
            "10.96.0.0/12".parse().expect("net"),
            "10.244.0.0/16".parse().expect("net"),
        ],
    }
}

/// The cluster with core/v1 Endpoints.
fn cluster() -> (Zone, Index) {
    let subset = json!({
        "addresses": [
            {"ip": "10.244.1.5", "hostname": "db-0"},
            {"ip": "10.244.2.7"}
        ],
        "notReadyAddresses": [{"ip": "10.244.2.9", "hostname": "db-1"}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    });
    let eps = [
        endpoints(json!({"metadata": {"name": "db", "namespace": "shop"}, "subsets": [subset]})),
        endpoints(
            json!({"metadata": {"name": "db-all", "namespace": "shop"}, "subsets": [subset]}),
        ),
        endpoints(json!({"metadata": {"name": "empty", "namespace": "shop"}, "subsets": []})),
    ];
    (zone(), Index::build(&services(), &eps))
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("endpoint slice")
}

/// The same cluster with EndpointSlices: db's endpoints split over two slices (one of them
/// without conditions, which counts as ready), an FQDN slice and a slice of no Service that
/// are not addresses of anything.
fn cluster_from_slices() -> (Zone, Index) {
    let meta = |name: &str, service: &str| {
        json!({"name": name, "namespace": "shop",
               "labels": {"kubernetes.io/service-name": service}})
    };
    let ports = json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]);
    let first = json!([{"addresses": ["10.244.1.5"], "hostname": "db-0"}]);
    let rest = json!([
        {"addresses": ["10.244.2.7"], "conditions": {"ready": true}},
        {"addresses": ["10.244.2.9"], "hostname": "db-1", "conditions": {"ready": false}}
    ]);
    let slices = [
        slice(
            json!({"metadata": meta("db-a", "db"), "addressType": "IPv4",
                     "endpoints": first, "ports": ports}),
        ),
        slice(
            json!({"metadata": meta("db-b", "db"), "addressType": "IPv4",
                     "endpoints": rest, "ports": ports}),
        ),
        slice(
            json!({"metadata": meta("db-all-a", "db-all"), "addressType": "IPv4",
                     "endpoints": first, "ports": ports}),
        ),
        slice(
            json!({"metadata": meta("db-all-b", "db-all"), "addressType": "IPv4",
                     "endpoints": rest, "ports": ports}),
        ),
        slice(
            json!({"metadata": meta("empty-a", "empty"), "addressType": "IPv4",
                     "endpoints": [], "ports": ports}),
        ),
        slice(
            json!({"metadata": meta("empty-fqdn", "empty"), "addressType": "FQDN",
                     "endpoints": [{"addresses": ["db.example.com"]}], "ports": ports}),
        ),
        slice(
            json!({"metadata": {"name": "stray", "namespace": "shop"}, "addressType": "IPv4",
                     "endpoints": [{"addresses": ["10.244.9.9"]}]}),
        ),
    ];
    (zone(), Index::build_from_slices(&services(), &slices))
}

fn rr(name: &str, data: Data) -> Rr {
    Rr {
        name: name.into(),
        data,
    }
}

fn a(name: &str, ip: &str) -> Rr {
    match ip.parse::<IpAddr>().expect("ip") {
        IpAddr::V4(v) => rr(name, Data::A(v)),
        IpAddr::V6(v) => rr(name, Data::Aaaa(v)),
    }
}

fn srv(name: &str, weight: u16, port: u16, target: &str) -> Rr {
    rr(
        name,
        Data::Srv {
            weight,
            port,
            target: target.into(),
        },
    )
}

fn answers(v: Vec<Rr>) -> Answer {
    Answer::Records {
        answers: v,
        additionals: Vec::new(),
    }
}

fn with(v: Vec<Rr>, additionals: Vec<Rr>) -> Answer {
    Answer::Records {
        answers: v,
        additionals,
    }
}

#[test]
fn the_specification_as_a_table() {
    let (zone, index) = cluster();
    check(&zone, &index);
}

#[test]
fn the_same_answers_from_endpoint_slices() {
    let (zone, index) = cluster_from_slices();
    check(&zone, &index);
    assert!(index.reverse("10.244.9.9".parse().expect("ip")).is_empty());
}

fn check(zone: &Zone, index: &Index) {
    let k = "kubernetes.default.svc.cluster.local";
    let web = "web.shop.svc.cluster.local";
    let db = "db.shop.svc.cluster.local";
    let table: Vec<(&str, QType, Answer)> = vec![
        // 2.3: the schema version.
        (
            "dns-version.cluster.local",
            QType::Txt,
            answers(vec![rr(
                "dns-version.cluster.local",
                Data::Txt("1.1.0".into()),
            )]),
        ),
        ("dns-version.cluster.local", QType::A, Answer::NoData),
        // The zone apex.
        (
            "cluster.local",
            QType::Soa,
            answers(vec![rr("cluster.local", Data::Soa)]),
        ),
        ("cluster.local", QType::A, Answer::NoData),
        // 2.4.1: ClusterIP Services, any case, with or without the final dot.
        (k, QType::A, answers(vec![a(k, "10.96.0.1")])),
        (
            "KUBERNETES.Default.SVC.cluster.local.",
            QType::A,
            answers(vec![a("kubernetes.default.svc.cluster.local", "10.96.0.1")]),
        ),
        (k, QType::Aaaa, Answer::NoData),
        (web, QType::Aaaa, answers(vec![a(web, "fd00:96::20")])),
        (web, QType::A, answers(vec![a(web, "10.96.0.20")])),
        // SRV of named ports only; the target's addresses as additionals.
        (
            "_https._tcp.kubernetes.default.svc.cluster.local",
            QType::Srv,
            with(
                vec![srv(
                    "_https._tcp.kubernetes.default.svc.cluster.local",
                    100,
                    443,
                    k,
                )],
                vec![a(k, "10.96.0.1")],
            ),
        ),
        (
            "_dns._udp.web.shop.svc.cluster.local",
            QType::Srv,
            with(
                vec![srv("_dns._udp.web.shop.svc.cluster.local", 100, 53, web)],
                vec![a(web, "10.96.0.20"), a(web, "fd00:96::20")],
            ),
        ),
        (
            "_dns._tcp.web.shop.svc.cluster.local",
            QType::Srv,
            Answer::NxDomain,
        ),
        (
            "_nope._tcp.web.shop.svc.cluster.local",
            QType::Srv,
            Answer::NxDomain,
        ),
        (
            "_https._tcp.kubernetes.default.svc.cluster.local",
            QType::A,
            Answer::NoData,
        ),
        (
            "_tcp.web.shop.svc.cluster.local",
            QType::Srv,
            Answer::NoData,
        ),
        (
            "_sctp.web.shop.svc.cluster.local",
            QType::Srv,
            Answer::NxDomain,
        ),
        // 2.4.2: PTR of a cluster IP.
        (
            "1.0.96.10.in-addr.arpa",
            QType::Ptr,
            answers(vec![rr("1.0.96.10.in-addr.arpa", Data::Ptr(k.into()))]),
        ),
        (
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa",
            QType::Ptr,
            answers(vec![rr(
                "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa",
                Data::Ptr(web.into()),
            )]),
        ),
        // Unknown addresses: NXDOMAIN in the cluster's ranges, forwarded outside them.
        ("99.0.96.10.in-addr.arpa", QType::Ptr, Answer::NxDomain),
        ("8.8.8.8.in-addr.arpa", QType::Ptr, Answer::NotOurs),
        // 2.4.3: headless Services: ready endpoints only.
        (
            db,
            QType::A,
            answers(vec![a(db, "10.244.1.5"), a(db, "10.244.2.7")]),
        ),
        (
            "db-all.shop.svc.cluster.local",
            QType::A,
            answers(vec![
                a("db-all.shop.svc.cluster.local", "10.244.1.5"),
                a("db-all.shop.svc.cluster.local", "10.244.2.7"),
                a("db-all.shop.svc.cluster.local", "10.244.2.9"),
            ]),
        ),
        // An endpoint by hostname (StatefulSet pods), or by dashed address.
        (
            "db-0.db.shop.svc.cluster.local",
            QType::A,
            answers(vec![a("db-0.db.shop.svc.cluster.local", "10.244.1.5")]),
        ),
        (
            "10-244-2-7.db.shop.svc.cluster.local",
            QType::A,
            answers(vec![a(
                "10-244-2-7.db.shop.svc.cluster.local",
                "10.244.2.7",
            )]),
        ),
        ("db-1.db.shop.svc.cluster.local", QType::A, Answer::NxDomain),
        (
            "db-1.db-all.shop.svc.cluster.local",
            QType::A,
            answers(vec![a("db-1.db-all.shop.svc.cluster.local", "10.244.2.9")]),
        ),
        (
            "_pg._tcp.db.shop.svc.cluster.local",
            QType::Srv,
            with(
                vec![
                    srv(
                        "_pg._tcp.db.shop.svc.cluster.local",
                        50,
                        5432,
                        "db-0.db.shop.svc.cluster.local",
                    ),
                    srv(
                        "_pg._tcp.db.shop.svc.cluster.local",
                        50,
                        5432,
                        "10-244-2-7.db.shop.svc.cluster.local",
                    ),
                ],
                vec![
                    a("db-0.db.shop.svc.cluster.local", "10.244.1.5"),
                    a("10-244-2-7.db.shop.svc.cluster.local", "10.244.2.7"),
                ],
            ),
        ),
        (
            "5.1.244.10.in-addr.arpa",
            QType::Ptr,
            answers(vec![
                rr(
                    "5.1.244.10.in-addr.arpa",
                    Data::Ptr("db-0.db-all.shop.svc.cluster.local".into()),
                ),
                rr(
                    "5.1.244.10.in-addr.arpa",
                    Data::Ptr("db-0.db.shop.svc.cluster.local".into()),
                ),
            ]),
        ),
        // No ready endpoint: the name does not exist.
        ("empty.shop.svc.cluster.local", QType::A, Answer::NxDomain),
        // 2.4.4: ExternalName: a CNAME whatever the address type.
        (
            "ext.shop.svc.cluster.local",
            QType::A,
            answers(vec![rr(
                "ext.shop.svc.cluster.local",
                Data::Cname("example.com".into()),
            )]),
        ),
        (
            "ext.shop.svc.cluster.local",
            QType::Cname,
            answers(vec![rr(
                "ext.shop.svc.cluster.local",
                Data::Cname("example.com".into()),
            )]),
        ),
        // Pods by dashed address, not checked against existing pods.
        (
            "10-244-1-5.shop.pod.cluster.local",
            QType::A,
            answers(vec![a("10-244-1-5.shop.pod.cluster.local", "10.244.1.5")]),
        ),
        (
            "fd00--5.shop.pod.cluster.local",
            QType::Aaaa,
            answers(vec![a("fd00--5.shop.pod.cluster.local", "fd00::5")]),
        ),
        (
            "10-244-1-5.shop.pod.cluster.local",
            QType::Aaaa,
            Answer::NoData,
        ),
        (
            "not-an-ip.shop.pod.cluster.local",
            QType::A,
            Answer::NxDomain,
        ),
        // Names that do not exist, and what the search path tries first (ndots:5).
        ("nothing.shop.svc.cluster.local", QType::A, Answer::NxDomain),
        (
            "kubernetes.default.default.svc.cluster.local",
            QType::A,
            Answer::NxDomain,
        ),
        (
            "kubernetes.default.svc.default.svc.cluster.local",
            QType::A,
            Answer::NxDomain,
        ),
        ("shop.svc.cluster.local", QType::A, Answer::NoData),
        ("nowhere.svc.cluster.local", QType::A, Answer::NxDomain),
        ("svc.cluster.local", QType::A, Answer::NoData),
        ("x.y.cluster.local", QType::A, Answer::NxDomain),
        // Outside the zone: forwarded.
        ("example.com", QType::A, Answer::NotOurs),
        ("cluster.local.example.com", QType::A, Answer::NotOurs),
        ("local", QType::A, Answer::NotOurs),
    ];
    let mut wrong = Vec::new();
    for (name, qtype, want) in &table {
        let got = zone.answer(index, name, *qtype);
        if &got != want {
            wrong.push(format!(
                "{name} {qtype:?}:\n  want {want:?}\n  got  {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        table.len(),
        wrong.join("\n")
    );
}
