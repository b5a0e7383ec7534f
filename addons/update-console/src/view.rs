//! What the console shows, built from the objects the user's watches hold: the update
//! policies, their locks, every node's update and the update operator's recent Events. One
//! JSON document, sent to the page whenever any of them changes.

use k8s_openapi::api::core::v1::{Event, Node};
use serde::Serialize;
use strata_update_api::{
    GateApproval, GateStage, HolderPhase, NodeUpdate, RebootLock, UpdatePolicy, VersionCount,
    version_breakdown,
};

/// How many Events the page gets (the newest).
pub const EVENTS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub policies: Vec<PolicyRow>,
    pub locks: Vec<LockRow>,
    pub nodes: Vec<NodeRow>,
    pub events: Vec<EventRow>,
    /// What could not be read, per kind ("nodes: forbidden: ..."): the user's RBAC decides.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    pub name: String,
    pub paused: bool,
    pub max_unavailable: String,
    /// Each window as "Sat,Sun 02:00 for 4h (Europe/Berlin)"; empty: any time.
    pub windows: Vec<String>,
    pub next_window: Option<String>,
    pub nodes: u32,
    pub waiting: u32,
    pub rebooting: u32,
    pub failed: u32,
    pub degraded: bool,
    pub degraded_reason: String,
    pub versions: Vec<VersionCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockRow {
    pub name: String,
    pub max_holders: u32,
    pub holders: Vec<HolderRow>,
    pub last_release: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderRow {
    pub node: String,
    pub phase: String,
    pub since: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub name: String,
    pub policy: String,
    pub phase: String,
    pub reason: String,
    pub message: String,
    pub os: String,
    pub kernel: String,
    pub boot_id: String,
    pub reboots: u32,
    /// When the agent saw the node back from its last reboot.
    pub last_reboot: Option<String>,
    /// When the phase last changed.
    pub since: Option<String>,
    pub approved: bool,
    pub ready: Option<bool>,
    pub cordoned: bool,
    pub drain: Option<DrainRow>,
    /// The gate the node waits at, when it waits at one.
    pub gate: Option<GateRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRow {
    /// "before-reboot" or "after-reboot".
    pub stage: String,
    /// The policy's gate annotations the Node does not have as "true" yet.
    pub missing: Vec<String>,
    /// A person approved this gate (the operator lets the node go on at its next pass).
    pub approved: bool,
    /// The approval of this gate of this update (what the page's Approve button sends).
    pub approval: GateApproval,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRow {
    pub pods_remaining: u32,
    pub blocked_by: Vec<String>,
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub time: String,
    pub warning: bool,
    pub reason: String,
    /// kind/name of the object it is about.
    pub object: String,
    pub message: String,
}

fn policy_row(p: &UpdatePolicy) -> PolicyRow {
    let st = p.status.clone().unwrap_or_default();
    let degraded = st.conditions.iter().find(|c| c.type_ == "Degraded");
    PolicyRow {
        name: p.metadata.name.clone().unwrap_or_default(),
        paused: p.spec.paused,
        max_unavailable: p.spec.max_unavailable.to_string(),
        windows: p
            .spec
            .windows
            .iter()
            .map(|w| {
                let days = if w.days.is_empty() {
                    "every day".to_owned()
                } else {
                    w.days
                        .iter()
                        .map(|d| format!("{d:?}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                format!("{days} {} for {} ({})", w.start, w.duration, w.time_zone)
            })
            .collect(),
        next_window: st.next_window.map(|t| t.to_string()),
        nodes: st.nodes,
        waiting: st.reboot_required,
        rebooting: st.in_progress,
        failed: st.failed,
        degraded: degraded.is_some_and(|c| c.status == "True"),
        degraded_reason: degraded
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default(),
        versions: st.versions,
    }
}

fn lock_row(l: &RebootLock) -> LockRow {
    let st = l.status.clone().unwrap_or_default();
    LockRow {
        name: l.metadata.name.clone().unwrap_or_default(),
        max_holders: l.spec.max_holders,
        holders: st
            .holders
            .iter()
            .map(|h| HolderRow {
                node: h.node.clone(),
                phase: holder_phase(h.phase).into(),
                since: h.acquired_at.to_string(),
            })
            .collect(),
        last_release: st.last_release.map(|t| t.to_string()),
    }
}

fn holder_phase(p: HolderPhase) -> &'static str {
    match p {
        HolderPhase::Granted => "Granted",
        HolderPhase::Approved => "Approved",
        HolderPhase::Verifying => "Verifying",
        HolderPhase::Failed => "Failed",
        HolderPhase::FleetLock => "FleetLock",
    }
}

fn node_ready(n: &Node) -> Option<bool> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

/// The gate `u`'s node waits at: its slot of its policy's lock is at a gate stage.
fn gate_row(
    u: &NodeUpdate,
    node: Option<&Node>,
    policies: &[UpdatePolicy],
    locks: &[RebootLock],
) -> Option<GateRow> {
    let name = u.metadata.name.as_deref()?;
    let named = |n: &Option<String>| n.as_deref() == Some(u.spec.policy.as_str());
    let holder = locks
        .iter()
        .find(|l| named(&l.metadata.name))?
        .status
        .as_ref()?
        .holders
        .iter()
        .find(|h| h.node == name)?;
    let approval = GateApproval::for_holder(holder)?;
    let stage = approval.stage;
    let gates = policies
        .iter()
        .find(|p| named(&p.metadata.name))
        .map(|p| match stage {
            GateStage::BeforeReboot => p.spec.gates.before_reboot.clone(),
            GateStage::AfterReboot => p.spec.gates.after_reboot.clone(),
        })
        .unwrap_or_default();
    let annotations = node.and_then(|n| n.metadata.annotations.as_ref());
    Some(GateRow {
        stage: stage.as_str().into(),
        missing: gates
            .into_iter()
            .filter(|a| {
                annotations
                    .and_then(|m| m.get(a))
                    .is_none_or(|v| v != "true")
            })
            .collect(),
        approved: u
            .spec
            .gate_approval
            .as_ref()
            .is_some_and(|a| a.passes(holder)),
        approval,
    })
}

fn node_row(u: &NodeUpdate, node: Option<&Node>, gate: Option<GateRow>) -> NodeRow {
    let st = u.status.clone().unwrap_or_default();
    NodeRow {
        name: u.metadata.name.clone().unwrap_or_default(),
        policy: u.spec.policy.clone(),
        phase: st.phase.as_str().into(),
        reason: st.reason,
        message: st.message,
        os: st.os_id,
        kernel: st.os_version,
        boot_id: st.boot_id,
        reboots: st.reboots,
        last_reboot: st.last_reboot.map(|t| t.to_string()),
        since: st.last_transition_time.map(|t| t.to_string()),
        approved: u.spec.approved,
        ready: node.and_then(node_ready),
        cordoned: node
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        drain: u.spec.drain.as_ref().map(|d| DrainRow {
            pods_remaining: d.pods_remaining,
            blocked_by: d.blocked_by.clone(),
            started_at: d.started_at.map(|t| t.to_string()),
        }),
        gate,
    }
}

/// The time an Event last happened, as RFC 3339.
fn event_time(e: &Event) -> String {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0.to_string()))
        .unwrap_or_default()
}

fn event_row(e: &Event) -> EventRow {
    let o = &e.involved_object;
    EventRow {
        time: event_time(e),
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.clone().unwrap_or_default(),
        object: format!(
            "{}/{}",
            o.kind.as_deref().unwrap_or("?"),
            o.name.as_deref().unwrap_or("?")
        ),
        message: e.message.clone().unwrap_or_default(),
    }
}

/// The view of what the watches hold now. Nodes without a NodeUpdate (no agent yet) are
/// listed too; each policy's version breakdown is computed here when the operator has not
/// written one yet (an operator older than the console).
pub fn build(
    policies: &[UpdatePolicy],
    locks: &[RebootLock],
    updates: &[NodeUpdate],
    nodes: &[Node],
    events: &[Event],
    problems: Vec<String>,
) -> View {
    let mut v = View {
        problems,
        ..View::default()
    };
    v.policies = policies.iter().map(policy_row).collect();
    v.policies.sort_by(|a, b| a.name.cmp(&b.name));
    v.locks = locks.iter().map(lock_row).collect();
    v.locks.sort_by(|a, b| a.name.cmp(&b.name));
    let node_named = |name: &str| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    };
    v.nodes = updates
        .iter()
        .map(|u| {
            let node = node_named(u.metadata.name.as_deref().unwrap_or_default());
            node_row(u, node, gate_row(u, node, policies, locks))
        })
        .collect();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if !v.nodes.iter().any(|r| r.name == name) {
            v.nodes.push(NodeRow {
                name,
                phase: "NoAgent".into(),
                ready: node_ready(n),
                ..NodeRow::default()
            });
        }
    }
    v.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for p in &mut v.policies {
        if p.versions.is_empty() {
            let mine = v.nodes.iter().filter(|n| n.policy == p.name);
            p.versions = version_breakdown(mine.map(|n| n.os.as_str())).0;
        }
    }
    let mut events: Vec<EventRow> = events.iter().map(event_row).collect();
    events.sort_by(|a, b| b.time.cmp(&a.time));
    events.truncate(EVENTS);
    v.events = events;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_update_api::{NodeUpdateSpec, NodeUpdateStatus, Phase, UpdatePolicySpec};

    fn update(name: &str, phase: Phase, os: &str) -> NodeUpdate {
        let mut u = NodeUpdate::new(
            name,
            NodeUpdateSpec {
                policy: "default".into(),
                ..NodeUpdateSpec::default()
            },
        );
        u.status = Some(NodeUpdateStatus {
            phase,
            os_id: os.into(),
            ..NodeUpdateStatus::default()
        });
        u
    }

    #[test]
    fn nodes_policies_and_versions() {
        let spec: UpdatePolicySpec = serde_json::from_str("{}").expect("defaults");
        let policy = UpdatePolicy::new("default", spec);
        let mut bare = Node::default();
        bare.metadata.name = Some("w9".into());
        let v = build(
            &[policy],
            &[],
            &[
                update("w2", Phase::Rebooting, "OS 2"),
                update("w1", Phase::Done, "OS 2"),
            ],
            &[bare],
            &[],
            vec!["events: forbidden".into()],
        );
        let rows: Vec<(&str, &str)> = v
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.phase.as_str()))
            .collect();
        assert_eq!(
            rows,
            [("w1", "Done"), ("w2", "Rebooting"), ("w9", "NoAgent")]
        );
        assert_eq!(v.policies[0].versions[0].version, "OS 2");
        assert_eq!(v.policies[0].versions[0].nodes, 2);
        assert_eq!(v.problems, ["events: forbidden"]);
    }

    #[test]
    fn a_node_at_a_gate_shows_the_stage_the_missing_annotations_and_an_approval() {
        use strata_update_api::{Holder, RebootLockSpec, RebootLockStatus, Time};
        let mut spec: UpdatePolicySpec = serde_json::from_str("{}").expect("defaults");
        spec.gates.before_reboot = vec!["example.com/a".into(), "example.com/b".into()];
        let policy = UpdatePolicy::new("default", spec);
        let at: Time = "2026-12-01T10:00:00Z".parse().expect("time");
        let mut lock = RebootLock::new("default", RebootLockSpec { max_holders: 1 });
        lock.status = Some(RebootLockStatus {
            holders: vec![Holder {
                node: "w1".into(),
                acquired_at: at,
                phase: HolderPhase::Granted,
                from_node: None,
            }],
            ..RebootLockStatus::default()
        });
        let mut node = Node::default();
        node.metadata.name = Some("w1".into());
        node.metadata.annotations = Some([("example.com/a".to_owned(), "true".to_owned())].into());
        let mut u = update("w1", Phase::WaitingForLock, "OS 1");
        let gate = |u: &NodeUpdate, lock: &RebootLock| {
            build(
                std::slice::from_ref(&policy),
                std::slice::from_ref(lock),
                std::slice::from_ref(u),
                std::slice::from_ref(&node),
                &[],
                Vec::new(),
            )
            .nodes[0]
                .gate
                .clone()
        };
        let g = gate(&u, &lock).expect("waits at a gate");
        assert_eq!(g.stage, "before-reboot");
        assert_eq!(g.missing, ["example.com/b"]);
        assert!(!g.approved);
        assert_eq!(
            g.approval,
            GateApproval {
                stage: GateStage::BeforeReboot,
                slot_acquired_at: at,
            }
        );
        u.spec.gate_approval = Some(GateApproval {
            stage: GateStage::BeforeReboot,
            slot_acquired_at: at,
        });
        assert!(
            gate(&u, &lock)
                .expect("still waits until the operator acts")
                .approved
        );
        // Not holding a slot: no gate.
        lock.status = None;
        assert_eq!(gate(&u, &lock), None);
    }
}
