//! `strata apply`: provision every host over SSH in named phases (see [`crate::phases`]),
//! hosts in parallel within a phase, each step idempotent, so that an interrupted or failed
//! run can simply be run again.
//!
//! prepare (PKI, render, assets; nothing touches a host) -> connect -> facts -> preflight ->
//! upload -> etcd -> control-plane -> runtime -> addons -> nodes -> pod-network -> wait-ready
//! -> remove-hosts -> kubeconfig
//!
//! What apply changes is exactly what `strata plan` lists: both compare the desired state
//! ([`desired`]) with what was applied; apply reports each change as an action event.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result};
use strata_manifests::catalog::{self, BIN_DIR, CNI_BIN_DIR};
use strata_manifests::plan::{AppliedFile, AppliedState, Event, PhaseName};
use strata_manifests::render::{Rendered, render};
use strata_manifests::{Cluster, Host};

use crate::assets::{self, Assets, IMAGE_DIR};
use crate::certs::{ClusterState, load};
use crate::cli::{ApplyArgs, OutputFormat};
use crate::engine::{self, Reporter};
use crate::facts::HostFacts;
use crate::hosts::HostConn;

/// Everything one apply works with; the phases read it and fill in what they learn.
pub struct Apply<'r> {
    pub reporter: &'r Reporter,
    pub cs: ClusterState,
    pub rendered: Rendered,
    pub assets: Assets,
    /// What every host and the cluster should have.
    pub want: AppliedState,
    /// What was applied; saved after each phase that changes hosts or the cluster.
    pub state: AppliedState,
    pub state_file: PathBuf,
    pub accept_new_host_keys: bool,
    /// The hosts, connected (connect phase).
    pub hosts: Vec<HostConn>,
    pub facts: BTreeMap<String, HostFacts>,
    /// The admin client, once the API server answered (see [`Apply::client`]).
    pub client: Option<kube::Client>,
    /// The one phase this run was asked for (`--phase`), if any.
    pub only: Option<PhaseName>,
    /// A backup to restore (`strata restore`): the etcd phase restores it.
    pub seed: Option<crate::backup::Seed>,
    /// The seed's snapshot is on every etcd host and etcd read it there (the upload phase
    /// does it before it removes anything: see `membership::prepare_restore`).
    pub seed_placed: bool,
    /// Node statuses from before this time do not count as Ready (set by a restore: the
    /// restored Nodes say what they said at the backup).
    pub ready_after: Option<k8s_openapi::jiff::Timestamp>,
}

impl Apply<'_> {
    pub fn cluster(&self) -> &Cluster {
        &self.cs.cluster
    }

    pub fn save_state(&self) -> Result<()> {
        self.state.save(&self.state_file).map_err(Into::into)
    }

    /// The admin API client, made once per run, the first time (in `phase`) only after the
    /// API server answers `/readyz`: the control-plane phase starts the API servers without
    /// waiting for them (the runtime phase's work overlaps their start).
    pub async fn client(&mut self, phase: PhaseName) -> Result<kube::Client> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = crate::hosts::install_client(&self.cs).await?;
        let control_plane: Vec<&str> = self
            .cluster()
            .spec
            .hosts
            .iter()
            .filter(|h| catalog::runs(self.cluster(), h, catalog::Component::KubeApiserver))
            .map(|h| h.name.as_str())
            .collect();
        crate::phases::wait_readyz(
            &c,
            &format!("phase {phase}: API server ready (/readyz)"),
            std::time::Duration::from_secs(180),
        )
        .await
        .with_context(|| {
            format!(
                "the API servers started in phase control-plane on {} do not answer: see \
                 `journalctl -u kube-apiserver` there",
                control_plane.join(", ")
            )
        })?;
        self.reporter.step(
            phase,
            "api",
            format!("API ready at https://{}", self.cs.inputs.api_endpoint),
        );
        self.client = Some(c.clone());
        Ok(c)
    }

    /// The components of `phase` on host `h`.
    pub fn components(&self, h: &Host, phase: catalog::StartPhase) -> Vec<&'static catalog::Spec> {
        catalog::on_host(self.cluster(), h)
            .filter(|s| s.start == phase)
            .collect()
    }
}

/// What every host should have (rendered files and the assets its components need, each
/// with the components that read it) and the cluster objects. `assets` is None when they
/// are not at hand (`strata plan` with a download source): the files from the assets that
/// were applied are then taken as they are.
pub fn desired(
    c: &Cluster,
    rendered: &Rendered,
    assets: Option<&Assets>,
    applied: &AppliedState,
) -> AppliedState {
    let mut want = AppliedState::of(rendered);
    for h in &c.spec.hosts {
        let files = want.hosts.entry(h.name.to_string()).or_default();
        match assets {
            Some(a) => {
                for (asset, users) in a.for_host(c, h) {
                    files.insert(
                        asset.remote.clone(),
                        AppliedFile {
                            sha256: asset.sha256.clone(),
                            mode: assets::MODE,
                            users,
                            preexisting: false,
                            stamp: None,
                        },
                    );
                }
            }
            None => {
                let from_assets = |p: &str| {
                    [BIN_DIR, CNI_BIN_DIR, IMAGE_DIR]
                        .iter()
                        .any(|d| p.starts_with(&format!("{d}/")))
                };
                for (p, f) in applied.hosts.get(h.name.as_str()).into_iter().flatten() {
                    if from_assets(p) {
                        files.insert(p.clone(), f.clone());
                    }
                }
            }
        }
    }
    want
}

/// Local work first: validation, PKI, rendering, assets. Nothing touches a host yet.
async fn prepare<'r>(
    reporter: &'r Reporter,
    cs: ClusterState,
    args: &ApplyArgs,
    seed: Option<crate::backup::Seed>,
) -> Result<Apply<'r>> {
    let phase = PhaseName::Prepare;
    let out = strata_pki::generate(&cs.inputs, &cs.state, time::OffsetDateTime::now_utc())
        .with_context(|| format!("phase {phase}: PKI in {}", cs.state.root.display()))?;
    if !out.changed().is_empty() {
        reporter.step(
            phase,
            "local",
            format!("PKI: {} item(s) created or re-issued", out.changed().len()),
        );
    }
    let rendered = render(&cs.cluster, &cs.state).with_context(|| format!("phase {phase}"))?;
    let assets = assets::for_apply(&cs)
        .await
        .with_context(|| format!("phase {phase}: assets"))?;
    let state_file = cs.state.root.join(strata_manifests::plan::STATE_FILE);
    let state = AppliedState::load(&state_file)?;
    let want = desired(&cs.cluster, &rendered, Some(&assets), &state);
    Ok(Apply {
        reporter,
        cs,
        rendered,
        assets,
        want,
        state,
        state_file,
        accept_new_host_keys: args.accept_new_host_keys,
        hosts: Vec::new(),
        facts: BTreeMap::new(),
        client: None,
        only: args.phase,
        seed,
        seed_placed: false,
        ready_after: None,
    })
}

async fn apply(
    reporter: &Reporter,
    cs: ClusterState,
    args: &ApplyArgs,
    seed: Option<crate::backup::Seed>,
) -> Result<()> {
    let mut cx = reporter
        .phase(PhaseName::Prepare, prepare(reporter, cs, args, seed))
        .await?;
    let phases = crate::phases::sequence();
    let result = engine::run(
        reporter,
        &phases,
        &mut cx,
        args.phase,
        crate::phases::PREREQUISITES,
    )
    .await;
    for h in std::mem::take(&mut cx.hosts) {
        h.conn.close().await;
    }
    result
}

pub fn run(args: &ApplyArgs) -> Result<ExitCode> {
    if args.dry_run {
        return crate::render::run_plan(&args.state, args.output);
    }
    let cs: ClusterState = load(&args.state)?;
    run_seeded(args, cs, None)
}

/// An apply of the loaded cluster; with `seed`, one that restores it from a backup.
pub fn run_seeded(
    args: &ApplyArgs,
    cs: ClusterState,
    seed: Option<crate::backup::Seed>,
) -> Result<ExitCode> {
    // Machine-readable when asked, and whenever nobody watches a terminal (CI).
    let json =
        args.output == OutputFormat::Json || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let names: Vec<String> = cs
        .cluster
        .spec
        .hosts
        .iter()
        .map(|h| h.name.to_string())
        .collect();
    let reporter = Reporter::new(json, &names, PhaseName::ALL.len());
    let started = Instant::now();
    crate::runtime()?.block_on(async {
        tokio::select! {
            r = apply(&reporter, cs, args, seed) => {
                reporter.finish(r.is_ok().then(|| started.elapsed()));
                r.map(|()| ExitCode::SUCCESS)
            }
            _ = tokio::signal::ctrl_c() => {
                // Dropping the apply future closes every SSH session. Each upload is atomic on
                // the host (temp + rename) and state.json is written atomically after each
                // phase, so the next run carries on from where this one stopped.
                reporter.finish(None);
                let phase = reporter.current();
                if json {
                    reporter.emit(&Event::Interrupted { phase });
                }
                let during = phase.map(|p| format!(" during phase {p}")).unwrap_or_default();
                eprintln!(
                    "strata apply: interrupted{during}; nothing is left half-written. \
                     Run `strata apply` again to continue."
                );
                Ok(ExitCode::from(130))
            }
        }
    })
}
