//! A real OCI registry (the distribution project's `docker-registry`, Debian package
//! docker-registry) served over TLS on an address the test's machines reach, with its own
//! throwaway CA: for clusters that pull images instead of importing Strata's archives.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::test_ca::TestCa;

/// A running registry; stopped (and its storage removed with the caller's directory) on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `IP:PORT`, the registry part of the references it serves.
    pub address: String,
    /// The CA that signed the registry's certificate.
    pub ca: TestCa,
    cert_dir: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (package skopeo)"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Registry {
    /// Starts a registry listening on `ip` (a free port), keeping its files under `dir`.
    pub fn start(dir: &Path, ip: IpAddr) -> Self {
        std::fs::create_dir_all(dir.join("certs")).expect("registry dir");
        let ca = TestCa::new("strata e2e registry CA");
        let cert = ca.server("strata e2e registry", ip);
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem).expect("write");
        std::fs::write(dir.join("tls.key"), &cert.key_pem).expect("write");
        // skopeo reads a registry's CA from a directory of *.crt files.
        std::fs::write(dir.join("certs/ca.crt"), &ca.pem).expect("write");

        let port = TcpListener::bind(SocketAddr::new(ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = SocketAddr::new(ip, port);
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {data}}}\n\
                 http:\n  addr: {address}\n  tls: {{certificate: {crt}, key: {key}}}\n",
                data = dir.join("data").display(),
                crt = dir.join("tls.crt").display(),
                key = dir.join("tls.key").display(),
            ),
        )
        .expect("write");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (package docker-registry)");
        let registry = Self {
            child,
            address: address.to_string(),
            ca,
            cert_dir: dir.join("certs"),
        };
        let start = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the registry does not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        registry
    }

    /// Pushes an OCI image archive as `REPOSITORY:TAG`; the full reference and the digest of
    /// the manifest the registry serves.
    pub fn push(&self, archive: &Path, repository_tag: &str) -> (String, String) {
        let reference = format!("{}/{repository_tag}", self.address);
        run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-cert-dir"])
                .arg(&self.cert_dir)
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("docker://{reference}")),
            &format!("skopeo copy {} to {reference}", archive.display()),
        );
        let digest = run(
            Command::new("skopeo")
                .args(["inspect", "--format", "{{.Digest}}", "--cert-dir"])
                .arg(&self.cert_dir)
                .arg(format!("docker://{reference}")),
            &format!("skopeo inspect {reference}"),
        );
        (reference, digest)
    }

    /// Makes a machine trust the registry: its CA joins the system's bundle under `root`.
    pub fn trust_in(&self, root: &Path) {
        self.ca.trust_in(root);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
