//! Prometheus metrics of the operator, served at `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub leader: Gauge,
    pub holders: Family<Labels, Gauge>,
    pub max_holders: Family<Labels, Gauge>,
    pub nodes: Family<Labels, Gauge>,
    pub degraded: Family<Labels, Gauge>,
    pub grants: Family<Labels, Counter>,
    pub releases: Family<Labels, Counter>,
    pub reconcile_errors: Counter,
    pub fleetlock_requests: Family<Labels, Counter>,
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("strata_update");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            leader: Gauge::default(),
            holders: Family::default(),
            max_holders: Family::default(),
            nodes: Family::default(),
            degraded: Family::default(),
            grants: Family::default(),
            releases: Family::default(),
            reconcile_errors: Counter::default(),
            fleetlock_requests: Family::default(),
        };
        r.register(
            "leader",
            "1 while this operator holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "lock_holders",
            "Slots of each policy's RebootLock in use",
            m.holders.clone(),
        );
        r.register(
            "lock_max_holders",
            "Slots of each policy's RebootLock",
            m.max_holders.clone(),
        );
        r.register(
            "nodes",
            "Nodes of each policy by update phase",
            m.nodes.clone(),
        );
        r.register(
            "policy_degraded",
            "1 while a policy is Degraded",
            m.degraded.clone(),
        );
        r.register("grants", "Slots granted", m.grants.clone());
        r.register("releases", "Slots released, by reason", m.releases.clone());
        r.register(
            "reconcile_errors",
            "Reconciliations that failed (retried)",
            m.reconcile_errors.clone(),
        );
        r.register(
            "fleetlock_requests",
            "FleetLock requests by operation and result",
            m.fleetlock_requests.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::default();
        m.holders
            .get_or_create(&labels(&[("policy", "default")]))
            .set(2);
        m.releases
            .get_or_create(&labels(&[("policy", "default"), ("reason", "rebooted")]))
            .inc();
        let text = m.render();
        assert!(
            text.contains("strata_update_lock_holders{policy=\"default\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("strata_update_releases_total{policy=\"default\",reason=\"rebooted\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
