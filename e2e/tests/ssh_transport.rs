//! The SSH transport against real sshd in local machines: pinned host keys (a changed key
//! names both fingerprints), commands with status and output, atomic uploads with mode and
//! owner that are skipped when nothing changed; ed25519, ECDSA, RSA and encrypted keys; the
//! ssh-agent; a user other than root through sudo (and the clear refusal when sudo wants a
//! password); a host reached through a jump host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_e2e::{keygen, local_address, require_root};
use strata_platforms::local::cluster::{self, LocalHost, Paths};
use strata_platforms::local::network::whole_range;
use strata_platforms::ssh::{
    Connection, HostKeyPolicy, Identity, Jump, Secret, SshError, Target, Upload, key_is_encrypted,
};

/// A key pair of `kind` (ed25519, ecdsa, rsa) with `passphrase` ("" for none).
fn keygen_kind(dir: &Path, kind: &str, passphrase: &str) -> PathBuf {
    strata_e2e::keygen_as(
        dir,
        &format!("id_{kind}_{}", passphrase.len()),
        kind,
        passphrase,
    )
}

fn key(path: &Path) -> Identity {
    Identity::Key {
        path: path.to_path_buf(),
        passphrase: None,
    }
}

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
            prefix: strata_platforms::local::network::PREFIX,
        },
        LocalHost {
            name: "s2".into(),
            address: local_address(1),
            prefix: strata_platforms::local::network::PREFIX,
        },
    ];
    let up = {
        let (hosts, public, paths) = (hosts.clone(), public.clone(), paths.clone());
        tokio::task::spawn_blocking(move || {
            cluster::up(CLUSTER, whole_range(), &hosts, &public, &paths)
        })
        .await
        .expect("join")
        .expect("up")
    };
    let target = |i: usize| Target {
        host: up[i].name.clone(),
        address: up[i].address.to_string(),
        port: 22,
        user: "root".into(),
        identity: self::key(&key),
        jump: None,
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
    // Streamed: the blob comes back in pieces as it is read, stderr and status kept; a sink
    // that fails ends the command's output with its error.
    let (mut back, mut pieces) = (Vec::new(), 0);
    let out = c
        .exec_streaming("cat /opt/strata/blob; echo done >&2", |data| {
            back.extend_from_slice(data);
            pieces += 1;
            Ok(())
        })
        .await
        .expect("streamed");
    assert!(out.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "done");
    assert!(
        back == big && pieces > 1,
        "{} bytes in {pieces} pieces",
        back.len()
    );
    let e = c
        .exec_streaming("cat /opt/strata/blob", |_| {
            Err(std::io::Error::other("disk full"))
        })
        .await
        .expect_err("a failing sink");
    assert!(e.to_string().contains("disk full"), "{e}");

    // More kinds of keys, an encrypted one among them, authorised for root on s1.
    let keys = tempfile::tempdir().expect("tempdir");
    let ecdsa = keygen_kind(keys.path(), "ecdsa", "");
    let rsa = keygen_kind(keys.path(), "rsa", "");
    let locked = keygen_kind(keys.path(), "ed25519", "open sesame");
    for k in [&ecdsa, &rsa, &locked] {
        let public = std::fs::read(k.with_extension("pub")).expect("pub");
        let out = c
            .exec_with_input("cat >> /root/.ssh/authorized_keys", &public)
            .await
            .expect("authorize");
        assert!(out.success());
    }
    let pinned = |i: usize| HostKeyPolicy::Pinned(up[i].host_key.clone());
    for k in [&ecdsa, &rsa] {
        let mut tg = target(0);
        tg.identity = self::key(k);
        let c = Connection::connect(&tg, pinned(0), t)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", k.display()));
        c.close().await;
    }
    assert!(key_is_encrypted(&locked) && !key_is_encrypted(&ecdsa));
    let mut tg = target(0);
    tg.identity = self::key(&locked);
    let e = Connection::connect(&tg, pinned(0), t)
        .await
        .expect_err("no passphrase");
    assert!(
        matches!(e, SshError::Key { .. }) && e.to_string().contains("passphrase"),
        "{e}"
    );
    tg.identity = Identity::Key {
        path: locked.clone(),
        passphrase: Some(Secret("open sesame".into())),
    };
    Connection::connect(&tg, pinned(0), t)
        .await
        .expect("with its passphrase")
        .close()
        .await;

    // The ssh-agent holds the key; no key file is read.
    let socket = keys.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    strata_e2e::wait_for("the agent's socket", Duration::from_secs(10), || {
        socket.exists()
    })
    .expect("agent");
    let added = Command::new("ssh-add")
        .arg(&ecdsa)
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .expect("ssh-add");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    tg.identity = Identity::Agent {
        socket: Some(socket.clone()),
    };
    let via_agent = Connection::connect(&tg, pinned(0), t).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let via_agent = via_agent.expect("agent");
    assert_eq!(
        String::from_utf8_lossy(&via_agent.exec("whoami").await.expect("exec").stdout).trim(),
        "root"
    );
    via_agent.close().await;

    // A user other than root: commands and uploads go through sudo. A user whose sudo
    // wants a password is refused with the fix.
    let setup = c
        .exec(
            "set -e
             for u in deploy asker; do
               id $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u
               echo \"$u:pw-$u-not-used\" | chpasswd
               mkdir -p /home/$u/.ssh && cp /root/.ssh/authorized_keys /home/$u/.ssh/
               chown -R $u:$u /home/$u/.ssh
             done
             echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy
             echo 'asker ALL=(ALL) ALL' > /etc/sudoers.d/asker
             chmod 0440 /etc/sudoers.d/deploy /etc/sudoers.d/asker",
        )
        .await
        .expect("users");
    assert!(setup.success(), "{}", setup.tail());
    let mut deploy = target(0);
    deploy.user = "deploy".into();
    let d = Connection::connect(&deploy, pinned(0), t)
        .await
        .expect("deploy with sudo");
    let who = d.exec("id -u; echo $SUDO_USER").await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&who.stdout), "0\ndeploy\n");
    assert_eq!(
        d.upload("/etc/strata-test/by-sudo", b"x\n", 0o640, "root:root")
            .await
            .expect("upload through sudo"),
        Upload::Written
    );
    let st = d
        .exec("stat -c '%a %U' /etc/strata-test/by-sudo")
        .await
        .expect("stat");
    assert_eq!(String::from_utf8_lossy(&st.stdout), "640 root\n");
    d.close().await;
    let mut asker = target(0);
    asker.user = "asker".into();
    let e = Connection::connect(&asker, pinned(0), t)
        .await
        .expect_err("sudo wants a password");
    assert!(matches!(e, SshError::Sudo { .. }), "{e}");
    assert!(e.to_string().contains("NOPASSWD"), "{e}");
    c.close().await;

    // s2 through s1 (the jump host): s2 sees the connection coming from s1's address.
    let mut via = target(1);
    via.jump = Some(Box::new(Jump {
        target: target(0),
        policy: pinned(0),
    }));
    let j = Connection::connect(&via, pinned(1), t)
        .await
        .expect("through the jump host");
    let conn = j
        .exec("hostname; echo $SSH_CONNECTION")
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&conn.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("s2"));
    assert_eq!(
        lines.next().and_then(|l| l.split_whitespace().next()),
        Some(up[0].address.to_string().as_str()),
        "{text}"
    );
    assert_eq!(j.jump_host_key(), Some(up[0].host_key.as_str()));
    let public = std::fs::read(locked.with_extension("pub")).expect("pub");
    let out = j
        .exec_with_input("cat >> /root/.ssh/authorized_keys", &public)
        .await
        .expect("authorize on s2");
    assert!(out.success());
    j.close().await;
    // The jump host's key is verified too.
    via.jump = Some(Box::new(Jump {
        target: target(0),
        policy: pinned(1),
    }));
    let e = Connection::connect(&via, pinned(1), t)
        .await
        .expect_err("wrong jump host key");
    assert!(
        matches!(e, SshError::Jump { .. }) && e.to_string().contains("host key changed"),
        "{e}"
    );

    // The same through the Cluster file, as a user at a terminal runs it: `strata status`
    // asks for the encrypted key's passphrase, then, on first contact, whether to trust the
    // bastion's and the host's keys (shown); it reaches s2 through s1 and pins both keys.
    let file = keys.path().join("cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {{name: e2e-ssh-file}}
spec:
  platform: {{ssh: {{}}}}
  ssh:
    privateKey: {key}
    bastion: {{address: {b}}}
  hosts:
  - name: s2
    address: {a}
    roles: [etcd, control-plane]
",
            key = locked.display(),
            b = up[0].address,
            a = up[1].address,
        ),
    )
    .expect("cluster file");
    let dialogue = vec![
        ("Passphrase for SSH key".to_owned(), "open sesame\n"),
        (
            format!(
                "bastion {b} ({b}) presents the SSH host key {}",
                up[0].host_key,
                b = up[0].address
            ),
            "y",
        ),
        (
            format!(
                "s2 ({}) presents the SSH host key {}",
                up[1].address, up[1].host_key
            ),
            "y",
        ),
    ];
    let state_file = keys.path().join("e2e-ssh-file/state.json");
    let screen = tokio::task::spawn_blocking(move || status_in_a_terminal(&file, &dialogue))
        .await
        .expect("join");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("s2") && l.split_whitespace().nth(2) == Some("ok")),
        "{screen}"
    );
    assert!(
        !screen.contains("open sesame"),
        "the passphrase is not echoed: {screen}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).expect("state")).expect("json");
    assert_eq!(state["hostKeys"]["s2"], up[1].host_key.as_str(), "{state}");
    assert_eq!(
        state["hostKeys"][format!("bastion/{}:22", up[0].address)],
        up[0].host_key.as_str(),
        "{state}"
    );

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

/// Runs `strata status -f file` in a tmux terminal and answers its prompts in order: for each
/// `(expected text, answer)`, waits until the screen shows the text, then types the answer
/// (a trailing newline is the Enter key). Returns the screen once the command has finished.
fn status_in_a_terminal(file: &Path, dialogue: &[(String, &str)]) -> String {
    let strata =
        std::env::var("STRATA_BIN").expect("STRATA_BIN: the strata binary (set by .ci/e2e)");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", "strata-e2e-passphrase"])
            .args(args)
            .env_remove("STRATA_SSH_KEY_PASSPHRASE")
            .output()
            .expect("tmux (package tmux)")
    };
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "pp"]).stdout).into_owned();
    let _ = tmux(&["kill-server"]);
    let cmd = format!(
        "{strata} status -f {}; echo EXIT=$?; sleep 60",
        file.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "pp",
        "-x",
        "400",
        "-y",
        "50",
        &cmd,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    for (expected, answer) in dialogue {
        let seen = strata_e2e::wait_for(expected, Duration::from_secs(30), || {
            screen().contains(expected.as_str())
        });
        if seen.is_err() {
            let shown = screen();
            let _ = tmux(&["kill-server"]);
            panic!("waiting for {expected:?}:\n{shown}");
        }
        // A line ends with Enter; a yes/no question takes its key alone.
        let _ = tmux(&["send-keys", "-t", "pp", "-l", answer.trim_end_matches('\n')]);
        if answer.ends_with('\n') {
            let _ = tmux(&["send-keys", "-t", "pp", "Enter"]);
        }
    }
    let done = strata_e2e::wait_for("strata status", Duration::from_secs(60), || {
        screen().contains("EXIT=")
    });
    let shown = screen();
    let _ = tmux(&["kill-server"]);
    done.unwrap_or_else(|e| panic!("{e}:\n{shown}"));
    shown
}
