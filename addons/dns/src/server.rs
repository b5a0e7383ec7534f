//! The DNS server: one handler that answers the cluster zone from the current [`Index`] (no
//! API request on the query path) and forwards every other name upstream for clients of the
//! cluster's networks (others are refused), served over UDP and TCP by loops of its own.
//!
//! UDP is answered in the receiving loop itself (one buffer, no task per question); only a
//! question that goes upstream gets a task, and at most [`MAX_FORWARDS`] at a time. Answers
//! too big for the client's buffer (512 bytes, or its EDNS size) are truncated to the question
//! with TC set, and the client asks again over TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::forward::Forwarder;
use crate::index::Index;
use crate::metrics::{Metrics, Source};
use crate::records::{Answer, Data, QType, Rr, Zone};

/// TTL of the cluster zone's records and of its negative answers (as CoreDNS's default).
pub const TTL: u32 = 5;
/// The biggest UDP answer sent, whatever buffer a client announces (the size DNS Flag Day
/// 2020 settled on: no fragmentation, little amplification); also what the server announces.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Questions being forwarded at one time over UDP; more get SERVFAIL at once.
pub const MAX_FORWARDS: usize = 1024;
/// TCP connections served at one time; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection that sends nothing for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// The index the handler answers from, replaced whole when the cluster changes.
pub type SharedIndex = Arc<RwLock<Arc<Index>>>;

#[derive(Debug)]
pub struct Handler {
    zone: Zone,
    index: SharedIndex,
    forwarder: Forwarder,
    /// Clients that may use the forwarder besides the Nodes' own addresses (the pod network).
    recursion_for: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
    /// The zone's SOA record, made once (negative answers carry it).
    soa: Option<Record>,
}

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::TXT => QType::Txt,
        RecordType::CNAME => QType::Cname,
        RecordType::SOA => QType::Soa,
        RecordType::NS => QType::Ns,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

/// The label a question's type is counted under (a fixed set: no label per unknown type).
fn type_label(t: QType) -> &'static str {
    match t {
        QType::A => "A",
        QType::Aaaa => "AAAA",
        QType::Srv => "SRV",
        QType::Ptr => "PTR",
        QType::Txt => "TXT",
        QType::Cname => "CNAME",
        QType::Soa => "SOA",
        QType::Ns => "NS",
        QType::Any => "ANY",
        QType::Other => "other",
    }
}

/// The label a response code is counted under, as dig names it.
fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

/// The SOA record of `zone`.
fn soa_record(zone: &Zone) -> Option<Record> {
    let soa = SOA::new(
        name(&zone.ns())?,
        name(&format!("hostmaster.{}", zone.name))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(name(&zone.name)?, TTL, RData::SOA(soa)))
}

impl Handler {
    pub fn new(
        zone: Zone,
        index: SharedIndex,
        forwarder: Forwarder,
        recursion_for: Vec<ipnet::IpNet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let soa = soa_record(&zone);
        Self {
            zone,
            index,
            forwarder,
            recursion_for,
            metrics,
            soa,
        }
    }

    fn record(&self, rr: &Rr) -> Option<Record> {
        let data = match &rr.data {
            Data::A(v) => RData::A(A(*v)),
            Data::Aaaa(v) => RData::AAAA(AAAA(*v)),
            Data::Srv {
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(0, *weight, *port, name(target)?)),
            Data::Ptr(t) => RData::PTR(PTR(name(t)?)),
            Data::Cname(t) => RData::CNAME(CNAME(name(t)?)),
            Data::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
            Data::Ns(t) => RData::NS(NS(name(t)?)),
            Data::Soa => return self.soa.clone(),
        };
        Some(Record::from_rdata(name(&rr.name)?, TTL, data))
    }

    /// Recursion for the pod network (and any other network configured) and the Nodes.
    fn may_recurse(&self, index: &Index, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
            v => v,
        };
        self.recursion_for.iter().any(|n| n.contains(&ip)) || index.is_node_address(ip)
    }

    /// The current index (a cheap clone of an Arc).
    fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A question the zone does not hold, to be asked upstream: the response so far (header,
/// question, EDNS) and what to ask.
#[derive(Debug)]
pub struct Pending {
    response: Message,
    name: Name,
    rtype: RecordType,
}

/// What the handler made of a request.
#[derive(Debug)]
pub enum Step {
    /// The response, complete.
    Done(Message),
    /// The name must be asked upstream first ([`Handler::forward`]).
    Forward(Pending),
}

/// What a request is counted as in the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub qtype: Option<QType>,
    pub source: Source,
}

impl Handler {
    /// Answers `request` from `client` when the zone holds the answer (or the request is
    /// refused or malformed); otherwise says what to forward.
    pub fn answer(&self, client: IpAddr, request: &Message) -> (Step, Counted) {
        let mut response = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.queries = request.queries.clone();
        // EDNS: version 0 only; the server's own buffer size announced.
        let mut bad_version = false;
        if let Some(req) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            e.set_version(0);
            e.set_dnssec_ok(req.flags().dnssec_ok);
            response.set_edns(e);
            bad_version = req.version() > 0;
        }
        let index = self.index();
        let allowed = self.may_recurse(&index, client);
        response.metadata.recursion_available = allowed;
        let none = Counted {
            qtype: None,
            source: Source::None,
        };
        let query = match request.queries.as_slice() {
            [q] if request.metadata.op_code == OpCode::Query && !bad_version => q,
            _ => {
                response.metadata.response_code = if bad_version {
                    ResponseCode::BADVERS
                } else if request.metadata.op_code != OpCode::Query {
                    ResponseCode::NotImp
                } else {
                    ResponseCode::FormErr
                };
                return (Step::Done(response), none);
            }
        };
        // The cluster zone is class IN; zone transfers are not served (nor forwarded).
        if query.query_class() != DNSClass::IN
            || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            response.metadata.response_code = ResponseCode::NotImp;
            return (Step::Done(response), none);
        }
        let qt = qtype(query.query_type());
        let qname = query.name().to_string();
        let counted = |source| Counted {
            qtype: Some(qt),
            source,
        };
        match self.zone.answer(&index, &qname, qt) {
            Answer::Records {
                answers,
                additionals,
            } => {
                response.metadata.authoritative = true;
                response.answers = answers.iter().filter_map(|r| self.record(r)).collect();
                response.additionals = additionals.iter().filter_map(|r| self.record(r)).collect();
            }
            Answer::NoData => {
                response.metadata.authoritative = true;
                response.authorities = self.soa.iter().cloned().collect();
            }
            Answer::NxDomain => {
                response.metadata.authoritative = true;
                response.metadata.response_code = ResponseCode::NXDomain;
                response.authorities = self.soa.iter().cloned().collect();
            }
            Answer::NotOurs if !allowed => {
                response.metadata.response_code = ResponseCode::Refused;
                return (Step::Done(response), counted(Source::None));
            }
            Answer::NotOurs => {
                let pending = Pending {
                    response,
                    name: query.name().clone(),
                    rtype: query.query_type(),
                };
                return (Step::Forward(pending), counted(Source::Forward));
            }
        }
        (Step::Done(response), counted(Source::Cluster))
    }

    /// Completes a response with the upstream's answer (SERVFAIL when none answers).
    pub async fn forward(&self, pending: Pending) -> Message {
        let Pending {
            mut response,
            name,
            rtype,
        } = pending;
        match self.forwarder.resolve(&name, rtype).await {
            Ok(up) => {
                response.metadata.response_code = up.response_code;
                response.answers = up.answers;
                response.authorities = up.authorities;
                response.additionals = up.additionals;
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "forwarding failed");
                response.metadata.response_code = ResponseCode::ServFail;
            }
        }
        response
    }

    /// Counts one answered request.
    fn count(&self, response: &Message, counted: Counted, start: Instant) {
        self.metrics.answered(
            counted.qtype.map_or("none", type_label),
            rcode_label(response.metadata.response_code),
            counted.source,
            start.elapsed().as_secs_f64(),
        );
    }
}

/// The biggest UDP answer `request` takes: its EDNS buffer size within 512 and
/// [`MAX_UDP_PAYLOAD`], or 512 bytes without EDNS.
fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(512, |e| {
        usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD))
    })
}

/// FORMERR for a datagram that is a query by its header but cannot be read as a whole (RFC
/// 6891 §6.1.1: two OPT records, say): the header's id and opcode, nothing else. None for
/// anything shorter than a header or that is a response.
fn format_error(datagram: &[u8]) -> Option<Vec<u8>> {
    let header: [u8; 4] = datagram.get(..4)?.try_into().ok()?;
    if datagram.len() < 12 || header[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    let mut m = Message::new(
        id,
        MessageType::Response,
        OpCode::from_u8((header[2] >> 3) & 0x0f),
    );
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().ok()
}

/// `response` as bytes of at most `limit`: when the whole does not fit, the header and the
/// question with TC set (the client asks again over TCP); SERVFAIL if it cannot be encoded.
pub fn encode(response: &Message, limit: usize) -> Vec<u8> {
    if let Ok(bytes) = response.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    let mut short = Message::new(
        response.metadata.id,
        MessageType::Response,
        response.metadata.op_code,
    );
    short.metadata = response.metadata;
    short.queries = response.queries.clone();
    short.edns = response.edns.clone();
    if response.to_vec().is_ok() {
        short.metadata.truncation = true;
    } else {
        short.metadata.response_code = ResponseCode::ServFail;
    }
    short.to_vec().unwrap_or_default()
}

/// Serves DNS over UDP on `socket`; returns only when the socket fails.
pub async fn serve_udp(handler: Arc<Handler>, socket: UdpSocket) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // A datagram-level error (an ICMP report, say) says nothing about the socket.
            Err(e) if transient(&e) => continue,
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        // Not a DNS message, or a response: no answer (never a loop between servers).
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            if let Some(bytes) = format_error(&buf[..n]) {
                send_udp(&socket, &bytes, client).await;
            }
            continue;
        };
        if request.metadata.message_type != MessageType::Query {
            continue;
        }
        let limit = udp_limit(&request);
        match handler.answer(client.ip(), &request) {
            (Step::Done(response), counted) => {
                send_udp(&socket, &encode(&response, limit), client).await;
                handler.count(&response, counted, start);
            }
            (Step::Forward(pending), counted) => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    let mut response = pending.response;
                    response.metadata.response_code = ResponseCode::ServFail;
                    send_udp(&socket, &encode(&response, limit), client).await;
                    handler.count(&response, counted, start);
                    continue;
                };
                let (handler, socket) = (handler.clone(), socket.clone());
                tokio::spawn(async move {
                    let response = handler.forward(pending).await;
                    send_udp(&socket, &encode(&response, limit), client).await;
                    handler.count(&response, counted, start);
                    drop(permit);
                });
            }
        }
    }
}

/// Errors of one datagram or one connection, after which the socket still works.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{
        ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted, WouldBlock,
    };
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | ConnectionAborted | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files, for a moment
}

async fn send_udp(socket: &UdpSocket, bytes: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, client).await {
        tracing::debug!(%client, error = %e, "answering over UDP");
    }
}

/// Serves DNS over TCP on `listener` (RFC 7766: several questions per connection, in turn);
/// returns only when the listener fails.
pub async fn serve_tcp(handler: Arc<Handler>, listener: TcpListener) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if transient(&e) => {
                tracing::debug!(error = %e, "accepting over TCP");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(&handler, stream, client).await {
                tracing::debug!(%client, error = %e, "TCP connection");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(
    handler: &Handler,
    mut stream: TcpStream,
    client: SocketAddr,
) -> std::io::Result<()> {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut body = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut body))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let start = Instant::now();
        let request = match Message::from_vec(&body) {
            Ok(r) if r.metadata.message_type == MessageType::Query => r,
            _ => return Ok(()),
        };
        let (response, counted) = match handler.answer(client.ip(), &request) {
            (Step::Done(r), c) => (r, c),
            (Step::Forward(p), c) => (handler.forward(p).await, c),
        };
        let bytes = encode(&response, usize::from(u16::MAX));
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        // A client that does not read its answers loses its connection.
        tokio::time::timeout(TCP_IDLE, stream.write_all(&framed))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        handler.count(&response, counted, start);
    }
}
