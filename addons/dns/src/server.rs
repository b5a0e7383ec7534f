//! The DNS server: hickory's UDP and TCP listeners with one request handler that answers the
//! cluster zone from the current [`Index`] (no API request on the query path) and forwards
//! every other name upstream for clients of the cluster's networks (others are refused).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::index::Index;
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
        mut response: R,
    ) -> ResponseInfo {
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
                return response
                    .send_response(r)
                    .await
                    .unwrap_or_else(|_| failed(request, metadata.response_code));
            }
        };
        let qname = query.name().to_string();
        let answer = self.zone.answer(&index, &qname, qtype(query.query_type()));
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
                        return response
                            .send_response(r)
                            .await
                            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
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
        response
            .send_response(r)
            .await
            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail))
    }
}
