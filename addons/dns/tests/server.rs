//! The server over real sockets on loopback: the cluster zone over UDP and TCP, negative
//! answers with the SOA, forwarding to an upstream (another DNS server on loopback) with a
//! cache that ages TTLs, truncation without EDNS and the full answer over TCP, and recursion
//! refused to clients outside the allowed networks.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use strata_dns::forward::Forwarder;
use strata_dns::index::{Index, Kind, Port, ServiceEntry};
use strata_dns::metrics::Metrics;
use strata_dns::records::Zone;
use strata_dns::server::Handler;
use tokio::net::{TcpListener, UdpSocket};

use common::{question, tcp, tcp_many, udp, udp_from};

/// The stand-in upstream: `example.com` A 192.0.2.1 (TTL 60), `big.example` 40 TXT
/// records (more than 512 bytes), NXDOMAIN otherwise; counts the questions it gets.
#[derive(Debug, Clone, Default)]
struct Upstream {
    asked: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let q = request.request_info().expect("query").query.clone();
        let name = q.name().to_string();
        let mut md = hickory_proto::op::Metadata::response_from_request(&request.metadata);
        let records: Vec<Record> = match name.as_str() {
            "example.com." => vec![Record::from_rdata(
                Name::from_ascii("example.com.").expect("name"),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            )],
            "big.example." => (0..40)
                .map(|i| {
                    Record::from_rdata(
                        Name::from_ascii("big.example.").expect("name"),
                        60,
                        RData::TXT(TXT::new(vec![format!("record number {i} of a big answer")])),
                    )
                })
                .collect(),
            _ => {
                md.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
        };
        let mut b = MessageResponseBuilder::from_message_request(request);
        let edns;
        if let Some(e) = &request.edns {
            let mut x = Edns::new();
            x.set_max_payload(e.max_payload().max(512));
            edns = x;
            b.edns(&edns);
        }
        let r = b.build(md, records.iter(), [].iter(), [].iter(), [].iter());
        response.send_response(r).await.expect("send")
    }
}

async fn serve<H: RequestHandler>(handler: H) -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).await.expect("tcp");
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

/// strata-dns's own UDP and TCP loops on one loopback port.
async fn serve_strata(handler: Handler) -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).await.expect("tcp");
    let handler = Arc::new(handler);
    tokio::spawn(strata_dns::server::serve_udp(handler.clone(), udp));
    tokio::spawn(strata_dns::server::serve_tcp(handler, tcp));
    addr
}

fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

#[tokio::test]
async fn serves_the_zone_and_forwards_with_a_cache() {
    let upstream = Upstream::default();
    let up = serve(upstream.clone()).await;
    let metrics = Arc::new(Metrics::default());
    let mut index = Index::default();
    index.insert(
        "default",
        "kubernetes",
        ServiceEntry {
            kind: Kind::ClusterIp(vec!["10.96.0.1".parse().expect("ip")]),
            ports: vec![Port {
                name: "https".into(),
                protocol: "tcp".into(),
                port: 443,
            }],
        },
    );
    let handler = Handler::new(
        Zone {
            name: "cluster.local".into(),
            reverse: vec!["10.96.0.0/12".parse().expect("net")],
        },
        Arc::new(RwLock::new(Arc::new(index))),
        Forwarder::new(vec![up], metrics.clone()),
        vec!["127.0.0.1/32".parse().expect("net")],
        metrics.clone(),
    );
    let dns = serve_strata(handler).await;

    // The cluster zone, over UDP and TCP, authoritative.
    let q = question("kubernetes.default.svc.cluster.local.", RecordType::A, true);
    for m in [udp(dns, &q).await, tcp(dns, &q).await] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert_eq!(m.answers[0].ttl, 5);
    }
    // A name that does not exist: NXDOMAIN with the zone's SOA for negative caching.
    let m = udp(
        dns,
        &question("nothing.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(
        m.authorities.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
    // No data of that type: NOERROR, empty, SOA.
    let m = udp(
        dns,
        &question(
            "kubernetes.default.svc.cluster.local.",
            RecordType::AAAA,
            true,
        ),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(matches!(
        m.authorities.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
    assert_eq!(
        upstream.asked.load(Ordering::SeqCst),
        0,
        "the zone never goes upstream"
    );

    // Outside the zone: forwarded once, then from the cache with its TTL aging.
    let q = question("Example.COM.", RecordType::A, true);
    let m = udp(dns, &q).await;
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(m.metadata.recursion_available);
    assert_eq!(m.answers[0].ttl, 60);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = tcp(dns, &q).await;
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(m.answers[0].ttl < 60, "aged: {}", m.answers[0].ttl);
    assert_eq!(
        upstream.asked.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
    // Negative answers from upstream pass through.
    let m = udp(dns, &question("missing.example.", RecordType::A, true)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // A big answer: truncated over UDP without EDNS (512 bytes) and with a 4096-byte EDNS
    // buffer (the server sends at most 1232), the question alone; whole over TCP.
    let q = question("big.example.", RecordType::TXT, false);
    let m = udp(dns, &q).await;
    assert!(m.metadata.truncation, "TC set");
    assert!(m.answers.is_empty() && m.queries.len() == 1);
    assert!(m.to_vec().expect("encode").len() <= 512);
    let mut big = question("big.example.", RecordType::TXT, true);
    if let Some(e) = big.edns.as_mut() {
        e.set_max_payload(4096);
    }
    let m = udp(dns, &big).await;
    assert!(m.metadata.truncation, "TC set above 1232 bytes");
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let m = tcp(dns, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);

    // A client outside the allowed networks: the zone yes, recursion no.
    let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let m = udp_from(
        stranger,
        dns,
        &question("example.com.", RecordType::A, true),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    let m = udp_from(
        stranger,
        dns,
        &question("kubernetes.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 1)));

    // Not a standard query: NOTIMP; a response: no answer at all (no loops between servers).
    let mut status = question(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    status.metadata.op_code = OpCode::Status;
    let m = udp(dns, &status).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    let mut reply = question(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    reply.metadata.message_type = MessageType::Response;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(&reply.to_vec().expect("encode"), dns)
        .await
        .expect("send");
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf))
            .await
            .is_err(),
        "a response is never answered"
    );
    // Two questions in one message: FORMERR.
    let mut two = question(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    two.add_query(Query::query(
        Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
        RecordType::A,
    ));
    assert_eq!(
        udp(dns, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // A header and then bytes that are no question: FORMERR with the request's id.
    let mut garbage = question(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        false,
    )
    .to_vec()
    .expect("encode");
    garbage.truncate(16);
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(&garbage, dns).await.expect("send");
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    let m = Message::from_vec(&buf[..n]).expect("decode");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (4242, ResponseCode::FormErr)
    );
    // EDNS version 1: BADVERS. Class CH, and zone transfers: NOTIMP.
    let mut v1 = question("kubernetes.default.svc.cluster.local.", RecordType::A, true);
    if let Some(e) = v1.edns.as_mut() {
        e.set_version(1);
    }
    // 16 is BADVERS in an answer with OPT (hickory names the shared code BADSIG).
    assert_eq!(u16::from(udp(dns, &v1).await.metadata.response_code), 16);
    let mut chaos = question("version.bind.", RecordType::TXT, false);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    assert_eq!(
        udp(dns, &chaos).await.metadata.response_code,
        ResponseCode::NotImp
    );
    let axfr = question("cluster.local.", RecordType::AXFR, false);
    assert_eq!(
        tcp(dns, &axfr).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // Several questions on one TCP connection, answered in turn.
    let answers = tcp_many(
        dns,
        &[
            question("kubernetes.default.svc.cluster.local.", RecordType::A, true),
            question("nothing.default.svc.cluster.local.", RecordType::A, true),
            question(
                "kubernetes.default.svc.cluster.local.",
                RecordType::AAAA,
                true,
            ),
        ],
    )
    .await;
    let codes: Vec<ResponseCode> = answers.iter().map(|m| m.metadata.response_code).collect();
    assert_eq!(
        codes,
        [
            ResponseCode::NoError,
            ResponseCode::NXDomain,
            ResponseCode::NoError
        ]
    );
    assert_eq!(first_a(&answers[0]), Some(Ipv4Addr::new(10, 96, 0, 1)));

    // Every answer above was counted, by type, code and source; the cache's hits and misses.
    let text = metrics.encode();
    for line in [
        r#"strata_dns_queries_total{type="A",rcode="NOERROR",source="cluster"} 4"#,
        r#"strata_dns_queries_total{type="A",rcode="NXDOMAIN",source="cluster"} 2"#,
        r#"strata_dns_queries_total{type="AAAA",rcode="NOERROR",source="cluster"} 2"#,
        r#"strata_dns_queries_total{type="A",rcode="NOERROR",source="forward"} 2"#,
        r#"strata_dns_queries_total{type="A",rcode="NXDOMAIN",source="forward"} 1"#,
        r#"strata_dns_queries_total{type="TXT",rcode="NOERROR",source="forward"} 3"#,
        r#"strata_dns_queries_total{type="A",rcode="REFUSED",source="none"} 1"#,
        r#"strata_dns_queries_total{type="none",rcode="BADVERS",source="none"} 1"#,
        r#"strata_dns_queries_total{type="none",rcode="NOTIMP",source="none"} 3"#,
        r#"strata_dns_query_duration_seconds_count{source="cluster"} 8"#,
        "strata_dns_forward_cache_hits_total 3",
        "strata_dns_forward_cache_misses_total 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains("strata_dns_upstream_errors_total{"),
        "{text}"
    );
}
