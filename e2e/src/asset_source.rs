//! An https asset source as an operator would publish one: a directory (Strata's assets with
//! their manifest.json) served over TLS by a small static file server on an address the
//! test's machines reach, with its own throwaway CA. It counts the bytes it served to each
//! client address and can turn clients away (a host behind a firewall), so that a test sees
//! who fetched what.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::test_ca::TestCa;

#[derive(Debug)]
pub struct AssetSource {
    /// `https://IP:PORT/`, the directory's URL.
    pub url: String,
    pub ca: TestCa,
    /// The CA certificate as a file, for `SSL_CERT_FILE` of a strata process.
    pub ca_file: PathBuf,
    address: SocketAddr,
    served: Arc<Mutex<BTreeMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
}

impl AssetSource {
    /// Serves `root` on `ip` (a free port), turning away connections from `refused`; the
    /// CA certificate is written to `dir`.
    pub fn start(dir: &Path, root: &Path, ip: IpAddr, refused: Vec<IpAddr>) -> Self {
        std::fs::create_dir_all(dir).expect("asset source dir");
        let ca = TestCa::new("strata e2e asset source CA");
        let cert = ca.server("strata e2e asset source", ip);
        let ca_file = dir.join("asset-source-ca.crt");
        std::fs::write(&ca_file, &ca.pem).expect("write");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert_der.into()],
            rustls::pki_types::PrivateKeyDer::try_from(cert.key_der).expect("key"),
        )
        .expect("TLS configuration");
        let config = Arc::new(config);
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
        let address = listener.local_addr().expect("address");
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, stopping, root) = (served.clone(), stop.clone(), root.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                if refused.contains(&peer.ip()) {
                    drop(stream);
                    continue;
                }
                let (config, counts, root) = (config.clone(), counts.clone(), root.clone());
                std::thread::spawn(move || {
                    let bytes = serve(stream, config, &root);
                    if let Ok(mut c) = counts.lock() {
                        *c.entry(peer.ip()).or_insert(0) += bytes;
                    }
                });
            }
        });
        Self {
            url: format!("https://{address}/"),
            ca,
            ca_file,
            address,
            served,
            stop,
        }
    }

    /// The bytes of file bodies served to `ip` so far.
    pub fn served_to(&self, ip: IpAddr) -> u64 {
        self.served().get(&ip).copied().unwrap_or(0)
    }

    /// The bytes of file bodies served so far, by client address.
    pub fn served(&self) -> BTreeMap<IpAddr, u64> {
        self.served.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for AssetSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then stops.
        let _ = TcpStream::connect(self.address);
    }
}

/// Answers one request (`GET /path`, files under `root` only) and closes; the body bytes
/// sent.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>, root: &Path) -> u64 {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return 0;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    {
        let mut reader = BufReader::new(&mut tls);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push(line);
        }
    }
    let path = head
        .first()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default();
    let file = path
        .strip_prefix('/')
        .filter(|p| !p.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
        .map(|p| root.join(p))
        .and_then(|p| std::fs::File::open(p).ok());
    let mut sent = 0;
    match file.and_then(|f| Some((f.metadata().ok()?.len(), f))) {
        Some((len, mut f)) => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            if tls.write_all(head.as_bytes()).is_ok() {
                sent = std::io::copy(&mut f, &mut tls).unwrap_or(0);
            }
        }
        None => {
            let _ = tls.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    sent
}
