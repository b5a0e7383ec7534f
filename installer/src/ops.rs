//! `strata status`, `strata kubeconfig` and `strata reset`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use strata_manifests::Host;
use strata_manifests::catalog;
use strata_manifests::plan::AppliedState;

use crate::certs::load;
use crate::cli::StateArgs;
use crate::engine::Reporter;
use crate::hosts::admin_client;

/// The units Strata starts on a host (from the component catalogue).
fn services(c: &strata_manifests::Cluster, h: &Host) -> Vec<&'static str> {
    catalog::on_host(c, h)
        .flat_map(|s| s.started_units())
        .collect()
}

pub fn kubeconfig(args: &StateArgs, out: Option<&Path>) -> Result<ExitCode> {
    let cs = load(args)?;
    let path = cs.state.file("auth/kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: run `strata apply` (or `strata certs generate`) first",
            path.display()
        )
    })?;
    match out {
        None => outln!("{}", text.trim_end()),
        Some(p) => {
            // A new 0600 file renamed over the path: an existing file's mode, owner or link
            // target never receives the credentials.
            strata_pki::files::write_private(p, text.as_bytes())
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {} (admin credentials: keep it private)", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: &StateArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async {
        let cs = load(args)?;
        let state_file = cs.state.root.join(strata_manifests::plan::STATE_FILE);
        let mut state = AppliedState::load(&state_file)?;
        let hosts: Vec<&Host> = cs.cluster.spec.hosts.iter().collect();
        let conns = crate::hosts::connect(&Reporter::plain(), &cs, &mut state, false).await?;
        // Keys trusted at the prompt are pinned.
        state.save(&state_file)?;
        let mut healthy = true;
        outln!(
            "{:<12} {:<16} {:<5} {:<10} SERVICES",
            "HOST",
            "ADDRESS",
            "SSH",
            "KUBELET"
        );
        for (h, c) in hosts.iter().zip(conns) {
            let addr = h
                .address
                .as_ref()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let conn = match c {
                Ok(c) => c.conn,
                Err(e) => {
                    healthy = false;
                    outln!(
                        "{:<12} {addr:<16} {:<5} {:<10} {e:#}",
                        h.name.as_str(),
                        "FAIL",
                        "-"
                    );
                    continue;
                }
            };
            let units = services(&cs.cluster, h);
            let out = conn
                .exec(&format!("systemctl is-active {}", units.join(" ")))
                .await?;
            let states: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            let shown: Vec<String> = units
                .iter()
                .zip(
                    states
                        .iter()
                        .chain(std::iter::repeat(&String::from("unknown"))),
                )
                .map(|(u, s)| {
                    if s != "active" {
                        healthy = false;
                    }
                    format!("{u}={s}")
                })
                .collect();
            let version = conn
                .exec("/opt/strata/bin/kubelet --version 2>/dev/null")
                .await?;
            let version = String::from_utf8_lossy(&version.stdout)
                .trim()
                .trim_start_matches("Kubernetes ")
                .to_owned();
            outln!(
                "{:<12} {addr:<16} {:<5} {:<10} {}",
                h.name.as_str(),
                "ok",
                if version.is_empty() { "-" } else { &version },
                shown.join(" ")
            );
            conn.close().await;
        }
        let api = async {
            let client = admin_client(&cs).await?;
            let ready = client
                .request_text(http::Request::get("/readyz").body(Vec::new())?)
                .await?;
            let nodes: Api<Node> = Api::all(client);
            let list = nodes.list(&ListParams::default()).await?;
            Ok::<_, anyhow::Error>((ready, list))
        };
        match api.await {
            Ok((ready, list)) => {
                outln!("API https://{}: {}", cs.inputs.api_endpoint, ready.trim());
                for n in &list.items {
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| {
                            if c.status == "True" {
                                "Ready".to_string()
                            } else {
                                format!("NotReady ({})", c.reason.clone().unwrap_or_default())
                            }
                        })
                        .unwrap_or_else(|| "Unknown".into());
                    outln!(
                        "  node {:<12} {ready}",
                        n.metadata.name.clone().unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                healthy = false;
                outln!("API https://{}: unreachable: {e:#}", cs.inputs.api_endpoint);
            }
        }
        let (line, failed) = crate::certs::status_line(&cs)?;
        outln!("{line}");
        healthy &= !failed;
        Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
