//! `strata render` and `strata plan`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use strata_manifests::plan::{AppliedState, plan};
use strata_manifests::render::{Rendered, render, write_out};
use time::OffsetDateTime;

use crate::certs::{ClusterState, load};
use crate::cli::StateArgs;

/// Loads the Cluster, makes sure its PKI exists, and renders it.
fn rendered(args: &StateArgs) -> Result<(ClusterState, Rendered)> {
    let cs = load(args)?;
    let out = strata_pki::generate(&cs.inputs, &cs.state, OffsetDateTime::now_utc())
        .with_context(|| format!("phase pki, state directory {}", cs.state.root.display()))?;
    let changed = out.changed();
    if !changed.is_empty() {
        eprintln!(
            "PKI: {} item(s) created or re-issued ({})",
            changed.len(),
            changed.join(", ")
        );
    }
    let r = render(&cs.cluster, &cs.state).context("phase render")?;
    Ok((cs, r))
}

pub fn run_render(args: &StateArgs, out: &Path) -> Result<ExitCode> {
    let (_, r) = rendered(args)?;
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

pub fn run_plan(args: &StateArgs) -> Result<ExitCode> {
    let (cs, r) = rendered(args)?;
    let path = cs.state.root.join("state.json");
    let applied = AppliedState::load(&path)?;
    let mut total = 0;
    for p in plan(&r, &applied) {
        let count = |c| p.changes.iter().filter(|(_, x)| *x == c).count();
        use strata_manifests::plan::Change::*;
        outln!(
            "{}: {} to create, {} to change, {} to remove, {} unchanged",
            p.host,
            count(Create),
            count(Update),
            count(Remove),
            p.unchanged
        );
        for (path, c) in &p.changes {
            outln!("  {} {path}", c.sign());
        }
        total += p.changes.len();
    }
    if total == 0 {
        outln!("Nothing to do: the hosts have what the Cluster file describes.");
    }
    Ok(ExitCode::SUCCESS)
}
