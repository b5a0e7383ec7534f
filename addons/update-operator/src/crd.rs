//! The three resources of group `update.strata.dev`, version `v1alpha1`, all cluster-scoped.
//!
//! - [`UpdatePolicy`]: which nodes, how many at once, when, how to drain, what failure means.
//! - [`NodeUpdate`]: one per node (same name, owned by the Node). The agent writes its status;
//!   the operator writes its spec (the approval).
//! - [`RebootLock`]: one per policy, the durable semaphore. Only the operator writes it, always
//!   with the resourceVersion it read, so two writers can never both take the last slot.
//!
//! The CRD YAML committed in `crds.yaml` is generated from these types ([`crds_yaml`]); a test
//! fails when they drift apart. Only schema features Kubernetes 1.20 understands are used.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::CustomResource;
use kube::CustomResourceExt as _;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "update.strata.dev";

/// A count of nodes or a percentage of the policy's nodes (rounded down, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// The count this means for `total` nodes: at least one, so a policy always progresses.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => (n as usize).max(1),
            IntOrPercent::Percent(p) => (total * p as usize / 100).max(1),
        }
    }
}

impl Default for IntOrPercent {
    fn default() -> Self {
        IntOrPercent::Count(1)
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(IntOrPercent::Count(n)),
            Raw::Text(s) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .filter(|p| (1..=100).contains(p))
                .map(IntOrPercent::Percent)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "`{s}` is neither a count nor a percentage such as \"25%\""
                    ))
                }),
        }
    }
}

impl JsonSchema for IntOrPercent {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The structural-schema spelling of int-or-string (Kubernetes 1.16+).
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{ "type": "integer" }, { "type": "string" }]
        })
    }
}

/// A maintenance window: on `days` (every day when empty), from `start` (HH:MM in `timeZone`)
/// for `duration` (e.g. 4h, 90m).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowSpec {
    #[serde(default)]
    pub days: Vec<String>,
    pub start: String,
    pub duration: String,
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum OnDrainTimeout {
    /// Uncordon, give the slot back and try the node again later.
    #[default]
    Abort,
    /// Delete the pods that still block the drain and reboot.
    Force,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long evictions are retried (PodDisruptionBudgets answer 429 meanwhile).
    #[serde(default = "ten_minutes")]
    pub timeout: String,
    /// Grace period given to evicted pods; the pod's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// Evict pods with emptyDir volumes (their data is lost).
    #[serde(default = "yes")]
    pub delete_empty_dir_data: bool,
    #[serde(default)]
    pub on_timeout: OnDrainTimeout,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout: ten_minutes(),
            grace_period_seconds: None,
            delete_empty_dir_data: true,
            on_timeout: OnDrainTimeout::Abort,
        }
    }
}

fn ten_minutes() -> String {
    "10m".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// A node that is not back (Ready, new boot id, uncordoned) this long after its approval
    /// has failed: it keeps its slot and the policy turns Degraded.
    #[serde(default = "fifteen_minutes")]
    pub reboot_timeout: String,
    /// Failed nodes tolerated before the policy stops granting (Degraded).
    #[serde(default = "one")]
    pub max_failures: u32,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            reboot_timeout: fifteen_minutes(),
            max_failures: 1,
        }
    }
}

fn fifteen_minutes() -> String {
    "15m".into()
}

fn one() -> u32 {
    1
}

/// Annotation gates, compatible with FLUO's before/after-reboot hooks: the operator labels the
/// node `update.strata.dev/before-reboot=true` (or `after-reboot`) and waits until every listed
/// annotation on the Node is `"true"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    #[serde(default)]
    pub before_reboot: Vec<String>,
    #[serde(default)]
    pub after_reboot: Vec<String>,
}

/// How the nodes selected by this policy are rebooted.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "update.strata.dev",
    version = "v1alpha1",
    kind = "UpdatePolicy",
    plural = "updatepolicies",
    shortname = "upol",
    status = "UpdatePolicyStatus",
    printcolumn = r#"{"name":"Max","type":"string","jsonPath":".spec.maxUnavailable"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.rebootRequired"}"#,
    printcolumn = r#"{"name":"Rebooting","type":"integer","jsonPath":".status.inProgress"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Next-Window","type":"string","jsonPath":".status.nextWindow"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicySpec {
    /// Nodes whose labels match; every node when empty.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// How many of the policy's nodes may be unavailable at once, counting nodes already
    /// NotReady or cordoned (a count, or a percentage such as "25%").
    #[serde(default)]
    pub max_unavailable: IntOrPercent,
    /// Maintenance windows; reboots start only inside one. Empty means any time.
    #[serde(default)]
    pub windows: Vec<WindowSpec>,
    #[serde(default)]
    pub drain: DrainSpec,
    /// Wait after a node is back before the next one may start (e.g. 2m).
    #[serde(default = "zero")]
    pub soak: String,
    /// No new approvals while true (nodes already rebooting finish).
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

fn zero() -> String {
    "0s".into()
}

/// A condition in the style of metav1.Condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False".
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicyStatus {
    /// Ready, Progressing, Paused, Degraded, WindowOpen.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub nodes: u32,
    #[serde(default)]
    pub reboot_required: u32,
    #[serde(default)]
    pub in_progress: u32,
    #[serde(default)]
    pub failed: u32,
    /// When the next maintenance window opens (RFC 3339), when one is closed now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<String>,
}

/// Where a node is in its update, as its agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    #[default]
    Idle,
    RebootRequired,
    WaitingForLock,
    Draining,
    Rebooting,
    Verifying,
    Done,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::RebootRequired => "RebootRequired",
            Phase::WaitingForLock => "WaitingForLock",
            Phase::Draining => "Draining",
            Phase::Rebooting => "Rebooting",
            Phase::Verifying => "Verifying",
            Phase::Done => "Done",
            Phase::Failed => "Failed",
        }
    }
}

/// One node's update. Spec: the operator's approval; status: the agent's report.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "update.strata.dev",
    version = "v1alpha1",
    kind = "NodeUpdate",
    plural = "nodeupdates",
    shortname = "nu",
    status = "NodeUpdateStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Approved","type":"boolean","jsonPath":".spec.approved"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"OS","type":"string","jsonPath":".status.osId"}"#,
    printcolumn = r#"{"name":"Kernel","type":"string","priority":1,"jsonPath":".status.osVersion"}"#,
    printcolumn = r#"{"name":"Boot-ID","type":"string","priority":1,"jsonPath":".status.bootId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateSpec {
    /// The policy this node belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// Set by the operator once the node holds a slot of the policy's RebootLock and its
    /// before-reboot gates passed: the agent may drain and reboot.
    #[serde(default)]
    pub approved: bool,
    /// The boot id the node had when approved; a different one after the reboot proves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_boot_id: Option<String>,
    /// With `drain.onTimeout: Force`: the operator removed the pods that blocked the drain.
    #[serde(default)]
    pub force_drain: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainProgress {
    #[serde(default)]
    pub pods_remaining: u32,
    /// Pods whose eviction is refused for now (namespace/name: why).
    #[serde(default)]
    pub blocked_by: Vec<String>,
    /// When the drain started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The operating system, as the kubelet reports it (e.g. "Debian GNU/Linux 12 (bookworm)").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_id: String,
    /// The running kernel's version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// The node's current boot id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// How many reboots this agent has completed on the node.
    #[serde(default)]
    pub reboots: u32,
    /// True while the node is cordoned by the agent (and only then will it uncordon it).
    #[serde(default)]
    pub cordoned_by_agent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainProgress>,
    /// The last drain aborted at this time (RFC 3339); the node waits a drain timeout before
    /// it asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_abort: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

/// What a slot of the lock is used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum HolderPhase {
    /// Granted; waiting for the before-reboot gates.
    #[default]
    Granted,
    /// The agent may drain and reboot.
    Approved,
    /// Back with a new boot id; waiting for the after-reboot gates.
    Verifying,
    /// Not back within the reboot timeout; the slot stays taken.
    Failed,
    /// Taken through the FleetLock protocol by a host outside the cluster's agents.
    FleetLock,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// Node name (or FleetLock client id).
    pub node: String,
    /// RFC 3339.
    pub acquired_at: String,
    #[serde(default)]
    pub phase: HolderPhase,
}

/// The durable reboot semaphore of one policy (same name as the policy).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "update.strata.dev",
    version = "v1alpha1",
    kind = "RebootLock",
    plural = "rebootlocks",
    shortname = "rl",
    status = "RebootLockStatus",
    printcolumn = r#"{"name":"Max-Holders","type":"integer","jsonPath":".spec.maxHolders"}"#,
    printcolumn = r#"{"name":"Holders","type":"string","jsonPath":".status.holders[*].node"}"#,
    printcolumn = r#"{"name":"Last-Release","type":"date","jsonPath":".status.lastRelease"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RebootLockSpec {
    pub max_holders: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebootLockStatus {
    #[serde(default)]
    pub holders: Vec<Holder>,
    /// When a slot was last given back (RFC 3339): the soak time counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release: Option<String>,
    /// The last releases with their reasons, newest last (an audit trail, at most 20).
    #[serde(default)]
    pub history: Vec<String>,
}

/// The three CRDs as one YAML stream (what `crds.yaml` holds).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from(
        "# Generated from addons/update-operator/src/crd.rs by `strata-update-operator crds`.\n",
    );
    for crd in [UpdatePolicy::crd(), NodeUpdate::crd(), RebootLock::crd()] {
        // A CRD always serializes to JSON.
        let mut v = serde_json::to_value(&crd).unwrap_or_default();
        drop_empty_string_defaults(&mut v);
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&v)?);
    }
    Ok(out)
}

/// Kubernetes 1.20 reads `default: ""` in a CRD schema as null and rejects the CRD; an absent
/// field means the same to the types here (`#[serde(default)]`).
fn drop_empty_string_defaults(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("default").is_some_and(|d| d == "") {
                m.remove("default");
            }
            m.values_mut().for_each(drop_empty_string_defaults);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_empty_string_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_types() {
        let committed = include_str!("../crds.yaml");
        let generated = crds_yaml().expect("serialize");
        assert!(
            committed == generated,
            "addons/update-operator/crds.yaml is stale: run \
             `cargo run -p strata-update-operator -- crds > addons/update-operator/crds.yaml`"
        );
    }

    #[test]
    fn crds_are_cluster_scoped_with_status_subresources() {
        for crd in [UpdatePolicy::crd(), NodeUpdate::crd(), RebootLock::crd()] {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1alpha1");
            assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
            assert!(
                v.additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| c.len() >= 3)
            );
        }
    }

    #[test]
    fn int_or_percent() {
        let p: IntOrPercent = serde_json::from_str("\"25%\"").expect("percent");
        assert_eq!(p.resolve(8), 2);
        assert_eq!(p.resolve(3), 1, "never zero");
        let c: IntOrPercent = serde_json::from_str("2").expect("count");
        assert_eq!(c.resolve(8), 2);
        assert!(serde_json::from_str::<IntOrPercent>("\"x\"").is_err());
        assert!(serde_json::from_str::<IntOrPercent>("\"0%\"").is_err());
    }
}
