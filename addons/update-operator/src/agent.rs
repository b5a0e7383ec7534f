//! The node agent (one per node, a DaemonSet pod). It speaks with the identity of its own node
//! (`strata:update-agent:<node>`), which RBAC lets change that node's Node and NodeUpdate
//! status and nothing else of the kind.
//!
//! It reads the host through one directory, `/run/strata/update-agent` on the host: the host's
//! `strata-reboot-required.path` unit mirrors `/run/reboot-required` there (and the
//! `strata-update-engine-check.timer` does the same when update_engine, asked over D-Bus,
//! has an update waiting for a reboot), and the agent asks
//! for a reboot by writing `reboot` there, which the host's `strata-reboot.path` unit turns into
//! `systemctl reboot`. The agent needs no privilege, no host PID namespace, no D-Bus.
//!
//! Phases (written to its NodeUpdate status): Idle -> RebootRequired -> WaitingForLock ->
//! (approved by the operator) Draining -> Rebooting -> (new boot id) Verifying -> Done.

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::crd::{
    DrainProgress, NodeUpdate, NodeUpdateStatus, OnDrainTimeout, Phase, Time, UpdatePolicy,
};
use crate::drain::{self, DrainOptions};

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
    #[error(transparent)]
    Drain(#[from] drain::DrainError),
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
    pub eviction_version: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Agent {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn updates(&self) -> Api<NodeUpdate> {
        Api::all(self.client.clone())
    }

    async fn set_unschedulable(&self, on: bool) -> Result<(), AgentError> {
        let patch = json!({"spec": {"unschedulable": on}});
        self.nodes()
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api(format!(
                "{} node {}",
                if on { "cordoning" } else { "uncordoning" },
                self.node
            )))?;
        Ok(())
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
                    st.cordoned_by_agent = !view.unschedulable;
                    st.drain = Some(DrainProgress {
                        started_at: Some(Time(now)),
                        ..Default::default()
                    });
                    to(&mut st, Phase::Draining, "Approved", "draining".into());
                    // Recorded before cordoning: a crash in between leaves a note to undo it.
                    if !self.write(&nu, st).await? {
                        return Ok(old.phase);
                    }
                    if !view.unschedulable {
                        self.set_unschedulable(true).await?;
                    }
                    return Ok(Phase::Draining);
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
                    self.abort(
                        &mut st,
                        view.unschedulable,
                        "ApprovalWithdrawn",
                        "the operator withdrew the approval".into(),
                        now,
                    )
                    .await?;
                    to(
                        &mut st,
                        Phase::RebootRequired,
                        "ApprovalWithdrawn",
                        "the operator withdrew the approval".into(),
                    );
                } else {
                    if st.cordoned_by_agent && !view.unschedulable {
                        self.set_unschedulable(true).await?;
                    }
                    let policy = self.policy(&spec.policy).await?;
                    let o = DrainOptions {
                        eviction_version: self.eviction_version.clone(),
                        grace_period_seconds: policy.drain.grace_period_seconds,
                        delete_empty_dir_data: policy.drain.delete_empty_dir_data,
                    };
                    let p = drain::drain_pass(&self.client, &self.node, &o).await?;
                    let started = st
                        .drain
                        .as_ref()
                        .and_then(|d| d.started_at)
                        .map_or(now, |t| t.0);
                    let timeout = policy.drain.timeout.0;
                    let timed_out =
                        now.duration_since(started).as_secs() >= timeout.as_secs() as i64;
                    st.drain = Some(DrainProgress {
                        pods_remaining: p.remaining,
                        blocked_by: p.blocked.clone(),
                        started_at: Some(Time(started)),
                    });
                    if p.remaining == 0 {
                        to(
                            &mut st,
                            Phase::Rebooting,
                            "Drained",
                            "rebooting through systemd".into(),
                        );
                        if !self.write(&nu, st).await? {
                            return Ok(old.phase);
                        }
                        self.request_reboot(&view.boot_id)?;
                        return Ok(Phase::Rebooting);
                    }
                    if timed_out && policy.drain.on_timeout == OnDrainTimeout::Abort {
                        let why = format!(
                            "drain timed out after {} with {} pod(s) left: {}",
                            policy.drain.timeout,
                            p.remaining,
                            p.blocked.join("; ")
                        );
                        self.abort(
                            &mut st,
                            view.unschedulable,
                            "DrainTimedOut",
                            why.clone(),
                            now,
                        )
                        .await?;
                        to(&mut st, Phase::RebootRequired, "DrainTimedOut", why);
                    } else if timed_out {
                        st.reason = "DrainTimedOut".into();
                        st.message = "waiting for the operator to delete the remaining pods (onTimeout: Force)".into();
                    } else {
                        st.message = format!("{} pod(s) left", p.remaining);
                    }
                }
            }
            Phase::Rebooting => {
                if spec
                    .approved_boot_id
                    .as_deref()
                    .is_some_and(|b| b != view.boot_id)
                {
                    st.reboots += 1;
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
                    if st.cordoned_by_agent && view.unschedulable {
                        self.set_unschedulable(false).await?;
                    }
                    st.cordoned_by_agent = false;
                    st.drain = None;
                    to(
                        &mut st,
                        Phase::Done,
                        "Uncordoned",
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

    async fn policy(&self, name: &str) -> Result<crate::crd::UpdatePolicySpec, AgentError> {
        let api_: Api<UpdatePolicy> = Api::all(self.client.clone());
        Ok(api_
            .get(name)
            .await
            .map_err(api(format!("reading UpdatePolicy {name}")))?
            .spec)
    }

    /// Gives up a drain: uncordons what the agent cordoned and notes the time, after which the
    /// operator releases the slot.
    async fn abort(
        &self,
        st: &mut NodeUpdateStatus,
        unschedulable: bool,
        reason: &str,
        why: String,
        now: Timestamp,
    ) -> Result<(), AgentError> {
        if st.cordoned_by_agent && unschedulable {
            self.set_unschedulable(false).await?;
        }
        tracing::warn!(node = %self.node, %reason, %why, "update failed");
        st.cordoned_by_agent = false;
        st.last_abort = Some(Time(now));
        Ok(())
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
