//! `strata render` and `strata plan`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use strata_manifests::catalog;
use strata_manifests::plan::{Action, ActionKind, AppliedState, departed_hosts, plan};
use strata_manifests::render::{render, write_out};
use strata_pki::StateDir;
use time::OffsetDateTime;

use crate::certs::{ClusterState, load};
use crate::cli::{OutputFormat, StateArgs};

pub fn run_render(args: &StateArgs, out: &Path) -> Result<ExitCode> {
    let cs = load(args)?;
    let made = strata_pki::generate(&cs.inputs, &cs.state, OffsetDateTime::now_utc())
        .with_context(|| format!("PKI in {}", cs.state.root.display()))?;
    let changed = made.changed();
    if !changed.is_empty() {
        eprintln!(
            "PKI: {} item(s) created or re-issued ({})",
            changed.len(),
            changed.join(", ")
        );
    }
    let r = render(&cs.cluster, &cs.state).context("render")?;
    write_out(&r, out).with_context(|| format!("writing {}", out.display()))?;
    let files: usize = r.hosts.iter().map(|t| t.files.len()).sum();
    outln!(
        "rendered {files} files for {} host(s) and {} cluster object(s) into {}",
        r.hosts.len(),
        r.objects.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The actions the next apply would take, computed without writing anything: the PKI an
/// apply would create is generated in memory, and no host is contacted.
pub fn actions(args: &StateArgs) -> Result<(ClusterState, Vec<Action>, Vec<String>)> {
    let loaded = load(args)?;
    let cs = ClusterState {
        state: StateDir::in_memory(loaded.state.root.clone()),
        ..loaded
    };
    let mut notes = Vec::new();
    let made = strata_pki::generate(&cs.inputs, &cs.state, OffsetDateTime::now_utc())
        .with_context(|| format!("PKI in {}", cs.state.root.display()))?;
    if !made.changed().is_empty() {
        notes.push(format!(
            "PKI: apply creates or re-issues {} item(s) in {}",
            made.changed().len(),
            cs.state.root.display()
        ));
    }
    let r = render(&cs.cluster, &cs.state).context("render")?;
    let assets = crate::assets::for_plan(&cs)?;
    if assets.is_none() {
        notes.push(format!(
            "assets: {} is fetched by apply; files from it are taken as last applied",
            cs.cluster.spec.assets.source
        ));
    }
    let applied = AppliedState::load(&cs.state.root.join(strata_manifests::plan::STATE_FILE))?;
    let want = crate::apply::desired(&cs.cluster, &r, assets.as_ref(), &applied);
    for h in departed_hosts(&want, &applied) {
        notes.push(format!(
            "host {h} is no longer in the Cluster file: apply drains it (up to {} s for its \
             PodDisruptionBudgets), resets it if it answers, deletes its Node and forgets it{}",
            crate::departures::DRAIN_TIMEOUT.as_secs(),
            if applied.applied_hosts.contains_key(h) {
                ""
            } else {
                " (no address of it is recorded, so it cannot be reset from here)"
            }
        ));
    }
    let actions = plan(&want, &applied, |h| catalog::on_host_named(&cs.cluster, h));
    Ok((cs, actions, notes))
}

pub fn run_plan(args: &StateArgs, output: OutputFormat) -> Result<ExitCode> {
    let (_, actions, notes) = actions(args)?;
    if output == OutputFormat::Json {
        let doc = serde_json::json!({"actions": actions, "notes": notes});
        outln!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    for n in &notes {
        outln!("note: {n}");
    }
    let mut by_host: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for a in &actions {
        by_host.entry(a.host.as_str()).or_default().push(a);
    }
    for (host, list) in &by_host {
        let count = |k: ActionKind| list.iter().filter(|a| a.kind == k).count();
        let summary: Vec<String> = [
            (ActionKind::Create, "to create"),
            (ActionKind::Update, "to change"),
            (ActionKind::Remove, "to remove"),
            (ActionKind::Restart, "to restart"),
            (ActionKind::Apply, "to apply"),
            (ActionKind::Delete, "to delete"),
            (ActionKind::Reencrypt, "to re-encrypt"),
        ]
        .iter()
        .filter(|(k, _)| count(*k) > 0)
        .map(|(k, what)| format!("{} {what}", count(*k)))
        .collect();
        outln!("{host}: {}", summary.join(", "));
        for a in list {
            outln!("  {a}");
        }
    }
    if actions.is_empty() {
        outln!("Nothing to do: the hosts have what the Cluster file describes.");
    }
    Ok(ExitCode::SUCCESS)
}
