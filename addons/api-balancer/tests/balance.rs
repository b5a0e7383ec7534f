//! The balancer between real TLS servers on loopback that answer /readyz as an API server
//! does (client certificates required), checked through real connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use strata_api_balancer::health::{Checker, IdentityFiles};
use strata_api_balancer::{Balancer, Options};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |cn: &str, server: bool| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        server: leaf("kube-apiserver", true),
        client: leaf("strata:api-balancer", false),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(pki: &Pki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    roots
}

/// A stand-in API server: `/readyz` answers 200 while `ready`, `/name` answers its name;
/// connections are kept alive.
struct Server {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(pki: &Pki, name: &'static str) -> Server {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(pki)),
        provider(),
    )
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).expect("key"),
        )
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ready = Arc::new(AtomicBool::new(true));
    let r = Arc::clone(&ready);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let ready = Arc::clone(&r);
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut lines = BufReader::new(tls);
                loop {
                    let mut request = String::new();
                    if lines.read_line(&mut request).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut header = String::new();
                    while lines.read_line(&mut header).await.unwrap_or(0) > 2 {
                        header.clear();
                    }
                    let (code, body) = if request.starts_with("GET /readyz") {
                        if ready.load(Ordering::SeqCst) {
                            ("200 OK", "ok".to_owned())
                        } else {
                            ("500 Internal Server Error", "[-]etcd failed".to_owned())
                        }
                    } else {
                        ("200 OK", name.to_owned())
                    };
                    let answer = format!(
                        "HTTP/1.1 {code}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if lines.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { addr, ready, task }
}

/// A client through the balancer: TLS to whichever API server it lands on.
struct Client {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Client {
    async fn connect(pki: &Pki, balancer: SocketAddr) -> Client {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots(pki))
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client.0.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(pki.client.1.as_bytes()).expect("key"),
            )
            .expect("config");
        let tcp = TcpStream::connect(balancer).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS through the balancer");
        Client { tls }
    }

    /// Asserts that the balancer closes this connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) {
        until("the connection closed", limit, async || {
            tokio::time::timeout(Duration::from_millis(200), self.name())
                .await
                .is_ok_and(|n| n.is_none())
        })
        .await;
    }

    /// The name of the server this connection reached; None once it was closed.
    async fn name(&mut self) -> Option<String> {
        self.tls
            .write_all(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = vec![0; 256];
        let n = self.tls.read(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.split("\r\n\r\n").nth(1).map(str::to_owned)
    }
}

async fn balancer(
    pki: &Pki,
    list: &str,
    dir: &tempfile::TempDir,
) -> (SocketAddr, Arc<strata_api_balancer::pool::Pool>) {
    let file = dir.path().join("backends");
    std::fs::write(&file, list).expect("write");
    let checker = Checker::new(
        pki.ca_pem.as_bytes(),
        pki.client.0.as_bytes(),
        pki.client.1.as_bytes(),
        Duration::from_millis(500),
    )
    .expect("checker");
    let options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        backends_file: file,
        interval: Duration::from_millis(100),
        fall: 2,
        connect_timeout: Duration::from_millis(500),
        drain_grace: DRAIN_GRACE,
        identity: None,
    };
    let b = Balancer::bind(options, checker).await.expect("bind");
    let addr = b.local_addr().expect("addr");
    let pool = Arc::clone(&b.pool);
    tokio::spawn(b.run());
    (addr, pool)
}

/// The balancers' drain time here (`--drain-grace-ms` is 15 s on nodes).
const DRAIN_GRACE: Duration = Duration::from_millis(1500);

async fn until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spreads_connections_and_drops_an_unready_server_with_its_connections() {
    let pki = pki();
    let a = server(&pki, "a").await;
    let b = server(&pki, "b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, pool) = balancer(&pki, &format!("{}\n{}\n", a.addr, b.addr), &dir).await;
    until("both checked ready", Duration::from_secs(5), async || {
        pool.backends().iter().all(|b| b.is_healthy())
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&pki, addr).await;
        let name = c.name().await.expect("an answer");
        held.push((name, c));
    }
    let on_a = held.iter().filter(|(n, _)| n == "a").count();
    assert_eq!(
        on_a,
        2,
        "spread evenly: {:?}",
        held.iter().map(|h| &h.0).collect::<Vec<_>>()
    );

    // a stops being ready: dropped at once (new connections go to b), its connections left
    // to it for the drain time (an API server shutting down finishes their requests), then
    // closed.
    a.ready.store(false, Ordering::SeqCst);
    let started = Instant::now();
    until("a dropped", Duration::from_secs(3), async || {
        !pool.backends()[0].is_healthy()
    })
    .await;
    let dropped = started.elapsed();
    for (_, c) in held.iter_mut().filter(|(n, _)| n == "a") {
        assert_eq!(
            c.name().await.as_deref(),
            Some("a"),
            "a's connection cut before the drain time"
        );
    }
    assert!(
        started.elapsed() < dropped + DRAIN_GRACE,
        "the check of a's connections took longer than the drain time"
    );
    for (name, c) in held.iter_mut().filter(|(n, _)| n == "a") {
        c.closed_within(DRAIN_GRACE + Duration::from_secs(3)).await;
        name.clear();
    }
    let closed = started.elapsed();
    assert!(
        closed >= DRAIN_GRACE,
        "a's connections closed {closed:?} after it was unready: before the drain time"
    );
    println!("a dropped after {dropped:?}, its connections closed after {closed:?}");
    for (name, c) in held.iter_mut().filter(|(n, _)| n == "b") {
        assert_eq!(
            c.name().await.as_deref(),
            Some("b"),
            "{name}'s connection stays"
        );
    }
    for _ in 0..4 {
        let mut c = Client::connect(&pki, addr).await;
        assert_eq!(c.name().await.as_deref(), Some("b"));
    }
    // Ready again: taken again.
    a.ready.store(true, Ordering::SeqCst);
    until("a back", Duration::from_secs(3), async || {
        pool.backends()[0].is_healthy()
    })
    .await;
    let mut names = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&pki, addr).await;
        names.push(c.name().await.expect("answer"));
        drop(c);
    }
    assert!(names.contains(&"a".to_owned()), "{names:?}");
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_the_list_is_reread() {
    let pki = pki();
    let a = server(&pki, "a").await;
    let b = server(&pki, "b").await;
    // Nothing listens on `dead`.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, pool) = balancer(&pki, &format!("{dead_addr}\n{}\n", a.addr), &dir).await;
    // Before any check, a new connection still finds the live server.
    let mut c = Client::connect(&pki, addr).await;
    assert_eq!(c.name().await.as_deref(), Some("a"));
    until(
        "a ready, the dead one not",
        Duration::from_secs(5),
        async || {
            let list = pool.backends();
            !list[0].is_healthy() && list[1].is_healthy()
        },
    )
    .await;

    // The file now lists b only: a's connections are closed, new ones reach b.
    std::fs::write(dir.path().join("backends"), format!("{}\n", b.addr)).expect("write");
    c.closed_within(Duration::from_secs(3)).await;
    let mut c = Client::connect(&pki, addr).await;
    assert_eq!(c.name().await.as_deref(), Some("b"));
    // A broken file keeps the list known so far.
    std::fs::write(dir.path().join("backends"), "not an address\n").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.backends().len(), 1);
    let mut c = Client::connect(&pki, addr).await;
    assert_eq!(c.name().await.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_check_needs_the_cluster_ca() {
    let pki = pki();
    let other = pki_other();
    let a = server(&pki, "a").await;
    let checker = Checker::new(
        other.as_bytes(),
        pki.client.0.as_bytes(),
        pki.client.1.as_bytes(),
        Duration::from_secs(2),
    )
    .expect("checker");
    let addr = strata_api_balancer::backends::Address {
        host: "127.0.0.1".into(),
        port: a.addr.port(),
    };
    let err = checker.readyz(&addr).await.expect_err("unknown CA");
    assert!(err.to_string().contains("TLS"), "{err}");
    let good = Checker::new(
        pki.ca_pem.as_bytes(),
        pki.client.0.as_bytes(),
        pki.client.1.as_bytes(),
        Duration::from_secs(2),
    )
    .expect("checker");
    good.readyz(&addr).await.expect("ready");
    a.ready.store(false, Ordering::SeqCst);
    let err = good.readyz(&addr).await.expect_err("not ready");
    assert!(err.to_string().contains("etcd failed"), "{err}");
}

#[tokio::test]
async fn a_renewed_identity_is_read_without_a_restart() {
    let pki = pki();
    let stranger = self::pki();
    let a = server(&pki, "a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backends = dir.path().join("backends");
    std::fs::write(&backends, format!("127.0.0.1:{}\n", a.addr.port())).expect("write");
    let files = IdentityFiles {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("client.crt"),
        key: dir.path().join("client.key"),
        timeout: Duration::from_millis(500),
    };
    // A client certificate of another CA: the API server refuses the checks.
    std::fs::write(&files.ca, &pki.ca_pem).expect("write");
    std::fs::write(&files.cert, &stranger.client.0).expect("write");
    std::fs::write(&files.key, &stranger.client.1).expect("write");
    let checker = files
        .read()
        .and_then(|c| files.checker(&c))
        .expect("checker");
    let options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        backends_file: backends,
        interval: Duration::from_millis(100),
        fall: 2,
        connect_timeout: Duration::from_millis(500),
        drain_grace: DRAIN_GRACE,
        identity: Some(files.clone()),
    };
    let b = Balancer::bind(options, checker).await.expect("bind");
    let pool = Arc::clone(&b.pool);
    tokio::spawn(b.run());
    let healthy =
        |pool: &strata_api_balancer::pool::Pool| pool.backends().iter().any(|b| b.is_healthy());
    until(
        "dropped: its checks refused",
        Duration::from_secs(5),
        async || !healthy(&pool),
    )
    .await;
    // The certificate renewed in place, its key not yet: the identity in use is kept.
    std::fs::write(&files.cert, &pki.client.0).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!healthy(&pool));
    std::fs::write(&files.key, &pki.client.1).expect("write");
    until(
        "ready with the renewed identity",
        Duration::from_secs(5),
        async || healthy(&pool),
    )
    .await;
}

fn pki_other() -> String {
    pki().ca_pem
}
