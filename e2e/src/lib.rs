//! End-to-end test harness: real clusters of local machines (systemd-nspawn), as root.
//!
//! [`LocalCluster::up`] builds (or reuses) the base image, creates one machine per host,
//! installs the rendered files and the binaries into each machine's root and boots them.
//! Everything is torn down on drop: machines, network namespaces, the bridge.
#![forbid(unsafe_code)]

pub mod asset_source;
pub mod conformance;
pub mod ha;
pub mod registry;
pub mod test_ca;
pub mod throughput;

pub mod browser;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use strata_manifests::catalog::{self, Component};
use strata_manifests::render::{BIN_DIR, ETCD_MEMBERSHIP_ENV, Rendered, render};
use strata_manifests::{Cluster, Context, load_str};
use strata_pki::StateDir;
use strata_platforms::local::{BaseImage, Bridge, Machine};

/// Where images are cached and machines live.
pub const CACHE: &str = "/var/cache/strata";
pub const MACHINES: &str = "/var/lib/strata/machines";

pub fn require_root() {
    assert!(
        strata_platforms::local::cluster::is_root(),
        "end-to-end tests create machines and network namespaces: run them as root (bash .ci/test)"
    );
}

/// A fresh ed25519 key pair without passphrase in `dir` (OpenSSH's ssh-keygen).
pub fn keygen(dir: &Path) -> PathBuf {
    keygen_as(dir, "id_ed25519", "ed25519", "")
}

/// A fresh key pair of `kind` (ed25519, ecdsa, rsa) named `name` in `dir`, encrypted with
/// `passphrase` unless it is empty.
pub fn keygen_as(dir: &Path, name: &str, kind: &str, passphrase: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (package openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// The asset directory `apply` installs from (built by .ci/build-assets).
pub fn assets_bin() -> PathBuf {
    let dir = PathBuf::from(format!("{CACHE}/assets/1.20.2/bin"));
    assert!(
        dir.join("kubelet").exists(),
        "no assets in {}: run `bash .ci/build-assets`",
        dir.display()
    );
    dir
}

#[derive(Debug)]
pub struct LocalCluster {
    pub cluster: Cluster,
    pub state: StateDir,
    pub rendered: Rendered,
    pub machines: Vec<Machine>,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

fn link_or_copy(from: &Path, to: &Path) {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

impl LocalCluster {
    /// Creates and boots the machines of a local-platform Cluster file text.
    pub fn up(text: &str) -> Self {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context {
            file: "e2e.yaml".into(),
            base_dir: dir.path().to_path_buf(),
            home: None,
        };
        let cluster = load_str(text, &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .cluster;
        let state = StateDir::new(dir.path().join("state"));
        let inputs = strata_manifests::pki::inputs(&cluster, &ctx).expect("pki inputs");
        strata_pki::generate(&inputs, &state, time::OffsetDateTime::now_utc()).expect("pki");
        let rendered = render(&cluster, &state).expect("render");

        let base = BaseImage::ensure(Path::new(CACHE)).expect("base image");
        let bridge = Bridge::for_cluster(cluster.name());
        // A dead cluster's bridge would keep the range's route (as `strata local up` sees to).
        let range = match &cluster.spec.platform {
            strata_manifests::model::Platform::Local(l) => l.range(),
            strata_manifests::model::Platform::Ssh(_) => {
                strata_platforms::local::network::whole_range()
            }
        };
        strata_platforms::local::cluster::free_range(&bridge, range).expect("the local range");
        bridge.ensure(range, &[]).expect("bridge");
        let bin = assets_bin();
        let mut machines = Vec::new();
        for h in &cluster.spec.hosts {
            let ip = match h.address.as_ref().and_then(|a| a.ip()) {
                Some(IpAddr::V4(ip)) => ip,
                _ => panic!("local hosts have IPv4 addresses"),
            };
            let m = Machine::new(Path::new(MACHINES), cluster.name(), h.name.as_str(), ip);
            // Leftovers of an interrupted run are removed first.
            m.destroy().expect("clean up an earlier machine");
            m.network.ensure(&bridge).expect("network");
            m.prepare(&base).expect("prepare");
            install(&m, &cluster, &rendered, &bin);
            m.boot().expect("boot");
            machines.push(m);
        }
        LocalCluster {
            cluster,
            state,
            rendered,
            machines,
            bridge,
            _dir: dir,
        }
    }

    pub fn machine(&self, host: &str) -> &Machine {
        self.machines
            .iter()
            .find(|m| m.host == host)
            .expect("machine")
    }

    /// curl from this computer to a machine, with the cluster admin's identity.
    pub fn curl_admin(&self, url: &str, extra: &[&str]) -> (u32, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.state.cert("ca"))
            .arg("--cert")
            .arg(self.state.cert("admin"))
            .arg("--key")
            .arg(self.state.key("admin"))
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl LocalCluster {
    /// Sends every rendered cluster object with server-side apply (field manager `strata`),
    /// as `apply` does; returns the HTTP status of each.
    pub fn apply_objects(&self, api: &str) -> Vec<(String, u32, String)> {
        let dir = self._dir.path().join("objects");
        std::fs::create_dir_all(&dir).expect("mkdir");
        self.rendered
            .objects
            .iter()
            .map(|o| {
                let path = dir.join(&o.file);
                std::fs::write(&path, &o.yaml).expect("write");
                let url = format!("{api}{}?fieldManager=strata&force=true", o.api_path);
                let data = format!("@{}", path.display());
                let (code, body) = self.curl_admin(
                    &url,
                    &[
                        "-X",
                        "PATCH",
                        "-H",
                        "Content-Type: application/apply-patch+yaml",
                        "--data-binary",
                        &data,
                    ],
                );
                (o.file.clone(), code, body)
            })
            .collect()
    }
}

/// Installs the rendered files, the binaries and enables the units (what `apply` does over
/// SSH, done here directly on the machine's root).
fn install(m: &Machine, cluster: &Cluster, r: &Rendered, bin: &Path) {
    let root = m.root();
    // etcd's first membership, which apply writes (never rendered): every etcd host of the
    // file forming a new cluster.
    let etcd_hosts: Vec<String> = cluster
        .spec
        .hosts
        .iter()
        .filter(|h| catalog::runs(cluster, h, Component::Etcd))
        .map(|h| {
            let address = h.address.as_ref().map_or(h.name.as_str(), |a| a.as_str());
            format!("{}=https://{address}:{}", h.name, catalog::ETCD_PEER_PORT)
        })
        .collect();
    if etcd_hosts
        .iter()
        .any(|e| e.starts_with(&format!("{}=", m.host)))
    {
        let env = root.join(ETCD_MEMBERSHIP_ENV.trim_start_matches('/'));
        std::fs::create_dir_all(env.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            &env,
            format!(
                "ETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_STATE=new\n\
                 ETCD_INITIAL_CLUSTER_TOKEN=e2e-{}\n",
                etcd_hosts.join(","),
                cluster.name()
            ),
        )
        .expect("write membership.env");
    }
    let t = r
        .hosts
        .iter()
        .find(|t| t.host == m.host)
        .expect("rendered host");
    for (path, f) in &t.files {
        let dest = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, &f.content).expect("write");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode)).expect("chmod");
        // Enabled as `systemctl enable` would: into the target its [Install] section names.
        // (A unit without one, such as a service a path unit starts, stays off.)
        let wanted_by = String::from_utf8_lossy(&f.content)
            .lines()
            .find_map(|l| l.strip_prefix("WantedBy=").map(str::to_owned));
        if let (Some(unit), Some(target)) = (path.strip_prefix("/etc/systemd/system/"), wanted_by) {
            let wants = root.join(format!("etc/systemd/system/{target}.wants"));
            std::fs::create_dir_all(&wants).expect("mkdir");
            let link = wants.join(unit);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(path, &link).expect("enable");
        }
    }
    let dest = root.join(BIN_DIR.trim_start_matches('/'));
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        // Strata's own host programs (the node-local API balancer the kubelet talks to).
        "strata-api-balancer",
        "strata-vip",
    ] {
        link_or_copy(&bin.join(b), &dest.join(b));
    }
    link_or_copy(Path::new("/usr/bin/etcd"), &dest.join("etcd"));
    let containerd = dest.join("containerd");
    let _ = std::fs::remove_file(&containerd);
    std::os::unix::fs::symlink("/usr/bin/containerd", &containerd).expect("containerd");
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &self.machines {
            if let Err(e) = m.destroy() {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = self.bridge.delete() {
            eprintln!("cleanup: {e}");
        }
        let _ = std::fs::remove_dir(Path::new(MACHINES).join(self.cluster.name()));
    }
}

/// Polls `ok` every half second until it holds or `limit` passes.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {}s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(start.elapsed())
}

/// An address of the local range for host number `n` (0-based).
pub fn local_address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 2)) + n)
}

/// The `strata` binary under test (set by .ci/e2e).
pub fn strata_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("STRATA_BIN").expect("STRATA_BIN: the strata binary (set by .ci/e2e)"),
    );
    assert!(p.exists(), "{}", p.display());
    p
}

/// Runs `strata` in `dir` without a terminal.
pub fn strata(dir: &Path, args: &[&str]) -> Output {
    strata_env(dir, args, &[])
}

/// `strata` with more environment (as `SSL_CERT_FILE` for a test's TLS servers).
pub fn strata_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(strata_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run strata")
}

/// Runs `strata local down --yes` in a directory when dropped: a test's local cluster goes
/// also when the test panics.
#[derive(Debug)]
pub struct LocalDown<'a>(pub &'a Path);

impl Drop for LocalDown<'_> {
    fn drop(&mut self) {
        if strata(self.0, &["local", "down", "--yes"]).status.success() {
            return;
        }
        // A test left a Cluster file strata refuses (a failed edit): its machines go by the
        // cluster's name all the same.
        let text = std::fs::read_to_string(self.0.join("cluster.yaml")).unwrap_or_default();
        if let Some(name) = cluster_name(&text) {
            let paths = strata_platforms::local::cluster::Paths::default();
            if let Err(e) = strata_platforms::local::cluster::down(&name, &paths) {
                eprintln!("cleanup of local cluster {name}: {e}");
            }
        }
    }
}

/// `metadata.name` of a Cluster file, read leniently (the file may be invalid).
fn cluster_name(text: &str) -> Option<String> {
    let after = text.split("metadata:").nth(1)?;
    let rest = after.split("name:").nth(1)?;
    let name: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The stdout of a command that must have succeeded.
pub fn ok(o: &Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A copy of a component's kubeconfig from the state directory (its server: the node-local
/// balancer on the hosts' loopback) that names the API server of `admin` instead, so that
/// the workstation can act with that identity.
pub fn from_workstation(identity: &Path, admin: &Path) -> PathBuf {
    let admin_text = std::fs::read_to_string(admin).expect("admin kubeconfig");
    let server =
        strata_pki::kubeconfig_server(&admin_text).expect("server in the admin kubeconfig");
    let text = std::fs::read_to_string(identity).expect("kubeconfig");
    let out = identity.with_extension("workstation.conf");
    std::fs::write(&out, strata_pki::kubeconfig_with_server(&text, server))
        .expect("write kubeconfig");
    out
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl (package kubernetes-client)")
}

/// An image archive of busybox (the distribution's static one) with `applets` linked, and
/// the distribution's `programs` with their libraries: a test's own tools in a pod.
pub fn busybox_image(reference: &str, applets: &[&str], programs: &[&str]) -> Vec<u8> {
    let mut spec = strata_images::ImageSpec::new(reference);
    spec.file(
        "/bin/busybox",
        std::fs::read("/bin/busybox").expect("/bin/busybox (package busybox-static)"),
        0o755,
    )
    .expect("busybox");
    for applet in applets {
        spec.symlink(&format!("/bin/{applet}"), "/bin/busybox")
            .expect("link");
    }
    for p in programs {
        spec.program_with_libraries(p)
            .unwrap_or_else(|e| panic!("{p} from the distribution: {e}"));
    }
    strata_images::build(&spec).expect("image").archive
}

/// Imports an OCI image archive into the containerd of each of `hosts` (`imagePullPolicy:
/// Never` pods then run it).
pub fn import_image(cluster: &str, hosts: &[&str], name: &str, archive: &[u8]) {
    for host in hosts {
        let m = Machine::new(Path::new(MACHINES), cluster, host, local_address(0));
        std::fs::write(m.root().join(format!("var/tmp/{name}.tar")), archive).expect("copy image");
        on_machine(
            cluster,
            host,
            &format!("/opt/strata/bin/ctr -n k8s.io images import /var/tmp/{name}.tar >/dev/null"),
        );
    }
}

/// A shell script run inside a machine of a local cluster; its stdout.
pub fn on_machine(cluster: &str, host: &str, script: &str) -> String {
    let m = Machine::new(Path::new(MACHINES), cluster, host, local_address(0));
    let out = m.exec(&["sh", "-c", script]).expect("exec in machine");
    assert!(
        out.status.success(),
        "{host}: {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requests to the API through a node's balancer (127.0.0.1:7445), one every 100 ms, from
/// inside the machine with the kubelet's client certificate (GET its own Node: etcd is read
/// too), each answer logged with the kernel's uptime, until [`ApiProbe::stop`].
#[derive(Debug)]
pub struct ApiProbe {
    cluster: String,
    host: String,
}

/// What an [`ApiProbe`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub requests: usize,
    /// Requests not answered 200 (no answer within 2 s counts too).
    pub failed: usize,
    /// The longest time between two answered requests, in seconds.
    pub longest_gap: f64,
    /// The longest time between two requests, answered or not, in seconds (a request may
    /// take 2 s: longer means the probe stopped asking for a while).
    pub longest_silence: f64,
    /// The log lines of the failed requests (time, HTTP code, curl's exit, the body).
    pub failures: Vec<String>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests through the node's balancer, {} failed, longest time without an \
             answer {:.1} s",
            self.requests, self.failed, self.longest_gap
        )?;
        // The first and the last few: a single API server's restart fails dozens alike.
        let n = self.failures.len();
        for (i, line) in self.failures.iter().enumerate() {
            if i < 3 || i + 3 >= n {
                write!(f, "\n  failed: {line}")?;
            } else if i == 3 {
                write!(f, "\n  ... {} more", n - 6)?;
            }
        }
        Ok(())
    }
}

impl ApiProbe {
    const LOG: &'static str = "/root/e2e-probe.log";
    const UNIT: &'static str = "e2e-api-probe";

    pub fn start(cluster: &str, host: &str) -> Self {
        let script = format!(
            r#"cat > /root/e2e-probe.sh <<'EOF'
#!/bin/sh
pki=/var/lib/kubelet/pki/kubelet-client-current.pem
while :; do
  rm -f /tmp/e2e-probe.body
  code=$(curl -s -o /tmp/e2e-probe.body -w '%{{http_code}}' --max-time 2 --cacert /etc/kubernetes/pki/ca.crt \
    --cert $pki --key $pki https://127.0.0.1:7445/api/v1/nodes/{host})
  exit=$?
  if [ "$code" = 200 ]; then
    echo "$(cut -d' ' -f1 /proc/uptime) $code" >> {log}
  else
    echo "$(cut -d' ' -f1 /proc/uptime) $code curl-exit-$exit $(head -c 300 /tmp/e2e-probe.body 2>/dev/null | tr '\n' ' ')" >> {log}
  fi
  sleep 0.1
done
EOF
chmod 0755 /root/e2e-probe.sh
rm -f {log}
systemd-run --quiet --unit {unit} /root/e2e-probe.sh"#,
            log = Self::LOG,
            unit = Self::UNIT
        );
        on_machine(cluster, host, &script);
        let probe = Self {
            cluster: cluster.to_owned(),
            host: host.to_owned(),
        };
        wait_for("the probe's first answer", Duration::from_secs(20), || {
            probe.log().ends_with(" 200\n")
        })
        .expect("the API answers the probe");
        probe
    }

    fn log(&self) -> String {
        on_machine(
            &self.cluster,
            &self.host,
            &format!("cat {} 2>/dev/null || true", Self::LOG),
        )
    }

    pub fn stop(self) -> ProbeReport {
        on_machine(
            &self.cluster,
            &self.host,
            &format!("systemctl stop {}", Self::UNIT),
        );
        report(&self.log())
    }
}

/// The serial of the certificate in PEM `file`.
fn serial_of(file: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(file)
        .output()
        .expect("openssl (package openssl)");
    ok(&o, "openssl x509").trim().to_owned()
}

/// The serial of the certificate the server at `address` (host:port) presents.
fn served_serial(address: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {address} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl");
    ok(&o, "openssl s_client").trim().to_owned()
}

/// `strata certs renew --all`, then apply, while an [`ApiProbe`] runs on `node`: the renewed
/// certificates are served afterwards (the API server's at `control_plane`, host:port, and
/// the etcd member's of `etcd_member`, name and address, which reads it without a restart),
/// the node's balancer was not restarted (it read its renewed identity), the kubelets of
/// `nodes` restarted one host at a time and kept the client certificates they had rotated,
/// and plan has nothing left to do. What the probe saw.
pub fn renew_under_probe(
    dir: &Path,
    cluster: &str,
    node: &str,
    nodes: &[&str],
    control_plane: &str,
    etcd_member: (&str, &str),
) -> ProbeReport {
    let kubelets = |what: &str| -> Vec<String> {
        nodes
            .iter()
            .map(|n| on_machine(cluster, n, what).trim().to_owned())
            .collect()
    };
    let client_certs = "cat /var/lib/kubelet/pki/kubelet-client-current.pem 2>/dev/null || true";
    let kubelet_started = "systemctl show -p ExecMainStartTimestampMonotonic --value kubelet";
    // A kubelet that joined moments ago may not have rotated its certificate yet.
    wait_for(
        "every kubelet on a client certificate it rotated",
        Duration::from_secs(60),
        || {
            kubelets(client_certs)
                .iter()
                .all(|c| c.contains("BEGIN CERTIFICATE"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let certs_before = kubelets(client_certs);
    let kubelets_before = kubelets(kubelet_started);
    let state = dir.join(cluster);
    let before = serial_of(&state.join("pki/apiserver.crt"));
    let (member, member_address) = etcd_member;
    let etcd_cert = state.join(format!("pki/etcd/server-{member}.crt"));
    let etcd_before = serial_of(&etcd_cert);
    let started = |h: &str| {
        on_machine(
            cluster,
            h,
            "systemctl show -p ExecMainStartTimestampMonotonic strata-api-balancer.service",
        )
    };
    let balancer = started(node);
    let path_unit = || {
        on_machine(
            cluster,
            node,
            "systemctl show -p ActiveEnterTimestampMonotonic strata-reboot.path",
        )
    };
    let path_unit_before = path_unit();
    let kubeconfig = state.join("auth/kubeconfig");
    let agents_before = agent_pods(&kubeconfig);
    let probe = ApiProbe::start(cluster, node);
    ok(
        &strata(dir, &["certs", "renew", "--all"]),
        "certs renew --all",
    );
    let renewed = serial_of(&state.join("pki/apiserver.crt"));
    assert_ne!(
        before, renewed,
        "certs renew --all kept the API server's certificate"
    );
    let t = Instant::now();
    let out = ok(
        &strata(dir, &["apply", "--output", "json"]),
        "apply of the renewed certificates",
    );
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let report = probe.stop();
    println!(
        "renewed certificates rolled out in {:.1} s ({}): {report}",
        took.as_secs_f64(),
        phase_seconds(&out)
    );
    // The probe asks up to ten times a second (a request takes at most 2 s): if it stopped,
    // its silence would pass for no failure.
    assert!(
        report.longest_silence < 5.0 && report.requests as f64 >= took.as_secs_f64(),
        "the probe stopped asking: {} requests in {:.1} s, at most {:.1} s between two",
        report.requests,
        took.as_secs_f64(),
        report.longest_silence
    );
    // The kubelets (their serving certificates renewed) restarted one host at a time, each
    // answering its health check before the next went down (machines share this computer's
    // monotonic clock), and kept the client certificates they had rotated.
    let kubelets_after = kubelets(kubelet_started);
    let mut starts = Vec::new();
    for ((n, before), after) in nodes.iter().zip(&kubelets_before).zip(&kubelets_after) {
        assert_ne!(before, after, "{n}'s kubelet was not restarted");
        let at: u64 = after
            .parse()
            .unwrap_or_else(|e| panic!("{n}: {after:?}: {e}"));
        starts.push((at, *n));
    }
    starts.sort();
    let gaps: Vec<String> = starts
        .windows(2)
        .map(|w| {
            let gap = (w[1].0 - w[0].0) as f64 / 1e6;
            format!("{} {:.2} s after {}", w[1].1, gap, w[0].1)
        })
        .collect();
    println!("kubelets restarted one at a time: {}", gaps.join(", "));
    for w in starts.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= KUBELET_ROLL_GAP_US,
            "{}'s kubelet restarted {} us after {}'s: not one host at a time",
            w[1].1,
            w[1].0 - w[0].0,
            w[0].1
        );
    }
    for ((n, before), after) in nodes.iter().zip(&certs_before).zip(kubelets(client_certs)) {
        assert!(before.contains("BEGIN CERTIFICATE"), "{n}: {before}");
        assert_eq!(
            before, &after,
            "{n}'s kubelet client certificate (rotated) was replaced by the apply"
        );
    }
    assert_eq!(
        served_serial(control_plane),
        renewed,
        "the API server's certificate"
    );
    // etcd serves its renewed certificate without a restart.
    let etcd_renewed = serial_of(&etcd_cert);
    assert_ne!(
        etcd_before, etcd_renewed,
        "certs renew --all kept etcd's certificate"
    );
    assert_eq!(
        served_serial(&format!("{member_address}:2379")),
        etcd_renewed,
        "{member}'s etcd serves its renewed certificate"
    );
    assert_eq!(started(node), balancer, "{node}'s balancer was restarted");
    // The agents read their renewed identities from the host when they start: each node's
    // pods replaced. The host's path units do not read them: not restarted.
    let agents_after = agent_pods(&kubeconfig);
    assert!(!agents_before.is_empty(), "no agent pods");
    for (key, pod) in &agents_before {
        let now = agents_after.get(key);
        assert!(
            now.is_some_and(|p| p != pod),
            "{key:?}: pod {pod} not replaced ({now:?})"
        );
    }
    println!(
        "agent pods replaced: {} (every node's overlay and update agents)",
        agents_after.len()
    );
    assert_eq!(
        path_unit(),
        path_unit_before,
        "strata-reboot.path restarted"
    );
    let journal = on_machine(
        cluster,
        node,
        "journalctl -u strata-api-balancer --no-pager -o cat | grep -v 'no API server accepted' | tail -n 40",
    );
    assert!(
        journal.contains("health-check identity read again"),
        "{journal}"
    );
    let plan = ok(&strata(dir, &["plan"]), "plan");
    assert!(plan.contains("Nothing to do"), "{plan}");
    report
}

/// The pods of the overlay and update agents' DaemonSets, by (DaemonSet, node).
fn agent_pods(kubeconfig: &Path) -> BTreeMap<(String, String), String> {
    let pods = kubectl_json(kubeconfig, &["pods", "-n", "strata-system"]);
    let mut out = BTreeMap::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        let owner = &p["metadata"]["ownerReferences"][0];
        if owner["kind"] != "DaemonSet" || !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let key = (
            owner["name"].as_str().unwrap_or_default().to_owned(),
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        out.insert(
            key,
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    out
}

/// The least time between two kubelets' restarts in a rolling restart, in microseconds: a
/// kubelet takes longer than this from its start to its health check's `ok` (restarted at
/// once, they start within a few milliseconds of each other).
const KUBELET_ROLL_GAP_US: u64 = 300_000;

/// `strata restore --from BACKUP --yes --output json` in `dir`, which must succeed (`what`
/// names it): its JSON events; the time it took and that of each phase printed.
pub fn restored(dir: &Path, backup: &Path, what: &str) -> String {
    let started = Instant::now();
    let out = ok(
        &strata(
            dir,
            &[
                "restore",
                "--from",
                &backup.to_string_lossy(),
                "--yes",
                "--output",
                "json",
            ],
        ),
        what,
    );
    println!(
        "{what}: {:.1} s (phases: {})",
        started.elapsed().as_secs_f64(),
        phase_seconds(&out)
    );
    out
}

/// The time of each phase of an apply whose JSON events are `out` (`--output json`), as
/// `upload 1.2, etcd 3.4, ...` (seconds).
pub fn phase_seconds(out: &str) -> String {
    out.lines()
        .filter_map(|l| serde_json::from_str::<strata_manifests::plan::Event>(l).ok())
        .filter_map(|e| match e {
            strata_manifests::plan::Event::PhaseFinished { phase, seconds } => {
                Some(format!("{phase} {seconds:.1}"))
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An [`ApiProbe`]'s log ("<uptime> <HTTP code>" per request) summed up.
pub fn report(log: &str) -> ProbeReport {
    let mut r = ProbeReport {
        requests: 0,
        failed: 0,
        longest_gap: 0.0,
        longest_silence: 0.0,
        failures: Vec::new(),
    };
    let (mut last_ok, mut last): (Option<f64>, Option<f64>) = (None, None);
    for line in log.lines() {
        let mut w = line.split_whitespace();
        let (Some(Ok(t)), Some(code)) = (w.next().map(str::parse::<f64>), w.next()) else {
            continue;
        };
        r.requests += 1;
        if let Some(before) = last {
            r.longest_silence = r.longest_silence.max(t - before);
        }
        last = Some(t);
        if code == "200" {
            if let Some(before) = last_ok {
                r.longest_gap = r.longest_gap.max(t - before);
            }
            last_ok = Some(t);
        } else {
            r.failed += 1;
            r.failures.push(line.to_owned());
        }
    }
    r
}

/// `kubectl get ARGS -o json`, parsed.
pub fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(&kubectl(kubeconfig, &a), "kubectl get")).expect("json")
}

/// Every NodeUpdate of the cluster, by name.
pub fn node_updates(kubeconfig: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    kubectl_json(kubeconfig, &["nodeupdates"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|u| Some((u["metadata"]["name"].as_str()?.to_owned(), u)))
        .collect()
}

/// What a host is made of, as far as Strata could change it: installed unit files and
/// loaded units, files below the system directories (names only; package and systemd
/// bookkeeping left out), iptables and ip6tables rules and chains, network links. Taken
/// before the first apply and after `strata reset`, the two must be equal.
pub fn host_snapshot(cluster: &str, host: &str) -> String {
    on_machine(
        cluster,
        host,
        r#"echo '## unit files'
systemctl list-unit-files --no-legend --no-pager | awk '{print $1, $2}' | sort
echo '## units'
# A unit whose file is gone and that does not run is gone (systemd forgets it lazily).
systemctl list-units --all --no-legend --no-pager --plain \
  | awk '!($2 == "not-found" && $3 == "inactive") {print $1}' \
  | grep -Ev '^(session-|user@|user-|user\.slice|run-|dev-|sys-|init\.scope)' | sort
echo '## files'
find /etc /opt /srv /usr/local /var/lib /var/log -xdev \
  \( -path /var/lib/systemd -o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/log/journal \
     -o -path /var/lib/private -o -name '*.log' -o -path /var/log/apt \) -prune -o -print | sort
echo '## iptables'
for t in filter nat mangle raw; do
  iptables -w -t $t -S 2>/dev/null | sed "s/^/$t /"
  ip6tables -w -t $t -S 2>/dev/null | sed "s/^/$t v6 /"
done
echo '## links'
ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
"#,
    )
}

/// The differences between two snapshots: lines only in `before` (-) or only in `after` (+).
pub fn snapshot_diff(before: &str, after: &str) -> Vec<String> {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    b.difference(&a)
        .map(|l| format!("- {l}"))
        .chain(a.difference(&b).map(|l| format!("+ {l}")))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_name_of_a_broken_file() {
        assert_eq!(
            super::cluster_name("kind: Cluster\nmetadata: {name: e2e-ha}\nspec:\n  - {x\n")
                .as_deref(),
            Some("e2e-ha")
        );
        assert_eq!(
            super::cluster_name("metadata:\n  name: demo\n").as_deref(),
            Some("demo")
        );
        assert_eq!(super::cluster_name("spec: {}\n"), None);
    }
}
