//! `strata updates`: the update operator's state at a glance, pause/resume, approving a gate,
//! freeing an abandoned slot of a reboot lock, and the web console.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use strata_update_api::{NodeUpdate, RebootLock, UpdatePolicy};

use crate::certs::load;
use crate::cli::{ApproveArgs, ConsoleArgs, StateArgs, UpdatesCommand, UpdatesPolicyArgs};
use crate::hosts::admin_client;

pub fn run(cmd: &UpdatesCommand) -> Result<ExitCode> {
    match cmd {
        UpdatesCommand::Status(args) => status(args),
        UpdatesCommand::Pause(args) => set_paused(args, true),
        UpdatesCommand::Resume(args) => set_paused(args, false),
        UpdatesCommand::Release {
            policy,
            holder,
            force,
        } => release(policy, holder, *force),
        UpdatesCommand::Approve(args) => approve(args),
        UpdatesCommand::Console(args) => console(args),
    }
}

/// `strata updates approve NODE`: the gate the node waits at, approved through its
/// NodeUpdate (as the console's button does).
fn approve(args: &ApproveArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async {
        let cs = load(&args.state)?;
        let client = admin_client(&cs).await?;
        let shown = strata_update_console::actions::Shown {
            stage: args.stage.map(Into::into),
            slot_acquired_at: None,
        };
        let done = strata_update_console::actions::approve_gate(&client, &args.node, shown).await?;
        outln!("{done}");
        Ok(ExitCode::SUCCESS)
    })
}

/// `strata updates console`: the console served on loopback with the user's kubeconfig
/// (`--kubeconfig`, else `$KUBECONFIG`, else the admin one), its URL (with a fresh token)
/// printed and opened in a browser when one can be. A kubeconfig that names another API
/// server than this cluster's is refused (the page says whose cluster it shows).
fn console(args: &ConsoleArgs) -> Result<ExitCode> {
    let cs = load(&args.state)?;
    let admin = cs.state.file("auth/kubeconfig");
    let from_env = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    let (kc, whose) = match &args.kubeconfig {
        Some(p) => (
            kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None if from_env => (
            kube::config::Kubeconfig::from_env()
                .context("reading $KUBECONFIG")?
                .context("$KUBECONFIG names no kubeconfig")?,
            "$KUBECONFIG".to_owned(),
        ),
        None => (
            kube::config::Kubeconfig::read_from(&admin)
                .with_context(|| format!("reading {}", admin.display()))?,
            admin.display().to_string(),
        ),
    };
    let mut token = [0u8; 24];
    aws_lc_rs::rand::fill(&mut token)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    crate::runtime()?.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kc,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("kubeconfig {whose}"))?;
        let server = config
            .cluster_url
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let ours = [cs.cluster.api_endpoint(), cs.cluster.first_api_server()];
        if !ours.iter().flatten().any(|a| *a == server) {
            anyhow::bail!(
                "kubeconfig {whose} names the API server {server}, not cluster {}'s ({}): pass \
                 --kubeconfig with one of this cluster",
                cs.cluster.name(),
                ours.iter().flatten().cloned().collect::<Vec<_>>().join(" or ")
            );
        }
        let client = kube::Client::try_from(config).context("API client")?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
        let addr = listener.local_addr().context("the console's address")?;
        let url = format!("http://{addr}/?token={token}");
        outln!(
            "The updates console of cluster {} (API {server}, requests with kubeconfig {whose}): \
             {url}\nStop it with Ctrl-C. Anyone on this computer who learns the URL can act with \
             these credentials until it stops.",
            cs.cluster.name()
        );
        let graphical = std::env::var_os("DISPLAY").is_some()
            || std::env::var_os("WAYLAND_DISPLAY").is_some();
        if !args.no_browser && graphical {
            // Best effort: the URL is printed either way.
            let _ = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
        tokio::select! {
            r = strata_update_console::serve(client, listener, &token) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn condition(p: &UpdatePolicy, type_: &str) -> Option<(String, String)> {
    p.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.message.clone()))
    })
}

fn status(args: &StateArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async {
        let cs = load(args)?;
        let client = admin_client(&cs).await?;
        let lp = ListParams::default();
        let missing = "is the update operator installed (spec.addons.updateOperator.enabled)?";
        let policies = Api::<UpdatePolicy>::all(client.clone())
            .list(&lp)
            .await
            .with_context(|| format!("listing UpdatePolicies: {missing}"))?;
        let locks = Api::<RebootLock>::all(client.clone())
            .list(&lp)
            .await
            .context("listing RebootLocks")?;
        let mut nodes = Api::<NodeUpdate>::all(client.clone())
            .list(&lp)
            .await
            .context("listing NodeUpdates")?
            .items;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut degraded = false;
        outln!(
            "{:<12} {:<7} {:<5} {:<6} {:<8} {:<10} {:<7} {:<10} NEXT-WINDOW",
            "POLICY",
            "PAUSED",
            "MAX",
            "NODES",
            "WAITING",
            "REBOOTING",
            "FAILED",
            "DEGRADED"
        );
        for p in &policies.items {
            let st = p.status.clone().unwrap_or_default();
            let (deg, why) = condition(p, "Degraded").unwrap_or(("Unknown".into(), String::new()));
            degraded |= deg == "True";
            outln!(
                "{:<12} {:<7} {:<5} {:<6} {:<8} {:<10} {:<7} {:<10} {}",
                p.metadata.name.as_deref().unwrap_or(""),
                p.spec.paused,
                p.spec.max_unavailable.to_string(),
                st.nodes,
                st.reboot_required,
                st.in_progress,
                st.failed,
                deg,
                st.next_window
                    .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            );
            if deg == "True" && !why.is_empty() {
                outln!("  degraded: {why}");
            }
            if !st.version_summary.is_empty() {
                outln!("  versions: {}", st.version_summary);
            }
        }
        outln!();
        outln!("{:<12} {:<5} HOLDERS", "LOCK", "MAX");
        for l in &locks.items {
            let st = l.status.clone().unwrap_or_default();
            let holders: Vec<String> = st
                .holders
                .iter()
                .map(|h| format!("{} ({:?} since {})", h.node, h.phase, h.acquired_at))
                .collect();
            outln!(
                "{:<12} {:<5} {}",
                l.metadata.name.as_deref().unwrap_or(""),
                l.spec.max_holders,
                if holders.is_empty() {
                    "-".into()
                } else {
                    holders.join(", ")
                }
            );
        }
        outln!();
        outln!(
            "{:<12} {:<15} {:<9} {:<8} {:<10} MESSAGE",
            "NODE",
            "PHASE",
            "APPROVED",
            "REBOOTS",
            "POLICY"
        );
        for n in &nodes {
            let st = n.status.clone().unwrap_or_default();
            let message = match (st.reason.is_empty(), st.message.is_empty()) {
                (true, _) => st.message.clone(),
                (false, true) => st.reason.clone(),
                (false, false) => format!("{}: {}", st.reason, st.message),
            };
            outln!(
                "{:<12} {:<15} {:<9} {:<8} {:<10} {}",
                n.metadata.name.as_deref().unwrap_or(""),
                st.phase.as_str(),
                n.spec.approved,
                st.reboots,
                n.spec.policy,
                message
            );
        }
        Ok(if degraded {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn set_paused(args: &UpdatesPolicyArgs, paused: bool) -> Result<ExitCode> {
    crate::runtime()?.block_on(async {
        let cs = load(&args.state)?;
        let client = admin_client(&cs).await?;
        let api: Api<UpdatePolicy> = Api::all(client);
        let patch = json!({"spec": {"paused": paused}});
        api.patch(&args.policy, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("UpdatePolicy {}: setting paused to {paused}", args.policy))?;
        outln!(
            "UpdatePolicy {}: {}",
            args.policy,
            if paused {
                "paused (no new reboots; nodes already rebooting finish)"
            } else {
                "resumed"
            }
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Removes `holder` from the policy's lock, replacing the lock's status with the
/// resourceVersion read (as the operator does), so a concurrent change is never overwritten.
fn release(args: &UpdatesPolicyArgs, holder: &str, force: bool) -> Result<ExitCode> {
    if !holder.starts_with("fleetlock/") && !force {
        anyhow::bail!(
            "{holder} is a node: the operator gives its slot back when it is back, or keeps it \
             when its reboot failed (the policy is Degraded). Releasing it lets another node \
             reboot while this one may still be down; add --force if that is what you want"
        );
    }
    crate::runtime()?.block_on(async {
        let cs = load(&args.state)?;
        let client = admin_client(&cs).await?;
        let api: Api<RebootLock> = Api::all(client);
        let name = &args.policy;
        for _ in 0..5 {
            let mut lock = api
                .get(name)
                .await
                .with_context(|| format!("reading RebootLock {name}"))?;
            let status = lock.status.get_or_insert_with(Default::default);
            let before = status.holders.len();
            status.holders.retain(|h| h.node != holder);
            if status.holders.len() == before {
                let held: Vec<&str> = status.holders.iter().map(|h| h.node.as_str()).collect();
                anyhow::bail!(
                    "RebootLock {name} has no holder {holder}; its holders: {}",
                    if held.is_empty() {
                        "none".to_owned()
                    } else {
                        held.join(", ")
                    }
                );
            }
            let now = strata_update_api::Time::now();
            status.history.push(format!(
                "{now} {holder} released: by strata updates release"
            ));
            // The operator keeps the last 20 releases; so does this.
            let extra = status.history.len().saturating_sub(20);
            status.history.drain(..extra);
            status.last_release = Some(now);
            match api
                .replace_status(name, &kube::api::PostParams::default(), &lock)
                .await
            {
                Ok(_) => {
                    outln!("RebootLock {name}: released {holder}'s slot");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("RebootLock {name}: releasing {holder}"));
                }
            }
        }
        anyhow::bail!("RebootLock {name} kept changing; run the command again")
    })
}
