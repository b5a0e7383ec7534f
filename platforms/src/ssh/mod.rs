//! SSH: fingerprints, and the transport every platform provisions hosts through.

mod transport;

pub use transport::{
    CommandOutput, Connection, FileUpload, HostKeyPolicy, Identity, Jump, PASSPHRASE_ENV,
    RemoteFile, Running, Secret, SshError, Target, Upload, key_is_encrypted, presented_host_key,
    quote,
};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

/// The OpenSSH SHA256 fingerprint (`SHA256:...`, as `ssh-keygen -lf` prints it) of a public
/// key line such as `ssh-ed25519 AAAA... comment`.
pub fn fingerprint(public_key_line: &str) -> Result<String, String> {
    let blob = public_key_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| "not an OpenSSH public key line".to_string())?;
    let bytes = STANDARD
        .decode(blob)
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    Ok(format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(digest.as_ref())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ssh_keygen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(out.status.success());
        let line = std::fs::read_to_string(dir.path().join("k.pub")).expect("pub");
        let listed = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.path().join("k.pub"))
            .output()
            .expect("ssh-keygen -l");
        let theirs = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_owned();
        assert_eq!(fingerprint(&line).expect("ours"), theirs);
        assert!(fingerprint("garbage").is_err());
        assert!(fingerprint("ssh-ed25519 !!!").is_err());
    }
}
