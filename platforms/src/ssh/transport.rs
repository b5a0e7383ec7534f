//! One SSH connection to a host (russh): verified host key, authentication with a key file
//! or the ssh-agent, optionally through a jump host (bastion), `sudo` for users other than
//! root, commands with exit status and output, atomic uploads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, load_secret_key};
use russh::{ChannelMsg, Disconnect};

/// Environment variable holding the passphrase of an encrypted private key (CI).
pub const PASSPHRASE_ENV: &str = "STRATA_SSH_KEY_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "host {host} ({address}): the SSH host key changed: pinned {pinned}, presented {presented}. \
         If the machine was reinstalled, update the pin (spec.hosts[].ssh.hostKey or the state \
         directory); otherwise do not connect: someone may be in the middle"
    )]
    HostKeyChanged {
        host: String,
        address: String,
        pinned: String,
        presented: String,
    },
    #[error("host {host} ({address}): cannot connect: {reason}")]
    Connect {
        host: String,
        address: String,
        reason: String,
    },
    #[error(
        "host {host}: user {user} was refused with {key}; is its public key in ~{user}/.ssh/authorized_keys?"
    )]
    Auth {
        host: String,
        user: String,
        key: String,
    },
    #[error("host {host}: the ssh-agent has no key user {user} is accepted with ({reason})")]
    Agent {
        host: String,
        user: String,
        reason: String,
    },
    #[error(
        "host {host}: user {user} cannot run commands as root without a password (sudo said: \
         {said}). Allow it, e.g. `{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/strata, or \
         connect as root"
    )]
    Sudo {
        host: String,
        user: String,
        said: String,
    },
    #[error("host {host}: through jump host {jump}: {reason}")]
    Jump {
        host: String,
        jump: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("host {host}: {what}: {reason}")]
    Channel {
        host: String,
        what: String,
        reason: String,
    },
}

/// A secret string (a key passphrase): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How the client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A private key file (ed25519, ECDSA or RSA, OpenSSH or PEM format). An encrypted key
    /// needs its passphrase: given here, or in the environment variable [`PASSPHRASE_ENV`].
    Key {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    /// The keys of an ssh-agent, tried in its order: at this socket, or at `SSH_AUTH_SOCK`.
    Agent { socket: Option<PathBuf> },
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Key { path, .. } => write!(f, "key {}", path.display()),
            Identity::Agent { .. } => f.write_str("the ssh-agent's keys"),
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name, for messages.
    pub host: String,
    pub address: String,
    pub port: u16,
    /// Login user; commands run through `sudo -n` when it is not root.
    pub user: String,
    pub identity: Identity,
    /// Reach the host through this SSH server (a bastion), whose own key is verified too.
    pub jump: Option<Box<Jump>>,
}

/// A jump host and how its host key is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub target: Target,
    pub policy: HostKeyPolicy,
}

/// How the server's host key is verified. There is no "accept anything".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The key must have this SHA256 fingerprint.
    Pinned(String),
    /// First contact, explicitly allowed (`--accept-new-host-keys`): the key is accepted and
    /// reported by [`Connection::host_key`] so that the caller pins it.
    AcceptNew,
}

struct Verifier {
    policy: HostKeyPolicy,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp.clone());
        }
        Ok(match &self.policy {
            HostKeyPolicy::Pinned(pin) => *pin == fp,
            HostKeyPolicy::AcceptNew => true,
        })
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The last lines of stdout and stderr, for error messages.
    pub fn tail(&self) -> String {
        let mut all = String::from_utf8_lossy(&self.stdout).into_owned();
        all.push_str(&String::from_utf8_lossy(&self.stderr));
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A command started with [`Connection::start`], its standard input still open. A task
/// reads its output all along (an unread channel would stall the whole connection once
/// russh's queue fills). Dropping it closes the command's standard input, as `stop` does.
pub struct Running {
    host: String,
    first: Option<tokio::sync::oneshot::Receiver<Result<String, String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<CommandOutput>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// How long a command may take to end once its standard input is closed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a started command's output until it ends: its first line goes to `first` (or, when
/// it ends without one, everything it printed), and its standard input is closed once
/// `stop` fires or is dropped.
async fn follow(
    mut channel: russh::Channel<client::Msg>,
    first: tokio::sync::oneshot::Sender<Result<String, String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> CommandOutput {
    let mut out = CommandOutput {
        status: 255,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let mut first = Some(first);
    let mut stopping = false;
    loop {
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.stdout.extend_from_slice(&data);
                    if let Some(end) = out.stdout.iter().position(|b| *b == b'\n')
                        && let Some(tx) = first.take()
                    {
                        let line = String::from_utf8_lossy(&out.stdout[..end]).into_owned();
                        let _ = tx.send(Ok(line));
                    }
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => out.stderr.extend_from_slice(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => out.status = exit_status,
                Some(_) => {}
                None => break,
            },
            _ = &mut stop, if !stopping => {
                stopping = true;
                let _ = channel.eof().await;
            }
        }
    }
    if let Some(tx) = first {
        let _ = tx.send(Err(format!(
            "it ended (status {}): {}",
            out.status,
            out.tail()
        )));
    }
    out
}

impl Running {
    /// Waits for the first line the command prints (a server saying it listens). An error
    /// with everything the command printed when it ends first.
    pub async fn first_line(&mut self) -> Result<String, SshError> {
        let reason = match self.first.take() {
            Some(rx) => match rx.await {
                Ok(Ok(line)) => return Ok(line),
                Ok(Err(reason)) => reason,
                Err(_) => "its output was lost".into(),
            },
            None => "its first line was already read".into(),
        };
        Err(SshError::Channel {
            host: self.host.clone(),
            what: "starting a command".into(),
            reason,
        })
    }

    /// Closes the command's standard input and waits (at most 30 s) for it to end.
    pub async fn stop(mut self) -> Result<CommandOutput, SshError> {
        let err = |reason: String| SshError::Channel {
            host: self.host.clone(),
            what: "stopping a command".into(),
            reason,
        };
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Err(err("already stopped".into()));
        };
        match tokio::time::timeout(STOP_TIMEOUT, &mut task).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(_) => {
                task.abort();
                Err(err(format!(
                    "it did not end within {} s of its input closing",
                    STOP_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Written,
    /// Same content and mode were already there.
    Unchanged,
}

/// One file for [`Connection::upload_all`].
#[derive(Debug, Clone, Copy)]
pub struct FileUpload<'a> {
    pub path: &'a str,
    pub content: &'a [u8],
    pub mode: u32,
}

/// The script of [`Connection::upload_all`] and its standard input (the contents, one after
/// the other). Each file is read with `dd` of exactly its size (`head -c` may read ahead on
/// some systems, eating the next file); an empty one is created empty.
fn upload_all_script(files: &[FileUpload<'_>], owner: &str) -> (String, Vec<u8>) {
    let vars: Vec<String> = (0..files.len()).map(|i| format!("\"$t{i}\"")).collect();
    let mut script = format!(
        "set -e; {}; trap 'rm -f -- {}' EXIT\n",
        (0..files.len())
            .map(|i| format!("t{i}="))
            .collect::<Vec<_>>()
            .join("; "),
        vars.join(" ")
    );
    let mut dirs: Vec<&str> = files.iter().map(|f| parent_dir(f.path)).collect();
    dirs.sort_unstable();
    dirs.dedup();
    let dirs: Vec<String> = dirs.iter().map(|d| quote(d)).collect();
    script.push_str(&format!("mkdir -p -- {}\n", dirs.join(" ")));
    let mut input = Vec::new();
    let mut sums = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let dir = parent_dir(f.path);
        let read = if f.content.is_empty() {
            format!(": > \"$t{i}\"")
        } else {
            format!(
                "dd bs={} count=1 iflag=fullblock status=none of=\"$t{i}\"",
                f.content.len()
            )
        };
        script.push_str(&format!(
            "t{i}=$(mktemp -- {}); {read}; chmod {:o} -- \"$t{i}\"\n",
            quote(&format!("{dir}/.strata-upload.XXXXXX")),
            f.mode,
        ));
        input.extend_from_slice(f.content);
        sums.push(strata_pki::sha256_hex(f.content));
    }
    script.push_str(&format!(
        "chown {} -- {vars}\n\
         [ \"$(sha256sum -- {vars} | cut -d' ' -f1 | tr '\\n' ' ')\" = '{sums} ' ] || \
         {{ echo 'a file arrived incomplete (sha256 differs)' >&2; exit 1; }}\n",
        quote(owner),
        vars = vars.join(" "),
        sums = sums.join(" "),
    ));
    for (i, f) in files.iter().enumerate() {
        script.push_str(&format!("mv -f -- \"$t{i}\" {}\n", quote(f.path)));
    }
    script.push_str("trap - EXIT\n");
    (script, input)
}

/// The directory part of `path` (`.` for a bare name).
fn parent_dir(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((d, _)) => d,
        None => ".",
    }
}

/// What a host has at a path: the file's sha256 (hex) and permission bits, and its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub sha256: String,
    pub mode: u32,
    /// `inode:size:ctime` (ctime to the nanosecond). Any write, rename onto the path or
    /// change of mode or owner gives a new stamp, and no user can set a ctime back (only the
    /// system clock could): a file whose stamp is the one recorded when its sha256 was last
    /// known still has that sha256, without reading it again.
    pub stamp: String,
}

/// `stat` format of a file's mode and [`RemoteFile::stamp`].
const STAT_FORMAT: &str = "%a %i:%s:%.9Z";

/// Lines of `<octal mode> <stamp> <rest>`: (rest, mode, stamp).
fn parse_stat_lines(text: &str) -> Vec<(String, u32, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
            let stamp = parts.next()?.to_owned();
            Some((parts.next()?.to_owned(), mode, stamp))
        })
        .collect()
}

/// Quotes a string for the remote POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// An open, authenticated connection.
pub struct Connection {
    handle: Handle<Verifier>,
    target: Target,
    host_key: String,
    /// Commands go through `sudo -n` (the user is not root).
    sudo: bool,
    /// The connection to the jump host, kept open while this one is used.
    jump: Option<Box<Connection>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("host_key", &self.host_key)
            .field("sudo", &self.sudo)
            .finish_non_exhaustive()
    }
}

fn load_key(
    path: &std::path::Path,
    given: Option<&Secret>,
) -> Result<russh::keys::PrivateKey, SshError> {
    let env = std::env::var(PASSPHRASE_ENV).ok();
    let passphrase = given.map(|s| s.0.clone()).or(env);
    load_secret_key(path, passphrase.as_deref()).map_err(|e| SshError::Key {
        path: path.display().to_string(),
        reason: match passphrase {
            None => format!(
                "{e} (an encrypted key needs its passphrase: typed at the prompt in a terminal, \
                 or in {PASSPHRASE_ENV})"
            ),
            Some(_) => e.to_string(),
        },
    })
}

/// Whether the key file is encrypted (so that a caller in a terminal asks for its
/// passphrase before connecting).
pub fn key_is_encrypted(path: &std::path::Path) -> bool {
    matches!(
        load_secret_key(path, None),
        Err(russh::keys::Error::KeyIsEncrypted)
    )
}

impl Connection {
    pub async fn connect(
        target: &Target,
        policy: HostKeyPolicy,
        timeout: Duration,
    ) -> Result<Self, SshError> {
        Box::pin(Self::connect_inner(target, policy, timeout)).await
    }

    async fn connect_inner(
        target: &Target,
        policy: HostKeyPolicy,
        timeout: Duration,
    ) -> Result<Self, SshError> {
        // The key first: a wrong passphrase is reported before any network traffic.
        let key = match &target.identity {
            Identity::Key { path, passphrase } => Some(load_key(path, passphrase.as_ref())?),
            Identity::Agent { .. } => None,
        };
        let seen = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            policy: policy.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(600)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..client::Config::default()
        });
        let connect_err = |reason: String| SshError::Connect {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason,
        };
        let (connected, jump) = open(target, config, verifier, timeout).await?;
        let presented = || seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
        let mut handle = match connected {
            Err(_) => {
                return Err(connect_err(format!(
                    "no answer within {}s",
                    timeout.as_secs()
                )));
            }
            Ok(Err(russh::Error::UnknownKey)) => {
                return Err(match policy {
                    HostKeyPolicy::Pinned(pinned) => SshError::HostKeyChanged {
                        host: target.host.clone(),
                        address: target.address.clone(),
                        pinned,
                        presented: presented(),
                    },
                    HostKeyPolicy::AcceptNew => connect_err("host key rejected".into()),
                });
            }
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Ok(Ok(h)) => h,
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .flatten();
        let accepted = match key {
            Some(key) => handle
                .authenticate_publickey(
                    &target.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| connect_err(e.to_string()))?
                .success(),
            None => authenticate_with_agent(&mut handle, target, hash).await?,
        };
        if !accepted {
            return Err(SshError::Auth {
                host: target.host.clone(),
                user: target.user.clone(),
                key: target.identity.to_string(),
            });
        }
        let mut c = Self {
            handle,
            target: target.clone(),
            host_key: presented(),
            sudo: false,
            jump,
        };
        if target.user != "root" {
            let out = c.exec("sudo -n true").await?;
            if !out.success() {
                return Err(SshError::Sudo {
                    host: target.host.clone(),
                    user: target.user.clone(),
                    said: out.tail().trim().to_owned(),
                });
            }
            c.sudo = true;
        }
        Ok(c)
    }

    /// The SHA256 fingerprint of the jump host's key, when there is one.
    pub fn jump_host_key(&self) -> Option<&str> {
        self.jump.as_deref().map(Connection::host_key)
    }

    /// The SHA256 fingerprint of the host key the server presented.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    fn channel_err(&self, what: &str, e: impl std::fmt::Display) -> SshError {
        SshError::Channel {
            host: self.target.host.clone(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// A new channel running `command` in the remote shell (through sudo for users other
    /// than root).
    async fn open_exec(&self, command: &str) -> Result<russh::Channel<client::Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_err("opening a channel", e))?;
        let wrapped;
        let command = if self.sudo {
            wrapped = format!("sudo -n -- sh -c {}", quote(command));
            wrapped.as_str()
        } else {
            command
        };
        channel
            .exec(true, command)
            .await
            .map_err(|e| self.channel_err(command, e))?;
        Ok(channel)
    }

    /// Runs `command` in the remote shell, feeding `input` to its standard input.
    pub async fn exec_with_input(
        &self,
        command: &str,
        input: &[u8],
    ) -> Result<CommandOutput, SshError> {
        let channel = self.open_exec(command).await?;
        if !input.is_empty() {
            channel
                .data(input)
                .await
                .map_err(|e| self.channel_err("sending input", e))?;
        }
        let mut stdout = Vec::new();
        let (status, stderr) = self
            .read_to_end(channel, |data| {
                stdout.extend_from_slice(data);
                Ok(())
            })
            .await?;
        Ok(CommandOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs `command` with nothing on its standard input and hands its standard output to
    /// `sink` as it arrives (a large file brought here without holding it in memory); the
    /// output returned has its standard error and status, and no standard output. A `sink`
    /// error closes the channel and is returned.
    pub async fn exec_streaming(
        &self,
        command: &str,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<CommandOutput, SshError> {
        let channel = self.open_exec(command).await?;
        let (status, stderr) = self.read_to_end(channel, sink).await?;
        Ok(CommandOutput {
            status,
            stdout: Vec::new(),
            stderr,
        })
    }

    /// Closes `channel`'s input and reads it to its end: standard output to `stdout`,
    /// standard error kept. The exit status (255 when the command gave none) and the
    /// standard error.
    async fn read_to_end(
        &self,
        mut channel: russh::Channel<client::Msg>,
        mut stdout: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(u32, Vec<u8>), SshError> {
        channel
            .eof()
            .await
            .map_err(|e| self.channel_err("closing input", e))?;
        let (mut stderr, mut status) = (Vec::new(), None);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    if let Err(e) = stdout(&data) {
                        let _ = channel.close().await;
                        return Err(self.channel_err("keeping the command's output", e));
                    }
                }
                ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        Ok((status.unwrap_or(255), stderr))
    }

    /// Starts `command` with `input` on its standard input, which stays open: the command
    /// runs until [`Running::stop`] closes it (or the handle is dropped, or the connection
    /// drops). For a server the apply needs for a while; the command should end when its
    /// standard input closes.
    pub async fn start(&self, command: &str, input: &[u8]) -> Result<Running, SshError> {
        let channel = self.open_exec(command).await?;
        channel
            .data(input)
            .await
            .map_err(|e| self.channel_err("sending input", e))?;
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(follow(channel, first_tx, stop_rx));
        Ok(Running {
            host: self.target.host.clone(),
            first: Some(first_rx),
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub async fn exec(&self, command: &str) -> Result<CommandOutput, SshError> {
        self.exec_with_input(command, &[]).await
    }

    /// The sha256 (hex), octal mode and stamp of each existing file among `paths`, in one
    /// command.
    pub async fn probe(
        &self,
        paths: &[&str],
    ) -> Result<std::collections::BTreeMap<String, RemoteFile>, SshError> {
        let mut found = std::collections::BTreeMap::new();
        if paths.is_empty() {
            return Ok(found);
        }
        let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        // The stamp is taken before the hash: a write during the hash gives a stamp that
        // will not match next time. OpenSSL when the host has it (it uses the CPU's SHA
        // instructions: about 4 times coreutils' speed), else coreutils.
        let out = self
            .exec(&format!(
                "if command -v openssl >/dev/null 2>&1; then sum() {{ openssl dgst -sha256 -r \"$1\"; }}; \
                 else sum() {{ sha256sum -- \"$1\"; }}; fi; \
                 for f in {}; do [ -f \"$f\" ] && s=\"$(stat -c '{STAT_FORMAT}' -- \"$f\")\" && \
                 printf '%s %s\\n' \"$s\" \"$(sum \"$f\" | cut -d' ' -f1) $f\"; done; true",
                list.join(" ")
            ))
            .await?;
        for (rest, mode, stamp) in parse_stat_lines(&String::from_utf8_lossy(&out.stdout)) {
            if let Some((sum, path)) = rest.split_once(' ') {
                found.insert(
                    path.to_owned(),
                    RemoteFile {
                        sha256: sum.to_owned(),
                        mode,
                        stamp,
                    },
                );
            }
        }
        Ok(found)
    }

    /// [`Connection::probe`] for files whose sha256 was known at a stamp (`known`: path ->
    /// (stamp, sha256)): one `stat` of every path, then only the files whose stamp is not the
    /// known one are read and hashed.
    pub async fn probe_known(
        &self,
        paths: &[&str],
        known: &std::collections::BTreeMap<&str, (&str, &str)>,
    ) -> Result<std::collections::BTreeMap<String, RemoteFile>, SshError> {
        let mut found = self.stamps(paths).await?;
        let mut unknown = Vec::new();
        for (path, f) in &mut found {
            match known.get(path.as_str()) {
                Some((stamp, sha256)) if *stamp == f.stamp => f.sha256 = (*sha256).to_owned(),
                _ => unknown.push(path.clone()),
            }
        }
        let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
        found.extend(self.probe(&unknown).await?);
        Ok(found)
    }

    /// Mode and stamp of each existing file among `paths` (sha256 left empty), in one command.
    pub async fn stamps(
        &self,
        paths: &[&str],
    ) -> Result<std::collections::BTreeMap<String, RemoteFile>, SshError> {
        if paths.is_empty() {
            return Ok(Default::default());
        }
        let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        let out = self
            .exec(&format!(
                "for f in {}; do [ -f \"$f\" ] && stat -c '{STAT_FORMAT} %n' -- \"$f\"; done; true",
                list.join(" ")
            ))
            .await?;
        Ok(parse_stat_lines(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .map(|(path, mode, stamp)| {
                let f = RemoteFile {
                    sha256: String::new(),
                    mode,
                    stamp,
                };
                (path, f)
            })
            .collect())
    }

    /// Writes `content` to `path` with `mode` and `owner` (user:group) atomically: a
    /// temporary file in the same directory, then rename. Skipped when the file already has
    /// this content (sha256) and mode.
    pub async fn upload(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: &str,
    ) -> Result<Upload, SshError> {
        let have = self.probe(&[path]).await?;
        self.upload_known(path, content, mode, owner, have.get(path))
            .await
    }

    /// [`Connection::upload`] with what [`Connection::probe`] found at `path` already known
    /// (`None`: no file there).
    pub async fn upload_known(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: &str,
        have: Option<&RemoteFile>,
    ) -> Result<Upload, SshError> {
        let want = strata_pki::sha256_hex(content);
        if have.is_some_and(|h| h.sha256 == want && h.mode == mode) {
            return Ok(Upload::Unchanged);
        }
        let p = quote(path);
        let script = format!(
            "set -e; f={p}; d=$(dirname -- \"$f\"); mkdir -p -- \"$d\"; \
             t=$(mktemp -- \"$d/.strata-upload.XXXXXX\"); trap 'rm -f -- \"$t\"' EXIT; \
             cat > \"$t\"; chmod {mode:o} -- \"$t\"; chown {owner} -- \"$t\"; \
             test \"$(sha256sum -- \"$t\" | cut -d' ' -f1)\" = {want}; mv -f -- \"$t\" \"$f\"; trap - EXIT",
            owner = quote(owner),
        );
        let out = self.exec_with_input(&script, content).await?;
        if !out.success() {
            return Err(self.channel_err(&format!("uploading {path}"), out.tail()));
        }
        Ok(Upload::Written)
    }

    /// Writes every file of `files` with owner `owner` (user:group) in one command: each to
    /// a temporary file beside its path, every one checked against its sha256, then each
    /// renamed into place (nothing is renamed unless every file arrived whole). For the many
    /// small files of a host; each one is held in memory.
    pub async fn upload_all(&self, files: &[FileUpload<'_>], owner: &str) -> Result<(), SshError> {
        if files.is_empty() {
            return Ok(());
        }
        let (script, input) = upload_all_script(files, owner);
        let out = self.exec_with_input(&script, &input).await?;
        if !out.success() {
            let paths: Vec<&str> = files.iter().map(|f| f.path).collect();
            return Err(self.channel_err(&format!("uploading {}", paths.join(", ")), out.tail()));
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        if let Some(j) = self.jump {
            Box::pin(j.close()).await;
        }
    }
}

type Opened = (
    Result<Result<Handle<Verifier>, russh::Error>, tokio::time::error::Elapsed>,
    Option<Box<Connection>>,
);

/// The SSH handshake with `target`, directly or through its jump host (connected first, with
/// its own host-key policy, and kept open).
async fn open(
    target: &Target,
    config: Arc<client::Config>,
    verifier: Verifier,
    timeout: Duration,
) -> Result<Opened, SshError> {
    match &target.jump {
        None => {
            let addr = (target.address.as_str(), target.port);
            let c = tokio::time::timeout(timeout, client::connect(config, addr, verifier)).await;
            Ok((c, None))
        }
        Some(j) => {
            let jump_err = |reason: String| SshError::Jump {
                host: target.host.clone(),
                jump: j.target.host.clone(),
                reason,
            };
            let via = Connection::connect(&j.target, j.policy.clone(), timeout)
                .await
                .map_err(|e| jump_err(e.to_string()))?;
            let channel = via
                .handle
                .channel_open_direct_tcpip(
                    target.address.clone(),
                    u32::from(target.port),
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| {
                    jump_err(format!(
                        "forwarding to {}:{} refused: {e} (does its sshd allow TCP forwarding?)",
                        target.address, target.port
                    ))
                })?;
            let c = tokio::time::timeout(
                timeout,
                client::connect_stream(config, channel.into_stream(), verifier),
            )
            .await;
            Ok((c, Some(Box::new(via))))
        }
    }
}

/// The SHA256 fingerprint of the host key `target` presents, learnt from the handshake alone
/// (the key is refused, nothing is authenticated or run): what a person is asked to trust on
/// first contact.
pub async fn presented_host_key(target: &Target, timeout: Duration) -> Result<String, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        policy: HostKeyPolicy::Pinned(String::new()),
        seen: seen.clone(),
    };
    let (connected, jump) = open(
        target,
        Arc::new(client::Config::default()),
        verifier,
        timeout,
    )
    .await?;
    if let Some(j) = jump {
        j.close().await;
    }
    let fp = seen.lock().ok().and_then(|s| s.clone());
    match (connected, fp) {
        (_, Some(fp)) => Ok(fp),
        (Err(_), None) => Err(SshError::Connect {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason: format!("no answer within {}s", timeout.as_secs()),
        }),
        (Ok(r), None) => Err(SshError::Connect {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason: r
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no host key".into()),
        }),
    }
}

/// Tries each key of the ssh-agent until the server accepts one.
async fn authenticate_with_agent(
    handle: &mut Handle<Verifier>,
    target: &Target,
    hash: Option<HashAlg>,
) -> Result<bool, SshError> {
    let agent_err = |reason: String| SshError::Agent {
        host: target.host.clone(),
        user: target.user.clone(),
        reason,
    };
    use russh::keys::agent::client::AgentClient;
    let socket = match &target.identity {
        Identity::Agent { socket: Some(s) } => Some(s.clone()),
        _ => None,
    };
    let mut agent = match socket {
        Some(s) => AgentClient::connect_uds(&s).await,
        None => AgentClient::connect_env().await,
    }
    .map_err(|e| {
        agent_err(format!(
            "cannot reach the agent: {e}; is SSH_AUTH_SOCK set?"
        ))
    })?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| agent_err(e.to_string()))?;
    if identities.is_empty() {
        return Err(agent_err(
            "the agent holds no keys; add one with ssh-add".into(),
        ));
    }
    for id in identities {
        let key = id.public_key().into_owned();
        let r = handle
            .authenticate_publickey_with(&target.user, key, hash, &mut agent)
            .await
            .map_err(|e| agent_err(e.to_string()))?;
        if r.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`upload_all_script`] in this computer's shell with `input` (the contents,
    /// possibly altered), the files owned by the owner of `dir`.
    fn run_upload_all(
        dir: &std::path::Path,
        files: &[FileUpload<'_>],
        input: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> bool {
        use std::io::Write as _;
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir).expect("dir");
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let (script, bytes) = upload_all_script(files, &owner);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&input(bytes))
            .expect("input");
        child.wait().expect("sh ends").success()
    }

    #[test]
    fn many_files_are_written_in_one_command_or_none_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
        let (a, b, c) = (path("etc/a.conf"), path("etc/sub/b.key"), path("empty"));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let files = [
            FileUpload {
                path: &a,
                content: b"first\n",
                mode: 0o644,
            },
            FileUpload {
                path: &b,
                content: &big,
                mode: 0o600,
            },
            FileUpload {
                path: &c,
                content: b"",
                mode: 0o644,
            },
        ];
        // One byte changed in transit: the sums differ, nothing is put in place.
        assert!(!run_upload_all(dir.path(), &files, |mut bytes| {
            bytes[100] ^= 1;
            bytes
        }));
        assert!(!std::path::Path::new(&a).exists());
        let leftovers = std::fs::read_dir(dir.path().join("etc"))
            .expect("etc")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".strata-upload")
            })
            .count();
        assert_eq!(leftovers, 0, "temporary files removed");
        // Whole: every file in place with its content and mode.
        assert!(run_upload_all(dir.path(), &files, |bytes| bytes));
        use std::os::unix::fs::PermissionsExt as _;
        for f in &files {
            assert_eq!(std::fs::read(f.path).expect("written"), f.content);
            let mode = std::fs::metadata(f.path)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, f.mode, "{}", f.path);
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("/etc/x"), "'/etc/x'");
        assert_eq!(quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn stat_lines_give_mode_stamp_and_the_rest() {
        let text = "755 1234:42:1796073690.459238302 /opt/bin/x y\n\
                    bad line\n\
                    600 9:0:1.000000000 ab12 /etc/k\n";
        assert_eq!(
            parse_stat_lines(text),
            [
                (
                    "/opt/bin/x y".to_owned(),
                    0o755,
                    "1234:42:1796073690.459238302".to_owned()
                ),
                (
                    "ab12 /etc/k".to_owned(),
                    0o600,
                    "9:0:1.000000000".to_owned()
                )
            ]
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let i = Identity::Key {
            path: "/k".into(),
            passphrase: Some(Secret("hunter2".into())),
        };
        assert!(!format!("{i:?}").contains("hunter2"));
        assert_eq!(i.to_string(), "key /k");
    }
}
