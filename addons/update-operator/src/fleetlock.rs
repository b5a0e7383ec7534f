//! The operator's HTTP endpoint: the FleetLock protocol (as Zincati speaks it) on the same
//! RebootLocks the cluster's agents use, `/metrics`, and `/healthz`.
//!
//! `POST /v1/pre-reboot` and `POST /v1/steady-state`, header `fleet-lock-protocol: true`, body
//! `{"client_params":{"id":..,"group":..}}`. The group names the UpdatePolicy (and its lock);
//! a client holds its slot as `fleetlock/<id>` so it can never be mistaken for a node.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

use crate::crd::{HolderPhase, RebootLock, Time, UpdatePolicy};
use crate::decide;
use crate::lock;
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

async fn pre_reboot(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = match parse(&headers, &body) {
        Ok(p) => take(&s, &p).await,
        Err((code, kind, why)) => reply(code, kind, why),
    };
    count(&s, "pre-reboot", r.status());
    r
}

async fn take(s: &Shared, p: &ClientParams) -> Response {
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
    match lock::try_acquire(&locks, &p.group, &holder, HolderPhase::FleetLock, Time(now)).await {
        Ok(true) => reply(
            StatusCode::OK,
            "ok",
            format!("{holder} holds a slot of {}", p.group),
        ),
        Ok(false) => reply(StatusCode::CONFLICT, "failed_lock", "every slot is taken"),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "lock_error", e.to_string()),
    }
}

async fn steady_state(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = match parse(&headers, &body) {
        Ok(p) => {
            let locks: Api<RebootLock> = Api::all(s.client.clone());
            let holder = format!("{HOLDER_PREFIX}{}", p.id);
            let now = Time::now();
            match lock::release(&locks, &p.group, &holder, "steady state (FleetLock)", now).await {
                // Releasing what is not held is fine: the client's goal holds.
                Ok(_) => reply(
                    StatusCode::OK,
                    "ok",
                    format!("{holder} holds no slot of {}", p.group),
                ),
                Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "lock_error", e.to_string()),
            }
        }
        Err((code, kind, why)) => reply(code, kind, why),
    };
    count(&s, "steady-state", r.status());
    r
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
