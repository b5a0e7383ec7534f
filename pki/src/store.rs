//! Files of the state directory: atomic writes with explicit modes.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{PkiError, StateDir};

/// Mode of private keys and files that embed one (kubeconfigs).
pub const PRIVATE: u32 = 0o600;
/// Mode of certificates and public keys.
pub const PUBLIC: u32 = 0o644;
/// Mode of every directory of the state directory.
pub const DIR: u32 = 0o700;

fn io_err(path: &Path, source: io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and its missing parents inside the state directory with mode 0700 (and
/// tightens the state directory itself). Nothing, for a state directory kept in memory.
pub fn ensure_dir(state: &StateDir, dir: &Path) -> Result<(), PkiError> {
    if state.is_in_memory() {
        return Ok(());
    }
    let root = state.root.as_path();
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut d = dir.to_path_buf();
    while !d.as_os_str().is_empty() && !d.exists() {
        missing.push(d.clone());
        if !d.pop() {
            break;
        }
    }
    for m in missing.iter().rev() {
        fs::create_dir(m)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| io_err(m, e))?;
        if m.starts_with(root) {
            fs::set_permissions(m, fs::Permissions::from_mode(DIR)).map_err(|e| io_err(m, e))?;
        }
    }
    if dir.starts_with(root) {
        let mode = fs::metadata(dir)
            .map_err(|e| io_err(dir, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode != DIR {
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR))
                .map_err(|e| io_err(dir, e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file created with `mode` in the same
/// directory, flushed to disk, then renamed over `path`. An interrupted run leaves either
/// the old file or the new one, never half of one.
pub fn write_atomic(
    state: &StateDir,
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), PkiError> {
    if state.remember(path, bytes) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(&state.root);
    ensure_dir(state, dir)?;
    crate::files::write_atomic(path, bytes, mode).map_err(|e| io_err(path, e))
}

/// Writes only when the content differs; says whether it wrote. Fixes the mode either way.
pub fn write_if_changed(
    state: &StateDir,
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<bool, PkiError> {
    if let Ok(existing) = state.read(path)
        && existing == bytes
    {
        if state.is_in_memory() {
            return Ok(false);
        }
        let current = fs::metadata(path)
            .map_err(|e| io_err(path, e))?
            .permissions()
            .mode()
            & 0o777;
        if current != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| io_err(path, e))?;
        }
        return Ok(false);
    }
    write_atomic(state, path, bytes, mode)?;
    Ok(true)
}

/// Reads a text file; `Ok(None)` when it does not exist.
pub fn read_optional(state: &StateDir, path: &Path) -> Result<Option<String>, PkiError> {
    match state.read(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|e| io_err(path, io::Error::new(io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let me = fs::metadata(root.path()).expect("meta").uid();
        let state = StateDir::new(root.path());
        assert!(state.check_owner_is(me).is_ok());
        let err = state
            .check_owner_is(me + 1)
            .expect_err("another user's directory");
        assert!(
            err.to_string().contains(&format!("owned by uid {me}")),
            "{err}"
        );
        // Not there yet: created by this user, 0700.
        let absent = StateDir::new(root.path().join("absent"));
        assert!(absent.check_owner_is(me + 1).is_ok());
        // Ours, but every user may write into it: refused; with /tmp's sticky bit: fine.
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = state.check_owner_is(me).expect_err("world-writable");
        assert!(err.to_string().contains("writable by every user"), "{err}");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(state.check_owner_is(me).is_ok());
    }

    #[test]
    fn relative_directories_are_created() {
        let root = tempfile::tempdir().expect("tempdir");
        let cwd = std::env::current_dir().expect("cwd");
        // A relative root whose parent is the empty path.
        let rel = root.path().strip_prefix("/").expect("absolute");
        let here = Path::new("/");
        std::env::set_current_dir(here).expect("cd /");
        let made = ensure_dir(&StateDir::new(rel.join("state")), &rel.join("state/ssh"));
        std::env::set_current_dir(cwd).expect("cd back");
        made.expect("relative path");
        assert!(root.path().join("state/ssh").is_dir());
        ensure_dir(&StateDir::new("x"), Path::new("")).expect("empty path is a no-op");
    }

    #[test]
    fn atomic_write_sets_modes_and_dirs() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("pki/etcd/ca.key");
        write_atomic(&StateDir::new(root.path()), &path, b"secret", PRIVATE).expect("write");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.path().join("pki")), 0o700);
        assert_eq!(mode(&root.path().join("pki/etcd")), 0o700);
        assert!(
            !write_if_changed(&StateDir::new(root.path()), &path, b"secret", PRIVATE)
                .expect("same")
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            !write_if_changed(&StateDir::new(root.path()), &path, b"secret", PRIVATE)
                .expect("same")
        );
        assert_eq!(mode(&path), 0o600, "mode is repaired");
        assert!(
            write_if_changed(&StateDir::new(root.path()), &path, b"other", PRIVATE)
                .expect("changed")
        );
        assert_eq!(fs::read(&path).expect("read"), b"other");
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(root.path().join("pki/etcd"))
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
