//! The one way Strata writes a file locally: atomically and with an exact mode.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory, created
/// exclusively (never through a link) with `mode`, flushed to disk, then renamed over `path`.
/// A link planted at `path` is replaced, not followed; an interrupted run leaves either the
/// old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc_o_nofollow())
        .open(&tmp)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        // The umask may have narrowed the mode at creation; set it exactly.
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Whether every user may write into this (a directory without the sticky bit that /tmp has).
pub fn writable_by_all(m: &fs::Metadata) -> bool {
    m.permissions().mode() & 0o1002 == 0o002
}

/// Why an existing directory is no place for secrets: another user owns it (or, through a
/// symbolic link, its target), or every user may write into it. None when it is safe or
/// does not exist yet.
pub fn unsafe_dir(path: &Path, me: u32) -> io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt as _;
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let target = fs::metadata(path)?;
    if !target.is_dir() {
        return Ok(Some("not a directory".into()));
    }
    if let Some(owner) = [link.uid(), target.uid()].into_iter().find(|o| *o != me) {
        return Ok(Some(format!(
            "owned by uid {owner}, not by this user (uid {me})"
        )));
    }
    if writable_by_all(&target) {
        return Ok(Some("writable by every user".into()));
    }
    Ok(None)
}

/// [`write_atomic`] with mode 0600, for anything that holds a secret.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// The sha256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// O_NOFOLLOW on Linux (the value is part of the kernel's ABI).
const fn libc_o_nofollow() -> i32 {
    0o400000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_replaced_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        fs::write(&victim, "keep").expect("write");
        let path = d.path().join("ca.key");
        std::os::unix::fs::symlink(&victim, &path).expect("link");
        write_private(&path, b"secret").expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep");
        assert_eq!(fs::read_to_string(&path).expect("file"), "secret");
        let meta = fs::symlink_metadata(&path).expect("meta");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn digests_are_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
