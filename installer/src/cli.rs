//! Command-line interface definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Strata turns a few Linux hosts into a secure, self-updating Kubernetes cluster.
///
/// Start with `strata init` to write a Cluster file (cluster.yaml), check it with
/// `strata validate`, then install with `strata apply`.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a Cluster file by answering questions in the terminal.
    ///
    /// Without a terminal (CI), pass every answer as a flag with --non-interactive.
    Init(InitArgs),
    /// Check a Cluster file and report every problem with its line and column.
    ///
    /// Exits 0 when the file is valid (warnings are printed but allowed), 1 otherwise.
    Validate(ValidateArgs),
    /// Write every host's files and the cluster objects to a directory, without contacting
    /// any host (creates the PKI if it is missing).
    Render {
        #[command(flatten)]
        state: StateArgs,
        /// Output directory: hosts/<host>/<absolute path> and cluster/<object>.yaml.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Install or update the cluster: provision every host over SSH (verified host keys), in
    /// phases, then check it. Safe to run again: it converges and skips what is in place.
    Apply(ApplyArgs),
    /// Per host: reachable over SSH, Strata's services active, kubelet version; the cluster:
    /// API ready, nodes and their readiness. Exit 1 when anything is down.
    Status(StateArgs),
    /// Print the admin kubeconfig (or write it with --out, mode 0600).
    Kubeconfig {
        #[command(flatten)]
        state: StateArgs,
        /// Write to this file instead of printing.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// An etcd snapshot taken on a healthy member, with a record of the cluster it belongs
    /// to (name, CA, etcd cluster id), the Kubernetes version and the Secret encryption key
    /// in use, written as one tar file, mode 0600 (it holds the cluster's Secrets). Default:
    /// <state dir>/backups/<cluster>-<UTC time>.tar.
    Backup {
        #[command(flatten)]
        state: StateArgs,
        /// Write it here instead.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Restore a backup: checked first (its snapshot's digest, that it is of this cluster,
    /// that the state directory holds its Secrets' key: refused before anything stops), then
    /// an apply whose etcd phase stops the control plane and etcd, restores the snapshot on
    /// every etcd host of the Cluster file (the hosts may be new machines, with other
    /// addresses) as a new etcd cluster, and starts them again; every component restarts.
    Restore(RestoreArgs),
    /// Stop and remove everything Strata installed on the hosts (services, files, etcd data,
    /// kubelet and containerd state). The cluster is gone afterwards; the PKI stays.
    Reset {
        #[command(flatten)]
        state: StateArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show what `apply` would do: per host the files it would create, change or remove and
    /// the units it would restart, and the cluster objects it would apply or delete. Writes
    /// nothing (not even the PKI) and contacts no host.
    Plan(PlanArgs),
    /// Machines on this computer for a `platform: local` cluster (systemd-nspawn; root).
    #[command(subcommand)]
    Local(LocalCommand),
    /// Manage the cluster's certificates: create, check expiry, renew.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Images on the nodes without a registry.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// OS updates: the policies, reboot locks and each node's phase; pause or resume reboots.
    #[command(subcommand)]
    Updates(UpdatesCommand),
    /// Print the JSON Schema of the Cluster file, for editors and other tools.
    Schema,
    /// Print a shell completion script (e.g. `strata completions bash > /etc/bash_completion.d/strata`).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Load an image archive (`docker save` or an OCI archive) into the containerd of every
    /// node (or of --hosts), as `kind load image-archive` does: the archive is checked whole
    /// first (a broken one is refused before any node is touched), nodes that hold every
    /// image of it at the same image id are skipped, the others get it through the asset
    /// fan-out (sent from here once, passed on between nodes). Pods use the images with
    /// `imagePullPolicy: Never` or `IfNotPresent`.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The image archive.
    #[arg(value_name = "FILE.tar")]
    pub archive: PathBuf,
    /// Only these nodes (comma-separated host names).
    #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the CAs, certificates and kubeconfigs that are missing, and re-issue those whose
    /// inputs changed (a host added, an address changed). Everything else stays as it is.
    Generate(StateArgs),
    /// List every certificate with its expiry; exit 1 when one expires within --within or
    /// has a problem.
    Check {
        #[command(flatten)]
        state: StateArgs,
        /// Warn about certificates that expire within this many days (e.g. 30, 30d, 720h).
        #[arg(long, default_value = "30d", value_parser = parse_days)]
        within: i64,
    },
    /// Re-issue leaf certificates with the same CA and keys (new serial and validity).
    /// CAs are never renewed by this command.
    Renew {
        #[command(flatten)]
        state: StateArgs,
        /// Renew every leaf certificate.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Certificates to renew, as `certs check` names them (e.g. apiserver, kubelet/w1).
        #[arg(value_name = "NAME", required_unless_present = "all")]
        names: Vec<String>,
    },
    /// Put a new key first in the keys that encrypt Secrets in etcd (the old ones still
    /// read). `strata apply` then gives it to the API servers and rewrites every Secret with
    /// it; `strata certs prune-encryption-keys` and another apply drop the old keys.
    RotateEncryptionKey(StateArgs),
    /// Drop every Secrets encryption key but the current one. Only after `strata apply` has
    /// rewritten the Secrets with it (refused otherwise).
    PruneEncryptionKeys(StateArgs),
}

#[derive(Debug, Subcommand)]
pub enum UpdatesCommand {
    /// Policies (paused, window, counts, conditions), reboot locks and their holders, and
    /// every node's update phase. Exit 1 when a policy is Degraded.
    Status(StateArgs),
    /// Stop granting reboots (nodes already rebooting finish).
    Pause(UpdatesPolicyArgs),
    /// Grant reboots again.
    Resume(UpdatesPolicyArgs),
    /// Free a slot of a policy's reboot lock whose holder will never give it back (a
    /// FleetLock host that is gone, e.g. `fleetlock/<id>`).
    Release {
        #[command(flatten)]
        policy: UpdatesPolicyArgs,
        /// The holder, as `strata updates status` lists it.
        holder: String,
        /// Also release a node's slot (the operator would then grant past maxUnavailable
        /// while that node may still be rebooting).
        #[arg(long)]
        force: bool,
    },
    /// Let a node waiting at its policy's before- or after-reboot gate go on, in place of
    /// the gate's annotations (the approval names that gate of that update, nothing later).
    Approve(ApproveArgs),
    /// A live web console of the updates on this computer's loopback: policies (pause and
    /// resume), locks, every node's phase, the version breakdown and recent Events. Every
    /// read and action is your own API request with your kubeconfig: RBAC decides.
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The node waiting at a gate, as `strata updates status` lists it.
    pub node: String,
    /// The gate you mean: refused if the node waits at the other one by now.
    #[arg(long, value_enum)]
    pub stage: Option<GateStageArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GateStageArg {
    BeforeReboot,
    AfterReboot,
}

impl From<GateStageArg> for strata_update_api::GateStage {
    fn from(s: GateStageArg) -> Self {
        match s {
            GateStageArg::BeforeReboot => Self::BeforeReboot,
            GateStageArg::AfterReboot => Self::AfterReboot,
        }
    }
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The loopback port to serve on (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print the URL only; do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Whose requests the console makes [default: $KUBECONFIG, else the cluster's admin
    /// kubeconfig in the state directory].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpdatesPolicyArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The UpdatePolicy to change.
    #[arg(long, default_value = "default")]
    pub policy: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Trust and pin the host keys of hosts contacted for the first time (check their
    /// fingerprints out of band first). Never accepts a key that differs from a pin.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Progress as readable text or as one JSON event per line.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Print what apply would do (as `strata plan`) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only this phase (after connect and facts), e.g. `--phase addons` to send the
    /// cluster objects again; the phases before it must have run. Restarts still pending
    /// from an earlier run are done by the phase that starts those units (pods that read host
    /// files: by wait-ready).
    #[arg(long, value_name = "PHASE")]
    pub phase: Option<strata_manifests::plan::PhaseName>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The backup (`strata backup`).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Restore a backup of another cluster (another name or CA) all the same.
    #[arg(long)]
    pub other_cluster: bool,
    /// As for apply: pin the host keys of hosts contacted for the first time (new machines).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Progress as readable text or as one JSON event per line.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

impl RestoreArgs {
    /// The apply that does the restore.
    pub fn apply_args(&self) -> ApplyArgs {
        ApplyArgs {
            state: self.state.clone(),
            accept_new_host_keys: self.accept_new_host_keys,
            output: self.output,
            dry_run: false,
            phase: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The actions as readable text or as one JSON document.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Create and boot one machine per host of the Cluster file (reuses running ones),
    /// reachable over SSH with the cluster's key; pins each machine's SSH host key.
    Up(StateArgs),
    /// Stop and remove every machine of the cluster, its network namespaces and bridge.
    Down {
        #[command(flatten)]
        state: StateArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// List the cluster's machines and whether they run.
    List(StateArgs),
}

/// Days from `30`, `30d` or a duration such as `720h`.
fn parse_days(s: &str) -> Result<i64, String> {
    if let Some(d) = s
        .strip_suffix('d')
        .unwrap_or(s)
        .parse::<i64>()
        .ok()
        .filter(|_| s.ends_with('d') || s.bytes().all(|b| b.is_ascii_digit()))
    {
        return Ok(d);
    }
    strata_manifests::formats::parse_duration(s)
        .map(|d| i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// The cluster's state directory [default: <directory of the Cluster file>/<cluster name>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, Args)]
pub struct FileArg {
    /// The Cluster file.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text.
    #[default]
    Text,
    /// One JSON document (for CI and tools).
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformChoice {
    /// Existing machines reached over SSH.
    Ssh,
    /// systemd-nspawn machines created on this computer.
    Local,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the Cluster file.
    #[arg(short = 'o', long, default_value = "cluster.yaml", value_name = "FILE")]
    pub output: PathBuf,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Take every answer from flags instead of asking (for CI and scripts).
    #[arg(long)]
    pub non_interactive: bool,
    /// Cluster name (a DNS-1123 label). [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub name: Option<String>,
    /// Where hosts come from. [non-interactive]
    #[arg(long, value_enum, requires = "non_interactive")]
    pub platform: Option<PlatformChoice>,
    /// A host as NAME[@ADDRESS]:ROLE[,ROLE...], e.g. cp1@198.18.0.2:etcd,control-plane.
    /// Repeat for each host. [non-interactive]
    #[arg(long = "host", value_name = "HOST", requires = "non_interactive")]
    pub hosts: Vec<String>,
    /// SSH login user. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub ssh_user: Option<String>,
    /// SSH port. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub ssh_port: Option<u16>,
    /// SSH private key file. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub ssh_key: Option<String>,
    /// Kubernetes version. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub kubernetes_version: Option<String>,
    /// Pod network CIDR. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub pod_cidr: Option<String>,
    /// Service network CIDR. [non-interactive]
    #[arg(long, requires = "non_interactive")]
    pub service_cidr: Option<String>,
}
