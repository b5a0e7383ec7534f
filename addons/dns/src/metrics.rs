//! Prometheus metrics of the server, served at `/metrics` in the text exposition format:
//! queries by type, response code and where the answer came from, answer latency, the
//! forwarder's cache hits and misses, upstream failures, and the size of the index.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Source {
    /// The cluster zone, from the index.
    Cluster,
    /// Upstream, through the forwarder (its cache included).
    Forward,
    /// Refused, malformed or not a query: answered without looking anything up.
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Forward => "forward",
            Self::None => "none",
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// The question's type (A, AAAA, SRV, ...; "none" without a question).
    pub r#type: String,
    /// The answer's response code (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...).
    pub rcode: String,
    pub source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric of the server, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub queries: Family<QueryLabels, Counter>,
    pub latency: Family<SourceLabels, Histogram, fn() -> Histogram>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub services: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub index_rebuilds: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strata_dns");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "DNS queries answered, by question type, response code and source",
            queries.clone(),
        );
        let latency = Family::<SourceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "query_duration_seconds",
            "Time from a query's arrival to its answer being sent, by source",
            latency.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "forward_cache_hits",
            "Names outside the cluster answered from the forwarder's cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "forward_cache_misses",
            "Names outside the cluster asked of an upstream server",
            cache_misses.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream servers that failed to answer (timeout, refused connection, bad answer)",
            upstream_errors.clone(),
        );
        let services = Gauge::default();
        registry.register(
            "services",
            "Services in the index the cluster zone is answered from",
            services.clone(),
        );
        let index_rebuilds = Counter::default();
        registry.register(
            "index_rebuilds",
            "Times the index was rebuilt after Services, Endpoints or Nodes changed",
            index_rebuilds.clone(),
        );
        Self {
            registry,
            queries,
            latency,
            cache_hits,
            cache_misses,
            upstream_errors,
            services,
            index_rebuilds,
        }
    }
}

impl Metrics {
    /// Counts one answered query.
    pub fn answered(&self, qtype: &str, rcode: &str, source: Source, seconds: f64) {
        self.queries
            .get_or_create(&QueryLabels {
                r#type: qtype.to_owned(),
                rcode: rcode.to_owned(),
                source,
            })
            .inc();
        self.latency
            .get_or_create(&SourceLabels { source })
            .observe(seconds);
    }

    pub fn upstream_failed(&self, upstream: &std::net::SocketAddr) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// The text exposition format (`text/plain; version=0.0.4` compatible; OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_encoded_with_their_labels() {
        let m = Metrics::default();
        m.answered("A", "NOERROR", Source::Cluster, 0.000_25);
        m.answered("A", "NOERROR", Source::Cluster, 0.000_3);
        m.answered("AAAA", "NXDOMAIN", Source::Forward, 0.01);
        m.cache_hits.inc();
        m.upstream_failed(&"10.0.0.53:53".parse().expect("addr"));
        m.services.set(7);
        let text = m.encode();
        for line in [
            r#"strata_dns_queries_total{type="A",rcode="NOERROR",source="cluster"} 2"#,
            r#"strata_dns_queries_total{type="AAAA",rcode="NXDOMAIN",source="forward"} 1"#,
            r#"strata_dns_query_duration_seconds_count{source="cluster"} 2"#,
            r#"strata_dns_query_duration_seconds_bucket{le="0.0004",source="cluster"} 2"#,
            r#"strata_dns_query_duration_seconds_bucket{le="0.0002",source="cluster"} 0"#,
            "strata_dns_forward_cache_hits_total 1",
            "strata_dns_forward_cache_misses_total 0",
            r#"strata_dns_upstream_errors_total{upstream="10.0.0.53:53"} 1"#,
            "strata_dns_services 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
