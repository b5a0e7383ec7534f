//! The getting side: each wanted file downloaded beside its destination, its sha256
//! computed while it arrives, and renamed into place only when the length and digest are
//! the ones expected (mode set first). A file already there with that digest is not
//! fetched.
//!
//! Two kinds of source: a peer of the apply (`http://host:port/path`, with the apply's
//! token), and the cluster's asset source or mirror (`https://...`, verified against the
//! host's trust store, redirects followed to https only, the token never sent).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::tls::{RootCerts, TlsConfig, TlsProvider};

use sha2::{Digest, Sha256};

use crate::serve::read_head;
use crate::{Error, PublicDirs, Token, hex};

/// How long a transfer may go without receiving anything.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An https source farther away: the connection, and the whole of one download (a read
/// that waits [`READ_TIMEOUT`] fails it before that).
const SOURCE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SOURCE_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Files fetched at once.
const PARALLEL: usize = 3;

/// One file to fetch: `url` to `path` with `mode`, whose content has `sha256` and `size`
/// bytes (when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub sha256: String,
    pub size: Option<u64>,
    pub mode: u32,
    pub url: String,
    pub path: String,
}

impl Want {
    /// One line of the list: `<sha256> <size or -> <octal mode> <url> <path>`; the path must
    /// be in a public directory, the URL `http://host:port/path` (a peer) or `https://...`.
    pub fn parse(dirs: &PublicDirs, line: &str) -> Result<Self, Error> {
        let bad = || Error::Input(format!("not `<sha256> <size> <mode> <url> <path>`: {line}"));
        let mut f = line.split_whitespace();
        let (sha256, size, mode, url, path) = (
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
        );
        let size = match size {
            "-" => None,
            n => Some(n.parse().map_err(|_| bad())?),
        };
        if f.next().is_some()
            || sha256.len() != 64
            || !sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        let mode = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
        dirs.check(path)?;
        if !is_https(url) {
            split_url(url)?;
        }
        Ok(Self {
            sha256: sha256.to_ascii_lowercase(),
            size,
            mode,
            url: url.into(),
            path: path.into(),
        })
    }
}

/// Whether `url` names an https source (a host after the scheme, no spaces).
fn is_https(url: &str) -> bool {
    url.strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// `http://host:port/path` as (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Url(url.into()))?;
    let slash = rest.find('/').ok_or_else(|| Error::Url(url.into()))?;
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() || !authority.contains(':') {
        return Err(Error::Url(url.into()));
    }
    Ok((authority, path))
}

/// The sha256 of the file at `path`, if there is one and it is owned by this process's
/// user (a file of another owner with the right bytes is replaced: whoever owns it could
/// change it later).
fn digest_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.uid() != rustix::process::geteuid().as_raw() {
        return None;
    }
    let mut h = Hashing {
        inner: std::io::sink(),
        hash: Sha256::new(),
        written: 0,
    };
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut h).ok()?;
    Some(hex(&h.hash.finalize()))
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fetches files: from peers with the apply's token, from https sources with an agent
/// that trusts the host's certificate authorities (or the ones given, in tests).
#[derive(Debug)]
pub struct Getter {
    token: Token,
    https: ureq::Agent,
}

impl Getter {
    /// A getter whose https downloads are verified against the host's trust store.
    pub fn new(token: Token) -> Self {
        Self::with_roots(token, RootCerts::PlatformVerifier)
    }

    /// A getter that trusts only the certificate authorities `roots` (DER) for https.
    pub fn trusting(token: Token, roots: &[Vec<u8>]) -> Self {
        let roots: Vec<_> = roots
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
            .collect();
        Self::with_roots(token, RootCerts::new_with_certs(&roots))
    }

    fn with_roots(token: Token, roots: RootCerts) -> Self {
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .timeout_connect(Some(SOURCE_CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .timeout_global(Some(SOURCE_DOWNLOAD_TIMEOUT))
            .http_status_as_error(false)
            .build();
        Self {
            token,
            https: config.into(),
        }
    }

    /// Fetches one file; returns the bytes received (0 when it was already there).
    pub fn fetch(&self, w: &Want) -> Result<u64, Error> {
        let path = Path::new(&w.path);
        if digest_of(path).as_deref() == Some(w.sha256.as_str()) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(w.mode)).map_err(
                |source| Error::Write {
                    path: w.path.clone(),
                    source,
                },
            )?;
            return Ok(0);
        }
        if is_https(&w.url) {
            self.get_from_source(w)
        } else {
            self.get_from_peer(w)
        }
    }

    /// From the cluster's https asset source or mirror: no token.
    fn get_from_source(&self, w: &Want) -> Result<u64, Error> {
        let transfer = |reason: String| Error::Transfer {
            url: w.url.clone(),
            reason,
        };
        let resp = self
            .https
            .get(&w.url)
            .call()
            .map_err(|e| transfer(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(transfer(format!("answered {status}")));
        }
        let length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let (Some(have), Some(want)) = (length, w.size)
            && have != want
        {
            return Err(transfer(format!("offers {have} bytes, {want} expected")));
        }
        let reader = resp.into_body().into_reader();
        store(w, Vec::new(), reader, w.size.or(length))
    }

    /// From a peer of the apply, with its token.
    fn get_from_peer(&self, w: &Want) -> Result<u64, Error> {
        let transfer = |reason: String| Error::Transfer {
            url: w.url.clone(),
            reason,
        };
        let (authority, remote) = split_url(&w.url)?;
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| transfer(e.to_string()))?
            .next()
            .ok_or_else(|| transfer("no address".into()))?;
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| transfer(e.to_string()))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| transfer(e.to_string()))?;
        write!(
            stream,
            "GET {remote} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            self.token.as_str()
        )
        .map_err(|e| transfer(e.to_string()))?;
        let (head, body_start) = read_head(&mut stream, READ_TIMEOUT)
            .map_err(|e| transfer(e.to_string()))?
            .ok_or_else(|| transfer("no answer".into()))?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            let line = head.lines().next().unwrap_or_default();
            return Err(transfer(format!("answered {line}")));
        }
        let length: u64 = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| transfer("no Content-Length".into()))?;
        if let Some(want) = w.size
            && length != want
        {
            return Err(transfer(format!("offers {length} bytes, {want} expected")));
        }
        store(w, body_start, stream, Some(length))
    }

    /// Fetches every file of `wants`, a few at once. Each result is reported through `done`
    /// as it completes; every failure is returned, not just the first.
    pub fn fetch_all(
        &self,
        wants: &[Want],
        done: impl Fn(&Want, &Result<u64, Error>) + Sync,
    ) -> Vec<Error> {
        let next = AtomicUsize::new(0);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(wants.len()) {
                s.spawn(|| {
                    while let Some(w) = wants.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let r = self.fetch(w);
                        done(w, &r);
                        if let Err(e) = r
                            && let Ok(mut list) = errors.lock()
                        {
                            list.push(e);
                        }
                    }
                });
            }
        });
        errors.into_inner().unwrap_or_default()
    }
}

/// Writes the body (`start`, then the rest from `body`: `length` bytes when known, else to
/// its end) to a temporary file beside `w.path`, and renames it into place with its mode
/// only when the length and sha256 are right.
fn store(w: &Want, start: Vec<u8>, body: impl Read, length: Option<u64>) -> Result<u64, Error> {
    let path = Path::new(&w.path);
    let write = |source| Error::Write {
        path: w.path.clone(),
        source,
    };
    let transfer = |reason: String| Error::Transfer {
        url: w.url.clone(),
        reason,
    };
    let dir = path
        .parent()
        .ok_or_else(|| Error::Input(format!("{} has no directory", w.path)))?;
    std::fs::create_dir_all(dir).map_err(write)?;
    let tmp = tempfile::Builder::new()
        .prefix(".strata-fetch.")
        .tempfile_in(dir)
        .map_err(write)?;
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, tmp),
        hash: Sha256::new(),
        written: 0,
    };
    out.write_all(&start).map_err(write)?;
    // Never more than announced: a source that sends on is cut at the length.
    let rest = length.map_or(u64::MAX, |l| l.saturating_sub(start.len() as u64));
    std::io::copy(&mut body.take(rest), &mut out)
        .map_err(|e| transfer(format!("after {} bytes: {e}", out.written)))?;
    if let Some(length) = length
        && out.written != length
    {
        return Err(transfer(format!(
            "ended after {} of {length} bytes",
            out.written
        )));
    }
    let got = hex(&out.hash.finalize());
    if got != w.sha256 {
        return Err(Error::Digest {
            url: w.url.clone(),
            path: w.path.clone(),
            got,
            want: w.sha256.clone(),
        });
    }
    let written = out.written;
    let tmp = out.inner.into_inner().map_err(|e| write(e.into_error()))?;
    tmp.as_file().sync_all().map_err(write)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(w.mode))
        .map_err(write)?;
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_with_a_port() {
        assert_eq!(
            split_url("http://198.18.0.2:10263/opt/strata/bin/kubelet").expect("url"),
            ("198.18.0.2:10263", "/opt/strata/bin/kubelet")
        );
        assert_eq!(
            split_url("http://[fd00::2]:10263/a").expect("url"),
            ("[fd00::2]:10263", "/a")
        );
        for bad in ["https://h:1/a", "http://h/a", "http://h:1", "ftp://h:1/a"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
        assert!(is_https("https://mirror.example/assets/bin/kubelet"));
        for bad in ["https://", "https:///a", "http://h:1/a"] {
            assert!(!is_https(bad), "{bad}");
        }
    }
}
