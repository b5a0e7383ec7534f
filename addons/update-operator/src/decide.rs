//! The operator's decisions as one pure function: from what the cluster looks like now (a
//! [`Snapshot`]) to what the lock, the approvals, the gate labels and the policy's status should
//! be (a [`Decision`]). The operator's loop only reads, calls [`decide`] and writes; so a
//! restarted operator derives the same answer from the same objects and never grants twice.
//!
//! A holder's life: `Granted` (before-reboot gates) -> `Approved` (the operator cordons and
//! drains, then the agent reboots) -> `Verifying` (after-reboot gates) -> released. A node not back in time turns
//! `Failed` and keeps its slot; enough failures make the policy Degraded, which stops granting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::crd::{
    CONTROL_PLANE_NODE_LABELS, Condition, ControlPlaneHealth, DrainProgress, ETCD_NODE_LABEL,
    GateStage, Holder, HolderPhase, NodeUpdateSpec, NodeUpdateStatus, OnDrainTimeout, Phase, Time,
    UpdatePolicySpec, UpdatePolicyStatus, version_breakdown,
};
use crate::window::{Window, WindowError, allowed};

/// Label the operator puts on a node whose before-reboot gates are awaited.
pub const BEFORE_REBOOT_LABEL: &str = "update.strata.dev/before-reboot";
/// Label the operator puts on a node whose after-reboot gates are awaited.
pub const AFTER_REBOOT_LABEL: &str = "update.strata.dev/after-reboot";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("spec.windows[{index}]: {source}")]
    Window {
        index: usize,
        #[source]
        source: WindowError,
    },
}

/// A Node as far as decisions care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub boot_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl NodeView {
    fn available(&self) -> bool {
        self.ready && !self.unschedulable
    }

    fn is_control_plane(&self) -> bool {
        CONTROL_PLANE_NODE_LABELS
            .iter()
            .any(|l| self.labels.contains_key(*l))
    }

    fn is_etcd(&self) -> bool {
        self.labels.contains_key(ETCD_NODE_LABEL)
    }

    fn gates_pass(&self, gates: &[String]) -> bool {
        gates
            .iter()
            .all(|a| self.annotations.get(a).is_some_and(|v| v == "true"))
    }
}

/// Everything one decision for one policy reads.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub policy: &'a UpdatePolicySpec,
    /// The nodes this policy selects.
    pub nodes: &'a [NodeView],
    /// Names of every Node in the cluster (a holder whose node is gone is released).
    pub all_nodes: &'a BTreeSet<String>,
    /// NodeUpdate of each node (by node name), where one exists.
    pub updates: &'a BTreeMap<String, (NodeUpdateSpec, NodeUpdateStatus)>,
    pub holders: &'a [Holder],
    pub last_release: Option<Timestamp>,
    pub conditions: &'a [Condition],
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The node it is about; the policy when None.
    pub node: Option<String>,
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub max_holders: u32,
    pub holders: Vec<Holder>,
    /// Nodes released in this decision, with the reason (for the lock's history).
    pub released: Vec<(String, String)>,
    /// The spec each of the policy's nodes' NodeUpdate should have (the drain's pod counts
    /// are filled in by the drain pass of [`Decision::drains`]).
    pub approvals: BTreeMap<String, NodeUpdateSpec>,
    /// Nodes to cordon (`true`) or uncordon (`false`) in this pass. A cordon is recorded in
    /// the NodeUpdate (`spec.cordoned`) before it is made, an uncordon made before the record
    /// is dropped: a crash in between leaves a note to finish the job.
    pub cordons: BTreeMap<String, bool>,
    /// Nodes whose pods the operator evicts in this pass.
    pub drains: BTreeSet<String>,
    /// Gate labels each node should carry (`Some("true")`) or not (`None`).
    pub labels: BTreeMap<String, BTreeMap<&'static str, Option<&'static str>>>,
    pub status: UpdatePolicyStatus,
    pub events: Vec<Event>,
}

impl Decision {
    /// Whether the lock object must be written.
    pub fn lock_changed(&self, holders: &[Holder], max_holders: u32) -> bool {
        self.holders != holders || self.max_holders != max_holders
    }
}

struct Durations {
    drain: Duration,
    soak: Duration,
    reboot: Duration,
}

fn durations(p: &UpdatePolicySpec) -> Durations {
    Durations {
        drain: p.drain.timeout.0,
        soak: p.soak.0,
        reboot: p.failure_policy.reboot_timeout.0,
    }
}

/// The policy's windows, parsed.
pub fn windows(p: &UpdatePolicySpec) -> Result<Vec<Window>, PolicyError> {
    p.windows
        .iter()
        .enumerate()
        .map(|(index, w)| {
            Window::from_spec(w).map_err(|source| PolicyError::Window { index, source })
        })
        .collect()
}

fn ts(t: Option<&Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The node came back: Ready, Done, with a boot id other than the one it had when approved.
/// (Still cordoned by the operator: it is uncordoned in the same pass.)
fn back(node: &NodeView, spec: &NodeUpdateSpec, st: &NodeUpdateStatus) -> bool {
    node.ready
        && st.phase == Phase::Done
        && !st.boot_id.is_empty()
        && spec.approved_boot_id.as_deref() != Some(st.boot_id.as_str())
}

fn waiting(st: &NodeUpdateStatus) -> bool {
    matches!(st.phase, Phase::RebootRequired | Phase::WaitingForLock)
}

/// The drain has run for the policy's timeout without finishing.
fn drain_timed_out(spec: &NodeUpdateSpec, now: Timestamp, timeout: Duration) -> bool {
    !spec.drained
        && spec
            .drain
            .as_ref()
            .and_then(|d| d.started_at)
            .is_some_and(|t| now >= plus(t.0, timeout))
}

/// How old an agent's reading of its control-plane parts may be and still count (agents
/// write an unchanged reading again every 10 s).
const HEALTH_FRESH: Duration = Duration::from_secs(30);

/// Whether the node's NodeUpdate carries a person's approval of the gate `h` waits at.
fn approved_by_hand(spec: &NodeUpdateSpec, h: &Holder) -> bool {
    spec.gate_approval.as_ref().is_some_and(|a| a.passes(h))
}

/// The Event's words for a gate passed by a person's approval: which gate, and which of its
/// annotations were still missing.
fn approval_note(s: &Snapshot<'_>, node: &NodeView, h: &Holder) -> String {
    let (stage, gates) = match h.gate_stage() {
        Some(GateStage::AfterReboot) => ("after-reboot", &s.policy.gates.after_reboot),
        _ => ("before-reboot", &s.policy.gates.before_reboot),
    };
    let missing: Vec<&str> = gates
        .iter()
        .filter(|a| node.annotations.get(*a).is_none_or(|v| v != "true"))
        .map(String::as_str)
        .collect();
    format!(
        "{stage} gate approved through the NodeUpdate's spec.gateApproval{}",
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (annotations not set: {})", missing.join(", "))
        }
    )
}

/// Why control-plane or etcd node `n` may not be granted a slot now: one such node at a
/// time; every etcd member (of the policy's nodes) healthy; another API server ready, if
/// there is another control-plane node. None for other nodes, or when it may.
fn control_plane_gate(s: &Snapshot<'_>, n: &NodeView, holders: &[Holder]) -> Option<String> {
    if !n.is_control_plane() && !n.is_etcd() {
        return None;
    }
    let view = |name: &str| s.nodes.iter().find(|v| v.name == name);
    if let Some(h) = holders.iter().find(|h| {
        h.node != n.name
            && h.phase != HolderPhase::FleetLock
            && view(&h.node).is_some_and(|v| v.is_control_plane() || v.is_etcd())
    }) {
        return Some(format!(
            "{} waits: {} holds a slot (control-plane and etcd nodes reboot one at a time)",
            n.name, h.node
        ));
    }
    let fresh = |name: &str| -> Option<&ControlPlaneHealth> {
        let (_, st) = s.updates.get(name)?;
        st.control_plane.as_ref().filter(|h| {
            h.checked_at
                .as_ref()
                .is_some_and(|t| s.now.duration_since(t.0).unsigned_abs() <= HEALTH_FRESH)
        })
    };
    for m in s.nodes.iter().filter(|m| m.is_etcd()) {
        if !m.ready || fresh(&m.name).and_then(|h| h.etcd_healthy) != Some(true) {
            return Some(format!(
                "{} waits: the etcd member on {} is not known healthy (its node is not Ready, or \
                 its agent's reading is missing, old or unhealthy)",
                n.name, m.name
            ));
        }
    }
    if n.is_control_plane() {
        let others: Vec<&NodeView> = s
            .nodes
            .iter()
            .filter(|o| o.name != n.name && o.is_control_plane())
            .collect();
        if !others.is_empty()
            && !others
                .iter()
                .any(|o| fresh(&o.name).and_then(|h| h.api_server_ready) == Some(true))
        {
            return Some(format!(
                "{} waits: no other API server is ready to answer while it reboots",
                n.name
            ));
        }
    }
    None
}

/// Decides for one policy. An invalid policy is an error (the operator reports it on the
/// policy and grants nothing).
pub fn decide(s: &Snapshot<'_>) -> Result<Decision, PolicyError> {
    let d = durations(s.policy);
    let windows = windows(s.policy)?;
    let now = s.now;
    let nodes: BTreeMap<&str, &NodeView> = s.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let empty = (NodeUpdateSpec::default(), NodeUpdateStatus::default());
    let update = |name: &str| s.updates.get(name).unwrap_or(&empty);
    let mut events = Vec::new();
    let mut released = Vec::new();
    let mut aborted: BTreeSet<String> = BTreeSet::new();
    let mut holders: Vec<Holder> = Vec::new();
    let mut ev = |node: &str, reason: &'static str, message: String, warning: bool| {
        events.push(Event {
            node: Some(node.to_owned()),
            reason,
            message,
            warning,
        })
    };

    // 1. Existing holders move on, fail, or give their slot back.
    for h in s.holders {
        let mut h = h.clone();
        if h.phase == HolderPhase::FleetLock {
            holders.push(h);
            continue;
        }
        if !s.all_nodes.contains(&h.node) {
            ev(
                &h.node,
                "LockReleased",
                "node deleted: its slot is free".into(),
                false,
            );
            released.push((h.node.clone(), "node deleted".into()));
            continue;
        }
        let Some(node) = nodes.get(h.node.as_str()) else {
            // Still a node, no longer selected by this policy: give the slot back.
            released.push((h.node.clone(), "no longer selected by the policy".into()));
            continue;
        };
        let (spec, st) = update(&h.node);
        let acquired = h.acquired_at.0;
        let release = match h.phase {
            HolderPhase::Granted | HolderPhase::FleetLock => None,
            HolderPhase::Approved => {
                if st.phase == Phase::Failed {
                    h.phase = HolderPhase::Failed;
                    ev(
                        &h.node,
                        "RebootFailed",
                        format!("agent reports: {}", st.message),
                        true,
                    );
                    None
                } else if st.phase == Phase::Draining
                    && s.policy.drain.on_timeout == OnDrainTimeout::Abort
                    && drain_timed_out(spec, now, d.drain)
                {
                    let left = spec.drain.as_ref().map_or(0, |d| d.pods_remaining);
                    let blocked = spec
                        .drain
                        .as_ref()
                        .map(|d| d.blocked_by.join("; "))
                        .unwrap_or_default();
                    ev(
                        &h.node,
                        "DrainTimedOut",
                        format!(
                            "drain timed out after {} with {left} pod(s) left: {blocked}",
                            s.policy.drain.timeout
                        ),
                        true,
                    );
                    aborted.insert(h.node.clone());
                    Some("drain aborted".to_owned())
                } else if st.phase == Phase::Idle {
                    Some("reboot no longer required".to_owned())
                } else if back(node, spec, st) {
                    if s.policy.gates.after_reboot.is_empty() {
                        Some("rebooted".to_owned())
                    } else {
                        h.phase = HolderPhase::Verifying;
                        ev(
                            &h.node,
                            "AfterRebootGates",
                            "waiting for the after-reboot gates".into(),
                            false,
                        );
                        None
                    }
                } else {
                    let in_reboot = matches!(st.phase, Phase::Rebooting | Phase::Verifying)
                        && ts(st.last_transition_time.as_ref())
                            .is_some_and(|t| now >= plus(t, d.reboot));
                    let overall = now >= plus(plus(acquired, d.drain), d.reboot);
                    if in_reboot || overall {
                        h.phase = HolderPhase::Failed;
                        ev(
                            &h.node,
                            "RebootTimedOut",
                            format!(
                                "not back within {} (phase {}): the node keeps its slot",
                                s.policy.failure_policy.reboot_timeout,
                                st.phase.as_str()
                            ),
                            true,
                        );
                    }
                    None
                }
            }
            HolderPhase::Verifying => {
                let passed = node.gates_pass(&s.policy.gates.after_reboot);
                let by_hand = !passed && approved_by_hand(spec, &h);
                if by_hand {
                    ev(&h.node, "GateApproved", approval_note(s, node, &h), false);
                }
                (passed || by_hand).then(|| "rebooted".to_owned())
            }
            HolderPhase::Failed => back(node, spec, st).then(|| "recovered".to_owned()),
        };
        match release {
            Some(reason) => {
                ev(&h.node, "LockReleased", reason.clone(), false);
                released.push((h.node.clone(), reason));
            }
            None => holders.push(h),
        }
    }

    // 2. New grants, within capacity, window, soak, pause and health.
    let max = s.policy.max_unavailable.resolve(s.nodes.len()) as u32;
    let failed = holders
        .iter()
        .filter(|h| h.phase == HolderPhase::Failed)
        .count() as u32;
    let degraded = failed >= s.policy.failure_policy.max_failures.max(1);
    let window_open = allowed(&windows, now);
    let last_release = if released.is_empty() {
        s.last_release
    } else {
        Some(now)
    };
    let soaked = last_release.is_none_or(|t| now >= plus(t, d.soak));
    let held: BTreeSet<String> = holders.iter().map(|h| h.node.clone()).collect();
    // Unavailable nodes use a slot, except those the operator cordoned for an update it no
    // longer holds: they are uncordoned in this pass.
    let mut busy: BTreeSet<String> = s
        .nodes
        .iter()
        .filter(|n| {
            let uncordoning =
                n.unschedulable && update(&n.name).0.cordoned && !held.contains(&n.name);
            let about_to_be_available = n.ready && uncordoning;
            !(n.available() || about_to_be_available)
        })
        .map(|n| n.name.clone())
        .collect();
    busy.extend(held.iter().cloned());
    let candidates: Vec<&NodeView> = s
        .nodes
        .iter()
        .filter(|n| !held.contains(&n.name))
        .filter(|n| {
            let (spec, st) = update(&n.name);
            let recently_aborted = aborted.contains(&n.name)
                || spec
                    .last_abort
                    .map(|t| t.0)
                    .is_some_and(|t| now < plus(t, d.drain));
            waiting(st) && !recently_aborted
        })
        .collect();
    let mut granted = Vec::new();
    let mut gate_waits: Vec<String> = Vec::new();
    let control_plane_nodes = s.nodes.iter().filter(|n| n.is_control_plane()).count();
    if !s.policy.paused && !degraded && window_open && soaked {
        for n in &candidates {
            if let Some(why) = control_plane_gate(s, n, &holders) {
                gate_waits.push(why);
                continue;
            }
            let mut with = busy.clone();
            with.insert(n.name.clone());
            if with.len() as u32 > max {
                continue;
            }
            busy = with;
            granted.push(n.name.clone());
            holders.push(Holder {
                node: n.name.clone(),
                acquired_at: Time(now),
                phase: HolderPhase::Granted,
                from_node: None,
            });
            ev(
                &n.name,
                "LockGranted",
                format!("slot {} of {max}", busy.len()),
                false,
            );
            if n.is_control_plane() && control_plane_nodes == 1 {
                ev(
                    &n.name,
                    "ApiServerAway",
                    "the only control-plane node reboots: the Kubernetes API is away until it \
                     is back"
                        .into(),
                    true,
                );
            }
        }
    }

    // 3. Granted holders whose before-reboot gates pass, or were approved by hand, are
    // approved.
    for h in &mut holders {
        let Some(node) = nodes.get(h.node.as_str()) else {
            continue;
        };
        if h.phase != HolderPhase::Granted {
            continue;
        }
        let passed = node.gates_pass(&s.policy.gates.before_reboot);
        let by_hand = !passed && approved_by_hand(&update(&h.node).0, h);
        if by_hand {
            ev(&h.node, "GateApproved", approval_note(s, node, h), false);
        }
        if passed || by_hand {
            h.phase = HolderPhase::Approved;
            ev(
                &h.node,
                "Approved",
                "the operator cordons and drains the node, then its agent reboots it".into(),
                false,
            );
        }
    }

    // 4. Approvals, cordons, drains and gate labels follow the holders.
    let phase_of: BTreeMap<&str, HolderPhase> =
        holders.iter().map(|h| (h.node.as_str(), h.phase)).collect();
    let mut approvals = BTreeMap::new();
    let mut cordons = BTreeMap::new();
    let mut drains = BTreeSet::new();
    let mut labels = BTreeMap::new();
    for n in s.nodes {
        let (spec, st) = update(&n.name);
        let phase = phase_of.get(n.name.as_str()).copied();
        let approved = matches!(
            phase,
            Some(HolderPhase::Approved | HolderPhase::Verifying | HolderPhase::Failed)
        );
        let approved_boot_id = if approved {
            spec.approved_boot_id
                .clone()
                .filter(|_| spec.approved)
                .or_else(|| Some(n.boot_id.clone()))
        } else {
            None
        };
        // The agent took the approval of this boot: drain until done.
        let draining = approved
            && st.phase == Phase::Draining
            && st.boot_id == approved_boot_id.clone().unwrap_or_default();
        let drain = if !approved {
            None
        } else if draining && spec.drain.is_none() {
            Some(DrainProgress {
                started_at: Some(Time(now)),
                ..DrainProgress::default()
            })
        } else {
            spec.drain.clone()
        };
        let drained = approved && spec.drained;
        let next = NodeUpdateSpec {
            approved,
            approved_boot_id,
            drain,
            drained,
            ..spec.clone()
        };
        if draining && !drained && phase == Some(HolderPhase::Approved) {
            drains.insert(n.name.clone());
        }
        // Cordoned from the drain until the agent reports the node back (a node that does
        // not come back stays cordoned).
        let want_cordon = approved
            && matches!(
                st.phase,
                Phase::Draining | Phase::Rebooting | Phase::Verifying | Phase::Failed
            );
        let cordoned = match (want_cordon, spec.cordoned, n.unschedulable) {
            // Someone else's cordon: not ours to make or lift.
            (true, false, true) => false,
            (true, _, false) => {
                cordons.insert(n.name.clone(), true);
                true
            }
            (true, true, true) => true,
            (false, true, true) => {
                cordons.insert(n.name.clone(), false);
                false
            }
            (false, _, _) => false,
        };
        let force_drain = approved
            && s.policy.drain.on_timeout == OnDrainTimeout::Force
            && st.phase == Phase::Draining
            && drain_timed_out(&next, now, d.drain);
        approvals.insert(
            n.name.clone(),
            NodeUpdateSpec {
                cordoned,
                force_drain,
                last_abort: if aborted.contains(&n.name) {
                    Some(Time(now))
                } else {
                    spec.last_abort
                },
                ..next
            },
        );
        let before = phase == Some(HolderPhase::Granted);
        let after = phase == Some(HolderPhase::Verifying);
        labels.insert(
            n.name.clone(),
            BTreeMap::from([
                (BEFORE_REBOOT_LABEL, before.then_some("true")),
                (AFTER_REBOOT_LABEL, after.then_some("true")),
            ]),
        );
    }

    // 5. The policy's status.
    let failed = holders
        .iter()
        .filter(|h| h.phase == HolderPhase::Failed)
        .count() as u32;
    let degraded = failed >= s.policy.failure_policy.max_failures.max(1);
    let next_window = if window_open {
        None
    } else {
        windows
            .iter()
            .filter_map(|w| w.next_open(now))
            .min()
            .map(Time)
    };
    let progressing = holders.iter().any(|h| h.phase != HolderPhase::Failed);
    let cond = |type_: &str, on: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
    };
    let fresh = vec![
        cond(
            "Ready",
            !degraded,
            if degraded { "Degraded" } else { "AsExpected" },
            String::new(),
        ),
        cond(
            "Progressing",
            progressing,
            if progressing { "Rebooting" } else { "Idle" },
            holders
                .iter()
                .map(|h| h.node.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        cond(
            "Paused",
            s.policy.paused,
            if s.policy.paused { "Paused" } else { "Running" },
            String::new(),
        ),
        cond(
            "Degraded",
            degraded,
            if degraded {
                "RebootFailed"
            } else {
                "AsExpected"
            },
            if degraded {
                format!(
                    "{failed} node(s) did not come back; granting stopped until they do or \
                     their slots are released"
                )
            } else {
                String::new()
            },
        ),
        cond(
            "ControlPlaneGate",
            !gate_waits.is_empty(),
            if gate_waits.is_empty() {
                "Open"
            } else {
                "Waiting"
            },
            gate_waits.join("; "),
        ),
        cond(
            "WindowOpen",
            window_open,
            if windows.is_empty() {
                "NoWindows"
            } else if window_open {
                "InWindow"
            } else {
                "OutsideWindows"
            },
            String::new(),
        ),
    ];
    let conditions = merge_conditions(s.conditions, fresh, now);
    for (old, new) in s.conditions.iter().zip(&conditions) {
        if old.type_ == "Degraded" && old.status != new.status && new.status == "True" {
            events.push(Event {
                node: None,
                reason: "Degraded",
                message: new.message.clone(),
                warning: true,
            });
        }
    }
    let (versions, version_summary) = version_breakdown(s.nodes.iter().map(|n| {
        s.updates
            .get(&n.name)
            .map_or("", |(_, status)| status.os_id.as_str())
    }));
    let status = UpdatePolicyStatus {
        conditions,
        nodes: s.nodes.len() as u32,
        reboot_required: candidates.len().saturating_sub(granted.len()) as u32,
        in_progress: holders
            .iter()
            .filter(|h| h.phase != HolderPhase::Failed)
            .count() as u32,
        failed,
        next_window,
        versions,
        version_summary,
    };
    Ok(Decision {
        max_holders: max,
        holders,
        released,
        approvals,
        cordons,
        drains,
        labels,
        status,
        events,
    })
}

/// New conditions keep the transition time of the old ones whose status did not change.
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>, now: Timestamp) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            c.last_transition_time = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
                .and_then(|o| o.last_transition_time)
                .or(Some(Time(now)));
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DrainProgress, GateApproval, GoDuration, IntOrPercent, Weekday, WindowSpec};

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn time(s: &str) -> Time {
        Time(t(s))
    }

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            boot_id: format!("{name}-boot-1"),
            ..Default::default()
        }
    }

    fn status(phase: Phase) -> NodeUpdateStatus {
        NodeUpdateStatus {
            phase,
            last_transition_time: Some(time("2026-11-26T10:00:00Z")),
            ..Default::default()
        }
    }

    struct World {
        policy: UpdatePolicySpec,
        nodes: Vec<NodeView>,
        all: BTreeSet<String>,
        updates: BTreeMap<String, (NodeUpdateSpec, NodeUpdateStatus)>,
        holders: Vec<Holder>,
        last_release: Option<Timestamp>,
        conditions: Vec<Condition>,
    }

    impl World {
        fn new(names: &[&str]) -> Self {
            Self {
                policy: serde_json::from_str("{}").expect("defaults"),
                nodes: names.iter().map(|n| node(n)).collect(),
                all: names.iter().map(|n| n.to_string()).collect(),
                updates: BTreeMap::new(),
                holders: Vec::new(),
                last_release: None,
                conditions: Vec::new(),
            }
        }

        fn wants(&mut self, name: &str) {
            self.updates.insert(
                name.into(),
                (NodeUpdateSpec::default(), status(Phase::RebootRequired)),
            );
        }

        fn at(&self, now: &str) -> Decision {
            self.try_at(now).expect("valid policy")
        }

        fn try_at(&self, now: &str) -> Result<Decision, PolicyError> {
            decide(&Snapshot {
                policy: &self.policy,
                nodes: &self.nodes,
                all_nodes: &self.all,
                updates: &self.updates,
                holders: &self.holders,
                last_release: self.last_release,
                conditions: &self.conditions,
                now: t(now),
            })
        }

        /// Applies a decision as the operator would.
        fn apply(&mut self, d: &Decision) {
            self.holders = d.holders.clone();
            for (n, spec) in &d.approvals {
                self.updates.entry(n.clone()).or_default().0 = spec.clone();
            }
            for (n, on) in &d.cordons {
                self.node_mut(n).unschedulable = *on;
            }
            if !d.released.is_empty() {
                self.last_release = Some(t(NOW));
            }
            self.conditions = d.status.conditions.clone();
        }

        fn node_mut(&mut self, name: &str) -> &mut NodeView {
            self.nodes
                .iter_mut()
                .find(|n| n.name == name)
                .expect("node")
        }
    }

    const NOW: &str = "2026-11-26T10:05:00Z";

    fn names(h: &[Holder]) -> Vec<&str> {
        h.iter().map(|h| h.node.as_str()).collect()
    }

    /// cp1..cp3 (control plane and etcd) and w1, every agent reading its parts healthy
    /// at NOW.
    fn control_plane_world() -> World {
        let mut w = World::new(&["cp1", "cp2", "cp3", "w1"]);
        w.policy.max_unavailable = IntOrPercent::Count(2);
        for n in ["cp1", "cp2", "cp3"] {
            let v = w.node_mut(n);
            v.labels
                .insert(CONTROL_PLANE_NODE_LABELS[0].into(), String::new());
            v.labels.insert(ETCD_NODE_LABEL.into(), String::new());
            w.updates
                .insert(n.into(), (NodeUpdateSpec::default(), status(Phase::Idle)));
            w.read(n, Some(true), Some(true), NOW);
        }
        w
    }

    impl World {
        fn read(&mut self, n: &str, etcd: Option<bool>, api: Option<bool>, at: &str) {
            self.updates.entry(n.into()).or_default().1.control_plane = Some(ControlPlaneHealth {
                etcd_healthy: etcd,
                api_server_ready: api,
                checked_at: Some(time(at)),
            });
        }

        fn wants_keeping_health(&mut self, n: &str) {
            let e = self.updates.entry(n.into()).or_default();
            e.1.phase = Phase::RebootRequired;
        }
    }

    fn gate(d: &Decision) -> &Condition {
        d.status
            .conditions
            .iter()
            .find(|c| c.type_ == "ControlPlaneGate")
            .expect("ControlPlaneGate condition")
    }

    #[test]
    fn control_plane_and_etcd_nodes_reboot_one_at_a_time_and_only_while_the_rest_is_healthy() {
        let mut w = control_plane_world();
        for n in ["cp1", "cp2", "w1"] {
            w.wants_keeping_health(n);
        }
        // Two slots: cp1 and w1, not cp2 (one control-plane node at a time).
        let d = w.at(NOW);
        assert_eq!(names(&d.holders), ["cp1", "w1"]);
        assert_eq!(gate(&d).status, "True");
        assert!(
            gate(&d).message.contains("cp2 waits: cp1 holds a slot"),
            "{}",
            gate(&d).message
        );
        assert!(d.events.iter().all(|e| e.reason != "ApiServerAway"));

        // An etcd member unhealthy, or its reading old or missing: no control-plane grant.
        let mut w = control_plane_world();
        w.wants_keeping_health("cp1");
        w.read("cp3", Some(false), Some(true), NOW);
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert!(
            gate(&d).message.contains("etcd member on cp3"),
            "{}",
            gate(&d).message
        );
        w.read("cp3", Some(true), Some(true), "2026-11-26T10:00:00Z");
        assert!(
            w.at(NOW).holders.is_empty(),
            "a reading five minutes old does not count"
        );
        w.updates.get_mut("cp3").expect("cp3").1.control_plane = None;
        assert!(w.at(NOW).holders.is_empty(), "no reading at all");
        w.read("cp3", Some(true), Some(true), NOW);
        w.node_mut("cp3").ready = false;
        assert!(
            w.at(NOW).holders.is_empty(),
            "a healthy reading of a NotReady node"
        );

        // No other API server ready: cp1 waits; one other ready is enough.
        let mut w = control_plane_world();
        w.wants_keeping_health("cp1");
        w.read("cp2", Some(true), Some(false), NOW);
        w.read("cp3", Some(true), Some(false), NOW);
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert!(
            gate(&d).message.contains("no other API server"),
            "{}",
            gate(&d).message
        );
        w.read("cp3", Some(true), Some(true), NOW);
        let d = w.at(NOW);
        assert_eq!(names(&d.holders), ["cp1"]);
        assert_eq!(gate(&d).status, "False");

        // Workers pass whatever the control plane says.
        let mut w = control_plane_world();
        w.wants("w1");
        w.read("cp2", Some(false), Some(false), NOW);
        assert_eq!(names(&w.at(NOW).holders), ["w1"]);
    }

    #[test]
    fn a_single_control_plane_node_may_reboot_with_an_event_saying_the_api_will_be_away() {
        let mut w = World::new(&["cp1", "w1"]);
        let v = w.node_mut("cp1");
        v.labels
            .insert(CONTROL_PLANE_NODE_LABELS[1].into(), String::new());
        v.labels.insert(ETCD_NODE_LABEL.into(), String::new());
        w.wants("cp1");
        w.read("cp1", Some(true), Some(true), NOW);
        let d = w.at(NOW);
        assert_eq!(names(&d.holders), ["cp1"]);
        let away: Vec<&Event> = d
            .events
            .iter()
            .filter(|e| e.reason == "ApiServerAway")
            .collect();
        assert_eq!(away.len(), 1);
        assert!(away[0].warning && away[0].message.contains("API is away"));
    }

    #[test]
    fn the_status_counts_the_nodes_of_each_os_version() {
        let mut w = World::new(&["a", "b", "c"]);
        for (n, os) in [("a", "Container Linux 2"), ("b", "Container Linux 1")] {
            let mut st = status(Phase::Idle);
            st.os_id = os.into();
            w.updates.insert(n.into(), (NodeUpdateSpec::default(), st));
        }
        let d = w.at(NOW);
        let got: Vec<(&str, u32)> = d
            .status
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.nodes))
            .collect();
        assert_eq!(
            got,
            [
                ("Container Linux 1", 1),
                ("Container Linux 2", 1),
                ("unknown", 1)
            ]
        );
        assert_eq!(
            d.status.version_summary,
            "Container Linux 1: 1, Container Linux 2: 1, unknown: 1"
        );
    }

    #[test]
    fn grants_one_at_a_time_and_approves_without_gates() {
        let mut w = World::new(&["a", "b", "c"]);
        w.wants("a");
        w.wants("b");
        let d = w.at(NOW);
        assert_eq!(names(&d.holders), ["a"]);
        assert_eq!(d.holders[0].phase, HolderPhase::Approved);
        assert!(d.approvals["a"].approved);
        assert_eq!(
            d.approvals["a"].approved_boot_id.as_deref(),
            Some("a-boot-1")
        );
        assert!(!d.approvals["b"].approved);
        assert_eq!(d.status.reboot_required, 1);
        assert_eq!(d.status.in_progress, 1);
        w.apply(&d);
        // Deciding again from the written objects grants nothing new (restart safety).
        let again = w.at(NOW);
        assert_eq!(again.holders, d.holders);
        assert!(again.events.is_empty(), "{:?}", again.events);
    }

    #[test]
    fn unavailable_nodes_count_against_max_unavailable() {
        let mut w = World::new(&["a", "b", "c"]);
        w.wants("a");
        w.node_mut("c").unschedulable = true; // someone cordoned c
        let d = w.at(NOW);
        assert!(d.holders.is_empty(), "c already uses the only slot");
        // A node that needs a reboot and is already NotReady costs no extra slot.
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.node_mut("a").ready = false;
        assert_eq!(names(&w.at(NOW).holders), ["a"]);
    }

    #[test]
    fn percent_and_count() {
        let mut w = World::new(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        for n in ["a", "b", "c", "d"] {
            w.wants(n);
        }
        w.policy.max_unavailable = IntOrPercent::Percent(25);
        assert_eq!(names(&w.at(NOW).holders), ["a", "b"]);
        w.policy.max_unavailable = IntOrPercent::Count(3);
        assert_eq!(w.at(NOW).max_holders, 3);
    }

    #[test]
    fn full_cycle_releases_after_the_node_is_back_with_a_new_boot_id() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.wants("b");
        let d = w.at(NOW);
        w.apply(&d);
        // Rebooted, but still reporting the old boot id: not back.
        w.updates.get_mut("a").expect("a").1 = NodeUpdateStatus {
            boot_id: "a-boot-1".into(),
            ..status(Phase::Done)
        };
        assert_eq!(names(&w.at(NOW).holders), ["a"]);
        // New boot id, Ready, schedulable: released, and b is granted in the same pass.
        w.updates.get_mut("a").expect("a").1.boot_id = "a-boot-2".into();
        let d = w.at(NOW);
        assert_eq!(d.released, [("a".to_owned(), "rebooted".to_owned())]);
        assert_eq!(names(&d.holders), ["b"]);
        assert!(!d.approvals["a"].approved);
        // Not Ready yet: not back.
        w.node_mut("a").ready = false;
        assert_eq!(names(&w.at(NOW).holders), ["a"]);
    }

    #[test]
    fn soak_waits_after_a_release() {
        let mut w = World::new(&["a", "b"]);
        w.wants("b");
        w.policy.soak = GoDuration::minutes(5);
        w.last_release = Some(t("2026-11-26T10:03:00Z"));
        assert!(w.at(NOW).holders.is_empty());
        assert_eq!(names(&w.at("2026-11-26T10:08:00Z").holders), ["b"]);
    }

    #[test]
    fn paused_and_closed_windows_grant_nothing() {
        let mut w = World::new(&["a"]);
        w.wants("a");
        w.policy.paused = true;
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert!(
            d.status
                .conditions
                .iter()
                .any(|c| c.type_ == "Paused" && c.status == "True")
        );
        w.policy.paused = false;
        // Thursday 2026-11-26; the window is on Saturdays 02:00 Berlin.
        w.policy.windows = vec![WindowSpec {
            days: vec![Weekday::Sat],
            start: "02:00".into(),
            duration: GoDuration::hours(4),
            time_zone: "Europe/Berlin".into(),
        }];
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert_eq!(
            d.status.next_window.map(|t| t.to_string()).as_deref(),
            Some("2026-11-28T01:00:00Z")
        );
        assert_eq!(names(&w.at("2026-11-28T01:30:00Z").holders), ["a"]);
    }

    #[test]
    fn before_gates_hold_the_approval_and_label_the_node() {
        let mut w = World::new(&["a"]);
        w.wants("a");
        w.policy.gates.before_reboot = vec!["example.com/backup-done".into()];
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Granted);
        assert!(!d.approvals["a"].approved);
        assert_eq!(d.labels["a"][BEFORE_REBOOT_LABEL], Some("true"));
        w.apply(&d);
        w.node_mut("a")
            .annotations
            .insert("example.com/backup-done".into(), "true".into());
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Approved);
        assert_eq!(d.labels["a"][BEFORE_REBOOT_LABEL], None);
    }

    #[test]
    fn after_gates_hold_the_release() {
        let mut w = World::new(&["a"]);
        w.wants("a");
        w.policy.gates.after_reboot = vec!["example.com/smoke-test".into()];
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").1 = NodeUpdateStatus {
            boot_id: "a-boot-2".into(),
            ..status(Phase::Done)
        };
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Verifying);
        assert_eq!(d.labels["a"][AFTER_REBOOT_LABEL], Some("true"));
        w.apply(&d);
        w.node_mut("a")
            .annotations
            .insert("example.com/smoke-test".into(), "true".into());
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert_eq!(d.released[0].1, "rebooted");
    }

    #[test]
    fn a_gate_approved_by_hand_passes_its_stage_of_its_slot_only() {
        let mut w = World::new(&["a"]);
        w.wants("a");
        w.policy.gates.before_reboot = vec!["example.com/backup-done".into()];
        w.policy.gates.after_reboot = vec!["example.com/smoke-test".into()];
        let d = w.at(NOW);
        w.apply(&d);
        let slot = w.holders[0].clone();
        let approve = |w: &mut World, stage, at| {
            w.updates.get_mut("a").expect("a").0.gate_approval = Some(GateApproval {
                stage,
                slot_acquired_at: at,
            });
        };
        // An approval of another slot (an earlier update's) or of the other stage: no effect.
        approve(
            &mut w,
            GateStage::BeforeReboot,
            time("2026-11-20T10:00:00Z"),
        );
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Granted);
        approve(&mut w, GateStage::AfterReboot, slot.acquired_at);
        assert_eq!(w.at(NOW).holders[0].phase, HolderPhase::Granted);
        // The waiting stage of this slot: approved, and the Event names the missing annotation.
        approve(&mut w, GateStage::BeforeReboot, slot.acquired_at);
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Approved);
        assert!(d.approvals["a"].approved);
        let e = d
            .events
            .iter()
            .find(|e| e.reason == "GateApproved")
            .expect("GateApproved event");
        assert!(
            e.message.contains("before-reboot") && e.message.contains("example.com/backup-done"),
            "{}",
            e.message
        );
        // The operator keeps the person's approval as it was.
        assert_eq!(
            d.approvals["a"].gate_approval,
            w.updates["a"].0.gate_approval
        );
        w.apply(&d);
        // Back from the reboot: the before-reboot approval does not pass the after-reboot gate.
        w.updates.get_mut("a").expect("a").1 = NodeUpdateStatus {
            boot_id: "a-boot-2".into(),
            ..status(Phase::Done)
        };
        let d = w.at(NOW);
        assert_eq!(d.holders[0].phase, HolderPhase::Verifying);
        w.apply(&d);
        assert_eq!(w.at(NOW).holders[0].phase, HolderPhase::Verifying);
        approve(&mut w, GateStage::AfterReboot, slot.acquired_at);
        let d = w.at(NOW);
        assert!(d.holders.is_empty());
        assert_eq!(d.released[0].1, "rebooted");
        w.apply(&d);
        // The next update of the node gets a new slot: the old approval passes nothing.
        w.updates.get_mut("a").expect("a").1 = NodeUpdateStatus {
            boot_id: "a-boot-2".into(),
            ..status(Phase::RebootRequired)
        };
        let later = "2026-11-26T11:00:00Z";
        let d = w.at(later);
        assert_eq!(d.holders[0].phase, HolderPhase::Granted);
        w.apply(&d);
        approve(&mut w, GateStage::BeforeReboot, slot.acquired_at);
        assert_eq!(w.at(later).holders[0].phase, HolderPhase::Granted);
    }

    #[test]
    fn a_node_not_back_in_time_fails_keeps_its_slot_and_degrades_the_policy() {
        let mut w = World::new(&["a", "b", "c"]);
        w.wants("a");
        w.wants("b");
        w.policy.max_unavailable = IntOrPercent::Count(2);
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").1 = status(Phase::Rebooting);
        w.updates.get_mut("b").expect("b").1 = status(Phase::Rebooting);
        // 15m after entering Rebooting at 10:00.
        let d = w.at("2026-11-26T10:16:00Z");
        assert!(d.holders.iter().all(|h| h.phase == HolderPhase::Failed));
        assert_eq!(d.holders.len(), 2, "failed nodes keep their slots");
        assert!(
            d.status
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True")
        );
        w.apply(&d);
        // c asks, but the policy is degraded.
        w.wants("c");
        let d = w.at("2026-11-26T10:17:00Z");
        assert!(!d.holders.iter().any(|h| h.node == "c"));
        // a comes back later: released as recovered.
        w.updates.get_mut("a").expect("a").1 = NodeUpdateStatus {
            boot_id: "a-boot-2".into(),
            ..status(Phase::Done)
        };
        let d = w.at("2026-11-26T10:20:00Z");
        assert_eq!(d.released, [("a".to_owned(), "recovered".to_owned())]);
    }

    #[test]
    fn deleted_nodes_release_their_slot() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.wants("b");
        let d = w.at(NOW);
        w.apply(&d);
        w.nodes.retain(|n| n.name != "a");
        w.all.remove("a");
        let d = w.at(NOW);
        assert_eq!(d.released[0], ("a".to_owned(), "node deleted".to_owned()));
        assert_eq!(names(&d.holders), ["b"]);
    }

    /// The agent's status for a node of `w` that took the approval of its current boot.
    fn agent(w: &World, name: &str, phase: Phase) -> NodeUpdateStatus {
        let boot_id = w
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node")
            .boot_id
            .clone();
        NodeUpdateStatus {
            boot_id,
            ..status(phase)
        }
    }

    #[test]
    fn the_operator_cordons_drains_and_uncordons() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        let d = w.at(NOW);
        assert!(d.approvals["a"].approved);
        assert!(
            d.cordons.is_empty() && d.drains.is_empty(),
            "the agent has not taken it yet"
        );
        w.apply(&d);
        // The agent took the approval: cordon (recorded), drain, with the time it started.
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Draining);
        let d = w.at(NOW);
        assert_eq!(d.cordons, BTreeMap::from([("a".to_owned(), true)]));
        assert_eq!(d.drains, BTreeSet::from(["a".to_owned()]));
        let spec = &d.approvals["a"];
        assert!(spec.cordoned && !spec.drained);
        assert_eq!(
            spec.drain.as_ref().and_then(|d| d.started_at),
            Some(time(NOW))
        );
        w.apply(&d);
        assert!(w.node_mut("a").unschedulable);
        // Cordoned and recorded: no second cordon; still draining.
        let d = w.at("2026-11-26T10:05:10Z");
        assert!(d.cordons.is_empty());
        assert!(d.drains.contains("a"));
        // Someone uncordons it mid-update: cordoned again.
        w.node_mut("a").unschedulable = false;
        assert_eq!(w.at(NOW).cordons.get("a"), Some(&true));
        w.node_mut("a").unschedulable = true;
        // Drained (the drain pass found no pod left): no more drain passes.
        w.updates.get_mut("a").expect("a").0.drained = true;
        let d = w.at(NOW);
        assert!(d.drains.is_empty());
        assert!(d.approvals["a"].drained);
        // Rebooting, then back with a new boot id: released and uncordoned in the same pass.
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Rebooting);
        assert!(w.at(NOW).cordons.is_empty(), "cordoned through the reboot");
        w.node_mut("a").boot_id = "a-boot-2".into();
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Done);
        let d = w.at(NOW);
        assert_eq!(d.released, [("a".to_owned(), "rebooted".to_owned())]);
        assert_eq!(d.cordons, BTreeMap::from([("a".to_owned(), false)]));
        let spec = &d.approvals["a"];
        assert!(!spec.approved && !spec.cordoned && !spec.drained && spec.drain.is_none());
    }

    #[test]
    fn a_node_cordoned_by_someone_else_stays_cordoned() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.policy.max_unavailable = IntOrPercent::Count(2);
        w.node_mut("a").unschedulable = true;
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Draining);
        let d = w.at(NOW);
        assert!(
            d.cordons.is_empty(),
            "already cordoned, not by the operator"
        );
        assert!(!d.approvals["a"].cordoned);
        assert!(d.drains.contains("a"));
        w.apply(&d);
        w.node_mut("a").boot_id = "a-boot-2".into();
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Done);
        let d = w.at(NOW);
        assert_eq!(d.released[0].1, "rebooted");
        assert!(
            d.cordons.is_empty(),
            "its cordon is not the operator's to lift"
        );
    }

    #[test]
    fn an_aborted_drain_gives_the_slot_back_and_waits_before_asking_again() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.wants("b");
        w.policy.drain.timeout = GoDuration::minutes(10);
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Draining);
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").0.drain = Some(DrainProgress {
            pods_remaining: 1,
            blocked_by: vec!["default/web-1: Cannot evict pod".into()],
            started_at: Some(time(NOW)),
        });
        assert!(w.at("2026-11-26T10:14:59Z").released.is_empty());
        let d = w.at("2026-11-26T10:15:00Z");
        assert_eq!(d.released[0].1, "drain aborted");
        assert!(
            d.events.iter().any(|e| e.reason == "DrainTimedOut"
                && e.message.contains("1 pod(s) left: default/web-1"))
        );
        assert_eq!(names(&d.holders), ["b"], "b goes next, a waits");
        let spec = &d.approvals["a"];
        assert!(!spec.approved && !spec.cordoned);
        assert_eq!(spec.last_abort, Some(time("2026-11-26T10:15:00Z")));
        assert_eq!(d.cordons.get("a"), Some(&false), "uncordoned");
        w.apply(&d);
        // The agent saw the approval withdrawn.
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::RebootRequired);
        w.holders.clear();
        w.updates.remove("b");
        assert!(
            w.at("2026-11-26T10:24:59Z").holders.is_empty(),
            "waits a drain timeout"
        );
        assert_eq!(names(&w.at("2026-11-26T10:25:00Z").holders), ["a"]);
    }

    #[test]
    fn force_drain_after_the_drain_timeout_when_the_policy_says_so() {
        let mut w = World::new(&["a"]);
        w.wants("a");
        w.policy.drain.on_timeout = OnDrainTimeout::Force;
        let d = w.at(NOW);
        w.apply(&d);
        w.updates.get_mut("a").expect("a").1 = agent(&w, "a", Phase::Draining);
        let d = w.at(NOW);
        w.apply(&d);
        assert!(!w.at("2026-11-26T10:10:00Z").approvals["a"].force_drain);
        let d = w.at("2026-11-26T10:16:00Z");
        assert!(d.approvals["a"].force_drain);
        assert!(d.released.is_empty(), "Force keeps the slot");
    }

    #[test]
    fn fleetlock_holders_count_and_stay() {
        let mut w = World::new(&["a", "b"]);
        w.wants("a");
        w.holders = vec![Holder {
            node: "zincati-1".into(),
            acquired_at: time(NOW),
            phase: HolderPhase::FleetLock,
            from_node: None,
        }];
        let d = w.at(NOW);
        assert_eq!(names(&d.holders), ["zincati-1"], "the one slot is taken");
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let mut w = World::new(&["a"]);
        w.policy.windows = vec![WindowSpec {
            days: vec![],
            start: "02:00".into(),
            duration: GoDuration::hours(1),
            time_zone: "Mars/Olympus".into(),
        }];
        let err = w.try_at(NOW).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("spec.windows[0]: `Mars/Olympus`"),
            "{err}"
        );
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut w = World::new(&["a"]);
        let d = w.at(NOW);
        w.apply(&d);
        let later = w.at("2026-11-26T11:00:00Z");
        let ready = |d: &Decision| {
            d.status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.last_transition_time)
        };
        assert_eq!(ready(&later), ready(&d));
    }
}
