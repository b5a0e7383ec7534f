//! The fleet console: a live web view of a cluster's OS updates, served on this computer's
//! loopback, as CoreUpdate showed Container Linux fleets.
//!
//! Every read and every action is a Kubernetes API request made with the client it is given,
//! the user's own kubeconfig: Kubernetes authentication and RBAC decide what the user sees
//! and may do; the console adds no credentials and no rights. It watches the update policies,
//! their locks, the nodes' updates, the Nodes and the update operator's Events; whenever one
//! changes, the page gets the whole view again as a server-sent event. Pausing and resuming
//! a policy patch its `spec.paused`; approving the gate a node waits at patches its
//! NodeUpdate's `spec.gateApproval` ([`actions`]); a refusal of the API (403) goes back to the
//! page with the API's own words, which name the missing permission.
//!
//! The page is one self-contained HTML document (no external script, font or style). Only
//! this computer can reach the console, and only with the random token of its URL: requests
//! need it (the page's actions send it in a header, which another site's page cannot make
//! the browser send), and a Host other than the console's loopback address is refused (DNS
//! rebinding).

#![forbid(unsafe_code)]

pub mod actions;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use strata_update_api::{GateApproval, NodeUpdate, RebootLock, UpdatePolicy};
use tokio::sync::{Notify, watch};

/// The page (HTML, its style and script inline).
pub const PAGE: &str = include_str!("page.html");
/// The header the page's actions carry the token in.
pub const TOKEN_HEADER: &str = "x-strata-console-token";
/// The component whose Events the console shows (the update operator's).
pub const EVENT_SOURCE: &str = "strata-update-operator";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the request handlers share.
#[derive(Clone)]
struct Shared {
    client: kube::Client,
    token: Arc<str>,
    /// The Host headers accepted: the console's own address (and `localhost:<port>`).
    hosts: Arc<[String]>,
    view: watch::Receiver<Arc<String>>,
}

/// The watches' stores and what each could not read.
struct Stores {
    policies: Store<UpdatePolicy>,
    locks: Store<RebootLock>,
    updates: Store<NodeUpdate>,
    nodes: Store<Node>,
    events: Store<Event>,
    problems: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

/// Watches `api` into a store; every change wakes `changed`, a refusal is recorded under
/// `what` (and cleared once the watch works), and the watch goes on with a back-off.
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    changed: Arc<Notify>,
    problems: Arc<Mutex<BTreeMap<&'static str, String>>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let mut p = problems
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                Ok(_) => {
                    p.remove(what);
                }
                Err(e) => {
                    p.insert(what, format!("{what}: {e}"));
                }
            }
            drop(p);
            changed.notify_one();
        }
    });
    reader
}

/// Every object a store holds.
fn all<K>(s: &Store<K>) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    s.state().iter().map(|o| (**o).clone()).collect()
}

impl Stores {
    fn start(client: &kube::Client, changed: &Arc<Notify>) -> Self {
        let problems = Arc::new(Mutex::new(BTreeMap::new()));
        let all = watcher::Config::default();
        Self {
            policies: watch_into(
                Api::all(client.clone()),
                all.clone(),
                "updatepolicies",
                Arc::clone(changed),
                Arc::clone(&problems),
            ),
            locks: watch_into(
                Api::all(client.clone()),
                all.clone(),
                "rebootlocks",
                Arc::clone(changed),
                Arc::clone(&problems),
            ),
            updates: watch_into(
                Api::all(client.clone()),
                all.clone(),
                "nodeupdates",
                Arc::clone(changed),
                Arc::clone(&problems),
            ),
            nodes: watch_into(
                Api::all(client.clone()),
                all,
                "nodes",
                Arc::clone(changed),
                Arc::clone(&problems),
            ),
            events: watch_into(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("source={EVENT_SOURCE}")),
                "events",
                Arc::clone(changed),
                Arc::clone(&problems),
            ),
            problems,
        }
    }

    fn view(&self) -> view::View {
        let problems = self
            .problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        view::build(
            &all(&self.policies),
            &all(&self.locks),
            &all(&self.updates),
            &all(&self.nodes),
            &all(&self.events),
            problems,
        )
    }
}

/// Serves the console on `listener` until the process ends. `token` is the secret of its URL.
pub async fn serve(
    client: kube::Client,
    listener: tokio::net::TcpListener,
    token: &str,
) -> Result<(), ConsoleError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ConsoleError::Serve {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let changed = Arc::new(Notify::new());
    let stores = Stores::start(&client, &changed);
    let first = serde_json::to_string(&stores.view()).unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            // Changes come in bursts (a rollout step writes several objects): one view each
            // tenth of a second at most.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = serde_json::to_string(&stores.view()).unwrap_or_default();
            tx.send_if_modified(|old| {
                if **old == text {
                    false
                } else {
                    *old = Arc::new(text);
                    true
                }
            });
        }
    });
    let shared = Shared {
        client,
        token: token.into(),
        hosts: vec![addr.to_string(), format!("localhost:{}", addr.port())].into(),
        view: rx,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/events", get(events))
        .route("/api/policies/{name}/{action}", post(policy_action))
        .route("/api/nodes/{name}/{action}", post(node_action))
        .with_state(shared);
    axum::serve(listener, app)
        .await
        .map_err(|source| ConsoleError::Serve { addr, source })
}

/// A refusal, as JSON `{"error": ...}`.
fn refused(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// Requests must name the console's own address and carry its token (in the query for the
/// page and its event stream, in a header for actions): the refusal of one that does not.
fn refusal(s: &Shared, headers: &HeaderMap, token: Option<&str>) -> Option<Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !s.hosts.iter().any(|h| h == host) {
        return Some(refused(
            StatusCode::FORBIDDEN,
            format!("the console answers only at {}", s.hosts[0]),
        ));
    }
    let matches = token.is_some_and(|t| {
        aws_lc_rs::constant_time::verify_slices_are_equal(t.as_bytes(), s.token.as_bytes()).is_ok()
    });
    if !matches {
        return Some(refused(
            StatusCode::FORBIDDEN,
            "open the console with the URL `strata updates console` printed (it holds the token)",
        ));
    }
    None
}

async fn page(State(s): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(r) = refusal(&s, &headers, query_token(&uri)) {
        return r;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// The view, now and after every change, as server-sent events named `view`.
async fn events(State(s): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(r) = refusal(&s, &headers, query_token(&uri)) {
        return r;
    }
    let stream = view_stream(s.view.clone());
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn view_stream(
    rx: watch::Receiver<Arc<String>>,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        let text = rx.borrow_and_update().clone();
        Some((
            Ok(SseEvent::default().event("view").data(&*text)),
            (rx, false),
        ))
    })
}

/// `pause` or `resume` a policy: a merge patch of its `spec.paused`, made with the user's
/// client; the API's refusal is passed on with its code and message.
async fn policy_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let token = headers.get(TOKEN_HEADER).and_then(|t| t.to_str().ok());
    if let Some(r) = refusal(&s, &headers, token) {
        return r;
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return refused(
                StatusCode::NOT_FOUND,
                format!("no action {other}: pause or resume"),
            );
        }
    };
    let api: Api<UpdatePolicy> = Api::all(s.client.clone());
    let patch = serde_json::json!({ "spec": { "paused": paused } });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => done(format!(
            "policy {name} {}",
            if paused { "paused" } else { "resumed" }
        )),
        Err(e) => api_refused(&format!("{action} policy {name}"), &e),
    }
}

/// `approve-gate`: approves the gate a node waits at (see [`actions::approve_gate`]). The body
/// is the view's `gate.approval` of the node, `{"stage", "slotAcquiredAt"}`: the gate the page
/// showed, refused when the node has moved on to another.
async fn node_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let token = headers.get(TOKEN_HEADER).and_then(|t| t.to_str().ok());
    if let Some(r) = refusal(&s, &headers, token) {
        return r;
    }
    if action != "approve-gate" {
        return refused(
            StatusCode::NOT_FOUND,
            format!("no action {action}: approve-gate"),
        );
    }
    let shown: GateApproval = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "approve-gate takes the gate shown, as JSON {{\"stage\": \"BeforeReboot\" or \
                     \"AfterReboot\", \"slotAcquiredAt\": \"<the holder's acquiredAt>\"}}: {e}"
                ),
            );
        }
    };
    match actions::approve_gate(&s.client, &name, (&shown).into()).await {
        Ok(a) => done(a.to_string()),
        Err(actions::ActionError::Api { doing, source }) => api_refused(&doing, &source),
        Err(e @ actions::ActionError::NoUpdate { .. }) => {
            refused(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => refused(StatusCode::CONFLICT, e.to_string()),
    }
}

fn done(message: String) -> Response {
    Json(serde_json::json!({ "done": message })).into_response()
}

/// The API's refusal of `doing` ("pause policy default"), passed on with its code and words
/// (which name a missing permission).
fn api_refused(doing: &str, e: &kube::Error) -> Response {
    match e {
        kube::Error::Api(e) => refused(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_GATEWAY),
            format!(
                "the Kubernetes API refused to {doing} ({} {}): {}",
                e.code, e.reason, e.message
            ),
        ),
        e => refused(
            StatusCode::BAD_GATEWAY,
            format!("the Kubernetes API did not answer (to {doing}): {e}"),
        ),
    }
}
