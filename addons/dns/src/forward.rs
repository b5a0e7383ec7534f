//! Names outside the cluster: asked of upstream servers (UDP, then TCP when the answer is
//! truncated), with a cache that honours TTLs (the smallest of the answer's records, aged on
//! every hit) and caches negative answers for the SOA's minimum (RFC 2308), both capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

/// How long one upstream gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time an answer is kept, positive and negative.
const MAX_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 300;
/// Cache entries kept at most (expired ones go first, then everything).
const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream DNS server is configured")]
    NoUpstream,
    #[error("every upstream failed; last: {0}")]
    Failed(String),
}

/// An answer from upstream, as it goes back to the client.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Served from the cache.
    pub cached: bool,
}

struct Entry {
    message: Upstream,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(Name, RecordType), Entry>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        Self {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The answer for `name`/`rtype`, from the cache or upstream.
    pub async fn resolve(&self, name: &Name, rtype: RecordType) -> Result<Upstream, ForwardError> {
        let key = (name.to_lowercase(), rtype);
        if let Some(hit) = self.cached(&key) {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = String::new();
        for up in &self.upstreams {
            match ask(*up, name, rtype).await {
                Ok(m) => {
                    let answer = Upstream {
                        response_code: m.metadata.response_code,
                        answers: m.answers,
                        authorities: m.authorities,
                        additionals: m
                            .additionals
                            .into_iter()
                            .filter(|r| r.record_type() != RecordType::OPT)
                            .collect(),
                        cached: false,
                    };
                    self.store(key, &answer);
                    return Ok(answer);
                }
                Err(e) => {
                    self.metrics.upstream_failed(up);
                    last = format!("{up}: {e}");
                }
            }
        }
        Err(ForwardError::Failed(last))
    }

    fn cached(&self, key: &(Name, RecordType)) -> Option<Upstream> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(key)?;
        let age = u32::try_from(e.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= e.ttl {
            return None;
        }
        let mut m = e.message.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        m.cached = true;
        Some(m)
    }

    fn store(&self, key: (Name, RecordType), m: &Upstream) {
        let Some(ttl) = cache_ttl(m) else {
            return;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Entry {
                message: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// Entries in the cache (expired ones included until they are evicted).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// How long an upstream answer may be cached: the smallest TTL of its records; for a
/// negative answer the smaller of the SOA's TTL and minimum. None: not cacheable.
pub fn cache_ttl(m: &Upstream) -> Option<u32> {
    match m.response_code {
        ResponseCode::NoError if !m.answers.is_empty() => m
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(MAX_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => m
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .map(|t| t.min(MAX_NEGATIVE_TTL)),
        _ => None,
    }
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // The system's generator; a fixed id only weakens spoofing resistance, never correctness.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u16::from_be_bytes(b)
}

fn query(name: &Name, rtype: RecordType) -> Message {
    let mut m = Message::new(random_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m
}

fn matches(q: &Message, a: &Message) -> bool {
    a.metadata.id == q.metadata.id
        && a.metadata.message_type == MessageType::Response
        && a.queries.len() == 1
        && q.queries.first().is_some_and(|qq| {
            let aq = &a.queries[0];
            aq.name().to_lowercase() == qq.name().to_lowercase()
                && aq.query_type() == qq.query_type()
        })
}

async fn ask(up: SocketAddr, name: &Name, rtype: RecordType) -> Result<Message, String> {
    let q = query(name, rtype);
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(up).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything that is not the answer to this question is ignored (spoofing).
            if let Ok(a) = Message::from_vec(&buf[..n])
                && matches(&q, &a)
            {
                return Ok::<Message, String>(a);
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_owned())??;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    // Truncated: the whole answer over TCP.
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut tcp = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
        let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
        tcp.write_all(&len.to_be_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let n = tcp.read_u16().await.map_err(|e| e.to_string())?;
        let mut body = vec![0u8; usize::from(n)];
        tcp.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        let a = Message::from_vec(&body).map_err(|e| e.to_string())?;
        if matches(&q, &a) {
            Ok(a)
        } else {
            Err("an answer to another question over TCP".to_owned())
        }
    })
    .await
    .map_err(|_| "timed out over TCP".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upstream_that_fails_is_counted_and_the_next_asked() {
        // A UDP port nobody listens on: the kernel refuses at once (no timeout to wait for).
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port");
        let metrics = Arc::new(Metrics::default());
        let f = Forwarder::new(vec![closed, closed], metrics.clone());
        let name = Name::from_ascii("example.com.").expect("name");
        let err = f
            .resolve(&name, RecordType::A)
            .await
            .expect_err("no upstream answers");
        assert!(err.to_string().contains(&closed.to_string()), "{err}");
        let text = metrics.encode();
        let line = format!(r#"strata_dns_upstream_errors_total{{upstream="{closed}"}} 2"#);
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
        assert!(
            text.contains("strata_dns_forward_cache_misses_total 1"),
            "{text}"
        );
    }
}
