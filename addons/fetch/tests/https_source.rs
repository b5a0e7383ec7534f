//! Downloads from an https asset source: a real TLS server on loopback with its own CA, a
//! redirect, a body without Content-Length, a replaced file, a server nobody trusts; the
//! apply's token never leaves for the source.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use sha2::{Digest, Sha256};
use strata_fetch::get::{Getter, Want};
use strata_fetch::{PublicDirs, Token};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A TLS server on 127.0.0.1 answering each request by its path: `/redirect` sends to
/// `/kubelet`, `/unsized` has no Content-Length (the body ends with the connection),
/// anything in `files` is served, the rest is 404. Every request head is kept.
struct Source {
    port: u16,
    ca_der: Vec<u8>,
    heads: Arc<Mutex<Vec<String>>>,
}

fn source(files: Vec<(&'static str, Vec<u8>)>) -> Source {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).expect("issuer");
    let cert = leaf.signed_by(&key, &issuer).expect("certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).expect("connection");
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut head = String::new();
            let mut reader = BufReader::new(&mut tls);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            seen.lock().expect("lock").push(head);
            let answer: Vec<u8> = match path.as_str() {
                "/redirect" => b"HTTP/1.1 302 Found\r\nLocation: /kubelet\r\nContent-Length: 0\r\n\
                                 Connection: close\r\n\r\n"
                    .to_vec(),
                "/unsized" => [
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".as_slice(),
                    b"no length given",
                ]
                .concat(),
                p => match files.iter().find(|(name, _)| p == format!("/{name}")) {
                    Some((_, content)) => [
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            content.len()
                        )
                        .as_bytes(),
                        content,
                    ]
                    .concat(),
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                },
            };
            let _ = tls.write_all(&answer);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    Source {
        port,
        ca_der: ca_cert.der().to_vec(),
        heads,
    }
}

struct Target {
    dir: tempfile::TempDir,
    dirs: PublicDirs,
}

fn target() -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let public = dir.path().to_str().expect("utf-8").to_owned();
    let dirs = PublicDirs::new(&[public]).expect("dirs");
    Target { dir, dirs }
}

impl Target {
    fn want(&self, s: &Source, path: &str, content: &[u8], size: &str, to: &str) -> Want {
        let line = format!(
            "{} {size} 755 https://127.0.0.1:{}{path} {}/{to}",
            sha256_hex(content),
            s.port,
            self.dir.path().display()
        );
        Want::parse(&self.dirs, &line).expect("want")
    }
}

fn trusting(s: &Source) -> Getter {
    Getter::trusting(
        Token::new(TOKEN).expect("token"),
        std::slice::from_ref(&s.ca_der),
    )
}

#[test]
fn files_from_an_https_source_arrive_verified_and_the_token_stays_home() {
    let kubelet = b"the kubelet".repeat(100_000);
    let s = source(vec![("kubelet", kubelet.clone())]);
    let t = target();
    let getter = trusting(&s);
    let sized = t.want(
        &s,
        "/kubelet",
        &kubelet,
        &kubelet.len().to_string(),
        "a/kubelet",
    );
    assert_eq!(getter.fetch(&sized).expect("fetched"), kubelet.len() as u64);
    assert_eq!(std::fs::read(&sized.path).expect("read"), kubelet);
    // A redirect is followed, a size not given is taken from the answer.
    let redirected = t.want(&s, "/redirect", &kubelet, "-", "b/kubelet");
    assert_eq!(
        getter.fetch(&redirected).expect("fetched"),
        kubelet.len() as u64
    );
    // A body without a length is read to its end, then verified.
    let unsized_ = t.want(&s, "/unsized", b"no length given", "-", "c/unsized");
    assert_eq!(getter.fetch(&unsized_).expect("fetched"), 15);
    // Already in place: nothing is asked of the source.
    let before = s.heads.lock().expect("lock").len();
    assert_eq!(getter.fetch(&sized).expect("again"), 0);
    assert_eq!(s.heads.lock().expect("lock").len(), before);
    for head in s.heads.lock().expect("lock").iter() {
        assert!(
            !head.to_ascii_lowercase().contains("authorization") && !head.contains(TOKEN),
            "the apply's token was sent to the source: {head}"
        );
    }
}

#[test]
fn a_replaced_file_a_wrong_size_a_missing_file_and_an_untrusted_source_are_refused() {
    let s = source(vec![("kubelet", b"replaced".to_vec())]);
    let t = target();
    let getter = trusting(&s);
    let replaced = t.want(&s, "/kubelet", b"the real kubelet", "-", "kubelet");
    let e = getter.fetch(&replaced).expect_err("digest");
    assert!(e.to_string().contains("got sha256"), "{e}");
    assert!(!std::path::Path::new(&replaced.path).exists());
    let sized = t.want(&s, "/kubelet", b"replaced", "99", "kubelet");
    let e = getter.fetch(&sized).expect_err("size");
    assert!(e.to_string().contains("offers 8 bytes, 99 expected"), "{e}");
    let missing = t.want(&s, "/absent", b"x", "-", "absent");
    let e = getter.fetch(&missing).expect_err("404");
    assert!(e.to_string().contains("404"), "{e}");
    // The host's own trust store does not know the test's CA.
    let untrusted = Getter::new(Token::new(TOKEN).expect("token"));
    let ok = t.want(&s, "/kubelet", b"replaced", "-", "kubelet");
    let e = untrusted.fetch(&ok).expect_err("untrusted");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", s.port)),
        "{e}"
    );
    assert!(!std::path::Path::new(&ok.path).exists());
    assert!(
        std::fs::read_dir(t.dir.path())
            .expect("list")
            .next()
            .is_none(),
        "no file and no temporary file left"
    );
}
