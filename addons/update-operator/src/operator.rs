//! The operator's loop: while it holds the leader Lease, it reads Nodes, NodeUpdates,
//! UpdatePolicies and RebootLocks from stores its watches keep current (a pass lists nothing),
//! calls [`decide`] per policy and writes the result: first the lock (with the resourceVersion
//! it read), then approvals, cordons, drains (through the Eviction API), gate labels, forced
//! drains, the policy's status, Events and metrics. The operator is the only writer of Nodes'
//! schedulability and the only evicter: node agents have no such rights. Any change to the watched objects, or 5 s, triggers the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tokio::sync::Notify;

use crate::crd::{
    Condition, NodeUpdate, NodeUpdateSpec, Phase, RebootLock, RebootLockStatus, Time, UpdatePolicy,
};
use crate::decide::{self, Decision, NodeView, Snapshot};
use crate::drain;
use crate::events::Events;
use crate::lease::{LeaderLease, LeaseError};
use crate::lock::{self, LockError};
use crate::metrics::{Metrics, labels};

/// The controller name on Events and the Lease's name.
pub const NAME: &str = "strata-update-operator";
const PASS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("{0}")]
    Drain(String),
    #[error("lost the leader lease to another operator; exiting so nothing is written twice")]
    LostLease,
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> OperatorError {
    let what = what.into();
    move |source| OperatorError::Api { what, source }
}

pub fn node_view(n: &Node) -> NodeView {
    let status = n.status.as_ref();
    NodeView {
        name: n.name_any(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        unschedulable: n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        boot_id: status
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
            .unwrap_or_default(),
        labels: n.labels().clone(),
        annotations: n.annotations().clone(),
    }
}

fn selects(p: &UpdatePolicy, n: &Node) -> bool {
    let l = n.labels();
    p.spec
        .node_selector
        .iter()
        .all(|(k, v)| l.get(k).is_some_and(|x| x == v))
}

#[derive(Clone)]
pub struct Operator {
    client: Client,
    metrics: Arc<Metrics>,
    events: Events,
    /// `policy/v1` or `policy/v1beta1`, asked of the server at the first drain.
    eviction_version: Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

impl Operator {
    pub fn new(client: Client, metrics: Arc<Metrics>, identity: &str) -> Self {
        Self {
            events: Events::new(client.clone(), NAME, identity),
            client,
            metrics,
            eviction_version: Arc::default(),
        }
    }

    async fn event(&self, reference: ObjectReference, reason: &str, note: String, warning: bool) {
        self.events.publish(reference, reason, &note, warning).await;
    }

    /// One pass over every policy from objects listed afresh (what a test wants: no watch
    /// latency). The running operator reads from its watch stores instead ([`run`]).
    pub async fn reconcile(&self) -> Result<(), OperatorError> {
        let seen = Seen::list(&self.client).await?;
        self.reconcile_seen(seen).await
    }

    /// One pass over every policy. Conflicts on the lock end the policy's pass early; the next
    /// pass decides again from fresh objects.
    async fn reconcile_seen(&self, seen: Seen) -> Result<(), OperatorError> {
        let c = &self.client;
        let updates_api: Api<NodeUpdate> = Api::all(c.clone());
        let locks: Api<RebootLock> = Api::all(c.clone());
        let Seen {
            mut policies,
            nodes,
            mut updates,
            locks: known_locks,
        } = seen;
        policies.sort_by_key(|p| p.name_any());
        let all_nodes: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();

        // Each node belongs to the first policy (by name) that selects it.
        let mut members: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
        for n in &nodes {
            if let Some(p) = policies.iter().find(|p| selects(p, n)) {
                members.entry(p.name_any()).or_default().push(n);
            }
        }
        for (policy, ns) in &members {
            for n in ns {
                self.ensure_node_update(&updates_api, n, policy, &mut updates)
                    .await?;
            }
        }

        for p in &policies {
            let name = p.name_any();
            let ns: &[&Node] = members.get(&name).map(Vec::as_slice).unwrap_or(&[]);
            let views: Vec<NodeView> = ns.iter().map(|n| node_view(n)).collect();
            let lock = (&locks, known_locks.get(&name));
            if let Err(e) = self
                .reconcile_policy(p, &views, ns, &all_nodes, &updates, lock)
                .await
            {
                self.metrics.reconcile_errors.inc();
                tracing::warn!(policy = %name, error = %e, "pass failed");
            }
        }
        Ok(())
    }

    async fn ensure_node_update(
        &self,
        api_: &Api<NodeUpdate>,
        n: &Node,
        policy: &str,
        updates: &mut BTreeMap<String, NodeUpdate>,
    ) -> Result<(), OperatorError> {
        let name = n.name_any();
        match updates.get(&name) {
            Some(u) if u.spec.policy == policy => Ok(()),
            Some(_) => {
                let patch = json!({"spec": {"policy": policy}});
                let u = api_
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api(format!("NodeUpdate {name}")))?;
                updates.insert(name, u);
                Ok(())
            }
            None => {
                let owner = OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid: n.uid().unwrap_or_default(),
                    ..Default::default()
                };
                let u = NodeUpdate {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    spec: NodeUpdateSpec {
                        policy: policy.into(),
                        ..Default::default()
                    },
                    status: None,
                };
                match api_.create(&PostParams::default(), &u).await {
                    Ok(u) => {
                        updates.insert(name, u);
                        Ok(())
                    }
                    Err(e) if lock::is_conflict(&e) => Ok(()),
                    Err(e) => Err(api(format!("creating NodeUpdate {name}"))(e)),
                }
            }
        }
    }

    async fn reconcile_policy(
        &self,
        p: &UpdatePolicy,
        views: &[NodeView],
        nodes: &[&Node],
        all_nodes: &BTreeSet<String>,
        updates: &BTreeMap<String, NodeUpdate>,
        (locks, known): (&Api<RebootLock>, Option<&RebootLock>),
    ) -> Result<(), OperatorError> {
        let name = p.name_any();
        let policies: Api<UpdatePolicy> = Api::all(self.client.clone());
        let old_status = p.status.clone().unwrap_or_default();
        let max = p.spec.max_unavailable.resolve(views.len()) as u32;
        // The lock as last seen when it is as it should be; written with its resourceVersion,
        // so a stale copy only costs a conflict and another pass.
        let (lock, from_store) = match known {
            Some(l) if l.spec.max_holders == max => (l.clone(), true),
            _ => (lock::ensure(locks, &name, max).await?, false),
        };
        let lock_status = lock.status.clone().unwrap_or_default();
        let snapshot_updates: BTreeMap<String, (NodeUpdateSpec, crate::crd::NodeUpdateStatus)> =
            views
                .iter()
                .filter_map(|v| updates.get(&v.name))
                .map(|u| {
                    (
                        u.name_any(),
                        (u.spec.clone(), u.status.clone().unwrap_or_default()),
                    )
                })
                .collect();
        let now = Timestamp::now();
        let decision = decide::decide(&Snapshot {
            policy: &p.spec,
            nodes: views,
            all_nodes,
            updates: &snapshot_updates,
            holders: &lock_status.holders,
            last_release: lock_status.last_release.map(|t| t.0),
            conditions: &old_status.conditions,
            now,
        });
        let decision = match decision {
            Ok(d) => d,
            Err(e) => {
                let cond = decide::merge_conditions(
                    &old_status.conditions,
                    vec![Condition {
                        type_: "Degraded".into(),
                        status: "True".into(),
                        reason: "InvalidPolicy".into(),
                        message: e.to_string(),
                        last_transition_time: None,
                    }],
                    now,
                );
                if old_status.conditions != cond {
                    let patch = json!({"status": {"conditions": cond}});
                    policies
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(api(format!("UpdatePolicy {name} status")))?;
                    self.event(p.object_ref(&()), "InvalidPolicy", e.to_string(), true)
                        .await;
                }
                return Ok(());
            }
        };

        // The lock first: approvals must never run ahead of it.
        if decision.lock_changed(&lock_status.holders, lock.spec.max_holders) {
            let mut status = RebootLockStatus {
                holders: decision.holders.clone(),
                ..lock_status.clone()
            };
            for (node, reason) in &decision.released {
                lock::record_release(&mut status, Time(now), node, reason);
            }
            if lock::write(locks, &lock, status).await?.is_none() {
                // Someone (a FleetLock client) wrote in between: decide again next pass.
                return Ok(());
            }
        } else if from_store && approves_anew(&decision, updates) {
            // Approvals act on the holders; a lock taken from the watch store and not
            // written in this pass is checked to be current before anyone is approved.
            let fresh = locks
                .get(&name)
                .await
                .map_err(api(format!("RebootLock {name}")))?;
            if fresh.metadata.resource_version != lock.metadata.resource_version {
                return Ok(());
            }
        }
        self.write_decision(p, &decision, nodes, updates).await?;
        self.record(&name, &decision, &snapshot_updates, views);
        if old_status != decision.status {
            let mut status = json!(decision.status);
            // A merge patch keeps fields it does not mention: say explicitly that none is next.
            if decision.status.next_window.is_none() {
                status["nextWindow"] = serde_json::Value::Null;
            }
            let patch = json!({ "status": status });
            policies
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api(format!("UpdatePolicy {name} status")))?;
        }
        for e in &decision.events {
            let reference = match &e.node {
                Some(n) => nodes
                    .iter()
                    .find(|x| x.name_any() == *n)
                    .map(|x| x.object_ref(&()))
                    .unwrap_or_else(|| ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Node".into()),
                        name: Some(n.clone()),
                        ..Default::default()
                    }),
                None => p.object_ref(&()),
            };
            let note = match &e.node {
                Some(n) => format!("{n}: {} (policy {name})", e.message),
                None => format!("policy {name}: {}", e.message),
            };
            self.event(reference, e.reason, note, e.warning).await;
        }
        Ok(())
    }

    async fn write_decision(
        &self,
        p: &UpdatePolicy,
        d: &Decision,
        nodes: &[&Node],
        updates: &BTreeMap<String, NodeUpdate>,
    ) -> Result<(), OperatorError> {
        let updates_api: Api<NodeUpdate> = Api::all(self.client.clone());
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let write = |node: String, spec: NodeUpdateSpec| {
            let updates_api = updates_api.clone();
            let patch = json!({"spec": spec_patch(&p.name_any(), &spec)});
            async move {
                updates_api
                    .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api(format!("NodeUpdate {node} approval")))
            }
        };
        for (node, decided) in &d.approvals {
            let current = updates.get(node).map(|u| &u.spec);
            let mut spec = decided.clone();
            let mut written = current.cloned();
            match d.cordons.get(node) {
                Some(true) => {
                    // Recorded before it is made.
                    if written.as_ref() != Some(&spec) {
                        write(node.clone(), spec.clone()).await?;
                        written = Some(spec.clone());
                    }
                    self.set_unschedulable(&nodes_api, node, true).await?;
                }
                Some(false) => self.set_unschedulable(&nodes_api, node, false).await?,
                None => {}
            }
            if d.drains.contains(node) {
                let progress = self.drain_pass(p, node).await?;
                let drain = spec.drain.get_or_insert_default();
                drain.pods_remaining = progress.remaining;
                drain.blocked_by = progress.blocked;
                spec.drained = progress.remaining == 0;
            }
            if written.as_ref() != Some(&spec) {
                write(node.clone(), spec.clone()).await?;
            }
            if spec.force_drain && !current.is_some_and(|c| c.force_drain) {
                self.force_drain(node).await?;
            }
        }
        for n in nodes {
            let name = n.name_any();
            let Some(want) = d.labels.get(&name) else {
                continue;
            };
            let have = n.labels();
            let diff: serde_json::Map<String, serde_json::Value> = want
                .iter()
                .filter(|(k, v)| have.get(**k).map(String::as_str) != **v)
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            if !diff.is_empty() {
                let patch = json!({"metadata": {"labels": diff}});
                nodes_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api(format!("Node {name} gate labels")))?;
            }
        }
        Ok(())
    }

    async fn set_unschedulable(
        &self,
        nodes: &Api<Node>,
        node: &str,
        on: bool,
    ) -> Result<(), OperatorError> {
        let patch = json!({"spec": {"unschedulable": on}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api(format!(
                "{} node {node}",
                if on { "cordoning" } else { "uncordoning" }
            )))?;
        Ok(())
    }

    /// Asks to evict every pod still on `node`, as the policy's drain settings say.
    async fn drain_pass(
        &self,
        p: &UpdatePolicy,
        node: &str,
    ) -> Result<drain::Progress, OperatorError> {
        let version = self
            .eviction_version
            .get_or_try_init(|| drain::eviction_version(&self.client))
            .await
            .map_err(|e| OperatorError::Drain(e.to_string()))?;
        let o = drain::DrainOptions {
            eviction_version: version.clone(),
            grace_period_seconds: p.spec.drain.grace_period_seconds,
            delete_empty_dir_data: p.spec.drain.delete_empty_dir_data,
        };
        drain::drain_pass(&self.client, node, &o)
            .await
            .map_err(|e| OperatorError::Drain(e.to_string()))
    }

    /// `drain.onTimeout: Force`: deletes the pods still on the node after the drain timeout.
    async fn force_drain(&self, node: &str) -> Result<(), OperatorError> {
        let pods = drain::pods_on(&self.client, node)
            .await
            .map_err(|e| OperatorError::Drain(e.to_string()))?;
        for pod in &pods {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api_: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            match api_.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api(format!("deleting pod {ns}/{name}"))(e)),
            }
            self.event(
                pod.object_ref(&()),
                "ForceDrain",
                format!("{ns}/{name} deleted: the drain of {node} timed out (onTimeout: Force)"),
                true,
            )
            .await;
        }
        Ok(())
    }

    fn record(
        &self,
        policy: &str,
        d: &Decision,
        updates: &BTreeMap<String, (NodeUpdateSpec, crate::crd::NodeUpdateStatus)>,
        views: &[NodeView],
    ) {
        let m = &self.metrics;
        let l = labels(&[("policy", policy)]);
        m.holders.get_or_create(&l).set(d.holders.len() as i64);
        m.max_holders
            .get_or_create(&l)
            .set(i64::from(d.max_holders));
        let degraded = d
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True");
        m.degraded.get_or_create(&l).set(i64::from(degraded));
        let grants = d
            .events
            .iter()
            .filter(|e| e.reason == "LockGranted")
            .count();
        m.grants.get_or_create(&l).inc_by(grants as u64);
        for (_, reason) in &d.released {
            m.releases
                .get_or_create(&labels(&[("policy", policy), ("reason", reason)]))
                .inc();
        }
        for phase in [
            Phase::Idle,
            Phase::RebootRequired,
            Phase::WaitingForLock,
            Phase::Draining,
            Phase::Rebooting,
            Phase::Verifying,
            Phase::Done,
            Phase::Failed,
        ] {
            let count = views
                .iter()
                .filter(|v| updates.get(&v.name).map(|u| u.1.phase).unwrap_or_default() == phase)
                .count();
            m.nodes
                .get_or_create(&labels(&[("policy", policy), ("phase", phase.as_str())]))
                .set(count as i64);
        }
    }
}

/// A NodeUpdate's spec as a merge patch: fields that are unset are removed (null).
fn spec_patch(policy: &str, spec: &NodeUpdateSpec) -> serde_json::Value {
    json!({
        "policy": policy,
        "approved": spec.approved,
        "approvedBootId": spec.approved_boot_id,
        "forceDrain": spec.force_drain,
        "cordoned": spec.cordoned,
        "drain": spec.drain,
        "drained": spec.drained,
        "lastAbort": spec.last_abort,
    })
}

/// Whether `d` approves a node (or changes its approval) that its NodeUpdate does not show.
fn approves_anew(d: &Decision, updates: &BTreeMap<String, NodeUpdate>) -> bool {
    d.approvals
        .iter()
        .any(|(node, spec)| updates.get(node).map(|u| &u.spec) != Some(spec))
}

/// What one pass reads: every policy, node, NodeUpdate and lock.
#[derive(Debug, Default)]
struct Seen {
    policies: Vec<UpdatePolicy>,
    nodes: Vec<Node>,
    updates: BTreeMap<String, NodeUpdate>,
    locks: BTreeMap<String, RebootLock>,
}

impl Seen {
    /// Everything listed from the API server.
    async fn list(c: &Client) -> Result<Self, OperatorError> {
        let lp = ListParams::default();
        let policies = Api::<UpdatePolicy>::all(c.clone())
            .list(&lp)
            .await
            .map_err(api("listing UpdatePolicies"))?
            .items;
        let nodes = Api::<Node>::all(c.clone())
            .list(&lp)
            .await
            .map_err(api("listing Nodes"))?
            .items;
        let updates = Api::<NodeUpdate>::all(c.clone())
            .list(&lp)
            .await
            .map_err(api("listing NodeUpdates"))?
            .items;
        Ok(Self {
            policies,
            nodes,
            updates: by_name(updates),
            // Each policy's lock is read (or created) when its pass needs it.
            locks: BTreeMap::new(),
        })
    }
}

fn by_name<K: kube::Resource>(items: impl IntoIterator<Item = K>) -> BTreeMap<String, K> {
    items.into_iter().map(|k| (k.name_any(), k)).collect()
}

/// The four kinds a pass reads, kept current by watches: a pass lists nothing.
#[derive(Clone)]
struct Stores {
    policies: Store<UpdatePolicy>,
    nodes: Store<Node>,
    updates: Store<NodeUpdate>,
    locks: Store<RebootLock>,
}

impl Stores {
    /// A reflector per kind; each change wakes `notify`. The tasks end when aborted.
    fn start(client: &Client, notify: &Arc<Notify>) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        fn reflect<K>(api: Api<K>, notify: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            let (store, writer) = reflector::store();
            let task = tokio::spawn(async move {
                let mut s = reflector(
                    writer,
                    watcher(api, watcher::Config::default()).default_backoff(),
                )
                .boxed();
                while let Some(ev) = s.next().await {
                    match ev {
                        Ok(_) => notify.notify_one(),
                        Err(e) => {
                            tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying")
                        }
                    }
                }
            });
            (store, task)
        }
        let (policies, a) = reflect(Api::all(client.clone()), notify.clone());
        let (nodes, b) = reflect(Api::all(client.clone()), notify.clone());
        let (updates, c) = reflect(Api::all(client.clone()), notify.clone());
        let (locks, d) = reflect(Api::all(client.clone()), notify.clone());
        (
            Self {
                policies,
                nodes,
                updates,
                locks,
            },
            vec![a, b, c, d],
        )
    }

    /// Once every kind was listed once.
    async fn ready(&self) {
        let _ = self.policies.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.updates.wait_until_ready().await;
        let _ = self.locks.wait_until_ready().await;
    }

    fn seen(&self) -> Seen {
        fn owned<K>(s: &Store<K>) -> Vec<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.state().iter().map(|k| K::clone(k)).collect()
        }
        Seen {
            policies: owned(&self.policies),
            nodes: owned(&self.nodes),
            updates: by_name(owned(&self.updates)),
            locks: by_name(owned(&self.locks)),
        }
    }
}

/// Runs the operator until the lease is lost (an error) or `shutdown` resolves (the lease is
/// given back).
pub async fn run(
    client: Client,
    namespace: &str,
    identity: &str,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), OperatorError> {
    let lease = LeaderLease::new(
        Api::<Lease>::namespaced(client.clone(), namespace),
        NAME,
        identity,
        Duration::from_secs(15),
    );
    tokio::pin!(shutdown);
    loop {
        if lease.try_acquire_or_renew().await? {
            break;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    tracing::info!(%identity, "leading");
    metrics.leader.set(1);
    let op = Operator::new(client.clone(), metrics.clone(), identity);
    let notify = Arc::new(Notify::new());
    let (stores, watches) = Stores::start(&client, &notify);
    let renew = async {
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(lease.duration() / 3).await;
            match lease.try_acquire_or_renew().await {
                Ok(true) => renewed = std::time::Instant::now(),
                Ok(false) => return OperatorError::LostLease,
                Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
            }
            // Unable to renew for a whole lease: another operator may lead by now.
            if renewed.elapsed() >= lease.duration() {
                return OperatorError::LostLease;
            }
        }
    };
    let passes = async {
        stores.ready().await;
        loop {
            if let Err(e) = op.reconcile_seen(stores.seen()).await {
                metrics.reconcile_errors.inc();
                tracing::warn!(error = %e, "pass failed");
            }
            let _ = tokio::time::timeout(PASS_INTERVAL, notify.notified()).await;
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let result = tokio::select! {
        e = renew => Err(e),
        () = passes => Ok(()),
        () = &mut shutdown => {
            lease.release().await?;
            Ok(())
        }
    };
    for w in watches {
        w.abort();
    }
    metrics.leader.set(0);
    result
}
