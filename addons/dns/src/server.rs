//! The DNS server: hickory's UDP and TCP listeners with one request handler that answers the
//! cluster zone from the current [`Index`] (no API request on the query path) and forwards
//! every other name upstream for clients of the cluster's networks (others are refused).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::index::Index;
use crate::metrics::{Metrics, Source};
use crate::records::{Answer, Data, QType, Rr, Zone};

/// TTL of the cluster zone's records and of its negative answers (as CoreDNS's default).
pub const TTL: u32 = 5;

/// The index the handler answers from, replaced whole when the cluster changes.
pub type SharedIndex = Arc<RwLock<Arc<Index>>>;

#[derive(Debug)]
pub struct Handler {
    pub zone: Zone,
    pub index: SharedIndex,
    pub forwarder: Forwarder,
    /// Clients that may use the forwarder besides the Nodes' own addresses (the pod network).
    pub recursion_for: Vec<ipnet::IpNet>,
    pub metrics: Arc<Metrics>,
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

impl Handler {
    fn soa(&self) -> Option<Record> {
        let zone = name(&self.zone.name)?;
        let soa = SOA::new(
            name(&self.zone.ns())?,
            name(&format!("hostmaster.{}", self.zone.name))?,
            1,
            7200,
            1800,
            86400,
            TTL,
        );
        Some(Record::from_rdata(zone, TTL, RData::SOA(soa)))
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
            Data::Soa => return self.soa(),
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

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let (info, qtype, source) = self.respond(request, response).await;
        self.metrics.answered(
            qtype.map_or("none", type_label),
            rcode_label(info.response_code),
            source,
            start.elapsed().as_secs_f64(),
        );
        info
    }
}

impl Handler {
    /// Answers `request`: what was sent, the question's type and where the answer came from.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> (ResponseInfo, Option<QType>, Source) {
        // EDNS: the client's buffer size (at least 512), version 0 only.
        let mut edns = None;
        if let Some(req) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e.set_dnssec_ok(req.flags().dnssec_ok);
            edns = Some((e, req.version() > 0));
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some((e, _)) = &edns {
            builder.edns(e);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let index = self.index();
        let allowed = self.may_recurse(&index, request.src().ip());
        metadata.recursion_available = allowed;
        let bad_version = edns.as_ref().is_some_and(|(_, bad)| *bad);
        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query
                    && request.metadata.op_code == OpCode::Query
                    && !bad_version =>
            {
                info.query
            }
            _ => {
                metadata.response_code = if bad_version {
                    ResponseCode::BADVERS
                } else if request.metadata.op_code != OpCode::Query {
                    ResponseCode::NotImp
                } else {
                    ResponseCode::FormErr
                };
                let r = builder.build_no_records(metadata);
                let info = response
                    .send_response(r)
                    .await
                    .unwrap_or_else(|_| failed(request, metadata.response_code));
                return (info, None, Source::None);
            }
        };
        let qname = query.name().to_string();
        let qt = qtype(query.query_type());
        let answer = self.zone.answer(&index, &qname, qt);
        let source = match answer {
            Answer::NotOurs if allowed => Source::Forward,
            Answer::NotOurs => Source::None,
            _ => Source::Cluster,
        };
        let soa: Vec<Record> = self.soa().into_iter().collect();
        let (answers, additionals, authority): (Vec<Record>, Vec<Record>, &[Record]) = match answer
        {
            Answer::Records {
                answers,
                additionals,
            } => {
                metadata.authoritative = true;
                (
                    answers.iter().filter_map(|r| self.record(r)).collect(),
                    additionals.iter().filter_map(|r| self.record(r)).collect(),
                    &[],
                )
            }
            Answer::NoData => {
                metadata.authoritative = true;
                (Vec::new(), Vec::new(), &soa)
            }
            Answer::NxDomain => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                (Vec::new(), Vec::new(), &soa)
            }
            Answer::NotOurs if !allowed => {
                metadata.response_code = ResponseCode::Refused;
                (Vec::new(), Vec::new(), &[])
            }
            Answer::NotOurs => {
                let asked = query.original().name().clone();
                match self.forwarder.resolve(&asked, query.query_type()).await {
                    Ok(up) => {
                        metadata.response_code = up.response_code;
                        let r = builder.build(
                            metadata,
                            up.answers.iter(),
                            up.authorities.iter(),
                            [].iter(),
                            up.additionals.iter(),
                        );
                        let info = response
                            .send_response(r)
                            .await
                            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
                        return (info, Some(qt), source);
                    }
                    Err(e) => {
                        tracing::debug!(%qname, error = %e, "forwarding failed");
                        metadata.response_code = ResponseCode::ServFail;
                        (Vec::new(), Vec::new(), &[])
                    }
                }
            }
        };
        let r = builder.build(
            metadata,
            answers.iter(),
            [].iter(),
            authority.iter(),
            additionals.iter(),
        );
        let info = response
            .send_response(r)
            .await
            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
        (info, Some(qt), source)
    }
}
