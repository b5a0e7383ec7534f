//! `strata certs generate | check | renew`.

use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_manifests::Context;
use strata_manifests::plan::{AppliedState, STATE_FILE};
use strata_pki::{Action, Outcome, Selection, StateDir};
use time::OffsetDateTime;

use crate::cli::{CertsCommand, StateArgs};

/// A validated Cluster, its PKI inputs and its state directory.
pub struct ClusterState {
    pub cluster: strata_manifests::Cluster,
    /// Where the Cluster file's relative paths resolve.
    pub ctx: Context,
    pub inputs: strata_pki::Inputs,
    pub state: StateDir,
}

/// Loads and validates the Cluster file (printing warnings) and locates its state directory.
pub fn load(args: &StateArgs) -> Result<ClusterState> {
    let path = &args.file.file;
    let loaded = strata_manifests::load_file(path).map_err(|report| {
        eprint!("{report}");
        anyhow!("{} is not valid; fix the errors above", path.display())
    })?;
    if !loaded.report.diagnostics.is_empty() {
        eprint!("{}", loaded.report);
    }
    let ctx = Context::for_file(path);
    let inputs = strata_manifests::pki::inputs(&loaded.cluster, &ctx)
        .with_context(|| format!("{}", path.display()))?;
    let root = match &args.state_dir {
        Some(d) => d.clone(),
        None => ctx.base_dir.join(loaded.cluster.name()),
    };
    let state = StateDir::new(root);
    state.check_owner()?;
    Ok(ClusterState {
        ctx: ctx.clone(),
        cluster: loaded.cluster,
        inputs,
        state,
    })
}

fn print_outcome(out: &Outcome) {
    for (name, action) in &out.items {
        match action {
            Action::Created => outln!("  created    {name}"),
            Action::Reissued(why) => outln!("  re-issued  {name}: {why}"),
            Action::Kept => {}
        }
    }
    outln!(
        "{} created, {} re-issued, {} kept",
        out.created().count(),
        out.reissued().count(),
        out.kept().count()
    );
}

pub fn run(cmd: &CertsCommand) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        CertsCommand::Generate(args) => {
            let cs = load(args)?;
            let out = strata_pki::generate(&cs.inputs, &cs.state, now).with_context(|| {
                format!("phase pki, state directory {}", cs.state.root.display())
            })?;
            outln!(
                "PKI of cluster {} in {}",
                cs.inputs.cluster_name,
                cs.state.root.display()
            );
            print_outcome(&out);
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Check { state, within } => {
            let cs = load(state)?;
            let rows = strata_pki::check(&cs.inputs, &cs.state, now)
                .with_context(|| format!("reading {}", cs.state.root.display()))?;
            let mut failing = 0;
            outln!(
                "{:<32} {:<34} {:<16} {:<11} {:>5}  STATUS",
                "NAME",
                "SUBJECT",
                "ISSUER",
                "NOT AFTER",
                "DAYS"
            );
            for r in &rows {
                let status = match (&r.problem, r.days_left) {
                    (Some(p), _) => format!("PROBLEM: {p}"),
                    _ if r.not_after.is_some_and(|t| t <= now) => "EXPIRED".into(),
                    (None, Some(d)) if d < *within => format!("expires within {within} days"),
                    _ => "ok".into(),
                };
                if status != "ok" {
                    failing += 1;
                }
                outln!(
                    "{:<32} {:<34} {:<16} {:<11} {:>5}  {status}",
                    r.name,
                    short(&r.subject, 34),
                    short(&r.issuer.replace("CN=", ""), 16),
                    r.not_after
                        .map(|t| t.date().to_string())
                        .unwrap_or("-".into()),
                    r.days_left.map(|d| d.to_string()).unwrap_or("-".into()),
                );
            }
            if failing > 0 {
                eprintln!(
                    "{failing} certificate(s) need attention: `strata certs generate` creates \
                     missing ones, `strata certs renew NAME` renews expiring ones"
                );
                Ok(ExitCode::FAILURE)
            } else {
                outln!(
                    "all {} certificates valid for at least {within} days",
                    rows.len()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
        CertsCommand::Renew { state, all, names } => {
            let cs = load(state)?;
            let selection = if *all {
                Selection::All
            } else {
                Selection::Names(names.clone())
            };
            let out = strata_pki::renew(&cs.inputs, &cs.state, now, &selection)
                .with_context(|| format!("renewing in {}", cs.state.root.display()))?;
            print_outcome(&out);
            outln!(
                "Hosts still use the old certificates until they are shipped and the \
                 components restarted (strata apply)."
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::RotateEncryptionKey(args) => {
            let cs = load(args)?;
            let name = strata_pki::encryption::rotate(&cs.state, now)
                .context("rotating the Secrets encryption key")?;
            outln!(
                "new Secrets encryption key {name}; run `strata apply` to give it to the API \
                 servers and rewrite every Secret with it, then `strata certs \
                 prune-encryption-keys` and `strata apply` to drop the old ones"
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::PruneEncryptionKeys(args) => {
            let cs = load(args)?;
            let keys = strata_pki::encryption::load(&cs.state)?
                .context("no Secrets encryption keys yet: run `strata apply` first")?;
            let current = keys.current().map(|k| k.name.clone()).unwrap_or_default();
            let applied = AppliedState::load(&cs.state.root.join(STATE_FILE))?;
            if applied.secrets_key != current {
                bail!(
                    "the Secrets are not all encrypted with the current key {current} yet \
                     (the last apply used {}): run `strata apply` first, or Secrets written \
                     with the old keys could no longer be read",
                    if applied.secrets_key.is_empty() {
                        "none"
                    } else {
                        applied.secrets_key.as_str()
                    }
                );
            }
            let dropped = strata_pki::encryption::prune(&cs.state)?;
            if dropped.is_empty() {
                outln!("only the current key {current} is left; nothing to drop");
            } else {
                outln!(
                    "dropped {}; run `strata apply` so that the API servers forget them",
                    dropped.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// How many days ahead `strata status` warns about a certificate's expiry.
pub const STATUS_WARN_DAYS: i64 = 30;

/// `strata status`'s line about the state directory's certificates, and whether one failed.
pub fn status_line(cs: &ClusterState) -> Result<(String, bool)> {
    let now = OffsetDateTime::now_utc();
    let rows = strata_pki::check(&cs.inputs, &cs.state, now)
        .with_context(|| format!("reading the certificates in {}", cs.state.root.display()))?;
    Ok(expiry_summary(&rows, STATUS_WARN_DAYS, now))
}

/// `strata status`'s line about the certificates in `rows`, and whether one is expired or
/// broken (a failure; one that expires within `within` days is a warning).
pub fn expiry_summary(
    rows: &[strata_pki::CertStatus],
    within: i64,
    now: OffsetDateTime,
) -> (String, bool) {
    let mut broken = Vec::new();
    let mut expiring = Vec::new();
    for r in rows {
        match (&r.problem, r.days_left) {
            (Some(p), _) => broken.push(format!("{} ({p})", r.name)),
            // Whole days round toward zero: compared with the time itself.
            _ if r.not_after.is_some_and(|t| t <= now) => {
                broken.push(format!("{} (expired)", r.name));
            }
            (None, Some(d)) if d < within => expiring.push(format!("{} ({d} days)", r.name)),
            _ => {}
        }
    }
    let fix = "`strata certs renew NAME` (or --all), then `strata apply`";
    match (broken.is_empty(), expiring.is_empty()) {
        (true, true) => (
            format!(
                "certificates: all {} valid for at least {within} days",
                rows.len()
            ),
            false,
        ),
        (true, false) => (
            format!(
                "certificates: WARNING: {} expire within {within} days: {}; renew with {fix}",
                expiring.len(),
                expiring.join(", ")
            ),
            false,
        ),
        (false, _) => (
            format!(
                "certificates: FAILED: {}{}; `strata certs check` for the list, {fix}",
                broken.join(", "),
                if expiring.is_empty() {
                    String::new()
                } else {
                    format!("; expiring within {within} days: {}", expiring.join(", "))
                }
            ),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    fn row(name: &str, days: Option<i64>, problem: Option<&str>) -> strata_pki::CertStatus {
        strata_pki::CertStatus {
            name: name.into(),
            subject: String::new(),
            issuer: String::new(),
            not_after: days.map(|d| now() + time::Duration::days(d) + time::Duration::hours(1)),
            days_left: days,
            problem: problem.map(str::to_owned),
        }
    }

    #[test]
    fn status_warns_about_what_expires_soon_and_fails_on_what_expired() {
        let ok = [row("ca", Some(3000), None), row("admin", Some(300), None)];
        assert_eq!(
            expiry_summary(&ok, 30, now()),
            (
                "certificates: all 2 valid for at least 30 days".into(),
                false
            )
        );
        let soon = [
            row("ca", Some(3000), None),
            row("apiserver", Some(12), None),
        ];
        let (line, failed) = expiry_summary(&soon, 30, now());
        assert!(!failed);
        assert!(
            line.starts_with("certificates: WARNING: 1 expire within 30 days: apiserver (12 days)"),
            "{line}"
        );
        assert!(line.contains("strata certs renew"), "{line}");
        let bad = [
            row("apiserver", Some(12), None),
            row("admin", Some(-2), None),
            row("kubelet/w1", None, Some("missing")),
        ];
        let (line, failed) = expiry_summary(&bad, 30, now());
        assert!(failed);
        // Expired an hour ago: 0 whole days left, expired all the same.
        let mut just = row("front-proxy-client", Some(0), None);
        just.not_after = Some(now() - time::Duration::hours(1));
        let (line0, failed0) = expiry_summary(&[just], 30, now());
        assert!(
            failed0 && line0.contains("front-proxy-client (expired)"),
            "{line0}"
        );
        assert!(
            line.contains("admin (expired)")
                && line.contains("kubelet/w1 (missing)")
                && line.contains("apiserver (12 days)"),
            "{line}"
        );
    }
}
