//! The health check: `GET /readyz` over TLS, the server verified against the cluster CA,
//! the balancer authenticated with a client certificate of its own (any authenticated user
//! may read /readyz: the `system:public-info-viewer` role).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::backends::Address;

/// Why the TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what}: no certificate in it")]
    Empty { what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0:?} is not a valid TLS server name")]
    Name(String),
    #[error("/readyz answered {0:?}")]
    NotReady(String),
}

/// Checks API servers' `/readyz`.
#[derive(Clone)]
pub struct Checker {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> IdentityError {
    move |e| IdentityError::Pem {
        what,
        reason: e.to_string(),
    }
}

impl Checker {
    /// From PEM: the CA that signed the API servers' certificates, the balancer's client
    /// certificate (chain) and its key.
    pub fn new(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
        timeout: Duration,
    ) -> Result<Self, IdentityError> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.map_err(pem_err("CA certificate"))?)?;
        }
        if roots.is_empty() {
            return Err(IdentityError::Empty {
                what: "CA certificate",
            });
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(pem_err("client certificate"))?;
        if chain.is_empty() {
            return Err(IdentityError::Empty {
                what: "client certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_err("client key"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// Ok when the API server at `a` answers `/readyz` with 200 within the timeout.
    pub async fn readyz(&self, a: &Address) -> Result<(), CheckError> {
        tokio::time::timeout(self.timeout, self.ask(a))
            .await
            .map_err(|_| CheckError::Timeout(self.timeout))?
    }

    async fn ask(&self, a: &Address) -> Result<(), CheckError> {
        let name =
            ServerName::try_from(a.host.clone()).map_err(|_| CheckError::Name(a.host.clone()))?;
        let tcp = TcpStream::connect((a.host.as_str(), a.port))
            .await
            .map_err(CheckError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut tls = self.tls.connect(name, tcp).await.map_err(CheckError::Tls)?;
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {a}\r\nUser-Agent: strata-api-balancer\r\n\
             Accept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(CheckError::Tls)?;
        let answer = read_response(&mut tls).await.map_err(CheckError::Tls)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code == "200" {
            Ok(())
        } else {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            let first = body
                .lines()
                .find(|l| l.contains("failed"))
                .unwrap_or(status);
            Err(CheckError::NotReady(first.trim().to_owned()))
        }
    }
}

/// The files of the health-check identity, re-read while the balancer runs: renewed
/// certificates take effect without a restart (which would refuse the node's connections to
/// the API for a moment).
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long a check may take.
    pub timeout: Duration,
}

/// The identity's files as read, to tell whether they changed.
pub type IdentityContent = [Vec<u8>; 3];

/// Why the identity's files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

impl IdentityFiles {
    /// The files' content now.
    pub fn read(&self) -> Result<IdentityContent, LoadError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| LoadError::Read {
                path: p.clone(),
                source,
            })
        };
        Ok([read(&self.ca)?, read(&self.cert)?, read(&self.key)?])
    }

    /// A checker of `content` (as [`Self::read`] gave it).
    pub fn checker(&self, content: &IdentityContent) -> Result<Checker, LoadError> {
        let [ca, cert, key] = content;
        Ok(Checker::new(ca, cert, key, self.timeout)?)
    }
}

/// Reads one HTTP response: up to the end of its body when it has a Content-Length, else
/// until the server closes (at most 64 KiB).
async fn read_response(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            // A server that closes without TLS close_notify has still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(answer);
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() >= 64 * 1024 || complete(&answer) {
            return Ok(answer);
        }
    }
}

/// Whether `answer` holds the whole response (headers and a body of its Content-Length).
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| answer.len() >= end + 4 + n)
}
