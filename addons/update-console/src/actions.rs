//! What a person may do to a rollout besides pausing it: approve the gate a node waits at.
//! Shared by the console's button and `strata updates approve`; made with the client it is
//! given (the console: the kubeconfig it was started with; the CLI: the cluster's admin one),
//! so RBAC decides.

use kube::api::{Api, Patch, PatchParams};
use strata_update_api::{GateApproval, GateStage, HolderPhase, NodeUpdate, RebootLock, Time};

/// The field manager of approvals, so the NodeUpdate's managedFields name the tool (the
/// API server's audit log names the user).
pub const FIELD_MANAGER: &str = "strata-approve";

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The Kubernetes API refused or failed a request (its own words name a missing
    /// permission).
    #[error("could not {doing}: {source}")]
    Api {
        /// What was asked, e.g. "read NodeUpdate w1".
        doing: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "node {node} has no NodeUpdate: its update agent has not reported yet (or the update \
         operator is not installed)"
    )]
    NoUpdate { node: String },
    #[error("node {node} waits at no gate: {why}")]
    NotWaiting { node: String, why: String },
    /// The node is at another gate than the one the person was shown: approving would pass a
    /// gate they never saw.
    #[error(
        "node {node} waits at the {now} now, not at the {shown} you approved: look again \
         (`strata updates status`, or the console's live view) and approve what it waits at"
    )]
    Moved {
        node: String,
        now: String,
        shown: String,
    },
}

/// A gate approved: which node, policy and stage.
#[derive(Debug, Clone, PartialEq)]
pub struct GateApproved {
    pub node: String,
    pub policy: String,
    pub stage: GateStage,
}

impl std::fmt::Display for GateApproved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "approved the {} gate of node {} (policy {}): the update operator lets it go on",
            self.stage.as_str(),
            self.node,
            self.policy
        )
    }
}

/// Which gate the person means: the stage they were shown and, from the console, the lock
/// slot too. An approval is refused when the node has moved on to another gate or update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shown {
    pub stage: Option<GateStage>,
    pub slot_acquired_at: Option<Time>,
}

impl From<&GateApproval> for Shown {
    fn from(a: &GateApproval) -> Self {
        Self {
            stage: Some(a.stage),
            slot_acquired_at: Some(a.slot_acquired_at),
        }
    }
}

fn gate_words(stage: GateStage, slot: Option<Time>) -> String {
    match slot {
        Some(t) => format!("{} gate of the update granted at {t}", stage.as_str()),
        None => format!("{} gate", stage.as_str()),
    }
}

/// Approves the gate `node` waits at now (before-reboot while its slot is granted,
/// after-reboot while it is verified): `spec.gateApproval` of its NodeUpdate, naming that
/// stage and slot, so the approval passes nothing else. Refused when the node waits at none,
/// or at another gate than `shown`.
pub async fn approve_gate(
    client: &kube::Client,
    node: &str,
    shown: Shown,
) -> Result<GateApproved, ActionError> {
    let updates: Api<NodeUpdate> = Api::all(client.clone());
    let update = updates
        .get_opt(node)
        .await
        .map_err(|source| ActionError::Api {
            doing: format!("read NodeUpdate {node}"),
            source,
        })?
        .ok_or_else(|| ActionError::NoUpdate { node: node.into() })?;
    let policy = update.spec.policy.clone();
    let locks: Api<RebootLock> = Api::all(client.clone());
    let lock = locks
        .get_opt(&policy)
        .await
        .map_err(|source| ActionError::Api {
            doing: format!("read RebootLock {policy}"),
            source,
        })?;
    let holders = lock.and_then(|l| l.status).unwrap_or_default().holders;
    let not_waiting = |why: String| ActionError::NotWaiting {
        node: node.into(),
        why,
    };
    let holder = holders.iter().find(|h| h.node == node).ok_or_else(|| {
        not_waiting(format!(
            "it holds no slot of policy {policy}'s reboot lock (phase {}); nothing to approve \
             until it is granted one (the policy's pause, windows, soak and maxUnavailable \
             decide when)",
            update
                .status
                .as_ref()
                .map_or("unknown", |s| s.phase.as_str())
        ))
    })?;
    let approval = GateApproval::for_holder(holder).ok_or_else(|| {
        not_waiting(match holder.phase {
            HolderPhase::Failed => format!(
                "its reboot failed (it was not back in time) and it keeps its slot of policy \
                 {policy}'s lock: see `strata updates status`; once it is back the operator \
                 releases the slot (`strata updates release --force` frees it by hand)"
            ),
            HolderPhase::FleetLock => format!(
                "its slot of policy {policy}'s lock was taken through the FleetLock protocol, \
                 which has no gates"
            ),
            _ => format!("its slot of policy {policy}'s lock is approved: past its gates"),
        })
    })?;
    let moved = shown.stage.is_some_and(|s| s != approval.stage)
        || shown
            .slot_acquired_at
            .is_some_and(|t| t != approval.slot_acquired_at);
    if moved {
        return Err(ActionError::Moved {
            node: node.into(),
            now: gate_words(approval.stage, Some(approval.slot_acquired_at)),
            shown: gate_words(
                shown.stage.unwrap_or(approval.stage),
                shown.slot_acquired_at,
            ),
        });
    }
    let stage = approval.stage;
    let patch = serde_json::json!({ "spec": { "gateApproval": approval } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    updates
        .patch(node, &params, &Patch::Merge(&patch))
        .await
        .map_err(|source| ActionError::Api {
            doing: format!("approve the {} gate of node {node}", stage.as_str()),
            source,
        })?;
    Ok(GateApproved {
        node: node.into(),
        policy,
        stage,
    })
}
