//! `strata apply`: provision every host over SSH in named phases, hosts in parallel within a
//! phase, each step idempotent, so that an interrupted or failed run can simply be run again.
//!
//! connect -> preflight -> upload -> etcd -> control-plane -> nodes -> addons -> wait-ready
//! -> kubeconfig

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use strata_manifests::Host;
use strata_manifests::images::StrataImage;
use strata_manifests::model::Bastion;
use strata_manifests::model::{Platform, Role};
use strata_manifests::plan::{AppliedFile, AppliedState};
use strata_manifests::render::{Rendered, render};
use strata_platforms::ssh::{
    Connection, HostKeyPolicy, Identity, Jump, Secret, Target, Upload, key_is_encrypted,
};

use crate::assets::{self, Assets, IMAGE_DIR};
use crate::certs::{ClusterState, load};
use crate::cli::{ApplyArgs, OutputFormat};

/// Progress: `==> Running phase: X` lines in text, one JSON object per line otherwise.
#[derive(Debug, Clone, Copy)]
struct Events {
    json: bool,
}

/// The phases of an apply, in order (the overall progress bar counts them).
const PHASES: [&str; 10] = [
    "connect",
    "preflight",
    "upload",
    "etcd",
    "control-plane",
    "nodes",
    "addons",
    "pod-network",
    "wait-ready",
    "kubeconfig",
];

/// The terminal view: one line per host (its phase and step) under an overall bar.
struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    hosts: BTreeMap<String, indicatif::ProgressBar>,
}

static BARS: std::sync::OnceLock<Bars> = std::sync::OnceLock::new();

impl Bars {
    fn start(hosts: &[&str]) {
        let multi = indicatif::MultiProgress::new();
        let overall = multi.add(indicatif::ProgressBar::new(PHASES.len() as u64));
        overall.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let style = indicatif::ProgressStyle::with_template("  {spinner} {prefix:<12} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let hosts = hosts
            .iter()
            .map(|h| {
                let pb = multi.add(indicatif::ProgressBar::new_spinner());
                pb.set_style(style.clone());
                pb.set_prefix(h.to_string());
                pb.enable_steady_tick(Duration::from_millis(120));
                (h.to_string(), pb)
            })
            .collect();
        let _ = BARS.set(Bars {
            multi,
            overall,
            hosts,
        });
    }

    fn finish() {
        if let Some(b) = BARS.get() {
            for pb in b.hosts.values() {
                pb.finish();
            }
            b.overall.finish();
        }
    }
}

impl Events {
    fn emit(&self, v: serde_json::Value, text: String) {
        if self.json {
            outln!("{v}");
        } else if let Some(b) = BARS.get() {
            let _ = b.multi.println(text);
        } else {
            outln!("{text}");
        }
    }
    fn phase(&self, name: &'static str) {
        if let Ok(mut p) = CURRENT_PHASE.lock() {
            *p = name;
        }
        if let Some(b) = BARS.get() {
            b.overall.set_message(format!("phase {name}"));
        }
        self.emit(
            serde_json::json!({"event": "phase-started", "phase": name}),
            format!("==> Running phase: {name}"),
        );
    }
    fn phase_done(&self, name: &str, d: Duration) {
        if let Some(b) = BARS.get() {
            b.overall.inc(1);
        }
        self.emit(
            serde_json::json!({"event": "phase-finished", "phase": name, "seconds": d.as_secs_f64()}),
            format!("    {name} done in {:.1}s", d.as_secs_f64()),
        );
    }
    fn step(&self, phase: &str, host: &str, step: &str) {
        if let Some(pb) = BARS.get().and_then(|b| b.hosts.get(host)) {
            pb.set_message(format!("{phase}: {step}"));
            return;
        }
        self.emit(
            serde_json::json!({"event": "step", "phase": phase, "host": host, "step": step}),
            format!("    [{host}] {step}"),
        );
    }
}

/// A host with its open connection.
struct Node_<'a> {
    host: &'a Host,
    conn: Connection,
}

fn fail(phase: &str, host: &str, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("phase {phase}, host {host}: {what}")
}

async fn sh(n: &Node_<'_>, phase: &str, command: &str) -> Result<String> {
    let out = n
        .conn
        .exec(command)
        .await
        .map_err(|e| fail(phase, n.host.name.as_str(), e))?;
    if !out.success() {
        return Err(fail(
            phase,
            n.host.name.as_str(),
            format!("`{command}` exited {}:\n{}", out.status, out.tail()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn all<'a, F, Fut>(nodes: &'a [Node_<'a>], f: F) -> Result<()>
where
    F: Fn(&'a Node_<'a>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let results = join_all(nodes.iter().map(f)).await;
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// Server-side applies one object. A custom resource sent right after its CRD may meet a 404
/// until the API server serves the new kind: retried for up to 30 s.
async fn apply_object(
    client: &kube::Client,
    req: http::Request<Vec<u8>>,
    file: &str,
) -> Result<()> {
    let (parts, body) = req.into_parts();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = http::Request::new(body.clone());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        match client.request_text(req).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("phase addons: applying {file}")),
        }
    }
}

/// Which files make a unit restart when they change.
fn restart_triggers(unit: &str) -> &'static [&'static str] {
    match unit {
        "etcd" => &["etcd"],
        "kube-apiserver" => &["kube-apiserver", "/pki/", "audit-policy"],
        "kube-controller-manager" => &["controller-manager", "/pki/ca.", "/pki/sa."],
        "kube-scheduler" => &["scheduler"],
        "containerd" => &["containerd", "runc"],
        "kubelet" => &["kubelet", "/pki/ca.crt"],
        "kube-proxy" => &["kube-proxy"],
        "strata-pod-masquerade" => &["strata-pod-masquerade"],
        _ => &[],
    }
}

/// Enables and starts `units` (without waiting), restarting those whose files changed.
async fn start_units(
    n: &Node_<'_>,
    phase: &str,
    units: &[&str],
    changed: &BTreeSet<String>,
    ev: Events,
) -> Result<()> {
    let restart: Vec<&str> = units
        .iter()
        .copied()
        .filter(|u| {
            changed
                .iter()
                .any(|p| restart_triggers(u).iter().any(|t| p.contains(t)))
        })
        .collect();
    let mut cmd = format!(
        "systemctl daemon-reload && systemctl enable --quiet {}",
        units.join(" ")
    );
    if !restart.is_empty() {
        cmd.push_str(&format!(
            " && systemctl restart --no-block {}",
            restart.join(" ")
        ));
    }
    cmd.push_str(&format!(
        " && systemctl start --no-block {}",
        units.join(" ")
    ));
    sh(n, phase, &cmd).await?;
    let what = if restart.is_empty() {
        format!("started {}", units.join(", "))
    } else {
        format!(
            "started {} (restarted {})",
            units.join(", "),
            restart.join(", ")
        )
    };
    ev.step(phase, n.host.name.as_str(), &what);
    Ok(())
}

async fn retry<F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > limit => {
                return Err(e.context(format!("{what}: not within {}s", limit.as_secs())));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn has_pod_cidr(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every node in `want` exists and satisfies `ok`.
async fn wait_nodes(
    api: &Api<Node>,
    want: &BTreeSet<String>,
    what: &str,
    ok: fn(&Node) -> bool,
) -> Result<()> {
    retry(what, Duration::from_secs(180), || async move {
        let list = api.list(&ListParams::default()).await?;
        let waiting: Vec<&String> = want
            .iter()
            .filter(|w| {
                !list
                    .items
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(w.as_str()) && ok(n))
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            bail!("still waiting for {waiting:?}")
        }
    })
    .await
}

const PREFLIGHT: &str = r#"set -u
fail() { echo "FAIL: $*"; }
[ "$(uname -m)" = x86_64 ] || fail "architecture $(uname -m): Strata installs x86-64 binaries"
[ -d /run/systemd/system ] || fail "systemd is not running (PID 1): units cannot be installed"
grep -qw overlay /proc/filesystems || fail "the kernel has no overlay filesystem (containerd needs it)"
[ -d /sys/fs/cgroup ] || fail "no cgroup filesystem at /sys/fs/cgroup"
avail=$(df -Pk / | awk 'NR==2{print $4}')
[ "$avail" -gt 2097152 ] || fail "only $((avail/1024)) MiB free on /; binaries and images need 2 GiB"
# listener PORT: the executable listening on TCP PORT, if any (from /proc: no ss needed).
listener() {
  hex=$(printf ':%04X' "$1")
  for inode in $(awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    fd=$(find /proc/[0-9]*/fd -lname "socket:\[$inode\]" 2>/dev/null | head -n 1)
    [ -n "$fd" ] || { echo unknown; return; }
    pid=${fd#/proc/}; pid=${pid%%/*}
    readlink "/proc/$pid/exe" || echo "pid $pid"
    return
  done
}
for port in $PORTS; do
  exe=$(listener "$port")
  case "$exe" in
    ""|/opt/strata/bin/*) ;;
    *) fail "TCP port $port is in use by $exe; Strata's components need it: stop that service" ;;
  esac
done
# Another container runtime would fight over the CRI socket, cgroups and iptables.
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  case "$exe" in
    /opt/strata/bin/*) ;;
    */containerd|*/dockerd|*/crio|*/podman) fail "a container runtime Strata did not install is running: $exe (pid ${p#/proc/}); stop and disable it (Strata installs its own containerd)" ;;
  esac
done
if [ "$REFUSES_CGROUP_V1" = yes ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  fail "the host runs cgroup v1; the kubelet of Kubernetes 1.35 and later needs cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1)"
fi
echo "TIME $(date +%s)"
"#;

/// The TCP ports a host's components listen on, by role.
fn ports(h: &Host) -> Vec<u16> {
    let mut p = vec![10250, 10256, 10249];
    if h.has_role(Role::Etcd) {
        p.extend([2379, 2380]);
    }
    if h.has_role(Role::ControlPlane) {
        p.extend([6443, 10257, 10259]);
    }
    p
}

/// The preflight script for a host: its ports, and whether its kubelet refuses cgroup v1.
fn preflight_script(h: &Host, minor: u32, local: bool) -> String {
    let ports: Vec<String> = ports(h).iter().map(u16::to_string).collect();
    let refuses = !local
        && strata_manifests::versions::uses(
            strata_manifests::versions::Item::KubeletRefusesCgroupV1,
            minor,
        );
    format!(
        "PORTS='{}'\nREFUSES_CGROUP_V1={}\n{PREFLIGHT}",
        ports.join(" "),
        if refuses { "yes" } else { "no" }
    )
}

/// The shell command that removes a file Strata no longer renders; a unit is stopped and
/// disabled first.
fn remove_command(path: &str) -> String {
    let quoted = format!("'{}'", path.replace('\'', r"'\''"));
    match path.strip_prefix("/etc/systemd/system/").filter(|u| {
        [".service", ".path", ".timer"]
            .iter()
            .any(|k| u.ends_with(k))
            && !u.contains('/')
    }) {
        Some(unit) => format!(
            "systemctl disable --now '{unit}' >/dev/null 2>&1; rm -f {quoted} && systemctl daemon-reload"
        ),
        None => format!("rm -f {quoted}"),
    }
}

/// The shell script that imports the asset images into containerd's k8s.io namespace, each
/// only when containerd does not already hold that reference at that digest, and names the
/// sandbox image as the release's kubelet and containerd expect it (`sandbox`). Archives of
/// Strata's images the cluster no longer takes from the assets are removed from the host.
fn import_script(assets: &Assets, sandbox: &str) -> String {
    let mut s = String::from(
        r#"set -eu
ctr="/opt/strata/bin/ctr -n k8s.io"
i=0
until $ctr version >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 120 ] || { echo "containerd does not answer on its socket" >&2; exit 1; }
  sleep 0.5
done
digest_of() { $ctr images ls "name==$1" | awk -v r="$1" '$1 == r { print $3 }'; }
import() { # FILE REF DIGEST [ALIAS]
  if [ "$(digest_of "$2")" != "$3" ]; then
    $ctr images import "$1" >/dev/null
    [ "$(digest_of "$2")" = "$3" ] || { echo "$1 did not import as $2@$3" >&2; exit 1; }
    echo "imported $2"
  fi
  if [ -n "${4:-}" ] && [ "$(digest_of "$4")" != "$3" ]; then
    $ctr images tag --force "$2" "$4" >/dev/null
    echo "tagged $2 as $4"
  fi
}
"#,
    );
    for (a, i) in assets.images() {
        let alias = if i.strata == Some(StrataImage::Pause) {
            sandbox
        } else {
            ""
        };
        s.push_str(&format!(
            "import '{}' '{}' '{}' '{alias}'\n",
            a.remote, i.reference, i.digest
        ));
    }
    for i in StrataImage::ALL {
        if !assets.images().any(|(_, img)| img.strata == Some(i)) {
            let archive = format!("{IMAGE_DIR}/{}", i.archive());
            s.push_str(&format!(
                "if [ -e '{archive}' ]; then rm -f '{archive}'; echo 'removed {archive} (not taken from the assets)'; fi\n"
            ));
        }
    }
    s
}

/// From Kubernetes 1.36 the kubelet needs containerd 2; the asset's containerd says which
/// it is once uploaded.
async fn check_containerd_2(n: &Node_<'_>) -> Result<()> {
    let out = sh(n, "upload", "/opt/strata/bin/containerd --version").await?;
    let version = out.split_whitespace().nth(2).unwrap_or_default();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 2 {
        return Err(fail(
            "upload",
            n.host.name.as_str(),
            format!(
                "the assets' containerd is {version:?}; Kubernetes 1.36 and later need containerd 2 \
                 (put containerd 2.x in spec.assets.source)"
            ),
        ));
    }
    Ok(())
}

/// The passphrases of encrypted private keys, asked once per key file in a terminal (the
/// live view is paused meanwhile). Without a terminal the transport reads
/// STRATA_SSH_KEY_PASSPHRASE, and says so when it is missing.
fn key_passphrases(keys: &BTreeSet<PathBuf>) -> Result<BTreeMap<PathBuf, Secret>> {
    let mut out = BTreeMap::new();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::env::var_os(strata_platforms::ssh::PASSPHRASE_ENV).is_none();
    if !interactive {
        return Ok(out);
    }
    for key in keys.iter().filter(|k| key_is_encrypted(k)) {
        let ask = || {
            dialoguer::Password::new()
                .with_prompt(format!("Passphrase for SSH key {}", key.display()))
                .interact()
        };
        let pass = match BARS.get() {
            Some(b) => b.multi.suspend(ask),
            None => ask(),
        }
        .with_context(|| format!("reading the passphrase of {}", key.display()))?;
        out.insert(key.clone(), Secret(pass));
    }
    Ok(out)
}

/// Pins the host keys a connection was made with (the host's and its bastion's) in the state.
pub(crate) fn remember_host_keys(
    cs: &ClusterState,
    state: &mut AppliedState,
    h: &Host,
    conn: &Connection,
) {
    state
        .host_keys
        .insert(h.name.to_string(), conn.host_key().to_owned());
    if let (Some(b), Some(fp)) = (cs.cluster.ssh_for(h).bastion, conn.jump_host_key()) {
        state.host_keys.insert(bastion_pin_name(&b), fp.to_owned());
    }
}

/// The key the state directory pins a bastion's host key under.
fn bastion_pin_name(b: &Bastion) -> String {
    format!("bastion/{}:{}", b.address.as_str(), b.port)
}

/// How a host's host key is checked: pinned in the Cluster file, else in the state
/// directory, else accepted only with --accept-new-host-keys.
fn host_key_policy(
    name: &str,
    pinned: Option<String>,
    accept_new: bool,
    where_to_pin: &str,
) -> Result<HostKeyPolicy> {
    match pinned {
        Some(p) => Ok(HostKeyPolicy::Pinned(p)),
        None if accept_new => Ok(HostKeyPolicy::AcceptNew),
        None => Err(anyhow!(
            "phase connect, host {name}: no pinned SSH host key. Check the host's fingerprint \
             (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it) and set {where_to_pin}, or \
             run with --accept-new-host-keys to pin what it presents"
        )),
    }
}

/// Opens an SSH connection to each host: key from the platform (the cluster's own key on
/// the local platform) or the ssh-agent, through the bastion if there is one, host keys
/// pinned in the Cluster file or the state directory.
pub(crate) async fn connect_all(
    cs: &ClusterState,
    state: &AppliedState,
    hosts: &[&Host],
    accept_new: bool,
) -> Result<Vec<Result<Connection>>> {
    let local = matches!(cs.cluster.spec.platform, Platform::Local(_));
    let identity_of = |h: &Host, secrets: &BTreeMap<PathBuf, Secret>| {
        let ssh = cs.cluster.ssh_for(h);
        if local {
            Identity::Key {
                path: cs.state.root.join("ssh/id_ed25519"),
                passphrase: None,
            }
        } else if ssh.agent {
            Identity::Agent { socket: None }
        } else {
            let path = cs.ctx.resolve(&ssh.private_key);
            let passphrase = secrets.get(&path).cloned();
            Identity::Key { path, passphrase }
        }
    };
    let keys: BTreeSet<PathBuf> = hosts
        .iter()
        .filter_map(|h| match identity_of(h, &BTreeMap::new()) {
            Identity::Key { path, .. } if !local => Some(path),
            _ => None,
        })
        .collect();
    let secrets = key_passphrases(&keys)?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(join_all(hosts.iter().map(|h| {
        let ssh = cs.cluster.ssh_for(h);
        let identity = identity_of(h, &secrets);
        let pin = ssh
            .host_key
            .as_ref()
            .map(|k| k.to_string())
            .or_else(|| state.host_keys.get(h.name.as_str()).cloned());
        let jump = ssh.bastion.as_ref().map(|b| {
            let pin = b
                .host_key
                .as_ref()
                .map(|k| k.to_string())
                .or_else(|| state.host_keys.get(&bastion_pin_name(b)).cloned());
            (
                host_key_policy(
                    &format!("bastion {}", b.address.as_str()),
                    pin,
                    accept_new,
                    "spec.ssh.bastion.hostKey",
                ),
                Target {
                    host: format!("bastion {}", b.address.as_str()),
                    address: b.address.as_str().to_owned(),
                    port: b.port,
                    user: b.user.clone().unwrap_or_else(|| ssh.user.clone()),
                    identity: identity.clone(),
                    jump: None,
                },
            )
        });
        let target = Target {
            host: h.name.to_string(),
            address: h
                .address
                .as_ref()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            port: ssh.port,
            user: ssh.user.clone(),
            identity,
            jump: None,
        };
        async move {
            let mut target = target;
            if let Some((jump_policy, jump_target)) = jump {
                let policy = match jump_policy {
                    Ok(p) => p,
                    Err(e) => ask_trust(&jump_target, interactive).await.map_err(|_| e)?,
                };
                target.jump = Some(Box::new(Jump {
                    target: jump_target,
                    policy,
                }));
            }
            let policy =
                match host_key_policy(&target.host, pin, accept_new, "spec.hosts[].ssh.hostKey") {
                    Ok(p) => p,
                    Err(e) => ask_trust(&target, interactive).await.map_err(|_| e)?,
                };
            Connection::connect(&target, policy, Duration::from_secs(20))
                .await
                .map_err(|e| anyhow!("phase connect: {e}"))
        }
    }))
    .await)
}

/// First contact in a terminal: shows the host key the host presents and asks whether to
/// trust it (then it is pinned like a key accepted with --accept-new-host-keys). One
/// question at a time; the live view is paused meanwhile.
async fn ask_trust(target: &Target, interactive: bool) -> Result<HostKeyPolicy> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if !interactive {
        bail!("not a terminal");
    }
    let fp = strata_platforms::ssh::presented_host_key(target, Duration::from_secs(20)).await?;
    let _turn = ONE_AT_A_TIME.lock().await;
    let question = format!(
        "{} ({}) presents the SSH host key {fp}. Compare it with `ssh-keygen -lf \
         /etc/ssh/ssh_host_ed25519_key.pub` on that machine. Trust it",
        target.host, target.address
    );
    let ask = || {
        dialoguer::Confirm::new()
            .with_prompt(question.clone())
            .default(false)
            .interact()
    };
    let yes = match BARS.get() {
        Some(b) => b.multi.suspend(ask),
        None => ask(),
    }?;
    if !yes {
        bail!("host key of {} not trusted", target.host);
    }
    Ok(HostKeyPolicy::Pinned(fp))
}

/// The admin API client from the state directory's kubeconfig.
pub(crate) async fn admin_client(cs: &ClusterState) -> Result<kube::Client> {
    let path = cs.state.file("auth/kubeconfig");
    let kc = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("admin kubeconfig")?;
    kube::Client::try_from(config).context("API client")
}

pub fn run(args: &ApplyArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = apply(args) => r,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the apply future closes every SSH session. Each upload is atomic on
                // the host (temp + rename) and state.json is written atomically after each
                // phase, so the next run carries on from where this one stopped.
                Bars::finish();
                let phase = CURRENT_PHASE.lock().map(|p| *p).unwrap_or("");
                let json = args.output == OutputFormat::Json
                    || !std::io::IsTerminal::is_terminal(&std::io::stdout());
                if json {
                    println!("{}", serde_json::json!({"event": "interrupted", "phase": phase}));
                }
                eprintln!(
                    "strata apply: interrupted during phase {phase}; nothing is left half-written. \
                     Run `strata apply` again to continue."
                );
                Ok(ExitCode::from(130))
            }
        }
    })
}

/// The phase running now (for the message when apply is interrupted).
static CURRENT_PHASE: std::sync::Mutex<&'static str> = std::sync::Mutex::new("");

async fn apply(args: &ApplyArgs) -> Result<ExitCode> {
    let ev = Events {
        // Machine-readable when asked, and whenever nobody watches a terminal (CI).
        json: args.output == OutputFormat::Json
            || !std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let t0 = Instant::now();

    // Local work first: validation, PKI, rendering, assets. Nothing touches a host yet.
    let cs: ClusterState = load(&args.state)?;
    let out = strata_pki::generate(&cs.inputs, &cs.state, time::OffsetDateTime::now_utc())
        .with_context(|| format!("phase pki, state directory {}", cs.state.root.display()))?;
    if !out.changed().is_empty() {
        ev.step(
            "pki",
            "local",
            &format!("{} item(s) created or re-issued", out.changed().len()),
        );
    }
    let rendered: Rendered = render(&cs.cluster, &cs.state).context("phase render")?;
    let ctx = &cs.ctx;
    let version = cs.cluster.spec.kubernetes.version.to_string();
    let spec_assets = &cs.cluster.spec.assets;
    let mut asset_source = assets::source(&spec_assets.source, &ctx.base_dir, &version);
    if let assets::Source::Upstream { mirror, .. } = &mut asset_source {
        mirror.clone_from(&spec_assets.mirror);
    }
    let asset_dir = assets::resolve(
        &asset_source,
        &spec_assets.sha256,
        &cs.state.root.join("assets"),
    )
    .await
    .context("phase assets")?;
    let assets = Assets::load(&asset_dir, &version)
        .and_then(|a| a.for_cluster(&cs.cluster, &asset_dir.display().to_string()))
        .context("phase assets")?;
    let state_file = cs.state.root.join("state.json");
    let mut state = AppliedState::load(&state_file)?;
    let local = matches!(cs.cluster.spec.platform, Platform::Local(_));

    // connect
    let hosts: Vec<&Host> = cs.cluster.spec.hosts.iter().collect();
    if !ev.json {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        Bars::start(&names);
    }
    ev.phase("connect");
    let t = Instant::now();
    let connects = connect_all(&cs, &state, &hosts, args.accept_new_host_keys).await?;
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    for (h, c) in hosts.iter().zip(connects) {
        match c {
            Ok(conn) => {
                ev.step(
                    "connect",
                    h.name.as_str(),
                    &format!("connected, host key {}", conn.host_key()),
                );
                remember_host_keys(&cs, &mut state, h, &conn);
                nodes.push(Node_ { host: h, conn });
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    state.save(&state_file)?;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    timings.push(("connect", t.elapsed()));
    ev.phase_done("connect", t.elapsed());

    // preflight
    ev.phase("preflight");
    let t = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let swap_ok = local;
    let minor = cs.cluster.spec.kubernetes.version.minor();
    all(&nodes, |n| async move {
        let out = sh(n, "preflight", &preflight_script(n.host, minor, local)).await?;
        let mut problems: Vec<String> = out.lines().filter_map(|l| l.strip_prefix("FAIL: ").map(str::to_owned)).collect();
        if !swap_ok {
            let swaps = sh(n, "preflight", "tail -n +2 /proc/swaps").await?;
            if !swaps.trim().is_empty() {
                problems.push("swap is on; the kubelet refuses to run with swap: `swapoff -a` and remove it from /etc/fstab".into());
            }
        }
        if let Some(t) = out.lines().find_map(|l| l.strip_prefix("TIME ")).and_then(|t| t.parse::<i64>().ok())
            && (t - now).abs() > 30
        {
            problems.push(format!("clock is {}s off this computer's; certificates and etcd need synchronised clocks (enable NTP)", t - now));
        }
        if problems.is_empty() {
            ev.step("preflight", n.host.name.as_str(), "ok");
            Ok(())
        } else {
            Err(fail("preflight", n.host.name.as_str(), problems.join("; ")))
        }
    })
    .await?;
    timings.push(("preflight", t.elapsed()));
    ev.phase_done("preflight", t.elapsed());

    // upload
    ev.phase("upload");
    let t = Instant::now();
    let applied = AppliedState::of(&rendered);
    let previous = &state;
    let needs_containerd_2 = strata_manifests::versions::uses(
        strata_manifests::versions::Item::ContainerdV2Required,
        cs.cluster.spec.kubernetes.version.minor(),
    );
    let changed_per_host: BTreeMap<String, BTreeSet<String>> = {
        let results = join_all(nodes.iter().map(|n| {
            let tree = rendered
                .hosts
                .iter()
                .find(|t| t.host == n.host.name.as_str());
            let files = assets.for_host(n.host);
            async move {
                let name = n.host.name.as_str();
                let mut changed = BTreeSet::new();
                // What is there already, for every file at once: unchanged files cost nothing.
                let mut paths: Vec<&str> = files.iter().map(|a| a.remote.as_str()).collect();
                if let Some(tree) = tree {
                    paths.extend(tree.files.keys().map(String::as_str));
                }
                let have = n
                    .conn
                    .probe(&paths)
                    .await
                    .map_err(|e| fail("upload", name, e))?;
                for a in files {
                    // The manifest's digest is verified: a host that has it needs nothing.
                    if have
                        .get(&a.remote)
                        .is_some_and(|(sum, mode)| *sum == a.sha256 && mode == "755")
                    {
                        continue;
                    }
                    let bytes = tokio::fs::read(&a.local)
                        .await
                        .with_context(|| format!("reading {}", a.local.display()))?;
                    if n.conn
                        .upload_known(&a.remote, &bytes, 0o755, "root:root", have.get(&a.remote))
                        .await
                        .map_err(|e| fail("upload", name, e))?
                        == Upload::Written
                    {
                        changed.insert(a.remote.clone());
                    }
                }
                if let Some(tree) = tree {
                    for (path, f) in &tree.files {
                        if n.conn
                            .upload_known(path, &f.content, f.mode, "root:root", have.get(path))
                            .await
                            .map_err(|e| fail("upload", name, e))?
                            == Upload::Written
                        {
                            changed.insert(path.clone());
                        }
                    }
                }
                // Files Strata wrote last time that are no longer rendered (a role removed,
                // a file renamed by a newer release): stop their units and delete them.
                let stale: Vec<&String> = previous
                    .hosts
                    .get(name)
                    .map(|old| {
                        old.keys()
                            .filter(|p| tree.is_none_or(|t| !t.files.contains_key(*p)))
                            .collect()
                    })
                    .unwrap_or_default();
                for path in stale {
                    sh(n, "upload", &remove_command(path)).await?;
                    ev.step("upload", name, &format!("removed {path}"));
                    changed.insert(path.clone());
                }
                if needs_containerd_2 {
                    check_containerd_2(n).await?;
                }
                ev.step(
                    "upload",
                    name,
                    &format!("{} file(s) written", changed.len()),
                );
                Ok::<_, anyhow::Error>((name.to_owned(), changed))
            }
        }))
        .await;
        let mut m = BTreeMap::new();
        for r in results {
            let (h, c) = r?;
            m.insert(h, c);
        }
        m
    };
    for n in &nodes {
        let name = n.host.name.to_string();
        let files: BTreeMap<String, AppliedFile> =
            applied.hosts.get(&name).cloned().unwrap_or_default();
        state.hosts.insert(name, files);
    }
    state.save(&state_file)?;
    timings.push(("upload", t.elapsed()));
    ev.phase_done("upload", t.elapsed());
    let changed = |n: &Node_<'_>| {
        changed_per_host
            .get(n.host.name.as_str())
            .cloned()
            .unwrap_or_default()
    };

    // etcd: every member starts at once (a new cluster needs a quorum), then each is healthy.
    ev.phase("etcd");
    let t = Instant::now();
    let etcd: Vec<&Node_<'_>> = nodes
        .iter()
        .filter(|n| n.host.has_role(Role::Etcd))
        .collect();
    for n in &etcd {
        start_units(n, "etcd", &["etcd"], &changed(n), ev).await?;
    }
    let health = "ETCDCTL_API=3 /opt/strata/bin/etcdctl --endpoints=https://127.0.0.1:2379 \
        --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
        --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --dial-timeout=3s endpoint health";
    let waits = join_all(etcd.iter().map(|n| async move {
        retry(
            &format!("phase etcd, host {}: etcd healthy", n.host.name),
            Duration::from_secs(120),
            || async { sh(n, "etcd", health).await.map(drop) },
        )
        .await?;
        ev.step("etcd", n.host.name.as_str(), "healthy");
        Ok::<_, anyhow::Error>(())
    }))
    .await;
    waits.into_iter().collect::<Result<Vec<_>>>()?;
    timings.push(("etcd", t.elapsed()));
    ev.phase_done("etcd", t.elapsed());

    // control plane
    ev.phase("control-plane");
    let t = Instant::now();
    for n in nodes.iter().filter(|n| n.host.has_role(Role::ControlPlane)) {
        start_units(
            n,
            "control-plane",
            &[
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ],
            &changed(n),
            ev,
        )
        .await?;
    }
    let kubeconfig = cs.state.file("auth/kubeconfig");
    let client = admin_client(&cs).await?;
    retry(
        "phase control-plane: API server ready (/readyz)",
        Duration::from_secs(180),
        || {
            let c = client.clone();
            async move {
                let text = c
                    .request_text(http::Request::get("/readyz").body(Vec::new())?)
                    .await?;
                if text.trim() == "ok" {
                    Ok(())
                } else {
                    bail!("{text}")
                }
            }
        },
    )
    .await?;
    ev.step(
        "control-plane",
        "api",
        &format!("ready at https://{}", cs.inputs.api_endpoint),
    );
    timings.push(("control-plane", t.elapsed()));
    ev.phase_done("control-plane", t.elapsed());

    // nodes
    ev.phase("nodes");
    let imports = import_script(&assets, &StrataImage::Pause.built(&cs.cluster));
    let imports = imports.as_str();
    // With the update operator, the two path units its unprivileged agent works through.
    let node_units: &[&str] = if cs.cluster.spec.addons.update_operator.enabled {
        &[
            "containerd",
            "kubelet",
            "kube-proxy",
            "strata-pod-masquerade",
            "strata-reboot-required.path",
            "strata-reboot.path",
            "strata-update-engine-check.timer",
        ]
    } else {
        &[
            "containerd",
            "kubelet",
            "kube-proxy",
            "strata-pod-masquerade",
        ]
    };
    let t = Instant::now();
    all(&nodes, |n| {
        let c = changed(n);
        async move {
            sh(
                n,
                "nodes",
                "sysctl --quiet --system >/dev/null 2>&1 || true",
            )
            .await?;
            start_units(n, "nodes", node_units, &c, ev).await?;
            let out = sh(n, "nodes", imports).await?;
            for line in out.lines() {
                ev.step("nodes", n.host.name.as_str(), line);
            }
            Ok(())
        }
    })
    .await?;
    timings.push(("nodes", t.elapsed()));
    ev.phase_done("nodes", t.elapsed());

    // addons: the cluster objects, with server-side apply.
    ev.phase("addons");
    let t = Instant::now();
    for o in &rendered.objects {
        let req = http::Request::patch(format!("{}?fieldManager=strata&force=true", o.api_path))
            .header("Content-Type", "application/apply-patch+yaml")
            .body(o.yaml.clone().into_bytes())?;
        apply_object(&client, req, &o.file).await?;
        ev.step("addons", "api", &format!("applied {}", o.file));
    }
    state.objects = applied.objects.clone();
    state.save(&state_file)?;
    timings.push(("addons", t.elapsed()));
    ev.phase_done("addons", t.elapsed());

    // Every node registers; control-plane nodes get their role label through the API
    // (NodeRestriction forbids the kubelet to set it).
    let api: Api<Node> = Api::all(client.clone());
    let want: BTreeSet<String> = nodes.iter().map(|n| n.host.name.to_string()).collect();
    ev.phase("pod-network");
    let t = Instant::now();
    wait_nodes(
        &api,
        &want,
        "phase pod-network: every node registered with a podCIDR",
        has_pod_cidr,
    )
    .await?;
    for n in nodes.iter().filter(|n| n.host.has_role(Role::ControlPlane)) {
        let name = n.host.name.as_str();
        let body = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    node-role.kubernetes.io/control-plane: \"\"\n"
        );
        let req = http::Request::patch(format!(
            "/api/v1/nodes/{name}?fieldManager=strata-node-roles&force=true"
        ))
        .header("Content-Type", "application/apply-patch+yaml")
        .body(body.into_bytes())?;
        client
            .request_text(req)
            .await
            .with_context(|| format!("phase pod-network: labelling {name}"))?;
    }
    // Each node's pod network on its own podCIDR (containerd picks the file up by itself):
    // written by the overlay agent when the overlay runs, by apply otherwise.
    let overlay = cs.cluster.spec.addons.overlay.enabled;
    all(&nodes, |n| {
        let api = api.clone();
        async move {
            let name = n.host.name.as_str();
            let node = api.get(name).await.with_context(|| format!("phase pod-network: reading node {name}"))?;
            let cidr = node.spec.and_then(|s| s.pod_cidr).ok_or_else(|| fail("pod-network", name, "no podCIDR"))?;
            if overlay {
                ev.step("pod-network", name, &format!("pods on {cidr} (the overlay agent writes the CNI configuration)"));
                return Ok(());
            }
            let mtu = sh(n, "pod-network", "cat /sys/class/net/$(ip -o route show default | awk '{print $5; exit}')/mtu 2>/dev/null || echo 1500")
                .await?
                .trim()
                .parse::<u32>()
                .unwrap_or(1500);
            let conf = strata_overlay::cni::conflist(&cidr, mtu.saturating_sub(50));
            let path = format!("{}/{}", strata_manifests::render::CNI_DIR, strata_overlay::cni::FILE);
            let path = path.as_str();
            n.conn.upload(path, conf.as_bytes(), 0o644, "root:root").await.map_err(|e| fail("pod-network", name, e))?;
            ev.step("pod-network", name, &format!("pods on {cidr}, MTU {}", mtu.saturating_sub(50)));
            Ok(())
        }
    })
    .await?;
    timings.push(("pod-network", t.elapsed()));
    ev.phase_done("pod-network", t.elapsed());

    // Success means every node Ready.
    ev.phase("wait-ready");
    let t = Instant::now();
    wait_nodes(&api, &want, "phase wait-ready: every node Ready", is_ready).await?;
    for name in &want {
        ev.step("wait-ready", name, "Ready");
    }
    timings.push(("wait-ready", t.elapsed()));
    ev.phase_done("wait-ready", t.elapsed());

    ev.phase("kubeconfig");
    ev.step(
        "kubeconfig",
        "local",
        &format!("kubectl --kubeconfig {} get nodes", kubeconfig.display()),
    );
    for n in nodes {
        n.conn.close().await;
    }
    Bars::finish();
    if !ev.json {
        outln!("Phase timings:");
        for (p, d) in &timings {
            outln!("  {p:<14} {:>6.1}s", d.as_secs_f64());
        }
        outln!("  {:<14} {:>6.1}s", "total", t0.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}
