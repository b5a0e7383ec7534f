//! The node agent (one per node, a DaemonSet pod). It speaks with the identity of its own node
//! (`strata:update-agent:<node>`), which RBAC lets read that node's Node and NodeUpdate and
//! write that NodeUpdate's status, nothing else: no write on Nodes, Pods or evictions. The
//! operator cordons, drains and uncordons; root on a node can at most lie about that node.
//!
//! It reads the host through one directory, `/run/strata/update-agent` on the host: the host's
//! `strata-reboot-required.path` unit mirrors `/run/reboot-required` there (and the
//! `strata-update-engine-check.timer` does the same when update_engine, asked over D-Bus,
//! has an update waiting for a reboot), and the agent asks
//! for a reboot by writing `reboot` there, which the host's `strata-reboot.path` unit turns into
//! `systemctl reboot`. The agent needs no privilege, no host PID namespace, no D-Bus.
//!
//! Phases (written to its NodeUpdate status): Idle -> RebootRequired -> WaitingForLock ->
//! (approved by the operator) Draining -> (drained by the operator) Rebooting -> (new boot id)
//! Verifying -> (Ready) Done.

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::crd::{
    CONTROL_PLANE_NODE_LABELS, ControlPlaneHealth, ETCD_NODE_LABEL, NodeUpdate, NodeUpdateStatus,
    Phase, Time,
};

/// The file the host's path unit mirrors `/run/reboot-required` to.
pub const SENTINEL: &str = "reboot-required";
/// The file that makes the host's path unit reboot.
pub const REBOOT_REQUEST: &str = "reboot";
/// How long after a reboot request without a new boot id the agent asks again.
const REQUEST_AGAIN_AFTER: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Api { what, source }
}

#[derive(Clone)]
pub struct Agent {
    pub client: Client,
    pub node: String,
    /// The host's /run/strata/update-agent, mounted.
    pub dir: PathBuf,
    /// The API server on this node (read on control-plane nodes: its /readyz).
    pub local_api: Option<Client>,
    /// `host:port` where this node's etcd member answers /health (read on etcd nodes).
    pub etcd_health: Option<String>,
}

/// How long a health reading that did not change stays fresh without being written again.
const HEALTH_REFRESH: Duration = Duration::from_secs(10);

/// etcd's `/health` over plain HTTP on loopback: `{"health":"true"}` when the member is
/// part of a cluster with a leader.
async fn etcd_healthy(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.take(16 * 1024).read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn api_ready(c: &Client) -> bool {
    let ask = async {
        let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
        c.request_text(req).await.ok().map(|t| t.trim() == "ok")
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// What the etcd member and the API server on this node say, by the node's role labels;
    /// the old reading is kept while nothing changed and it is fresh (no write every pass).
    async fn control_plane_health(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
        old: Option<&ControlPlaneHealth>,
        now: Timestamp,
    ) -> Option<ControlPlaneHealth> {
        let etcd = match (&self.etcd_health, labels.contains_key(ETCD_NODE_LABEL)) {
            (Some(addr), true) => Some(etcd_healthy(addr).await),
            _ => None,
        };
        let control_plane = CONTROL_PLANE_NODE_LABELS
            .iter()
            .any(|l| labels.contains_key(*l));
        let api = match (&self.local_api, control_plane) {
            (Some(c), true) => Some(api_ready(c).await),
            _ => None,
        };
        if etcd.is_none() && api.is_none() {
            return None;
        }
        if let Some(o) = old
            && o.etcd_healthy == etcd
            && o.api_server_ready == api
            && o.checked_at
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0).unsigned_abs() < HEALTH_REFRESH)
        {
            return Some(o.clone());
        }
        Some(ControlPlaneHealth {
            etcd_healthy: etcd,
            api_server_ready: api,
            checked_at: Some(Time(now)),
        })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn updates(&self) -> Api<NodeUpdate> {
        Api::all(self.client.clone())
    }

    /// Writes the status; Ok(false) on a conflict (the operator changed the spec: next pass).
    async fn write(&self, nu: &NodeUpdate, st: NodeUpdateStatus) -> Result<bool, AgentError> {
        let mut next = nu.clone();
        next.status = Some(st);
        match self
            .updates()
            .replace_status(&self.node, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if crate::lock::is_conflict(&e) => Ok(false),
            Err(e) => Err(api(format!("NodeUpdate {} status", self.node))(e)),
        }
    }

    fn request_reboot(&self, boot_id: &str) -> Result<(), AgentError> {
        let path = self.dir.join(REBOOT_REQUEST);
        std::fs::write(&path, format!("{boot_id}\n"))
            .map_err(|source| AgentError::Io { path, source })
    }

    /// One pass of the state machine. Returns the phase it left the node in.
    pub async fn step(&self) -> Result<Phase, AgentError> {
        let node = self
            .nodes()
            .get(&self.node)
            .await
            .map_err(api(format!("reading node {}", self.node)))?;
        let Some(nu) = self
            .updates()
            .get_opt(&self.node)
            .await
            .map_err(api(format!("reading NodeUpdate {}", self.node)))?
        else {
            // The operator creates it once a policy selects this node.
            return Ok(Phase::Idle);
        };
        let view = crate::operator::node_view(&node);
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        let old = nu.status.clone().unwrap_or_default();
        let mut st = old.clone();
        st.boot_id = view.boot_id.clone();
        st.os_id = info.map(|i| i.os_image.clone()).unwrap_or_default();
        st.os_version = info.map(|i| i.kernel_version.clone()).unwrap_or_default();
        let now = Timestamp::now();
        st.control_plane = self
            .control_plane_health(&view.labels, old.control_plane.as_ref(), now)
            .await;
        let needed = self.dir.join(SENTINEL).exists();
        let spec = &nu.spec;
        let approved_now =
            spec.approved && spec.approved_boot_id.as_deref() == Some(view.boot_id.as_str());
        let to = |st: &mut NodeUpdateStatus, phase: Phase, reason: &str, message: String| {
            if st.phase != phase {
                st.last_transition_time = Some(Time(now));
            }
            st.phase = phase;
            st.reason = reason.into();
            st.message = message;
        };

        match old.phase {
            Phase::Idle | Phase::Done => {
                if needed && !spec.approved {
                    to(
                        &mut st,
                        Phase::RebootRequired,
                        "SentinelFound",
                        "/run/reboot-required exists, or update_engine has an update waiting for a reboot".into(),
                    );
                }
            }
            Phase::RebootRequired | Phase::WaitingForLock => {
                if !needed {
                    to(
                        &mut st,
                        Phase::Idle,
                        "SentinelGone",
                        "no reboot is required any more".into(),
                    );
                } else if approved_now {
                    to(
                        &mut st,
                        Phase::Draining,
                        "Approved",
                        "the operator cordons and drains the node".into(),
                    );
                } else {
                    to(
                        &mut st,
                        Phase::WaitingForLock,
                        "WaitingForLock",
                        "waiting for a slot of the RebootLock".into(),
                    );
                }
            }
            Phase::Draining => {
                if !spec.approved {
                    to(
                        &mut st,
                        Phase::RebootRequired,
                        "ApprovalWithdrawn",
                        "the operator withdrew the approval".into(),
                    );
                } else if spec.drained && approved_now {
                    to(
                        &mut st,
                        Phase::Rebooting,
                        "Drained",
                        "rebooting through systemd".into(),
                    );
                    // Recorded first: the new boot is then told from a crash before it.
                    if !self.write(&nu, st).await? {
                        return Ok(old.phase);
                    }
                    self.request_reboot(&view.boot_id)?;
                    return Ok(Phase::Rebooting);
                }
            }
            Phase::Rebooting => {
                if spec
                    .approved_boot_id
                    .as_deref()
                    .is_some_and(|b| b != view.boot_id)
                {
                    st.reboots += 1;
                    st.last_reboot = Some(Time(now));
                    to(
                        &mut st,
                        Phase::Verifying,
                        "Rebooted",
                        format!("new boot id {}", view.boot_id),
                    );
                } else if spec.approved && !self.dir.join(REBOOT_REQUEST).exists() {
                    // No request and the old boot id: either the request was never written
                    // (a crash right after the status) or this is the new boot and the kubelet
                    // has not reported its boot id yet. Only the first outlives a minute.
                    let since = st.last_transition_time.map_or(now, |t| t.0);
                    if now.duration_since(since).as_secs() >= REQUEST_AGAIN_AFTER.as_secs() as i64 {
                        self.request_reboot(&view.boot_id)?;
                        st.last_transition_time = Some(Time(now));
                        st.message = "reboot requested again".into();
                    }
                }
            }
            Phase::Verifying => {
                if view.ready {
                    to(
                        &mut st,
                        Phase::Done,
                        "Ready",
                        format!("back with boot id {}", view.boot_id),
                    );
                }
            }
            Phase::Failed => {}
        }
        let phase = st.phase;
        if st != old {
            self.write(&nu, st).await?;
        }
        Ok(phase)
    }

    /// Runs passes every `interval` until the process is stopped.
    pub async fn run(&self, interval: Duration) {
        let mut last = None;
        loop {
            match self.step().await {
                Ok(p) => {
                    if last != Some(p) {
                        tracing::info!(node = %self.node, phase = p.as_str(), "phase");
                        last = Some(p);
                    }
                }
                Err(e) => tracing::warn!(node = %self.node, error = %e, "pass failed; retrying"),
            }
            tokio::time::sleep(interval).await;
        }
    }
}
