//! The operator's HTTP endpoint: the FleetLock protocol (as Zincati speaks it) on the same
//! RebootLocks the cluster's agents use, `/metrics`, and `/healthz`.
//!
//! `POST /v1/pre-reboot` and `POST /v1/steady-state`, header `fleet-lock-protocol: true`, body
//! `{"client_params":{"id":..,"group":..}}`. The group names the UpdatePolicy (and its lock);
//! a client holds its slot as `fleetlock/<id>` so it can never be mistaken for a node.
//!
//! FleetLock clients (Zincati) send no credentials, only a base URL. So a request is accepted
//! only from a node's address (one of its Node's addresses, or the gateway address of its
//! pod range, which host-to-local-pod traffic leaves with); a pod's address is refused. A
//! slot is bound to the node that took it and released only by a request from that node;
//! `strata updates release` frees one whose host is gone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

use crate::crd::{HolderPhase, RebootLock, Time, UpdatePolicy};
use crate::decide;
use crate::lock::{self, SlotOutcome};
use crate::metrics::{Metrics, labels};
use crate::window::allowed;

/// Prefix of FleetLock holders in a RebootLock.
pub const HOLDER_PREFIX: &str = "fleetlock/";

#[derive(Debug, Deserialize)]
struct ClientParams {
    id: String,
    #[serde(default = "default_group")]
    group: String,
}

fn default_group() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
struct Body {
    client_params: ClientParams,
}

#[derive(Clone)]
struct Shared {
    client: Client,
    metrics: Arc<Metrics>,
}

fn reply(code: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    (
        code,
        axum::Json(json!({"kind": kind, "value": value.into()})),
    )
        .into_response()
}

/// A refused request: status, kind, explanation.
type Refusal = (StatusCode, &'static str, String);

/// Checks the protocol header and body.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<ClientParams, Refusal> {
    if headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok())
        != Some("true")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing_header",
            "the header `fleet-lock-protocol: true` is required".into(),
        ));
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("expected {{\"client_params\":{{\"id\":..,\"group\":..}}}}: {e}"),
        )
    })?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 200
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !ok(&b.client_params.id) || !ok(&b.client_params.group) {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_client_params",
            "id and group must be 1-200 characters of [A-Za-z0-9._-]".into(),
        ));
    }
    Ok(b.client_params)
}

/// The node `ip` belongs to: one of its addresses, or the first address of its pod range
/// (the bridge gateway a host's own requests to a pod on it come from).
pub fn node_of(nodes: &[Node], ip: IpAddr) -> Option<String> {
    nodes.iter().find_map(|n| {
        let name = n.metadata.name.clone()?;
        let listed = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .is_some_and(|a| a.iter().any(|a| a.address.parse::<IpAddr>() == Ok(ip)));
        let gateway = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(gateway_of)
            .is_some_and(|g| g == ip);
        (listed || gateway).then_some(name)
    })
}

/// The first host address of a CIDR (`10.244.1.0/24` -> `10.244.1.1`).
fn gateway_of(cidr: &str) -> Option<IpAddr> {
    let (net, _) = cidr.split_once('/')?;
    match net.parse::<IpAddr>().ok()? {
        IpAddr::V4(v) => Some(IpAddr::V4((u32::from(v) + 1).into())),
        IpAddr::V6(v) => Some(IpAddr::V6((u128::from(v) + 1).into())),
    }
}

/// The node a request came from, or the refusal to send.
async fn source_node(s: &Shared, from: SocketAddr) -> Result<String, Response> {
    let nodes: Api<Node> = Api::all(s.client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| reply(StatusCode::SERVICE_UNAVAILABLE, "api_error", e.to_string()))?;
    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
    let ip = match from.ip() {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
        v4 => v4,
    };
    node_of(&list.items, ip).ok_or_else(|| {
        tracing::warn!(%ip, "FleetLock request refused: not from a node's address");
        reply(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "FleetLock is answered for the cluster's nodes only; {ip} is not a node's address"
            ),
        )
    })
}

async fn pre_reboot(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = match parse(&headers, &body) {
        Ok(p) => match source_node(&s, from).await {
            Ok(node) => take(&s, &p, &node).await,
            Err(refusal) => refusal,
        },
        Err((code, kind, why)) => reply(code, kind, why),
    };
    count(&s, "pre-reboot", r.status());
    r
}

async fn take(s: &Shared, p: &ClientParams, from_node: &str) -> Response {
    let policies: Api<UpdatePolicy> = Api::all(s.client.clone());
    let locks: Api<RebootLock> = Api::all(s.client.clone());
    let policy = match policies.get_opt(&p.group).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            return reply(
                StatusCode::NOT_FOUND,
                "unknown_group",
                format!("no UpdatePolicy named {}", p.group),
            );
        }
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, "api_error", e.to_string()),
    };
    let holder = format!("{HOLDER_PREFIX}{}", p.id);
    let now = Timestamp::now();
    let held = match locks.get_opt(&p.group).await {
        Ok(l) => l
            .and_then(|l| l.status)
            .is_some_and(|st| st.holders.iter().any(|h| h.node == holder)),
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, "api_error", e.to_string()),
    };
    if !held {
        let degraded = policy.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True")
        });
        let window = decide::windows(&policy.spec).map(|w| allowed(&w, now));
        let refusal = if policy.spec.paused {
            Some("the policy is paused")
        } else if degraded {
            Some("the policy is Degraded")
        } else if !matches!(window, Ok(true)) {
            Some("outside the policy's maintenance windows")
        } else {
            None
        };
        if let Some(why) = refusal {
            return reply(StatusCode::CONFLICT, "failed_lock", why);
        }
    }
    let taken = lock::try_acquire(
        &locks,
        &p.group,
        &holder,
        HolderPhase::FleetLock,
        Some(from_node),
        Time(now),
    );
    match taken.await {
        Ok(SlotOutcome::Done) => reply(
            StatusCode::OK,
            "ok",
            format!("{holder} holds a slot of {}", p.group),
        ),
        Ok(SlotOutcome::Unavailable) => {
            reply(StatusCode::CONFLICT, "failed_lock", "every slot is taken")
        }
        Ok(SlotOutcome::HeldFrom(owner)) => reply(
            StatusCode::CONFLICT,
            "failed_lock",
            format!("{holder} is held from node {owner}"),
        ),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "lock_error", e.to_string()),
    }
}

async fn steady_state(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = match parse(&headers, &body) {
        Ok(p) => match source_node(&s, from).await {
            Ok(node) => give_back(&s, &p, &node).await,
            Err(refusal) => refusal,
        },
        Err((code, kind, why)) => reply(code, kind, why),
    };
    count(&s, "steady-state", r.status());
    r
}

async fn give_back(s: &Shared, p: &ClientParams, from_node: &str) -> Response {
    let locks: Api<RebootLock> = Api::all(s.client.clone());
    let holder = format!("{HOLDER_PREFIX}{}", p.id);
    let now = Time::now();
    let released = lock::release(
        &locks,
        &p.group,
        &holder,
        "steady state (FleetLock)",
        Some(from_node),
        now,
    );
    match released.await {
        // Releasing what is not held is fine: the client's goal holds.
        Ok(SlotOutcome::Done | SlotOutcome::Unavailable) => reply(
            StatusCode::OK,
            "ok",
            format!("{holder} holds no slot of {}", p.group),
        ),
        Ok(SlotOutcome::HeldFrom(owner)) => reply(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{holder} was taken from node {owner}; only that node releases it (or an \
                 operator, with strata updates release)"
            ),
        ),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "lock_error", e.to_string()),
    }
}

fn count(s: &Shared, op: &str, code: StatusCode) {
    s.metrics
        .fleetlock_requests
        .get_or_create(&labels(&[("operation", op), ("code", code.as_str())]))
        .inc();
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

pub fn router(client: Client, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Shared { client, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_known_by_its_addresses_and_its_pod_gateway() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "w1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.3"}]},
        }))
        .expect("node");
        let nodes = [node];
        let at = |ip: &str| node_of(&nodes, ip.parse().expect("ip"));
        assert_eq!(at("198.18.0.3").as_deref(), Some("w1"));
        assert_eq!(
            at("10.244.1.1").as_deref(),
            Some("w1"),
            "the host's own bridge address"
        );
        assert_eq!(at("10.244.1.7"), None, "a pod");
        assert_eq!(at("198.18.0.9"), None, "not a node");
    }
}
