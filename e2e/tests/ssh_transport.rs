//! The SSH transport against real sshd in local machines: pinned host keys (a changed key
//! names both fingerprints), commands with status and output, atomic uploads with mode and
//! owner that are skipped when nothing changed.

use std::time::Duration;

use strata_e2e::{keygen, local_address, require_root};
use strata_platforms::local::cluster::{self, LocalHost, Paths};
use strata_platforms::ssh::{Connection, HostKeyPolicy, SshError, Target, Upload};

const CLUSTER: &str = "e2e-ssh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_verifies_runs_and_uploads() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let paths = Paths::default();
    let _ = cluster::down(CLUSTER, &paths);
    let hosts = vec![
        LocalHost {
            name: "s1".into(),
            address: local_address(0),
        },
        LocalHost {
            name: "s2".into(),
            address: local_address(1),
        },
    ];
    let up = {
        let (hosts, public, paths) = (hosts.clone(), public.clone(), paths.clone());
        tokio::task::spawn_blocking(move || cluster::up(CLUSTER, &hosts, &public, &paths))
            .await
            .expect("join")
            .expect("up")
    };
    let target = |i: usize| Target {
        host: up[i].name.clone(),
        address: up[i].address.to_string(),
        port: 22,
        user: "root".into(),
        private_key: key.clone(),
    };
    let t = Duration::from_secs(10);

    // First contact, explicitly accepted: the key presented is the one pinned at creation.
    let c = Connection::connect(&target(0), HostKeyPolicy::AcceptNew, t)
        .await
        .expect("accept-new");
    assert_eq!(c.host_key(), up[0].host_key);
    c.close().await;

    // Pinned to the other machine's key: refused, and both fingerprints are named.
    let e = Connection::connect(&target(0), HostKeyPolicy::Pinned(up[1].host_key.clone()), t)
        .await
        .expect_err("changed key");
    match &e {
        SshError::HostKeyChanged {
            pinned, presented, ..
        } => {
            assert_eq!(pinned, &up[1].host_key);
            assert_eq!(presented, &up[0].host_key);
        }
        other => panic!("expected HostKeyChanged, got {other}"),
    }
    assert!(e.to_string().contains(&up[0].host_key) && e.to_string().contains(&up[1].host_key));

    let c = Connection::connect(&target(0), HostKeyPolicy::Pinned(up[0].host_key.clone()), t)
        .await
        .expect("pinned");
    let out = c
        .exec("hostname; echo oops >&2; exit 3")
        .await
        .expect("exec");
    assert_eq!(out.status, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s1");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");

    // Upload: written with mode and owner, then skipped; a change rewrites it.
    let path = "/etc/strata-test/secret.key";
    assert_eq!(
        c.upload(path, b"one\n", 0o600, "root:root")
            .await
            .expect("upload"),
        Upload::Written
    );
    let st = c
        .exec(&format!("stat -c '%a %U' {path}; cat {path}"))
        .await
        .expect("stat");
    assert_eq!(String::from_utf8_lossy(&st.stdout), "600 root\none\n");
    assert_eq!(
        c.upload(path, b"one\n", 0o600, "root:root")
            .await
            .expect("again"),
        Upload::Unchanged
    );
    assert_eq!(
        c.upload(path, b"one\n", 0o644, "root:root")
            .await
            .expect("mode"),
        Upload::Written
    );
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        c.upload("/opt/strata/blob", &big, 0o755, "root:root")
            .await
            .expect("big"),
        Upload::Written
    );
    let sum = c
        .exec("sha256sum /opt/strata/blob | cut -d' ' -f1")
        .await
        .expect("sum");
    let want: String = sha256_hex(&big);
    assert_eq!(String::from_utf8_lossy(&sum.stdout).trim(), want);
    let leftovers = c
        .exec("ls -a /etc/strata-test /opt/strata")
        .await
        .expect("ls");
    assert!(!String::from_utf8_lossy(&leftovers.stdout).contains(".strata-upload"));
    c.close().await;

    tokio::task::spawn_blocking(move || cluster::down(CLUSTER, &paths))
        .await
        .expect("join")
        .expect("down");
}

fn sha256_hex(b: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
