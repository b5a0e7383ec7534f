//! What `apply` does, as data: the state of what was applied (`state.json` in the state
//! directory), the actions that bring the hosts and the cluster from one state to another,
//! and the events `apply --output json` prints while it performs them.
//!
//! `strata plan` computes the actions from a fresh rendering and the recorded state without
//! changing anything; `apply` performs the same actions and reports each one as it goes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::Component;
use crate::render::Rendered;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a Strata state file ({source}); move it away to start afresh")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What was applied: per host every file (rendered files and assets) with its digest, mode
/// and readers; every cluster object by API path; pinned SSH host keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    #[serde(default)]
    pub hosts: BTreeMap<String, BTreeMap<String, AppliedFile>>,
    /// Cluster objects by API path.
    #[serde(default, deserialize_with = "objects_or_legacy")]
    pub objects: BTreeMap<String, AppliedObject>,
    /// Pinned SSH host key fingerprints (`SHA256:...`) by host name.
    #[serde(default, rename = "hostKeys")]
    pub host_keys: BTreeMap<String, String>,
    /// Per host, components whose files changed and whose units have not been restarted
    /// since (an apply stopped between its upload and the phase that restarts them): the
    /// next apply restarts them.
    #[serde(
        default,
        rename = "pendingRestarts",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub pending_restarts: BTreeMap<String, BTreeSet<Component>>,
    /// The encryption key every Secret was last rewritten with (see
    /// [`ActionKind::Reencrypt`]).
    #[serde(
        default,
        rename = "secretsKey",
        skip_serializing_if = "String::is_empty"
    )]
    pub secrets_key: String,
    /// The id (hex) of the etcd cluster apply formed or found running: once set, apply never
    /// forms a new one in its place (that would start the cluster with no objects).
    #[serde(
        default,
        rename = "etcdCluster",
        skip_serializing_if = "String::is_empty"
    )]
    pub etcd_cluster: String,
    /// The backup a `strata restore` began to restore (etcd stopped, its data set aside):
    /// until it is done, a plain apply refuses and says to run that restore again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restoring: String,
    /// After a restore, until the addons phase has finished it: the hosts of the restored
    /// backup's cluster (the Nodes of those the Cluster file no longer lists are deleted),
    /// and Strata's workloads have their pods started again (they watched the store's later
    /// revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Vec<String>>,
    /// Each host as it was in the Cluster file when apply last reached it: a host taken out
    /// of the file is still reached through it, to be drained and reset.
    #[serde(
        default,
        rename = "appliedHosts",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub applied_hosts: BTreeMap<String, crate::model::Host>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFile {
    pub sha256: String,
    pub mode: u32,
    /// The components whose units restart when it changes or goes away.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub users: BTreeSet<Component>,
    /// The host had a file at this path before Strata first wrote it (a distribution's
    /// default configuration, say): Strata kept it as `<path>.strata-orig` when the bytes
    /// differed, and puts it back instead of deleting the path (reset, a file no longer
    /// rendered).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preexisting: bool,
    /// The file's stamp on the host (inode, size, ctime) when it was last known to hold
    /// `sha256`: while it is unchanged, the next apply need not read the file to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
}

/// Where Strata keeps a host's own file that it replaced.
pub fn original_of(path: &str) -> String {
    format!("{path}.strata-orig")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedObject {
    pub sha256: String,
    /// The file `strata render` writes it to.
    pub file: String,
    /// The host it exists for, if any (see `ClusterObject::host`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// Objects as recorded since API paths are kept; a state written before (file name ->
/// digest) is read as no objects, so the next apply sends every object again.
fn objects_or_legacy<'de, D>(d: D) -> Result<BTreeMap<String, AppliedObject>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Object(AppliedObject),
        Legacy(#[allow(dead_code)] String),
    }
    let raw: BTreeMap<String, Entry> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| match v {
            Entry::Object(o) => Some((k, o)),
            Entry::Legacy(_) => None,
        })
        .collect())
}

pub use strata_pki::sha256_hex as sha256;

impl AppliedState {
    /// The state of a fully applied rendering (assets are added by the installer).
    pub fn of(r: &Rendered) -> Self {
        let hosts = r
            .hosts
            .iter()
            .map(|t| {
                let files = t
                    .files
                    .iter()
                    .map(|(p, f)| {
                        (
                            p.clone(),
                            AppliedFile {
                                sha256: sha256(&f.content),
                                mode: f.mode,
                                users: f.users.clone(),
                                preexisting: false,
                                stamp: None,
                            },
                        )
                    })
                    .collect();
                (t.host.clone(), files)
            })
            .collect();
        let objects = r
            .objects
            .iter()
            .map(|o| {
                (
                    o.api_path.clone(),
                    AppliedObject {
                        sha256: sha256(o.yaml.as_bytes()),
                        file: o.file.clone(),
                        host: o.host.clone().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Self {
            hosts,
            objects,
            secrets_key: r.secrets_key.clone(),
            ..Self::default()
        }
    }

    /// Writes the state atomically (temporary file, fsync, rename), mode 0600, creating its
    /// directory (0700) when missing.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        strata_pki::write_private(path, &text).map_err(err)
    }

    /// Loads `path`; a missing file is an empty state (nothing applied yet).
    pub fn load(path: &Path) -> Result<Self, StateError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StateError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// What one action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// A file a host does not have yet.
    Create,
    /// A file whose content or mode differs.
    Update,
    /// A file Strata wrote before and no longer renders (its unit is stopped first).
    Remove,
    /// A unit restarted because a file it reads changed.
    Restart,
    /// A cluster object sent with server-side apply.
    Apply,
    /// A cluster object Strata created before and no longer renders.
    Delete,
    /// Every Secret rewritten, so that the current encryption key encrypts it (`path`: the
    /// key's name); after encryption is turned on or its key rotated.
    Reencrypt,
    /// A host taken out of the Cluster file: its node cordoned, drained through the Eviction
    /// API and its Node deleted (`path`: `Node <name>`); its files are then removed.
    Drain,
    /// etcd's store replaced with a backup's snapshot (`strata restore`; `path`: the backup
    /// file).
    Restore,
}

impl ActionKind {
    pub fn sign(self) -> &'static str {
        match self {
            ActionKind::Create => "+",
            ActionKind::Update => "~",
            ActionKind::Remove => "-",
            ActionKind::Restart => "restart",
            ActionKind::Apply => "apply",
            ActionKind::Delete => "delete",
            ActionKind::Reencrypt => "re-encrypt secrets with",
            ActionKind::Restore => "restore etcd from",
            ActionKind::Drain => "drain and delete",
        }
    }
}

/// One change apply makes: on a host (a file path or a unit name) or in the cluster
/// (`host` = [`CLUSTER`], `path` = the object's API path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub host: String,
    pub path: String,
}

/// The `host` of actions on cluster objects.
pub const CLUSTER: &str = "cluster";

/// Where [`AppliedState`] is kept, in the state directory.
pub const STATE_FILE: &str = "state.json";

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.sign(), self.path)
    }
}

/// The phases of `strata apply`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    /// Local work before any host is touched: PKI, rendering, assets.
    Prepare,
    Connect,
    Facts,
    Preflight,
    Upload,
    Etcd,
    ControlPlane,
    /// Every node's container runtime and node units but the kubelet, and the images.
    Runtime,
    Addons,
    Nodes,
    PodNetwork,
    WaitReady,
    /// Hosts taken out of the Cluster file: drained, their Node deleted, reset, forgotten.
    RemoveHosts,
    Kubeconfig,
}

impl PhaseName {
    pub const ALL: [PhaseName; 14] = [
        PhaseName::Prepare,
        PhaseName::Connect,
        PhaseName::Facts,
        PhaseName::Preflight,
        PhaseName::Upload,
        PhaseName::Etcd,
        PhaseName::ControlPlane,
        PhaseName::Runtime,
        PhaseName::Addons,
        PhaseName::Nodes,
        PhaseName::PodNetwork,
        PhaseName::WaitReady,
        PhaseName::RemoveHosts,
        PhaseName::Kubeconfig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Prepare => "prepare",
            PhaseName::Connect => "connect",
            PhaseName::Facts => "facts",
            PhaseName::Preflight => "preflight",
            PhaseName::Upload => "upload",
            PhaseName::Etcd => "etcd",
            PhaseName::ControlPlane => "control-plane",
            PhaseName::Runtime => "runtime",
            PhaseName::Nodes => "nodes",
            PhaseName::Addons => "addons",
            PhaseName::PodNetwork => "pod-network",
            PhaseName::WaitReady => "wait-ready",
            PhaseName::RemoveHosts => "remove-hosts",
            PhaseName::Kubeconfig => "kubeconfig",
        }
    }
}

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PhaseName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PhaseName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = PhaseName::ALL.iter().map(|p| p.as_str()).collect();
                format!("no phase `{s}`; the phases are: {}", all.join(", "))
            })
    }
}

/// One line of `strata apply --output json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    PhaseStarted {
        phase: PhaseName,
    },
    PhaseFinished {
        phase: PhaseName,
        seconds: f64,
    },
    /// Progress on one host (or `api`, `local`).
    Step {
        phase: PhaseName,
        host: String,
        step: String,
    },
    /// A change made (the actions `strata plan` lists).
    Action {
        phase: PhaseName,
        action: Action,
    },
    Interrupted {
        phase: Option<PhaseName>,
    },
}

/// The files of one host: what it should have, and what was applied. A file Strata did not
/// apply before is created (even when the host happens to hold the same bytes: from now on
/// Strata owns it); one it applied with other content or mode is updated.
pub fn file_actions(
    host: &str,
    want: &BTreeMap<String, AppliedFile>,
    have: &BTreeMap<String, AppliedFile>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (path, w) in want {
        let kind = match have.get(path) {
            None => ActionKind::Create,
            Some(h) if h.sha256 != w.sha256 || h.mode != w.mode => ActionKind::Update,
            Some(_) => continue,
        };
        out.push(Action {
            kind,
            host: host.into(),
            path: path.clone(),
        });
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        out.push(Action {
            kind: ActionKind::Remove,
            host: host.into(),
            path: path.clone(),
        });
    }
    out
}

/// The components whose units restart (or whose pods on the host are replaced) after
/// `changes` to one host's files: the readers of every created or updated file (as rendered
/// now) and of every removed one (as applied). A created file is no change for the pods
/// that read it: their host directory is mounted as one that must exist, which the file's
/// creation makes, so they start after it.
pub fn changed_components(
    changes: &[Action],
    want: &BTreeMap<String, AppliedFile>,
    have: &BTreeMap<String, AppliedFile>,
) -> BTreeSet<Component> {
    changes
        .iter()
        .filter_map(|a| match a.kind {
            ActionKind::Create | ActionKind::Update => want.get(&a.path).map(|f| (a.kind, f)),
            ActionKind::Remove => have.get(&a.path).map(|f| (a.kind, f)),
            _ => None,
        })
        .flat_map(|(kind, f)| {
            f.users
                .iter()
                .copied()
                .filter(move |c| kind != ActionKind::Create || c.spec().daemonset.is_none())
        })
        .collect()
}

/// Everything `apply` would change to go from `have` to `want`, in the order apply does it:
/// per host its files, then the units that restart (`running` gives the components that run
/// on each host now), then the cluster objects. Hosts `have` knows and `want` does not are
/// not touched (see [`departed_hosts`]).
pub fn plan(
    want: &AppliedState,
    have: &AppliedState,
    running: impl Fn(&str) -> Vec<&'static crate::catalog::Spec>,
) -> Vec<Action> {
    let empty = BTreeMap::new();
    let mut files = Vec::new();
    let mut restarts = Vec::new();
    let no_pending = BTreeSet::new();
    for (host, w) in &want.hosts {
        let h = have.hosts.get(host).unwrap_or(&empty);
        let changes = file_actions(host, w, h);
        let mut changed = changed_components(&changes, w, h);
        changed.extend(have.pending_restarts.get(host).unwrap_or(&no_pending));
        let running = running(host);
        for unit in crate::catalog::restarts(&changed, running.iter().copied()) {
            restarts.push(Action {
                kind: ActionKind::Restart,
                host: host.clone(),
                path: unit.into(),
            });
        }
        // Pods that read changed files on the host: replaced (see `Spec::daemonset`).
        let readers = running.iter().filter(|s| changed.contains(&s.component));
        for ds in readers.filter_map(|s| s.daemonset) {
            restarts.push(Action {
                kind: ActionKind::Restart,
                host: host.clone(),
                path: crate::catalog::pod_restart_path(ds),
            });
        }
        files.extend(changes);
    }
    let mut objects = Vec::new();
    for (path, o) in &want.objects {
        if have.objects.get(path).is_none_or(|h| h.sha256 != o.sha256) {
            objects.push(Action {
                kind: ActionKind::Apply,
                host: CLUSTER.into(),
                path: path.clone(),
            });
        }
    }
    for path in have
        .objects
        .keys()
        .filter(|p| !want.objects.contains_key(*p))
    {
        if !is_kept_when_unrendered(path) {
            objects.push(Action {
                kind: ActionKind::Delete,
                host: CLUSTER.into(),
                path: path.clone(),
            });
        }
    }
    // Hosts taken out of the file: drained and deleted from the cluster, then their files
    // removed (as `strata reset` removes them).
    for host in departed_hosts(want, have) {
        files.push(Action {
            kind: ActionKind::Drain,
            host: host.into(),
            path: format!("Node {host}"),
        });
        for path in have.hosts.get(host).into_iter().flat_map(BTreeMap::keys) {
            files.push(Action {
                kind: ActionKind::Remove,
                host: host.into(),
                path: path.clone(),
            });
        }
    }
    if want.secrets_key != have.secrets_key && !want.secrets_key.is_empty() {
        objects.push(Action {
            kind: ActionKind::Reencrypt,
            host: CLUSTER.into(),
            path: want.secrets_key.clone(),
        });
    }
    files.into_iter().chain(restarts).chain(objects).collect()
}

/// CustomResourceDefinitions stay when their addon is turned off: deleting one would delete
/// every resource of its kind that users made.
pub fn is_kept_when_unrendered(api_path: &str) -> bool {
    api_path.starts_with("/apis/apiextensions.k8s.io/")
}

/// Whether the object at `api_path` that `have` recorded exists for a host that is leaving
/// (see [`departed_hosts`]): deleted by the remove-hosts phase after that host's drain (its
/// pods keep their overlay routes and agents their identities while they are evicted).
pub fn leaves_with_its_host(want: &AppliedState, have: &AppliedState, api_path: &str) -> bool {
    have.objects.get(api_path).is_some_and(|o| {
        !o.host.is_empty() && have.hosts.contains_key(&o.host) && !want.hosts.contains_key(&o.host)
    })
}

/// Hosts with applied files that the Cluster file no longer lists.
pub fn departed_hosts<'a>(want: &AppliedState, have: &'a AppliedState) -> Vec<&'a str> {
    have.hosts
        .keys()
        .filter(|h| !want.hosts.contains_key(*h))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str, users: &[Component]) -> AppliedFile {
        AppliedFile {
            sha256: sha.into(),
            mode: 0o644,
            users: users.iter().copied().collect(),
            preexisting: false,
            stamp: None,
        }
    }

    #[test]
    fn events_round_trip_as_the_documented_json() {
        let e = Event::Action {
            phase: PhaseName::Upload,
            action: Action {
                kind: ActionKind::Create,
                host: "w1".into(),
                path: "/etc/x".into(),
            },
        };
        let text = serde_json::to_string(&e).expect("json");
        assert_eq!(
            text,
            r#"{"event":"action","phase":"upload","action":{"kind":"create","host":"w1","path":"/etc/x"}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&text).expect("back"), e);
        let started: Event =
            serde_json::from_str(r#"{"event":"phase-started","phase":"control-plane"}"#)
                .expect("parse");
        assert_eq!(
            started,
            Event::PhaseStarted {
                phase: PhaseName::ControlPlane
            }
        );
    }

    #[test]
    fn restarts_left_pending_by_a_stopped_run_are_planned() {
        use Component::*;
        let files: BTreeMap<String, AppliedFile> =
            [("/a".to_string(), file("1", &[Kubelet]))].into();
        let mut have = AppliedState::default();
        have.hosts.insert("w1".into(), files.clone());
        let want = have.clone();
        let running = |_: &str| vec![Kubelet.spec(), KubeProxy.spec()];
        assert!(plan(&want, &have, running).is_empty());
        have.pending_restarts.insert("w1".into(), [Kubelet].into());
        let actions = plan(&want, &have, running);
        assert_eq!(
            actions,
            [Action {
                kind: ActionKind::Restart,
                host: "w1".into(),
                path: "kubelet.service".into()
            }]
        );
    }

    #[test]
    fn an_agent_identity_changed_replaces_the_nodes_agent_pod_not_host_units() {
        use Component::*;
        let mut have = AppliedState::default();
        have.hosts.insert(
            "w1".into(),
            [
                ("/overlay".to_string(), file("1", &[Overlay])),
                ("/agent".to_string(), file("1", &[UpdateOperator])),
                ("/unit".to_string(), file("1", &[UpdateAgentHost])),
            ]
            .into(),
        );
        let mut want = have.clone();
        for f in ["/overlay", "/agent"] {
            want.hosts
                .get_mut("w1")
                .and_then(|h| h.get_mut(f))
                .expect("file")
                .sha256 = "2".into();
        }
        let running = |_: &str| {
            vec![
                UpdateAgentHost.spec(),
                Overlay.spec(),
                UpdateOperator.spec(),
            ]
        };
        // Created (a new node, the addon turned on): its pods start after them.
        let restarts_from_nothing = plan(&want, &AppliedState::default(), running)
            .into_iter()
            .filter(|a| a.kind == ActionKind::Restart && a.path.starts_with("pod of"))
            .count();
        assert_eq!(restarts_from_nothing, 0);
        let restarts: Vec<String> = plan(&want, &have, running)
            .into_iter()
            .filter(|a| a.kind == ActionKind::Restart)
            .map(|a| a.path)
            .collect();
        assert_eq!(
            restarts,
            [
                "pod of daemonset strata-system/strata-overlay",
                "pod of daemonset strata-system/strata-update-agent"
            ]
        );
    }

    #[test]
    fn a_host_taken_out_of_the_file_is_drained_then_its_files_removed() {
        use Component::*;
        let files: BTreeMap<String, AppliedFile> = [
            ("/etc/a".to_string(), file("1", &[Kubelet])),
            ("/etc/b".to_string(), file("2", &[KubeProxy])),
        ]
        .into();
        let mut have = AppliedState::default();
        have.hosts.insert("w1".into(), files.clone());
        have.hosts.insert("w2".into(), files.clone());
        let mut want = have.clone();
        want.hosts.remove("w2");
        let running = |_: &str| vec![Kubelet.spec(), KubeProxy.spec()];
        let shown: Vec<String> = plan(&want, &have, running)
            .iter()
            .map(|a| format!("{} {a}", a.host))
            .collect();
        assert_eq!(
            shown,
            ["w2 drain and delete Node w2", "w2 - /etc/a", "w2 - /etc/b"]
        );
        assert_eq!(departed_hosts(&want, &have), ["w2"]);
    }

    #[test]
    fn saving_creates_the_state_directory_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("demo/state.json");
        AppliedState::default().save(&path).expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("demo")), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_legacy_state_reads_with_no_objects() {
        let s: AppliedState =
            serde_json::from_str(r#"{"objects":{"a.yaml":"00ff"},"hostKeys":{"w1":"SHA256:x"}}"#)
                .expect("legacy");
        assert!(s.objects.is_empty());
        assert_eq!(s.host_keys["w1"], "SHA256:x");
    }

    #[test]
    fn removed_files_restart_their_former_readers_and_crds_stay() {
        use Component::*;
        let mut have = AppliedState::default();
        have.hosts.insert(
            "cp1".into(),
            [
                ("/a".to_string(), file("1", &[KubeApiserver])),
                ("/b".to_string(), file("2", &[Etcd])),
            ]
            .into(),
        );
        let crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example";
        let role = "/apis/rbac.authorization.k8s.io/v1/clusterroles/x";
        for p in [crd, role] {
            have.objects.insert(
                p.into(),
                AppliedObject {
                    sha256: "0".into(),
                    file: "x.yaml".into(),
                    host: String::new(),
                },
            );
        }
        let mut want = AppliedState::default();
        want.hosts.insert(
            "cp1".into(),
            [("/a".to_string(), file("1", &[KubeApiserver]))].into(),
        );
        let running = |_: &str| vec![Etcd.spec(), KubeApiserver.spec()];
        let actions = plan(&want, &have, running);
        let shown: Vec<String> = actions
            .iter()
            .map(|a| format!("{} {} {}", a.kind.sign(), a.host, a.path))
            .collect();
        assert_eq!(
            shown,
            [
                "- cp1 /b".to_string(),
                "restart cp1 etcd.service".into(),
                format!("delete cluster {role}"),
            ]
        );
    }

    #[test]
    fn a_leaving_hosts_own_objects_wait_for_its_drain() {
        let object = |host: &str| AppliedObject {
            sha256: "0".into(),
            file: "x.yaml".into(),
            host: host.into(),
        };
        let mut have = AppliedState::default();
        for h in ["cp1", "w1", "w2"] {
            have.hosts.insert(h.into(), BTreeMap::new());
        }
        have.objects.insert("/w2".into(), object("w2"));
        have.objects.insert("/w1".into(), object("w1"));
        have.objects.insert("/shared".into(), object(""));
        let mut want = AppliedState::default();
        for h in ["cp1", "w1"] {
            want.hosts.insert(h.into(), BTreeMap::new());
        }
        assert!(leaves_with_its_host(&want, &have, "/w2"));
        assert!(!leaves_with_its_host(&want, &have, "/w1"));
        assert!(!leaves_with_its_host(&want, &have, "/shared"));
        assert!(!leaves_with_its_host(&want, &have, "/unknown"));
        // A host already forgotten (its files gone from the state): nothing waits for it.
        have.hosts.remove("w2");
        assert!(!leaves_with_its_host(&want, &have, "/w2"));
    }
}
