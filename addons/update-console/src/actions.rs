//! What a person may do to a rollout besides pausing it: approve the gate a node waits at.
//! Shared by the console's button and `strata updates approve`; made with the client it is
//! given, the user's own, so RBAC decides.

use kube::api::{Api, Patch, PatchParams};
use strata_update_api::{GateApproval, GateStage, NodeUpdate, RebootLock};

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

/// Approves the gate `node` waits at now (before-reboot while its slot is granted,
/// after-reboot while it is verified): `spec.gateApproval` of its NodeUpdate, naming that
/// stage and slot, so the approval passes nothing else. Refused when the node waits at none.
pub async fn approve_gate(client: &kube::Client, node: &str) -> Result<GateApproved, ActionError> {
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
            "it holds no slot of policy {policy}'s reboot lock (phase {})",
            update
                .status
                .as_ref()
                .map_or("unknown", |s| s.phase.as_str())
        ))
    })?;
    let approval = GateApproval::for_holder(holder).ok_or_else(|| {
        not_waiting(format!(
            "its slot of policy {policy}'s lock is {:?}, past its gates",
            holder.phase
        ))
    })?;
    let stage = approval.stage;
    let patch = serde_json::json!({ "spec": { "gateApproval": approval } });
    updates
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
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
