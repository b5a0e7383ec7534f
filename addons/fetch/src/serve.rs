//! The serving side: a minimal HTTP/1.1 server for `GET <absolute path>` with the apply's
//! token as a bearer token, one thread per connection, one request per connection
//! (`Connection: close`). Paths outside the allow-list get 404, whether or not the file
//! exists; a wrong or missing token gets 401.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, PublicDirs, Token};

/// The largest request head read; asset requests are a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send may stall (a receiver that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed at once (the peers of one apply need a few).
const MAX_CONNECTIONS: usize = 64;

/// What may be served, checked once when the server starts.
#[derive(Debug, Clone)]
pub struct AllowList(BTreeSet<String>);

impl AllowList {
    /// Refused when a path is not in a public directory (see [`PublicDirs::contains`]).
    pub fn new<I: IntoIterator<Item = String>>(dirs: &PublicDirs, paths: I) -> Result<Self, Error> {
        let mut set = BTreeSet::new();
        for p in paths {
            dirs.check(&p)?;
            set.insert(p);
        }
        Ok(Self(set))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a server did.
#[derive(Debug, Default)]
pub struct Served {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

impl Served {
    pub fn summary(&self) -> String {
        format!(
            "served {} file(s), {} bytes; refused {} request(s)",
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        )
    }
}

/// Binds the listener, with the address in the error.
pub fn listen(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).map_err(|source| Error::Listen {
        addr: addr.to_owned(),
        source,
    })
}

/// Serves `allowed` on `listener` from a thread of its own, for as long as the process
/// runs; the counters are returned at once.
pub fn spawn(listener: TcpListener, token: Token, allowed: AllowList) -> Arc<Served> {
    let served = Arc::new(Served::default());
    let counters = served.clone();
    let shared = Arc::new((token, allowed));
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                // Out of descriptors, or the like: a moment's pause, not a busy loop.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::AcqRel);
                counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (shared, served, open) = (shared.clone(), counters.clone(), open.clone());
            std::thread::spawn(move || {
                let (token, allowed) = &*shared;
                // A client that goes away mid-transfer is its own problem: it verifies what
                // it got and asks again.
                let _ = answer(stream, token, allowed, &served);
                open.fetch_sub(1, Ordering::AcqRel);
            });
        }
    });
    served
}

/// The request's path and bearer token, from its head; None when it is not a GET.
fn parse_head(head: &str) -> Option<(&str, Option<&str>)> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    if method != "GET" || !version.starts_with("HTTP/1.") || first.next().is_some() {
        return None;
    }
    let token = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    });
    Some((path, token))
}

/// Reads up to the blank line that ends a request or response head, within `limit` in all
/// (each read's own timeout is the stream's); the head, and what came after it in the same
/// reads.
pub(crate) fn read_head(
    stream: &mut impl Read,
    limit: Duration,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if started.elapsed() > limit {
            return Ok(None);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok(String::from_utf8(buf).ok().map(|h| (h, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status(stream: &mut TcpStream, code: &str) -> std::io::Result<()> {
    stream.write_all(
        format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn answer(
    mut stream: TcpStream,
    token: &Token,
    allowed: &AllowList,
    served: &Served,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(HEAD_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = read_head(&mut stream, HEAD_TIMEOUT)?;
    let Some((path, presented)) = head.as_ref().and_then(|(h, _)| parse_head(h)) else {
        served.refused.fetch_add(1, Ordering::Relaxed);
        return status(&mut stream, "400 Bad Request");
    };
    if !presented.is_some_and(|p| token.matches(p)) {
        served.refused.fetch_add(1, Ordering::Relaxed);
        return status(&mut stream, "401 Unauthorized");
    }
    let file = if allowed.0.contains(path) {
        std::fs::File::open(path).ok()
    } else {
        None
    };
    let Some(mut file) = file else {
        served.refused.fetch_add(1, Ordering::Relaxed);
        return status(&mut stream, "404 Not Found");
    };
    let len = file.metadata()?.len();
    stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let sent = std::io::copy(&mut file, &mut stream)?;
    stream.flush()?;
    served.files.fetch_add(1, Ordering::Relaxed);
    served.bytes.fetch_add(sent, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_gives_path_and_bearer_token() {
        let head = "GET /opt/strata/bin/kubelet HTTP/1.1\r\nhost: x\r\nAuthorization: Bearer abc";
        assert_eq!(
            parse_head(head),
            Some(("/opt/strata/bin/kubelet", Some("abc")))
        );
        assert_eq!(
            parse_head("GET /a HTTP/1.1\r\nauthorization: Basic abc"),
            Some(("/a", None))
        );
        assert_eq!(parse_head("POST /a HTTP/1.1"), None);
        assert_eq!(parse_head("GET /a b HTTP/1.1"), None);
    }

    #[test]
    fn a_head_ends_at_the_blank_line() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let limit = Duration::from_secs(1);
        let (head, rest) = read_head(&mut input, limit).expect("read").expect("head");
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 3");
        assert_eq!(rest, b"abc");
        let mut cut: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(read_head(&mut cut, limit).expect("read").is_none());
    }

    #[test]
    fn an_allow_list_holds_public_assets_only() {
        let dirs = PublicDirs::new(&["/opt/strata/bin".into()]).expect("valid");
        assert!(AllowList::new(&dirs, ["/opt/strata/bin/kubelet".to_owned()]).is_ok());
        let e =
            AllowList::new(&dirs, ["/etc/kubernetes/pki/ca.key".to_owned()]).expect_err("refused");
        assert!(e.to_string().contains("/etc/kubernetes/pki/ca.key"), "{e}");
    }
}
