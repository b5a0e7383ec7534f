//! The cluster's PKI, kept in the state directory (`<state>/pki`, kubeadm file names):
//! created when missing, reused when valid, re-issued when its inputs changed, checked for
//! expiry and renewed on demand. A CA is never replaced silently.
//!
//! The layout and identities follow pki/README.md and src/catalog.rs. All writes are atomic; private keys and
//! files that embed them are 0600 in 0700 directories.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod encryption;
pub mod files;
mod inspect;
mod issue;
mod kubeconfig;
mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rcgen::{KeyPair, PublicKeyData};
use time::OffsetDateTime;

pub use catalog::{
    Address, CaId, CertSpec, ExternalCa, Inputs, KeyAlgorithm, Node, Server, leaf_certificates,
};
pub use files::{sha256_hex, write_atomic, write_private};
pub use inspect::CertInfo;
pub use kubeconfig::{server_of as kubeconfig_server, with_server as kubeconfig_with_server};

/// Errors of the PKI; each message says which file is involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CA {ca}: {present} exists but {missing} is missing; a CA is never replaced silently. \
         Restore {missing} from a backup, or delete {present} as well to create a new CA \
         (every certificate it signed becomes invalid)"
    )]
    CaIncomplete {
        ca: &'static str,
        present: PathBuf,
        missing: PathBuf,
    },
    #[error("CA {ca}: {}: {reason}; restore it from a backup", path.display())]
    CaUnreadable {
        ca: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "CA {ca}: the private key {} does not belong to the certificate {}; restore the \
         matching pair from a backup (a CA is never replaced silently)",
        key.display(), cert.display()
    )]
    CaKeyMismatch {
        ca: &'static str,
        cert: PathBuf,
        key: PathBuf,
    },
    #[error(
        "CA {ca} ({}) expired on {not_after}; Strata does not replace a CA by itself. \
         Create a new one deliberately by moving the old files away, then run \
         `strata certs generate` and re-apply to every host",
        path.display()
    )]
    CaExpired {
        ca: &'static str,
        path: PathBuf,
        not_after: String,
    },
    #[error("CA {ca}: {} is not a CA certificate (basicConstraints CA:FALSE)", path.display())]
    NotACa { ca: &'static str, path: PathBuf },
    #[error(
        "CA {ca}: spec.pki.ca ({source_file}) differs from the CA already in {}; changing the \
         cluster's CA re-signs everything. Point spec.pki.ca at the CA in use, or move \
         the state's CA away deliberately",
        path.display()
    )]
    CaChanged {
        ca: &'static str,
        path: PathBuf,
        source_file: String,
    },
    #[error("{}: {reason}", path.display())]
    KeyUnreadable { path: PathBuf, reason: String },
    #[error("{0}")]
    Crypto(String),
    #[error("no certificate named `{name}`; the cluster's certificates are: {known}")]
    UnknownCertificate { name: String, known: String },
    #[error(
        "`{name}` is a certificate authority; `strata certs renew` renews leaf certificates \
         only and never touches a CA"
    )]
    CannotRenewCa { name: String },
    #[error(
        "state directory {}: owned by uid {owner}, not by this user (uid {me}); whoever owns \
         it could read or replace the cluster's keys. Remove it if you did not create it, or \
         choose another with --state-dir",
        path.display()
    )]
    StateDirOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "state directory {}: writable by every user; anyone could replace the cluster's keys. \
         Run `chmod o-w {}` or choose another with --state-dir",
        path.display(),
        path.display()
    )]
    StateDirWritable { path: PathBuf },
    #[error("{name}: missing; run `strata certs generate` first")]
    NotGenerated { name: String },
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Created,
    Kept,
    /// Re-issued or rewritten, with the reason.
    Reissued(String),
}

/// Every item `generate` or `renew` looked at, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub items: Vec<(String, Action)>,
}

impl Outcome {
    fn push(&mut self, name: impl Into<String>, a: Action) {
        self.items.push((name.into(), a));
    }

    pub fn created(&self) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(|(_, a)| *a == Action::Created)
            .map(|(n, _)| n.as_str())
    }

    pub fn reissued(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().filter_map(|(n, a)| match a {
            Action::Reissued(why) => Some((n.as_str(), why.as_str())),
            _ => None,
        })
    }

    pub fn kept(&self) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(|(_, a)| *a == Action::Kept)
            .map(|(n, _)| n.as_str())
    }

    /// Names of certificates and files whose content changed (for provisioning to ship).
    pub fn changed(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|(_, a)| *a != Action::Kept)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Paths of the state directory. Kept in memory ([`StateDir::in_memory`]) it reads what the
/// directory holds but keeps every write to itself: `strata plan` generates the PKI that an
/// apply would, and the disk stays as it was.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
    pending: Option<Pending>,
}

/// Writes kept in memory, by path.
type Pending = std::sync::Arc<std::sync::Mutex<BTreeMap<PathBuf, Vec<u8>>>>;

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            pending: None,
        }
    }

    /// A state directory whose writes stay in memory.
    pub fn in_memory(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            pending: Some(Default::default()),
        }
    }

    pub fn is_in_memory(&self) -> bool {
        self.pending.is_some()
    }

    /// Keeps a write in memory; false when this state directory writes to disk.
    fn remember(&self, path: &std::path::Path, bytes: &[u8]) -> bool {
        match &self.pending {
            Some(p) => {
                if let Ok(mut m) = p.lock() {
                    m.insert(path.to_path_buf(), bytes.to_vec());
                }
                true
            }
            None => false,
        }
    }

    /// Refuses a state directory (or a link to one) that another user owns: it could have
    /// been planted to receive the keys, or to hand this user its own CA. A directory that
    /// does not exist yet is fine: it is created 0700.
    pub fn check_owner(&self) -> Result<(), PkiError> {
        self.check_owner_is(rustix::process::geteuid().as_raw())
    }

    /// [`StateDir::check_owner`] for the user `me`.
    pub fn check_owner_is(&self, me: u32) -> Result<(), PkiError> {
        use std::os::unix::fs::MetadataExt as _;
        if self.is_in_memory() {
            return Ok(());
        }
        let link = match std::fs::symlink_metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(PkiError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let target = std::fs::metadata(&self.root).map_err(|source| PkiError::Io {
            path: self.root.clone(),
            source,
        })?;
        for owner in [link.uid(), target.uid()] {
            if owner != me {
                return Err(PkiError::StateDirOwner {
                    path: self.root.clone(),
                    owner,
                    me,
                });
            }
        }
        if files::writable_by_all(&target) {
            return Err(PkiError::StateDirWritable {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// A file of the state directory (what was written in memory first).
    pub fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        if let Some(p) = &self.pending
            && let Some(b) = p.lock().ok().and_then(|m| m.get(path).cloned())
        {
            return Ok(b);
        }
        std::fs::read(path)
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(format!("{name}.key"))
    }
    pub fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    /// Creates the state directory (and `sub` below it) with mode 0700.
    pub fn ensure_dir(&self, sub: &str) -> Result<PathBuf, PkiError> {
        store::ensure_dir(self, &self.root)?;
        let dir = self.root.join(sub);
        store::ensure_dir(self, &dir)?;
        Ok(dir)
    }
    pub fn sa_key(&self) -> PathBuf {
        self.root.join("pki/sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.root.join("pki/sa.pub")
    }
}

/// A CA ready to sign.
struct LoadedCa {
    pem: String,
    info: CertInfo,
    key: KeyPair,
}

fn crypto(e: String) -> PkiError {
    PkiError::Crypto(e)
}

fn load_ca(id: CaId, dir: &StateDir, now: OffsetDateTime) -> Result<Option<LoadedCa>, PkiError> {
    let (cp, kp) = (dir.cert(id.name()), dir.key(id.name()));
    let (cert, key) = (
        store::read_optional(dir, &cp)?,
        store::read_optional(dir, &kp)?,
    );
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(PkiError::CaIncomplete {
                ca: id.name(),
                present: cp,
                missing: kp,
            });
        }
        (None, Some(_)) => {
            return Err(PkiError::CaIncomplete {
                ca: id.name(),
                present: kp,
                missing: cp,
            });
        }
        (Some(c), Some(k)) => (c, k),
    };
    let info = inspect::parse(&cert).map_err(|reason| PkiError::CaUnreadable {
        ca: id.name(),
        path: cp.clone(),
        reason,
    })?;
    let key_pair = issue::load_key(&key).map_err(|reason| PkiError::CaUnreadable {
        ca: id.name(),
        path: kp.clone(),
        reason,
    })?;
    if key_pair.subject_public_key_info() != info.spki {
        return Err(PkiError::CaKeyMismatch {
            ca: id.name(),
            cert: cp,
            key: kp,
        });
    }
    if !info.is_ca {
        return Err(PkiError::NotACa {
            ca: id.name(),
            path: cp,
        });
    }
    if info.not_after <= now {
        return Err(PkiError::CaExpired {
            ca: id.name(),
            path: cp,
            not_after: info.not_after.to_string(),
        });
    }
    Ok(Some(LoadedCa {
        pem: cert,
        info,
        key: key_pair,
    }))
}

/// Loads every CA; creates the missing ones when `create` is set.
fn cas(
    inputs: &Inputs,
    dir: &StateDir,
    now: OffsetDateTime,
    create: bool,
    out: &mut Outcome,
) -> Result<BTreeMap<CaId, LoadedCa>, PkiError> {
    let mut map = BTreeMap::new();
    for id in CaId::ALL {
        let external = match id {
            CaId::Kubernetes => inputs.kubernetes_ca.as_ref(),
            _ => None,
        };
        if let Some(ext) = external {
            // Bring your own CA: the state holds a copy, which must stay the same CA.
            let info = inspect::parse(&ext.cert_pem).map_err(|reason| PkiError::CaUnreadable {
                ca: id.name(),
                path: PathBuf::from(&ext.source),
                reason,
            })?;
            if let Some(stored) = store::read_optional(dir, &dir.cert(id.name()))? {
                let same = inspect::parse(&stored)
                    .map(|s| s.der == info.der)
                    .unwrap_or(false);
                if !same {
                    return Err(PkiError::CaChanged {
                        ca: id.name(),
                        path: dir.cert(id.name()),
                        source_file: ext.source.clone(),
                    });
                }
            }
            let wrote_cert = store::write_if_changed(
                dir,
                &dir.cert(id.name()),
                ext.cert_pem.as_bytes(),
                store::PUBLIC,
            )?;
            let wrote_key = store::write_if_changed(
                dir,
                &dir.key(id.name()),
                ext.key_pem.as_bytes(),
                store::PRIVATE,
            )?;
            out.push(
                id.name(),
                if wrote_cert || wrote_key {
                    Action::Reissued(format!("copied from {}", ext.source))
                } else {
                    Action::Kept
                },
            );
        }
        match load_ca(id, dir, now)? {
            Some(ca) => {
                if external.is_none() {
                    out.push(id.name(), Action::Kept);
                }
                map.insert(id, ca);
            }
            None if create => {
                let key = issue::generate_key(inputs.key_algorithm).map_err(crypto)?;
                let pem =
                    issue::self_signed_ca(id, &key, now, inputs.ca_validity).map_err(crypto)?;
                // Key first: a CA certificate without its key is the worse half to lose.
                store::write_atomic(
                    dir,
                    &dir.key(id.name()),
                    key.serialize_pem().as_bytes(),
                    store::PRIVATE,
                )?;
                store::write_atomic(dir, &dir.cert(id.name()), pem.as_bytes(), store::PUBLIC)?;
                let info = inspect::parse(&pem).map_err(crypto)?;
                out.push(id.name(), Action::Created);
                map.insert(id, LoadedCa { pem, info, key });
            }
            None => {
                return Err(PkiError::NotGenerated {
                    name: id.name().into(),
                });
            }
        }
    }
    Ok(map)
}

/// The service-account signing key pair (sa.key / sa.pub).
fn service_account_keys(
    inputs: &Inputs,
    dir: &StateDir,
    out: &mut Outcome,
) -> Result<(), PkiError> {
    let (kp, pp) = (dir.sa_key(), dir.sa_pub());
    let key = match store::read_optional(dir, &kp)? {
        Some(pem) => {
            let key = issue::load_key(&pem).map_err(|reason| PkiError::KeyUnreadable {
                path: kp.clone(),
                reason: format!(
                    "{reason}; it signs every service-account token, restore it from a backup"
                ),
            })?;
            out.push("sa.key", Action::Kept);
            key
        }
        None => {
            let key = issue::generate_key(inputs.key_algorithm).map_err(crypto)?;
            store::write_atomic(dir, &kp, key.serialize_pem().as_bytes(), store::PRIVATE)?;
            out.push("sa.key", Action::Created);
            key
        }
    };
    let public = key.public_key_pem();
    let existed = pp.exists();
    if store::write_if_changed(dir, &pp, public.as_bytes(), store::PUBLIC)? {
        out.push(
            "sa.pub",
            if existed {
                Action::Reissued("did not match sa.key".into())
            } else {
                Action::Created
            },
        );
    } else {
        out.push("sa.pub", Action::Kept);
    }
    Ok(())
}

/// Why an existing leaf no longer fits its spec (None: keep it).
fn leaf_problem(
    spec: &CertSpec,
    info: &CertInfo,
    key: &KeyPair,
    ca: &LoadedCa,
    alg: KeyAlgorithm,
    now: OffsetDateTime,
) -> Option<String> {
    if key.subject_public_key_info() != info.spki {
        return Some("its key does not match".into());
    }
    if let Err(e) = inspect::signed_by(info, &ca.info) {
        return Some(format!("not signed by the current CA: {e}"));
    }
    if info.not_after <= now {
        return Some(format!("expired on {}", info.not_after.date()));
    }
    if info.key_algorithm != Some(alg) {
        return Some(format!("key algorithm changed to {}", alg.as_str()));
    }
    if info.common_name.as_deref() != Some(spec.common_name.as_str())
        || info.organization != spec.organization
    {
        return Some(format!("subject changed (was {})", info.subject));
    }
    if info.server_auth != spec.server_auth || info.client_auth != spec.client_auth {
        return Some("usages changed".into());
    }
    if info.dns_names != spec.dns_names || info.ips != spec.ips {
        let have: Vec<String> = info
            .dns_names
            .iter()
            .cloned()
            .chain(info.ips.iter().map(|i| i.to_string()))
            .collect();
        let want: Vec<String> = spec
            .dns_names
            .iter()
            .cloned()
            .chain(spec.ips.iter().map(|i| i.to_string()))
            .collect();
        let added: Vec<&String> = want.iter().filter(|w| !have.contains(w)).collect();
        let removed: Vec<&String> = have.iter().filter(|h| !want.contains(h)).collect();
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!(
                "+{}",
                added
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" +")
            ));
        }
        if !removed.is_empty() {
            parts.push(format!(
                "-{}",
                removed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" -")
            ));
        }
        return Some(format!("SANs changed ({})", parts.join(" ")));
    }
    None
}

/// Issues `spec`'s certificate, reusing `key` if given; writes key then certificate.
fn issue_and_write(
    spec: &CertSpec,
    key: Option<KeyPair>,
    ca: &LoadedCa,
    inputs: &Inputs,
    dir: &StateDir,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let key = match key {
        Some(k) => k,
        None => {
            let k = issue::generate_key(inputs.key_algorithm).map_err(crypto)?;
            store::write_atomic(
                dir,
                &dir.key(&spec.name),
                k.serialize_pem().as_bytes(),
                store::PRIVATE,
            )?;
            k
        }
    };
    let pem = issue::leaf(
        spec,
        &key,
        &ca.pem,
        &ca.key,
        ca.info.not_after,
        now,
        inputs.cert_validity,
    )
    .map_err(crypto)?;
    store::write_atomic(dir, &dir.cert(&spec.name), pem.as_bytes(), store::PUBLIC)
}

fn write_kubeconfigs(
    inputs: &Inputs,
    dir: &StateDir,
    cas: &BTreeMap<CaId, LoadedCa>,
    out: &mut Outcome,
) -> Result<(), PkiError> {
    for spec in leaf_certificates(inputs) {
        let Some(kc) = &spec.kubeconfig else { continue };
        let server = format!(
            "https://{}",
            match kc.server {
                Server::Endpoint => &inputs.api_endpoint,
                Server::SameHost => &inputs.same_host_api,
                Server::NodeBalancer => &inputs.node_balancer,
            }
        );
        let Some(ca) = cas.get(&spec.ca) else {
            continue;
        };
        let read = |p: PathBuf| {
            store::read_optional(dir, &p)?.ok_or(PkiError::NotGenerated {
                name: spec.name.clone(),
            })
        };
        let cert = read(dir.cert(&spec.name))?;
        let key = read(dir.key(&spec.name))?;
        let text = kubeconfig::render(
            &inputs.cluster_name,
            &server,
            &kc.user,
            &ca.pem,
            &cert,
            &key,
        )
        .map_err(crypto)?;
        let path = dir.file(&kc.file);
        let existed = path.exists();
        let action = if store::write_if_changed(dir, &path, text.as_bytes(), store::PRIVATE)? {
            if existed {
                Action::Reissued("rewritten: its certificate, key, CA or server changed".into())
            } else {
                Action::Created
            }
        } else {
            Action::Kept
        };
        out.push(kc.file.clone(), action);
    }
    Ok(())
}

/// Creates what is missing and re-issues what no longer fits; everything else is left
/// byte-for-byte as it is. The function `render`, `apply` and `strata certs generate` call.
pub fn generate(inputs: &Inputs, dir: &StateDir, now: OffsetDateTime) -> Result<Outcome, PkiError> {
    let mut out = Outcome::default();
    store::ensure_dir(dir, &dir.root)?;
    store::ensure_dir(dir, &dir.root.join("pki"))?;
    let cas = cas(inputs, dir, now, true, &mut out)?;
    service_account_keys(inputs, dir, &mut out)?;
    encryption::ensure(dir, now, &mut out)?;
    for spec in leaf_certificates(inputs) {
        let Some(ca) = cas.get(&spec.ca) else {
            continue;
        };
        let cert = store::read_optional(dir, &dir.cert(&spec.name))?;
        let key_path = dir.key(&spec.name);
        let key = store::read_optional(dir, &key_path)?
            .map(|pem| issue::load_key(&pem))
            .transpose()
            .ok()
            .flatten();
        match (cert, key) {
            (Some(pem), Some(key)) => {
                let problem = match inspect::parse(&pem) {
                    Ok(info) => leaf_problem(&spec, &info, &key, ca, inputs.key_algorithm, now)
                        .map(|p| {
                            (
                                p,
                                info.key_algorithm == Some(inputs.key_algorithm)
                                    && key.subject_public_key_info() == info.spki,
                            )
                        }),
                    Err(e) => Some((format!("unreadable: {e}"), false)),
                };
                match problem {
                    None => out.push(spec.name.clone(), Action::Kept),
                    Some((why, reuse_key)) => {
                        issue_and_write(&spec, reuse_key.then_some(key), ca, inputs, dir, now)?;
                        out.push(spec.name.clone(), Action::Reissued(why));
                    }
                }
            }
            (cert, _) => {
                issue_and_write(&spec, None, ca, inputs, dir, now)?;
                out.push(
                    spec.name.clone(),
                    match cert {
                        Some(_) => Action::Reissued("its key was missing or unreadable".into()),
                        None => Action::Created,
                    },
                );
            }
        }
    }
    write_kubeconfigs(inputs, dir, &cas, &mut out)?;
    Ok(out)
}

/// One row of `strata certs check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    pub name: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: Option<OffsetDateTime>,
    /// Whole days until expiry (negative once expired).
    pub days_left: Option<i64>,
    /// What is wrong, if anything besides the expiry date.
    pub problem: Option<String>,
}

/// Reads every certificate of the cluster and reports its expiry and any problem.
pub fn check(
    inputs: &Inputs,
    dir: &StateDir,
    now: OffsetDateTime,
) -> Result<Vec<CertStatus>, PkiError> {
    let mut rows = Vec::new();
    let mut ca_infos: BTreeMap<CaId, CertInfo> = BTreeMap::new();
    let row = |name: &str, info: Option<&CertInfo>, problem: Option<String>| CertStatus {
        name: name.into(),
        subject: info.map(|i| i.subject.clone()).unwrap_or_default(),
        issuer: info.map(|i| i.issuer.clone()).unwrap_or_default(),
        not_after: info.map(|i| i.not_after),
        days_left: info.map(|i| (i.not_after - now).whole_days()),
        problem,
    };
    for id in CaId::ALL {
        match store::read_optional(dir, &dir.cert(id.name()))? {
            None => rows.push(row(id.name(), None, Some("missing".into()))),
            Some(pem) => match inspect::parse(&pem) {
                Ok(info) => {
                    rows.push(row(id.name(), Some(&info), None));
                    ca_infos.insert(id, info);
                }
                Err(e) => rows.push(row(id.name(), None, Some(e))),
            },
        }
    }
    for spec in leaf_certificates(inputs) {
        match store::read_optional(dir, &dir.cert(&spec.name))? {
            None => rows.push(row(&spec.name, None, Some("missing".into()))),
            Some(pem) => match inspect::parse(&pem) {
                Ok(info) => {
                    let problem = ca_infos
                        .get(&spec.ca)
                        .map(|ca| inspect::signed_by(&info, ca).err())
                        .unwrap_or_else(|| Some("its CA is missing".into()));
                    rows.push(row(&spec.name, Some(&info), problem));
                }
                Err(e) => rows.push(row(&spec.name, None, Some(e))),
            },
        }
    }
    Ok(rows)
}

/// Which leaves `renew` re-issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Names(Vec<String>),
}

/// Re-issues leaf certificates with the same CA and key: new serial, new validity from `now`.
/// CAs are never touched. Kubeconfigs embedding a renewed certificate are rewritten. The
/// outcome lists what changed, for provisioning to ship to the hosts.
pub fn renew(
    inputs: &Inputs,
    dir: &StateDir,
    now: OffsetDateTime,
    selection: &Selection,
) -> Result<Outcome, PkiError> {
    let leaves = leaf_certificates(inputs);
    let chosen: Vec<&CertSpec> = match selection {
        Selection::All => leaves.iter().collect(),
        Selection::Names(names) => {
            let mut v = Vec::new();
            for n in names {
                if CaId::ALL.iter().any(|c| c.name() == n) {
                    return Err(PkiError::CannotRenewCa { name: n.clone() });
                }
                match leaves.iter().find(|l| &l.name == n) {
                    Some(l) => v.push(l),
                    None => {
                        return Err(PkiError::UnknownCertificate {
                            name: n.clone(),
                            known: leaves
                                .iter()
                                .map(|l| l.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                }
            }
            v
        }
    };
    let mut ignored = Outcome::default();
    let cas = cas(inputs, dir, now, false, &mut ignored)?;
    let mut out = Outcome::default();
    for spec in chosen {
        let Some(ca) = cas.get(&spec.ca) else {
            continue;
        };
        let key_path = dir.key(&spec.name);
        let pem = store::read_optional(dir, &key_path)?.ok_or_else(|| PkiError::NotGenerated {
            name: spec.name.clone(),
        })?;
        let key = issue::load_key(&pem).map_err(|reason| PkiError::KeyUnreadable {
            path: key_path.clone(),
            reason,
        })?;
        issue_and_write(spec, Some(key), ca, inputs, dir, now)?;
        out.push(spec.name.clone(), Action::Reissued("renewed".into()));
    }
    write_kubeconfigs(inputs, dir, &cas, &mut out)?;
    Ok(out)
}
