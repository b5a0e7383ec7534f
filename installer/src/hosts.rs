//! Reaching the hosts and the API: SSH connections with verified host keys (pinned in the
//! Cluster file or the state directory, or trusted at first contact), commands on hosts,
//! and the admin API client.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::future::join_all;
use kube::config::{KubeConfigOptions, Kubeconfig};
use strata_manifests::Host;
use strata_manifests::model::{Bastion, Platform};
use strata_manifests::plan::{AppliedState, PhaseName};
use strata_platforms::ssh::{
    Connection, HostKeyPolicy, Identity, Jump, Secret, Target, key_is_encrypted,
};

use crate::certs::ClusterState;
use crate::engine::Reporter;

/// A host with its open connection.
pub struct HostConn {
    pub host: Host,
    pub conn: Connection,
}

impl HostConn {
    pub fn name(&self) -> &str {
        self.host.name.as_str()
    }

    /// Runs `command` on the host; its stdout, or an error naming the phase, the host, the
    /// command, its exit status and the end of its output.
    pub async fn sh(&self, phase: PhaseName, command: &str) -> Result<String> {
        let out = self
            .conn
            .exec(command)
            .await
            .map_err(|e| fail(phase, self.name(), e))?;
        if !out.success() {
            return Err(fail(
                phase,
                self.name(),
                format!("`{command}` exited {}:\n{}", out.status, out.tail()),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// An error of `phase` on `host`.
pub fn fail(phase: PhaseName, host: &str, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("phase {phase}, host {host}: {what}")
}

/// Runs `f` on every host at once; every host's error is reported, not just the first.
pub async fn all<'a, F, Fut>(hosts: &'a [HostConn], f: F) -> Result<()>
where
    F: Fn(&'a HostConn) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let results = join_all(hosts.iter().map(f)).await;
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

/// Tries `f` every second until it succeeds or `limit` passes (then its last error).
pub async fn retry<F, Fut>(what: &str, limit: Duration, f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    retry_every(what, limit, Duration::from_secs(1), f).await
}

/// [`retry`], trying again `every` after a failure.
pub async fn retry_every<F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: F,
) -> Result<()>
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
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Connects to every host of the Cluster file, in its order; the host keys of those that
/// answered are pinned in `state` (the caller saves it).
pub async fn connect(
    reporter: &Reporter,
    cs: &ClusterState,
    state: &mut AppliedState,
    accept_new: bool,
) -> Result<Vec<Result<HostConn>>> {
    let hosts: Vec<&Host> = cs.cluster.spec.hosts.iter().collect();
    connect_hosts(reporter, cs, state, &hosts, accept_new).await
}

/// [`connect`] to some of the Cluster file's hosts.
pub async fn connect_hosts(
    reporter: &Reporter,
    cs: &ClusterState,
    state: &mut AppliedState,
    hosts: &[&Host],
    accept_new: bool,
) -> Result<Vec<Result<HostConn>>> {
    let results = connect_all(reporter, cs, state, hosts, accept_new).await?;
    Ok(hosts
        .iter()
        .zip(results)
        .map(|(h, c)| {
            let conn = c?;
            remember_host_keys(cs, state, h, &conn);
            // How to reach it once it leaves the file (to drain and reset it).
            state.applied_hosts.insert(h.name.to_string(), (*h).clone());
            Ok(HostConn {
                host: (*h).clone(),
                conn,
            })
        })
        .collect())
}

/// Connects to one host that is not (or no longer) in the Cluster file, as last applied
/// (`state.applied_hosts`): its key must be the pinned one.
pub async fn connect_one(
    reporter: &Reporter,
    cs: &ClusterState,
    state: &AppliedState,
    host: &Host,
) -> Result<Connection> {
    let mut results = connect_all(reporter, cs, state, &[host], false).await?;
    results
        .pop()
        .unwrap_or_else(|| Err(anyhow!("host {}: not connected", host.name)))
}

/// What succeeded, and every failure at once (as its full message).
pub fn successes_and_failures<T>(results: Vec<Result<T>>) -> (Vec<T>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (ok, errors)
}

/// The passphrases of encrypted private keys, asked once per key file in a terminal (the
/// live view is paused meanwhile). Without a terminal the transport reads
/// STRATA_SSH_KEY_PASSPHRASE, and says so when it is missing.
fn key_passphrases(
    reporter: &Reporter,
    keys: &BTreeSet<PathBuf>,
) -> Result<BTreeMap<PathBuf, Secret>> {
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
        let pass = reporter
            .suspend(ask)
            .with_context(|| format!("reading the passphrase of {}", key.display()))?;
        out.insert(key.clone(), Secret(pass));
    }
    Ok(out)
}

/// Pins the host keys a connection was made with (the host's and its bastion's) in the state.
fn remember_host_keys(cs: &ClusterState, state: &mut AppliedState, h: &Host, conn: &Connection) {
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
async fn connect_all(
    reporter: &Reporter,
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
    let secrets = key_passphrases(reporter, &keys)?;
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
                    Err(e) => ask_trust(reporter, &jump_target, interactive)
                        .await
                        .map_err(|_| e)?,
                };
                target.jump = Some(Box::new(Jump {
                    target: jump_target,
                    policy,
                }));
            }
            let policy =
                match host_key_policy(&target.host, pin, accept_new, "spec.hosts[].ssh.hostKey") {
                    Ok(p) => p,
                    Err(e) => ask_trust(reporter, &target, interactive)
                        .await
                        .map_err(|_| e)?,
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
async fn ask_trust(
    reporter: &Reporter,
    target: &Target,
    interactive: bool,
) -> Result<HostKeyPolicy> {
    if !interactive {
        bail!("not a terminal");
    }
    let fp = strata_platforms::ssh::presented_host_key(target, Duration::from_secs(20)).await?;
    let _turn = reporter.question_turn().await;
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
    let yes = reporter.suspend(ask)?;
    if !yes {
        bail!("host key of {} not trusted", target.host);
    }
    Ok(HostKeyPolicy::Pinned(fp))
}

/// The admin API client from the state directory's kubeconfig.
pub async fn admin_client(cs: &ClusterState) -> Result<kube::Client> {
    kube::Client::try_from(admin_config(cs).await?).context("API client")
}

/// Without the client's automatic retries of 429: a refused eviction (a PodDisruptionBudget
/// that allows none) is the answer a drain must see and name, not something the client waits
/// out for up to 1,000 s per request; apply's waits have their own limits. A request whose
/// answer stops coming fails after [`API_READ_TIMEOUT`] (the client waits forever without
/// one) and those waits try again: apply makes no watches or other long requests.
async fn admin_config(cs: &ClusterState) -> Result<kube::Config> {
    let path = cs.state.file("auth/kubeconfig");
    let kc = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("admin kubeconfig")?;
    config.default_retry = false;
    config.read_timeout = Some(API_READ_TIMEOUT);
    Ok(config)
}

/// How long apply's API client waits for an answer to go on arriving.
const API_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin client against one API server (`host:port`).
pub async fn client_at(cs: &ClusterState, server: &str) -> Result<kube::Client> {
    let mut config = admin_config(cs).await?;
    config.cluster_url = format!("https://{server}")
        .parse()
        .with_context(|| format!("API server address {server}"))?;
    kube::Client::try_from(config).context("API client")
}

/// The admin client apply installs with: with a virtual IP (held only once the control
/// plane runs and its Lease is applied), the first control-plane host's API server;
/// otherwise the cluster's endpoint.
pub async fn install_client(cs: &ClusterState) -> Result<kube::Client> {
    let c = &cs.cluster;
    if c.spec.control_plane.vip.is_some()
        && c.spec.control_plane.endpoint.0.is_empty()
        && let Some(server) = c.first_api_server()
    {
        return client_at(cs, &server).await;
    }
    admin_client(cs).await
}
