//! DNS questions over real sockets, for the tests of the server.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

pub fn question(name: &str, rtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

pub async fn udp_from(from: IpAddr, server: SocketAddr, q: &Message) -> Message {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0))
        .await
        .expect("bind");
    sock.send_to(&q.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("answer in time")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("decode")
}

pub async fn udp(server: SocketAddr, q: &Message) -> Message {
    udp_from(IpAddr::V4(Ipv4Addr::LOCALHOST), server, q).await
}

pub async fn tcp(server: SocketAddr, q: &Message) -> Message {
    tcp_many(server, std::slice::from_ref(q))
        .await
        .pop()
        .expect("an answer")
}

/// Several questions on one TCP connection, sent at once; the answers in order.
pub async fn tcp_many(server: SocketAddr, questions: &[Message]) -> Vec<Message> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(server).await.expect("connect");
        let mut out = Vec::new();
        for q in questions {
            let bytes = q.to_vec().expect("encode");
            out.extend_from_slice(&u16::try_from(bytes.len()).expect("size").to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        s.write_all(&out).await.expect("write");
        let mut answers = Vec::new();
        for _ in questions {
            let n = s.read_u16().await.expect("len");
            let mut body = vec![0u8; usize::from(n)];
            s.read_exact(&mut body).await.expect("body");
            answers.push(Message::from_vec(&body).expect("decode"));
        }
        answers
    })
    .await
    .expect("answers over TCP in time")
}
