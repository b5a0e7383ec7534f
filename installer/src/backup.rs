//! `strata backup`: an etcd snapshot taken on a healthy member, brought to this computer and
//! written with a record of whose it is, as one tar file (mode 0600: it holds every Secret,
//! encrypted with the state directory's keys).
//!
//! The file holds two members: `record.json` ([`Record`]) and `etcd-snapshot.db`. The record
//! says which cluster the snapshot belongs to (its name, the sha256 of its CA certificate,
//! the etcd cluster's id), the Kubernetes version and the Secret encryption key in use, and
//! the snapshot's sha256 and size: [`read`] checks them, so that a restore refuses a
//! truncated or altered file, or one of another cluster, before it touches a host.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use strata_manifests::catalog::{self, Component};
use strata_manifests::plan::{AppliedObject, AppliedState, STATE_FILE, sha256};

use crate::certs::{ClusterState, load};
use crate::cli::StateArgs;
use crate::engine::Reporter;
use crate::hosts::HostConn;

/// The record's format, checked when the file is read.
pub const FORMAT: &str = "strata.dev/backup/v1";
/// The members of the tar file.
pub const RECORD_FILE: &str = "record.json";
pub const SNAPSHOT_FILE: &str = "etcd-snapshot.db";
/// Where the snapshot is written on the member's host while it is taken (root only).
const REMOTE_DIR: &str = "/var/lib/strata/backup";

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub format: String,
    pub cluster: String,
    /// sha256 of the cluster CA certificate (`pki/ca.crt`, as the state directory holds it).
    pub ca_sha256: String,
    /// The etcd cluster's id (hex, as etcdctl shows it).
    pub etcd_cluster_id: String,
    /// The store revision of the snapshot.
    pub etcd_revision: u64,
    /// The member it was taken on.
    pub member: String,
    pub kubernetes_version: String,
    /// The id of the key Secrets were written with (`strata certs rotate-encryption-key`);
    /// a restore needs it in the state directory.
    pub encryption_key: String,
    /// RFC 3339, UTC.
    pub taken_at: String,
    pub snapshot_sha256: String,
    pub snapshot_bytes: u64,
    /// The cluster objects Strata had applied then (state.json's): a restore deletes those
    /// the Cluster file no longer renders (an addon turned off since), as apply would have.
    #[serde(default)]
    pub objects: BTreeMap<String, AppliedObject>,
    /// The hosts of the cluster then (the Cluster file's, and those apply had still to take
    /// out): a restore deletes the Nodes of those the file no longer lists (they would stay
    /// NotReady).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Why a backup file is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "{path}: the snapshot is {got} bytes with sha256 {got_sha}, the record says {want} bytes \
         with sha256 {want_sha}: the file is truncated or altered"
    )]
    Corrupt {
        path: PathBuf,
        got: u64,
        got_sha: String,
        want: u64,
        want_sha: String,
    },
}

/// Reads a backup file: its record and snapshot, the snapshot checked against the record.
pub fn read(path: &Path) -> Result<(Record, Vec<u8>), BackupError> {
    let unreadable = |reason: String| BackupError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut archive = tar::Archive::new(file);
    let mut record: Option<Record> = None;
    let mut snapshot: Option<Vec<u8>> = None;
    let entries = archive
        .entries()
        .map_err(|e| unreadable(format!("not a tar file: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            unreadable(format!(
                "{e}: the file is truncated, or not a backup of `strata backup`"
            ))
        })?;
        let name = entry
            .path()
            .map_err(|e| unreadable(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| unreadable(format!("reading {name}: {e}: the file is truncated")))?;
        match name.as_str() {
            RECORD_FILE => {
                let r: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| unreadable(format!("{RECORD_FILE}: {e}")))?;
                if r.format != FORMAT {
                    return Err(unreadable(format!(
                        "{RECORD_FILE}: format {:?}, this strata reads {FORMAT:?}",
                        r.format
                    )));
                }
                record = Some(r);
            }
            SNAPSHOT_FILE => snapshot = Some(bytes),
            _ => {}
        }
    }
    let record = record.ok_or_else(|| unreadable(format!("no {RECORD_FILE} in it")))?;
    let snapshot = snapshot.ok_or_else(|| unreadable(format!("no {SNAPSHOT_FILE} in it")))?;
    let got_sha = sha256(&snapshot);
    if got_sha != record.snapshot_sha256 || snapshot.len() as u64 != record.snapshot_bytes {
        return Err(BackupError::Corrupt {
            path: path.to_owned(),
            got: snapshot.len() as u64,
            got_sha,
            want: record.snapshot_bytes,
            want_sha: record.snapshot_sha256,
        });
    }
    Ok((record, snapshot))
}

/// Writes the tar file to `out`: the record, then the snapshot read from `snapshot` (its
/// size is the record's), both 0600.
pub fn write_archive<W: std::io::Write>(
    out: W,
    record: &Record,
    snapshot: impl std::io::Read,
) -> Result<W> {
    let json = serde_json::to_vec_pretty(record)?;
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o600);
        h.set_mtime(0);
        h.set_cksum();
        h
    };
    let mut b = tar::Builder::new(out);
    b.append_data(&mut header(json.len() as u64), RECORD_FILE, json.as_slice())?;
    b.append_data(
        &mut header(record.snapshot_bytes),
        SNAPSHOT_FILE,
        snapshot.take(record.snapshot_bytes),
    )?;
    Ok(b.into_inner()?)
}

/// A backup to restore: the etcd phase of the apply restores it on every member instead of
/// forming an empty cluster (see `membership::restore`).
#[derive(Debug, Clone)]
pub struct Seed {
    pub from: PathBuf,
    pub record: Record,
    pub snapshot: Vec<u8>,
}

/// Whether `record` may be restored into the cluster of `cs`: the same cluster (name and
/// CA, unless `other_cluster`), the same Kubernetes minor, and the key its Secrets are
/// encrypted with in the state directory. Checked before anything is stopped.
pub fn check(cs: &ClusterState, record: &Record, other_cluster: bool) -> Result<()> {
    let from = |what: String| anyhow!("{what}; nothing was stopped or changed");
    let ca_path = cs.state.cert("ca");
    let ca = std::fs::read(&ca_path).map_err(|e| {
        from(format!(
            "{}: {e}: a restore needs this cluster's PKI (the state directory the backup's cluster was installed from)",
            ca_path.display()
        ))
    })?;
    let ca = sha256(&ca);
    let name = cs.cluster.name();
    if (record.cluster != name || record.ca_sha256 != ca) && !other_cluster {
        return Err(from(format!(
            "the backup is of cluster {} (CA sha256 {}), this Cluster file's is {name} (CA sha256 {ca}): a snapshot of another cluster is refused (its objects name other certificates and keys); --other-cluster restores it all the same",
            record.cluster, record.ca_sha256
        )));
    }
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let version = cs.cluster.spec.kubernetes.version.to_string();
    if minor(&record.kubernetes_version) != minor(&version) {
        return Err(from(format!(
            "the backup was taken with Kubernetes {}, the Cluster file has {version}: restore it with the version it was taken with, then upgrade",
            record.kubernetes_version
        )));
    }
    if !record.encryption_key.is_empty() {
        let keys = strata_pki::encryption::load(&cs.state)?;
        let have = keys
            .as_ref()
            .is_some_and(|k| k.keys.iter().any(|k| k.name == record.encryption_key));
        if !have {
            return Err(from(format!(
                "the backup's Secrets are encrypted with key {}, which {} does not hold (pruned with `strata certs prune-encryption-keys`?): they could not be read",
                record.encryption_key,
                cs.state.file(strata_pki::encryption::FILE).display()
            )));
        }
    }
    Ok(())
}

/// `strata restore`: the backup checked, confirmed, then an apply whose etcd phase restores
/// it.
pub fn run_restore(args: &crate::cli::RestoreArgs) -> Result<ExitCode> {
    let cs = load(&args.state)?;
    let (record, snapshot) = read(&args.from)?;
    check(&cs, &record, args.other_cluster)?;
    if !args.yes {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "restore replaces every object of cluster {} with those of {} (taken {}); without a terminal to confirm, pass --yes",
                cs.cluster.name(),
                args.from.display(),
                record.taken_at
            );
        }
        let go = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Restore cluster {} to the backup of {} (etcd revision {})? Its control plane and etcd stop, every object made since is lost",
                cs.cluster.name(),
                record.taken_at,
                record.etcd_revision
            ))
            .default(false)
            .interact()?;
        if !go {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let seed = Seed {
        from: args.from.clone(),
        record,
        snapshot,
    };
    crate::apply::run_seeded(&args.apply_args(), cs, Some(seed))
}

/// The script that takes the snapshot on a member's host and prints, one per line: the
/// member list (JSON), the snapshot's status (JSON) and its sha256; the snapshot stays in
/// [`REMOTE_DIR`] for the download.
fn snapshot_script() -> String {
    let e = crate::membership::etcdctl();
    format!(
        "set -e\numask 077\nmkdir -p {REMOTE_DIR}\nrm -f {REMOTE_DIR}/snapshot.db {REMOTE_DIR}/snapshot.db.part\n\
         {e} endpoint health >/dev/null\n\
         {e} member list -w json | tr -d '\\n'; echo\n\
         {e} snapshot save {REMOTE_DIR}/snapshot.db >/dev/null\n\
         ETCDCTL_API=3 {bin}/etcdctl snapshot status {REMOTE_DIR}/snapshot.db -w json | tr -d '\\n'; echo\n\
         sha256sum {REMOTE_DIR}/snapshot.db | cut -d' ' -f1\n",
        bin = catalog::BIN_DIR,
    )
}

/// `2026-12-01T17:00:00Z`.
fn utc_stamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[derive(Debug, Deserialize)]
struct SnapshotStatus {
    revision: u64,
}

/// `strata backup`.
pub fn run(args: &StateArgs, out: Option<&Path>) -> Result<ExitCode> {
    let cs = load(args)?;
    let state_file = cs.state.root.join(STATE_FILE);
    let mut state = AppliedState::load(&state_file)?;
    if state.etcd_cluster.is_empty() {
        bail!(
            "{}: no etcd cluster recorded; run `strata apply` first (a backup is of a cluster \
             apply installed)",
            state_file.display()
        );
    }
    let ca = std::fs::read(cs.state.cert("ca"))
        .with_context(|| format!("reading {}", cs.state.cert("ca").display()))?;
    // The snapshot comes to a file beside the backup's (never whole in memory: a store
    // may be gigabytes).
    let dir = match out {
        Some(p) => p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned),
        None => cs.state.root.join("backups"),
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let reporter = Reporter::plain();
    let (record, snapshot) = crate::runtime()?.block_on(async {
        let conns = crate::hosts::connect(&reporter, &cs, &mut state, false).await?;
        let mut tried = Vec::new();
        for c in conns {
            let h = match c {
                Ok(h) if catalog::runs(&cs.cluster, &h.host, Component::Etcd) => h,
                Ok(_) => continue,
                Err(e) => {
                    tried.push(format!("{e:#}"));
                    continue;
                }
            };
            match take(&cs, &state, &h, &ca, &dir).await {
                Ok(done) => return Ok(done),
                Err(e) => tried.push(format!("host {}: {e:#}", h.name())),
            }
        }
        Err(anyhow!(
            "no etcd member gave a snapshot:\n{}",
            tried.join("\n")
        ))
    })?;
    // Keys trusted at a prompt are pinned; the rest of the state may have changed meanwhile
    // (an apply): only the pins are merged into it.
    let mut fresh = AppliedState::load(&state_file)?;
    for (host, key) in state.host_keys {
        fresh.host_keys.entry(host).or_insert(key);
    }
    fresh.save(&state_file)?;
    let path = match out {
        Some(p) => p.to_owned(),
        None => {
            let stamp = record.taken_at.replace([':', '-'], "");
            dir.join(format!("{}-{stamp}.tar", record.cluster))
        }
    };
    write_backup_file(&path, &dir, &record, snapshot)
        .with_context(|| format!("writing {}", path.display()))?;
    outln!(
        "{}: etcd snapshot of cluster {} (etcd cluster {}, revision {}, {} bytes, sha256 {}) taken on {}; \
         it holds the cluster's Secrets: keep it private",
        path.display(),
        record.cluster,
        record.etcd_cluster_id,
        record.etcd_revision,
        record.snapshot_bytes,
        record.snapshot_sha256,
        record.member
    );
    Ok(ExitCode::SUCCESS)
}

/// The backup file at `path`: written to a temporary file in `dir` (0600), flushed to disk,
/// then renamed into place, so that a backup there is always whole.
fn write_backup_file(
    path: &Path,
    dir: &Path,
    record: &Record,
    mut snapshot: tempfile::NamedTempFile,
) -> Result<()> {
    use std::io::{Seek as _, Write as _};
    let snapshot = snapshot.as_file_mut();
    snapshot.rewind()?;
    let tmp = tempfile::Builder::new()
        .prefix(".strata-backup-")
        .tempfile_in(dir)?;
    let mut out = write_archive(std::io::BufWriter::new(tmp), record, snapshot)?
        .into_inner()
        .map_err(|e| e.into_error())?;
    out.flush()?;
    out.as_file().sync_all()?;
    out.persist(path)?;
    // The rename itself on disk.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A snapshot on its way here: written to `file` as it arrives, its sha256 and size summed.
struct Incoming {
    file: std::io::BufWriter<std::fs::File>,
    digest: aws_lc_rs::digest::Context,
    bytes: u64,
}

impl Incoming {
    fn add(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        self.digest.update(data);
        self.bytes += data.len() as u64;
        self.file.write_all(data)
    }

    /// The file flushed, with the snapshot's sha256 (hex).
    fn finish(self) -> std::io::Result<String> {
        use std::io::Write as _;
        let mut file = self.file;
        file.flush()?;
        Ok(self
            .digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// The snapshot of the member on `h`, brought here into a temporary file in `dir` (0600) and
/// checked, with its record.
async fn take(
    cs: &ClusterState,
    state: &AppliedState,
    h: &HostConn,
    ca: &[u8],
    dir: &Path,
) -> Result<(Record, tempfile::NamedTempFile)> {
    let out = h.conn.exec(&snapshot_script()).await?;
    if !out.success() {
        bail!("taking the snapshot failed: {}", out.tail());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let [members, status, remote_sha] = lines[..] else {
        bail!("unexpected output of the snapshot script: {}", out.tail());
    };
    let (cluster_id, _) = crate::etcd::parse_members(members)
        .with_context(|| format!("reading the member list: {members}"))?;
    if cluster_id != state.etcd_cluster {
        bail!(
            "its member answers as etcd cluster {cluster_id}, state.json records {}: not this \
             cluster's etcd",
            state.etcd_cluster
        );
    }
    let status: SnapshotStatus = serde_json::from_str(status)
        .with_context(|| format!("reading the snapshot's status: {status}"))?;
    let snapshot = tempfile::Builder::new()
        .prefix(".strata-snapshot-")
        .tempfile_in(dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    let mut incoming = Incoming {
        file: std::io::BufWriter::new(snapshot.reopen()?),
        digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        bytes: 0,
    };
    let download = h
        .conn
        .exec_streaming(
            &format!(
                "cat {REMOTE_DIR}/snapshot.db; rc=$?; rm -f {REMOTE_DIR}/snapshot.db; exit $rc"
            ),
            |data| incoming.add(data),
        )
        .await?;
    if !download.success() {
        bail!("reading the snapshot failed: {}", download.tail());
    }
    let size = incoming.bytes;
    let got = incoming
        .finish()
        .with_context(|| format!("writing the snapshot to {}", snapshot.path().display()))?;
    if got != remote_sha.trim() {
        bail!(
            "the snapshot arrived with sha256 {got}, the host computed {}: transfer broken",
            remote_sha.trim()
        );
    }
    let record = Record {
        format: FORMAT.into(),
        cluster: cs.cluster.name().to_owned(),
        ca_sha256: sha256(ca),
        etcd_cluster_id: cluster_id,
        etcd_revision: status.revision,
        member: h.name().to_owned(),
        kubernetes_version: cs.cluster.spec.kubernetes.version.to_string(),
        encryption_key: state.secrets_key.clone(),
        taken_at: utc_stamp(time::OffsetDateTime::now_utc()),
        snapshot_sha256: got,
        snapshot_bytes: size,
        objects: state.objects.clone(),
        // The file's hosts and those apply still has to take out (their Nodes exist too).
        hosts: cs
            .cluster
            .spec
            .hosts
            .iter()
            .map(|h| h.name.to_string())
            .chain(state.hosts.keys().cloned())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect(),
    };
    Ok((record, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(snapshot: &[u8]) -> Record {
        Record {
            format: FORMAT.into(),
            cluster: "demo".into(),
            ca_sha256: "ab".repeat(32),
            etcd_cluster_id: "cdf818194e3a8c32".into(),
            etcd_revision: 42,
            member: "cp1".into(),
            kubernetes_version: "1.20.2".into(),
            encryption_key: "key-1".into(),
            taken_at: "2026-12-01T17:00:00Z".into(),
            snapshot_sha256: sha256(snapshot),
            snapshot_bytes: snapshot.len() as u64,
            objects: BTreeMap::new(),
            hosts: vec!["cp1".into()],
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    fn archive(record: &Record, snapshot: &[u8]) -> Result<Vec<u8>> {
        write_archive(Vec::new(), record, snapshot)
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = vec![7u8; 10_000];
        let bytes = archive(&record(&snapshot), &snapshot).expect("archive");
        let p = write(dir.path(), "b.tar", &bytes);
        let (r, s) = read(&p).expect("read");
        assert_eq!(r, record(&snapshot));
        assert_eq!(s, snapshot);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["etcdClusterId"], "cdf818194e3a8c32");
        assert_eq!(json["caSha256"], "ab".repeat(32));
    }

    #[test]
    fn a_truncated_or_altered_backup_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = vec![7u8; 10_000];
        let bytes = archive(&record(&snapshot), &snapshot).expect("archive");
        // Cut inside the snapshot.
        let p = write(dir.path(), "cut.tar", &bytes[..bytes.len() / 2]);
        let e = read(&p).expect_err("truncated").to_string();
        assert!(e.contains("cut.tar") && e.contains("truncated"), "{e}");
        // A byte of the snapshot changed: same size, other digest.
        let mut altered = bytes.clone();
        let at = bytes
            .windows(4)
            .position(|w| w == [7, 7, 7, 7])
            .expect("snapshot bytes");
        altered[at] = 8;
        let p = write(dir.path(), "altered.tar", &altered);
        let e = read(&p).expect_err("altered").to_string();
        assert!(e.contains("truncated or altered"), "{e}");
        // Not a backup at all.
        let p = write(dir.path(), "junk.tar", b"hello");
        assert!(read(&p).is_err());
        // Another format.
        let mut other = record(&snapshot);
        other.format = "strata.dev/backup/v9".into();
        let p = write(
            dir.path(),
            "v9.tar",
            &archive(&other, &snapshot).expect("archive"),
        );
        let e = read(&p).expect_err("format").to_string();
        assert!(e.contains("v9"), "{e}");
    }

    /// A cluster "t" with its PKI in a temporary directory.
    fn cluster_state(dir: &Path) -> ClusterState {
        let file = dir.join("cluster.yaml");
        std::fs::write(
            &file,
            "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  \
             platform: {local: {}}\n  hosts:\n  - {name: cp1, roles: [etcd, control-plane]}\n",
        )
        .expect("write");
        let args = StateArgs {
            file: crate::cli::FileArg { file },
            state_dir: None,
        };
        let cs = load(&args).expect("load");
        strata_pki::generate(&cs.inputs, &cs.state, time::OffsetDateTime::now_utc()).expect("pki");
        cs
    }

    #[test]
    fn only_this_clusters_backups_with_a_key_at_hand_are_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cs = cluster_state(dir.path());
        let ca = sha256(&std::fs::read(cs.state.cert("ca")).expect("ca"));
        let key = strata_pki::encryption::load(&cs.state)
            .expect("keys")
            .and_then(|k| k.current().map(|k| k.name.clone()))
            .expect("a key");
        let mut r = record(b"x");
        r.cluster = "t".into();
        r.ca_sha256 = ca.clone();
        r.encryption_key = key;
        check(&cs, &r, false).expect("this cluster's");
        // Another CA (the same name): another cluster, unless asked for.
        let mut other = r.clone();
        other.ca_sha256 = "00".repeat(32);
        let e = check(&cs, &other, false).expect_err("other CA").to_string();
        assert!(
            e.contains("another cluster") && e.contains("nothing was stopped"),
            "{e}"
        );
        check(&cs, &other, true).expect("--other-cluster");
        // Another Kubernetes minor.
        let mut newer = r.clone();
        newer.kubernetes_version = "1.21.0".into();
        let e = check(&cs, &newer, false).expect_err("minor").to_string();
        assert!(e.contains("1.21.0"), "{e}");
        // Secrets under a key the state directory does not hold.
        let mut lost = r.clone();
        lost.encryption_key = "key-gone".into();
        let e = check(&cs, &lost, false).expect_err("key").to_string();
        assert!(e.contains("key-gone"), "{e}");
    }

    #[test]
    fn stamps_are_utc_seconds() {
        let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_796_144_826);
        assert_eq!(utc_stamp(t), "2026-12-01T17:07:06Z");
    }

    #[test]
    fn the_script_checks_health_before_it_takes_the_snapshot() {
        let s = snapshot_script();
        let health = s.find("endpoint health").expect("health");
        let save = s.find("snapshot save").expect("save");
        assert!(health < save);
        assert!(s.contains("umask 077"));
    }
}
