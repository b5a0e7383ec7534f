//! A real server and client on loopback: what is served, to whom, and what arrives.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use strata_fetch::get::{self, Want};
use strata_fetch::serve::{self, AllowList, Served};
use strata_fetch::{PublicDirs, Token};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

struct Setup {
    _dir: tempfile::TempDir,
    public: String,
    dirs: PublicDirs,
    addr: String,
    served: std::sync::Arc<Served>,
}

/// A server of `<public>/served/` holding `files`, allowed to serve `allowed` of them.
fn setup(files: &[(&str, &[u8])], allowed: &[&str]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_str().expect("utf-8").to_owned();
    let public = format!("{root}/public");
    let served = format!("{public}/served");
    std::fs::create_dir_all(&served).expect("mkdir");
    for (name, content) in files {
        std::fs::write(format!("{served}/{name}"), content).expect("write");
    }
    std::fs::write(format!("{root}/secret.key"), b"private").expect("write");
    let dirs = PublicDirs::new(std::slice::from_ref(&public)).expect("dirs");
    let allow =
        AllowList::new(&dirs, allowed.iter().map(|n| format!("{served}/{n}"))).expect("allow-list");
    let listener = serve::listen("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr").to_string();
    let served = serve::spawn(listener, Token::new(TOKEN).expect("token"), allow);
    Setup {
        _dir: dir,
        public,
        dirs,
        addr,
        served,
    }
}

impl Setup {
    fn want(&self, name: &str, content: &[u8], to: &str) -> Want {
        let line = format!(
            "{} {} 755 http://{}{}/served/{name} {}/{to}",
            sha256_hex(content),
            content.len(),
            self.addr,
            self.public,
            self.public
        );
        Want::parse(&self.dirs, &line).expect("want")
    }

    /// The status line the server answers a raw request for `path` with.
    fn raw(&self, path: &str, token: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer.lines().next().unwrap_or_default().to_owned()
    }
}

fn getter() -> get::Getter {
    get::Getter::new(Token::new(TOKEN).expect("token"))
}

#[test]
fn files_arrive_verified_with_their_mode_and_are_not_fetched_twice() {
    let big = b"the kubelet".repeat(300_000);
    let small = b"ctr".to_vec();
    let s = setup(&[("kubelet", &big), ("ctr", &small)], &["kubelet", "ctr"]);
    let wants = [
        s.want("kubelet", &big, "got/kubelet"),
        s.want("ctr", &small, "got/ctr"),
    ];
    let done = std::sync::Mutex::new(Vec::new());
    let errors = getter().fetch_all(&wants, |w, r| {
        done.lock()
            .expect("lock")
            .push((w.path.clone(), *r.as_ref().expect("fetched")));
    });
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.lock().expect("lock").len(), 2);
    assert_eq!(std::fs::read(&wants[0].path).expect("read"), big);
    assert_eq!(std::fs::read(&wants[1].path).expect("read"), small);
    let mode = std::fs::metadata(&wants[0].path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // Already there with that digest: nothing is fetched.
    assert_eq!(getter().fetch(&wants[0]).expect("again"), 0);
    assert_eq!(s.served.files.load(Ordering::Relaxed), 2);
    assert_eq!(
        s.served.bytes.load(Ordering::Relaxed),
        (big.len() + small.len()) as u64
    );
}

#[test]
fn a_wrong_token_and_a_path_off_the_list_are_refused() {
    let s = setup(&[("kubelet", b"k"), ("other", b"o")], &["kubelet"]);
    let w = s.want("kubelet", b"k", "got/kubelet");
    let wrong = Token::new(&"f".repeat(48)).expect("token");
    let e = get::Getter::new(wrong).fetch(&w).expect_err("wrong token");
    assert!(e.to_string().contains("401"), "{e}");
    let e = getter()
        .fetch(&s.want("other", b"o", "got/other"))
        .expect_err("off the list");
    assert!(e.to_string().contains("404"), "{e}");
    // The key beside the public directory: not served, by any spelling.
    let key = format!("{}/../secret.key", s.public);
    assert_eq!(s.raw(&key, TOKEN), "HTTP/1.1 404 Not Found");
    assert_eq!(
        s.raw(&format!("{}/served/kubelet", s.public), TOKEN),
        "HTTP/1.1 200 OK"
    );
    assert!(!std::path::Path::new(&w.path).exists());
    assert_eq!(s.served.refused.load(Ordering::Relaxed), 3);
}

#[test]
fn a_peer_offering_another_size_is_refused_before_anything_is_written() {
    let s = setup(&[("kubelet", b"a much longer kubelet")], &["kubelet"]);
    let w = s.want("kubelet", b"short", "got/kubelet");
    let e = getter().fetch(&w).expect_err("size");
    assert!(e.to_string().contains("5 expected"), "{e}");
    assert!(!std::path::Path::new(&w.path).exists());
}

#[test]
fn content_of_another_digest_leaves_the_destination_as_it_was() {
    let s = setup(&[("kubelet", b"tampered")], &["kubelet"]);
    let w = s.want("kubelet", b"original", "got/kubelet");
    let dir = std::path::Path::new(&w.path).parent().expect("dir");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(&w.path, b"old").expect("write");
    let e = getter().fetch(&w).expect_err("digest");
    assert!(e.to_string().contains("sha256"), "{e}");
    assert_eq!(std::fs::read(&w.path).expect("read"), b"old");
    // No temporary file left beside it.
    assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 1);
}

#[test]
fn a_peer_that_does_not_answer_is_an_error_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let dirs = PublicDirs::new(&["/opt/strata/bin".into()]).expect("dirs");
    let w = Want::parse(
        &dirs,
        &format!(
            "{} 1 755 http://{addr}/opt/strata/bin/x /opt/strata/bin/x",
            "a".repeat(64)
        ),
    )
    .expect("want");
    let e = getter().fetch(&w).expect_err("refused");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[test]
fn a_want_outside_the_public_directories_is_refused() {
    let dirs = PublicDirs::new(&["/opt/strata/bin".into()]).expect("dirs");
    let sum = "a".repeat(64);
    let e = Want::parse(
        &dirs,
        &format!("{sum} 1 755 http://x:1/a /etc/kubernetes/pki/ca.key"),
    )
    .expect_err("refused");
    assert!(
        e.to_string().contains("is not under a public directory"),
        "{e}"
    );
    assert!(Want::parse(&dirs, "nonsense").is_err());
    assert!(
        Want::parse(
            &dirs,
            &format!("{sum} 1 9z9 http://x:1/a /opt/strata/bin/a")
        )
        .is_err()
    );
    assert!(
        Want::parse(
            &dirs,
            &format!("{sum} x 755 http://x:1/a /opt/strata/bin/a")
        )
        .is_err()
    );
}
