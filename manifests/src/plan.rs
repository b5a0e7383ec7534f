//! What `apply` would change on each host, compared with what was last applied.
//!
//! The state directory's `state.json` records, per host, the sha256 of every file applied
//! (written by `apply`); `plan` compares a fresh rendering with it, without contacting hosts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

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

/// What was applied, by host and path: sha256 of the content and the mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    #[serde(default)]
    pub hosts: BTreeMap<String, BTreeMap<String, AppliedFile>>,
    /// Cluster objects by file name, sha256 of their YAML.
    #[serde(default)]
    pub objects: BTreeMap<String, String>,
    /// Pinned SSH host key fingerprints (`SHA256:...`) by host name.
    #[serde(default, rename = "hostKeys")]
    pub host_keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFile {
    pub sha256: String,
    pub mode: u32,
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl AppliedState {
    /// The state of a fully applied rendering.
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
            .map(|o| (o.file.clone(), sha256(o.yaml.as_bytes())))
            .collect();
        Self {
            hosts,
            objects,
            host_keys: BTreeMap::new(),
        }
    }

    /// Writes the state atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
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
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Create,
    Update,
    Remove,
}

impl Change {
    pub fn sign(&self) -> char {
        match self {
            Change::Create => '+',
            Change::Update => '~',
            Change::Remove => '-',
        }
    }
}

/// Changes for one host (or for the cluster objects, host = "cluster").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub host: String,
    pub changes: Vec<(String, Change)>,
    pub unchanged: usize,
}

fn diff(
    name: &str,
    want: &BTreeMap<String, String>,
    have: Option<&BTreeMap<String, String>>,
) -> Plan {
    let empty = BTreeMap::new();
    let have = have.unwrap_or(&empty);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (p, d) in want {
        match have.get(p) {
            None => changes.push((p.clone(), Change::Create)),
            Some(h) if h != d => changes.push((p.clone(), Change::Update)),
            Some(_) => unchanged += 1,
        }
    }
    for p in have.keys().filter(|p| !want.contains_key(*p)) {
        changes.push((p.clone(), Change::Remove));
    }
    changes.sort();
    Plan {
        host: name.into(),
        changes,
        unchanged,
    }
}

/// Per host (and for the cluster objects, last), what applying `r` would change.
pub fn plan(r: &Rendered, applied: &AppliedState) -> Vec<Plan> {
    let want = AppliedState::of(r);
    let flat = |m: &BTreeMap<String, AppliedFile>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(p, f)| (p.clone(), format!("{}:{:o}", f.sha256, f.mode)))
            .collect()
    };
    let mut out: Vec<Plan> = want
        .hosts
        .iter()
        .map(|(h, files)| diff(h, &flat(files), applied.hosts.get(h).map(flat).as_ref()))
        .collect();
    for (h, files) in applied
        .hosts
        .iter()
        .filter(|(h, _)| !want.hosts.contains_key(*h))
    {
        let mut p = diff(h, &BTreeMap::new(), Some(&flat(files)));
        p.host = format!("{h} (no longer in the Cluster file)");
        out.push(p);
    }
    out.push(diff(
        "cluster objects",
        &want.objects,
        Some(&applied.objects),
    ));
    out
}
