//! Drives `strata init` in a real terminal (tmux) through a whole run, with wrong answers
//! that must be re-asked on the spot, and checks that the written file validates.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own (private socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let socket = format!("strata-test-{}", std::process::id());
        let t = Tmux { socket };
        let status = t
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "w",
                "-x",
                "110",
                "-y",
                "45",
                command,
            ])
            .status()
            .expect("tmux must be installed (apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "w", "-S", "-200"])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `text` appears on the screen at least `count` times.
    fn wait_for_n(&self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {text:?} (x{count}); screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, text: &str) {
        self.wait_for_n(text, 1);
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "w"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status().expect("send-keys").success());
        // Let the prompt process the keys before the next ones arrive.
        std::thread::sleep(Duration::from_millis(150));
    }

    fn type_line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

#[test]
fn wizard_writes_a_valid_file_and_reasks_wrong_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
    let key = home.join(".ssh/id_ed25519");
    std::fs::write(&key, "placeholder: only presence and mode are checked\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = dir.path().join("cluster.yaml");
    let done = dir.path().join("exit-code");

    let bin = env!("CARGO_BIN_EXE_strata");
    let command = format!(
        "env HOME={home} TERM=xterm-256color {bin} init -o {out}; echo $? > {done}; sleep 30",
        home = home.display(),
        out = out.display(),
        done = done.display()
    );
    let t = Tmux::start(&command);

    t.wait_for("Cluster name");
    t.type_line("Bad_Name");
    t.wait_for("not a DNS-1123 label");
    t.type_line("prod");

    t.wait_for("Where are the hosts?");
    t.keys(&["Enter"]); // ssh
    t.wait_for("SSH user");
    t.keys(&["Enter"]); // root
    t.wait_for("SSH port");
    t.keys(&["Enter"]); // 22
    t.wait_for("SSH private key");
    t.keys(&["Enter"]); // ~/.ssh/id_ed25519 under our HOME

    t.wait_for("Host 1");
    t.keys(&["Enter"]); // cp1
    t.wait_for("address");
    t.type_line("198.18.0.300");
    t.wait_for("not a valid IPv4 address");
    t.type_line("198.18.0.2");
    t.wait_for("roles");
    t.keys(&["Enter"]); // etcd + control-plane preselected
    t.wait_for("Add another host?");
    t.keys(&["y"]);

    t.wait_for("Host 2");
    t.type_line("cp1");
    t.wait_for("a host named cp1 exists already");
    t.keys(&["Enter"]); // w1
    t.wait_for_n("address", 2);
    t.type_line("198.18.0.2");
    t.wait_for("already the address of cp1");
    t.type_line("198.18.0.3");
    t.wait_for_n("roles", 2);
    t.keys(&["Enter"]); // worker preselected
    t.wait_for_n("Add another host?", 2);
    t.keys(&["n"]);

    t.wait_for("Kubernetes version");
    t.type_line("1.19.0");
    t.wait_for("Strata installs Kubernetes 1.20");
    t.keys(&["Enter"]); // 1.20.2
    t.wait_for("Pod network CIDR");
    t.keys(&["Enter"]);
    t.wait_for("Service network CIDR");
    t.type_line("10.244.128.0/20");
    t.wait_for("overlaps the pod CIDR");
    t.keys(&["Enter"]); // 10.96.0.0/12

    t.wait_for("Summary");
    t.wait_for("Write");
    t.keys(&["y"]);
    t.wait_for("Wrote");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !done.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&done).unwrap_or_default();
    assert_eq!(code.trim(), "0", "screen:\n{}", t.screen());

    let validate = Command::new(bin)
        .args(["validate", "-f"])
        .arg(&out)
        .env("HOME", &home)
        .output()
        .expect("run validate");
    assert!(
        validate.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&validate.stderr),
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let (name, hosts) = written_cluster(&out, &home);
    assert_eq!(name, "prod");
    assert_eq!(hosts, vec!["cp1".to_string(), "w1".to_string()]);
}

fn written_cluster(path: &Path, home: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("written file");
    let ctx = strata_manifests::Context {
        file: path.display().to_string(),
        base_dir: path.parent().expect("dir").to_path_buf(),
        home: Some(home.to_path_buf()),
    };
    let c = strata_manifests::load_str(&text, &ctx)
        .unwrap_or_else(|r| panic!("{r}\n{text}"))
        .cluster;
    assert_eq!(c.spec.network.service_cidr.to_string(), "10.96.0.0/12");
    assert_eq!(
        c.spec.hosts[1].address.as_ref().map(|a| a.to_string()),
        Some("198.18.0.3".to_string())
    );
    (
        c.name().to_string(),
        c.spec.hosts.iter().map(|h| h.name.to_string()).collect(),
    )
}
