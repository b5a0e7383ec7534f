//! How the hosts of a cluster pass Strata's public assets (binaries, CNI plugins, image
//! archives) to each other during an apply, so that the computer running `strata apply`
//! sends each file once however many hosts need it (see the installer's fan-out).
//!
//! - [`serve`]: a host that holds files serves them over HTTP on its cluster address,
//!   only the paths it was given (public assets, never keys: every path must be under one
//!   of the public directories named on its command line), only to requests bearing the
//!   apply's token, for as long as the apply keeps its standard input open (and never past
//!   a time limit).
//! - [`get`]: a host that needs files gets each from a peer (`http://host:port/path`),
//!   writes it to a temporary file beside its destination, and renames it into place only
//!   when its size and sha256 are the ones it was asked for.
//!
//! The content is public and verified by digest on arrival, so the transport is plain
//! HTTP between hosts; the token keeps the server from serving anyone but the apply's
//! hosts.

#![forbid(unsafe_code)]

pub mod get;
pub mod serve;

/// The apply's shared secret, compared in constant time.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token as read from the first line of standard input; refused when too short to
    /// be a secret.
    pub fn new(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.len() < 32 {
            return Err(Error::Input(
                "the first line must be the apply's token (32 characters or more)".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Input(String),
    #[error("{path} is not under a public directory ({dirs}): refused")]
    NotPublic { path: String, dirs: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{url}: {reason}")]
    Transfer { url: String, reason: String },
    #[error("{0}: only http://host:port/path URLs")]
    Url(String),
    #[error("{url}: got sha256 {got}, want {want}; {path} left as it was")]
    Digest {
        url: String,
        path: String,
        got: String,
        want: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The directories whose files may be served or written (where Strata puts its binaries,
/// the CNI plugins and the image archives): absolute, without `..`.
#[derive(Debug, Clone)]
pub struct PublicDirs(Vec<String>);

impl PublicDirs {
    pub fn new(dirs: &[String]) -> Result<Self, Error> {
        let mut out = Vec::new();
        for d in dirs {
            let d = format!("{}/", d.trim_end_matches('/'));
            if !d.starts_with('/') || d.len() < 2 || d.split('/').any(|c| c == "..") {
                return Err(Error::Input(format!(
                    "{d}: a public directory must be an absolute path without `..`"
                )));
            }
            out.push(d);
        }
        if out.is_empty() {
            return Err(Error::Input("name at least one --public-dir".into()));
        }
        Ok(Self(out))
    }

    /// Whether `path` is a plain absolute path under a public directory (no `..`, `.` or
    /// empty components, nothing but the characters asset names use).
    pub fn contains(&self, path: &str) -> bool {
        is_plain(path) && self.0.iter().any(|d| path.starts_with(d.as_str()))
    }

    /// `path`, or the error that it is not public.
    pub fn check(&self, path: &str) -> Result<(), Error> {
        if self.contains(path) {
            Ok(())
        } else {
            Err(Error::NotPublic {
                path: path.into(),
                dirs: self.0.join(", "),
            })
        }
    }
}

fn is_plain(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_the_public_directories_are_public() {
        let dirs = PublicDirs::new(&[
            "/opt/strata/bin".into(),
            "/opt/cni/bin/".into(),
            "/var/lib/strata/images".into(),
        ])
        .expect("valid");
        assert!(dirs.contains("/opt/strata/bin/kubelet"));
        assert!(dirs.contains("/opt/cni/bin/bridge"));
        assert!(dirs.contains("/var/lib/strata/images/pause.tar"));
        for p in [
            "/etc/kubernetes/pki/ca.key",
            "/opt/strata/bin/../../../etc/kubernetes/pki/ca.key",
            "/opt/strata/bin/./kubelet",
            "/opt/strata/bin//kubelet",
            "/opt/strata/bin/",
            "/opt/strata/binx",
            "/opt/strata/bin/a b",
            "opt/strata/bin/kubelet",
        ] {
            assert!(!dirs.contains(p), "{p}");
        }
        assert!(PublicDirs::new(&["relative".into()]).is_err());
        assert!(PublicDirs::new(&["/a/../etc".into()]).is_err());
        assert!(PublicDirs::new(&[]).is_err());
    }

    #[test]
    fn a_short_token_is_refused_and_tokens_compare_whole() {
        assert!(Token::new("short").is_err());
        let t = Token::new(&"a".repeat(64)).expect("long enough");
        assert!(t.matches(&"a".repeat(64)));
        assert!(!t.matches(&"a".repeat(63)));
        assert!(!t.matches(&"b".repeat(64)));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }
}
