//! The keys the API server encrypts Secrets with in etcd (`pki/encryption-keys.yaml`, 0600):
//! an ordered list, the first one writes, every one reads. Kept on every run; a lost file
//! means the Secrets in etcd can no longer be read, so it is never replaced silently.
//!
//! Rotation: [`rotate`] puts a new key first (the old ones stay for reading), `strata apply`
//! gives it to the API servers and rewrites every Secret with it, then [`prune`] drops the
//! old keys and the next `strata apply` gives the API servers the shortened list.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Action, Outcome, PkiError, StateDir, store};

/// The state directory's file, relative to its root.
pub const FILE: &str = "pki/encryption-keys.yaml";
/// AES-CBC with a 32-byte key (the API server's `aescbc` provider).
const KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionKeys {
    /// First: the key new writes use; all: the keys reads try.
    pub keys: Vec<EncryptionKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionKey {
    /// Shown in etcd as `k8s:enc:aescbc:v1:<name>:`.
    pub name: String,
    /// 32 random bytes, base64.
    pub secret: String,
}

impl EncryptionKeys {
    /// The key that encrypts new writes.
    pub fn current(&self) -> Option<&EncryptionKey> {
        self.keys.first()
    }

    /// The API server's EncryptionConfiguration: Secrets with `aescbc` and these keys, then
    /// `identity` so that Secrets written before encryption was turned on stay readable
    /// (until `strata apply` rewrites them).
    pub fn configuration(&self) -> String {
        let mut s = String::from(
            "# Written by Strata from the state directory's pki/encryption-keys.yaml.\n\
             apiVersion: apiserver.config.k8s.io/v1\n\
             kind: EncryptionConfiguration\n\
             resources:\n\
             - resources: [secrets]\n  \
               providers:\n  \
               - aescbc:\n      \
                   keys:\n",
        );
        for k in &self.keys {
            s.push_str(&format!(
                "      - name: {}\n        secret: {}\n",
                k.name, k.secret
            ));
        }
        s.push_str("  - identity: {}\n");
        s
    }
}

fn path(dir: &StateDir) -> std::path::PathBuf {
    dir.file(FILE)
}

fn unreadable(dir: &StateDir, reason: impl Into<String>) -> PkiError {
    PkiError::KeyUnreadable {
        path: path(dir),
        reason: format!(
            "{}; it decrypts the cluster's Secrets in etcd: restore it from a backup",
            reason.into()
        ),
    }
}

/// The keys of the state directory, checked (None when there are none yet).
pub fn load(dir: &StateDir) -> Result<Option<EncryptionKeys>, PkiError> {
    let Some(text) = store::read_optional(dir, &path(dir))? else {
        return Ok(None);
    };
    let keys: EncryptionKeys =
        serde_saphyr::from_str(&text).map_err(|e| unreadable(dir, e.to_string()))?;
    if keys.keys.is_empty() {
        return Err(unreadable(dir, "it lists no key"));
    }
    for k in &keys.keys {
        let valid_name = !k.name.is_empty()
            && k.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name {
            return Err(unreadable(dir, format!("`{}` is not a key name", k.name)));
        }
        let len = STANDARD.decode(&k.secret).map(|b| b.len());
        if len != Ok(KEY_BYTES) {
            return Err(unreadable(
                dir,
                format!("key {}: not {KEY_BYTES} bytes of base64", k.name),
            ));
        }
    }
    Ok(Some(keys))
}

fn new_key(now: OffsetDateTime) -> Result<EncryptionKey, PkiError> {
    let mut bytes = [0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("no random bytes for an encryption key".into()))?;
    Ok(EncryptionKey {
        name: format!("key-{}", now.unix_timestamp()),
        secret: STANDARD.encode(bytes),
    })
}

fn save(dir: &StateDir, keys: &EncryptionKeys) -> Result<(), PkiError> {
    let text = serde_saphyr::to_string(keys).map_err(|e| PkiError::Crypto(e.to_string()))?;
    store::write_atomic(dir, &path(dir), text.as_bytes(), store::PRIVATE)
}

/// Creates the first key when there is none; keeps the file otherwise (part of `generate`).
pub(crate) fn ensure(
    dir: &StateDir,
    now: OffsetDateTime,
    out: &mut Outcome,
) -> Result<(), PkiError> {
    if load(dir)?.is_some() {
        out.push("encryption-keys", Action::Kept);
        return Ok(());
    }
    // The last apply encrypted the Secrets with a key that is now gone: a new key would
    // leave them unreadable.
    if let Some(key) = recorded_key(dir) {
        return Err(unreadable(
            dir,
            format!("missing, but the cluster's Secrets are encrypted with key {key} (state.json)"),
        ));
    }
    save(
        dir,
        &EncryptionKeys {
            keys: vec![new_key(now)?],
        },
    )?;
    out.push("encryption-keys", Action::Created);
    Ok(())
}

/// The key the last apply rewrote every Secret with, as `state.json` records it.
fn recorded_key(dir: &StateDir) -> Option<String> {
    let text = store::read_optional(dir, &dir.file("state.json")).ok()??;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("secretsKey")?
        .as_str()
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// Puts a new key first; the old ones stay for reading. Returns the new key's name.
pub fn rotate(dir: &StateDir, now: OffsetDateTime) -> Result<String, PkiError> {
    let mut keys = load(dir)?.ok_or_else(|| unreadable(dir, "missing"))?;
    let mut key = new_key(now)?;
    // Two rotations within a second still get distinct names.
    while keys.keys.iter().any(|k| k.name == key.name) {
        key.name.push('x');
    }
    let name = key.name.clone();
    keys.keys.insert(0, key);
    save(dir, &keys)?;
    Ok(name)
}

/// Drops every key but the current one. Returns the names dropped.
pub fn prune(dir: &StateDir) -> Result<Vec<String>, PkiError> {
    let mut keys = load(dir)?.ok_or_else(|| unreadable(dir, "missing"))?;
    let dropped = keys.keys.split_off(1).into_iter().map(|k| k.name).collect();
    save(dir, &keys)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_kept_rotated_and_pruned() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(root.path());
        dir.ensure_dir("pki").expect("dir");
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut out = Outcome::default();
        ensure(&dir, now, &mut out).expect("created");
        let first = load(&dir).expect("load").expect("keys");
        let mode = std::fs::metadata(dir.file(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure(&dir, now, &mut out).expect("kept");
        assert_eq!(
            load(&dir).expect("load"),
            Some(first.clone()),
            "kept on re-run"
        );
        assert_eq!(out.created().count(), 1);

        let name = rotate(&dir, now).expect("rotate");
        let rotated = load(&dir).expect("load").expect("keys");
        assert_eq!(rotated.keys.len(), 2);
        assert_eq!(
            rotated.current().map(|k| k.name.as_str()),
            Some(name.as_str())
        );
        assert_ne!(rotated.keys[0].secret, rotated.keys[1].secret);
        assert_eq!(rotated.keys[1], first.keys[0], "the old key still reads");
        let conf = rotated.configuration();
        assert!(
            conf.find(&format!("name: {name}\n"))
                < conf.find(&format!("name: {}\n", first.keys[0].name)),
            "the new key writes: {conf}"
        );
        assert!(conf.trim_end().ends_with("- identity: {}"), "{conf}");

        assert_eq!(prune(&dir).expect("prune"), [first.keys[0].name.clone()]);
        assert_eq!(load(&dir).expect("load").expect("keys").keys.len(), 1);
    }

    #[test]
    fn a_lost_file_is_not_replaced_once_secrets_use_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(root.path());
        dir.ensure_dir("pki").expect("dir");
        std::fs::write(dir.file("state.json"), r#"{"secretsKey": "key-1"}"#).expect("state");
        let err = ensure(&dir, OffsetDateTime::UNIX_EPOCH, &mut Outcome::default())
            .expect_err("a new key would orphan the Secrets");
        assert!(
            err.to_string().contains("encrypted with key key-1"),
            "{err}"
        );
        assert!(!dir.file(FILE).exists());
    }

    #[test]
    fn a_damaged_file_is_refused_not_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(root.path());
        dir.ensure_dir("pki").expect("dir");
        std::fs::write(dir.file(FILE), "keys:\n- {name: k1, secret: c2hvcnQ=}\n").expect("write");
        let err = ensure(&dir, OffsetDateTime::UNIX_EPOCH, &mut Outcome::default())
            .expect_err("short key");
        assert!(
            err.to_string().contains("restore it from a backup"),
            "{err}"
        );
        assert!(
            std::fs::read_to_string(dir.file(FILE))
                .expect("kept")
                .contains("c2hvcnQ=")
        );
    }
}
