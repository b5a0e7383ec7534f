//! `strata images import`: an image archive (OCI or docker-archive) loaded into the
//! containerd of every node, for clusters without a registry, as `kind load image-archive`
//! does. The archive is read whole and checked here before any node is touched; each node's
//! containerd is asked what it holds, and a node that has every image of the archive (same
//! name, same image id) is skipped. The archive goes to the others through the asset fan-out
//! of apply (sent from here once, passed on by the nodes that have it), is imported with
//! `ctr`, checked, and removed from the node.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::future::join_all;
use serde_json::Value;
use strata_images::inspect::{self, ArchivedImage};
use strata_manifests::catalog::{self, BIN_DIR, Component};
use strata_manifests::plan::{AppliedState, PhaseName, STATE_FILE};
use strata_platforms::ssh::quote;

use crate::assets::{Asset, Assets, IMAGE_DIR};
use crate::certs::{ClusterState, load};
use crate::cli::ImportArgs;
use crate::engine::Reporter;
use crate::hosts::HostConn;

/// The phase name errors on hosts carry.
const PHASE: PhaseName = PhaseName::Upload;

/// `ctr` in containerd's namespace for Kubernetes.
fn ctr() -> String {
    format!("{BIN_DIR}/ctr -n k8s.io")
}

/// A reader that hashes what goes through it: the archive is checked and hashed in the same
/// pass (its sha256 is what the nodes verify on arrival), so what is sent is what was checked.
struct Hashing<R> {
    inner: R,
    ctx: aws_lc_rs::digest::Context,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// The archive at `path`, checked, and its sha256 (hex).
fn inspect_file(path: &Path) -> Result<(inspect::Archive, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = Hashing {
        inner: std::io::BufReader::new(file),
        ctx: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
    };
    let archive = inspect::inspect(&mut r)
        .map_err(|e| anyhow!("{}: {e}; refused, no node was touched", path.display()))?;
    // What follows the tar's end (padding) is part of the file the nodes get.
    std::io::copy(&mut r, &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    let sha256 = r
        .ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((archive, sha256))
}

/// What a node's containerd holds of an image: nothing by that name, or the name with the
/// digest it lists and the image id (config digest) that digest leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Absent,
    Other { digest: String, config: String },
    Same,
}

/// `ctr images ls` output: name -> listed digest.
fn listed(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some(((*w.first()?).to_owned(), (*w.get(2)?).to_owned()))
        })
        .collect()
}

/// The config digest a listed digest leads to (through an index's linux/amd64 manifest).
async fn config_of(h: &HostConn, digest: &str) -> Result<String> {
    let mut digest = digest.to_owned();
    for _ in 0..3 {
        let text = h
            .sh(PHASE, &format!("{} content get {}", ctr(), quote(&digest)))
            .await?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("host {}: content {digest} is not JSON", h.name()))?;
        if let Some(c) = v.pointer("/config/digest").and_then(Value::as_str) {
            return Ok(c.to_owned());
        }
        let next = v
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|m| {
                m.pointer("/platform/os").and_then(Value::as_str) == Some(inspect::OS)
                    && m.pointer("/platform/architecture").and_then(Value::as_str)
                        == Some(inspect::ARCHITECTURE)
            })
            .and_then(|m| m.get("digest").and_then(Value::as_str));
        match next {
            Some(d) => digest = d.to_owned(),
            None => bail!(
                "host {}: content {digest} is neither a manifest nor an index with a linux/amd64 manifest",
                h.name()
            ),
        }
    }
    bail!("host {}: indexes nested too deep from {digest}", h.name())
}

/// What the node holds of each image of the archive.
async fn held(h: &HostConn, images: &[ArchivedImage]) -> Result<Vec<Held>> {
    let list = listed(&h.sh(PHASE, &format!("{} images ls", ctr())).await?);
    let mut out = Vec::with_capacity(images.len());
    for img in images {
        let Some((_, digest)) = list.iter().find(|(name, _)| *name == img.reference) else {
            out.push(Held::Absent);
            continue;
        };
        if img.target.as_deref() == Some(digest.as_str()) {
            out.push(Held::Same);
            continue;
        }
        let config = config_of(h, digest).await?;
        out.push(if config == img.config {
            Held::Same
        } else {
            Held::Other {
                digest: digest.clone(),
                config,
            }
        });
    }
    Ok(out)
}

/// The import on one node: one `ctr images import` per base name the archive's images need,
/// then the archive removed (also when the import fails).
fn import_script(remote: &str, images: &[ArchivedImage]) -> String {
    let bases: BTreeSet<Option<&str>> = images.iter().map(|i| i.base_name.as_deref()).collect();
    let mut s = format!(
        "set -eu\ntrap \"rm -f {file}\" EXIT\nctr=\"{ctr}\"\n",
        file = quote(remote),
        ctr = ctr()
    );
    for base in bases {
        let flag = base
            .map(|b| format!(" --base-name {}", quote(b)))
            .unwrap_or_default();
        s.push_str(&format!(
            "$ctr images import{flag} {} >/dev/null\n",
            quote(remote)
        ));
    }
    s
}

/// The nodes the import goes to: every host that runs a kubelet, or those of `--hosts`.
fn nodes<'c>(cs: &'c ClusterState, only: &[String]) -> Result<Vec<&'c strata_manifests::Host>> {
    let c = &cs.cluster;
    let all: Vec<&strata_manifests::Host> = c
        .spec
        .hosts
        .iter()
        .filter(|h| catalog::runs(c, h, Component::Kubelet))
        .collect();
    if only.is_empty() {
        return Ok(all);
    }
    for name in only {
        if !all.iter().any(|h| h.name.as_str() == name) {
            let known: Vec<&str> = all.iter().map(|h| h.name.as_str()).collect();
            bail!(
                "--hosts {name}: not a node of cluster {} (nodes: {})",
                c.name(),
                known.join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|h| only.iter().any(|n| n == h.name.as_str()))
        .collect())
}

/// `strata images import`.
pub fn run(args: &ImportArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let cs = load(&args.state)?;
    let path = &args.archive;
    let (archive, sha256) = inspect_file(path)?;
    let targets = nodes(&cs, &args.hosts)?;
    // Per run: two imports of the same archive at once must not remove each other's file.
    let mut run = [0u8; 4];
    aws_lc_rs::rand::fill(&mut run).map_err(|_| anyhow!("the system random generator failed"))?;
    let run: String = run.iter().map(|b| format!("{b:02x}")).collect();
    let remote = format!("{IMAGE_DIR}/import-{}-{run}.tar", &sha256[..16]);
    let assets = Assets {
        files: vec![Asset {
            local: path.clone(),
            remote: remote.clone(),
            sha256,
            image: None,
            url: None,
        }],
    };
    for img in &archive.images {
        outln!(
            "{}: {} {} (id {}, {} layer(s), {:.1} MB)",
            path.display(),
            archive.format,
            img.reference,
            img.config,
            img.layers,
            img.size as f64 / 1e6
        );
    }
    let state_file = cs.state.root.join(STATE_FILE);
    let mut state = AppliedState::load(&state_file)?;
    let reporter = Reporter::plain();
    let result = crate::runtime()?.block_on(async {
        let conns =
            crate::hosts::connect_hosts(&reporter, &cs, &mut state, &targets, false).await?;
        let (conns, errors) = crate::hosts::successes_and_failures(conns);
        if !errors.is_empty() {
            bail!("{}\nnothing was imported", errors.join("\n"));
        }
        let result = import(&reporter, &conns, &assets, &archive.images).await;
        for h in conns {
            h.conn.close().await;
        }
        result
    });
    // Keys trusted at first contact are pinned; the rest of the state is apply's.
    let mut fresh = AppliedState::load(&state_file)?;
    for (host, key) in state.host_keys {
        fresh.host_keys.entry(host).or_insert(key);
    }
    fresh.save(&state_file)?;
    let summary = result?;
    outln!(
        "{} image(s) imported on {} node(s), {} node(s) had them; {:.1} MB sent from here, \
         {:.1} MB between nodes; {:.1} s",
        archive.images.len(),
        summary.imported,
        summary.had,
        summary.sent_here as f64 / 1e6,
        summary.sent_peers as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

struct Summary {
    imported: usize,
    had: usize,
    sent_here: u64,
    sent_peers: u64,
}

/// What each node holds, the archive to those that lack an image, imported there, checked.
async fn import(
    reporter: &Reporter,
    conns: &[HostConn],
    assets: &Assets,
    images: &[ArchivedImage],
) -> Result<Summary> {
    let before = join_all(conns.iter().map(|h| held(h, images))).await;
    let (before, errors) = crate::hosts::successes_and_failures(before);
    if !errors.is_empty() {
        bail!("{}\nnothing was imported", errors.join("\n"));
    }
    let remote = &assets.files[0].remote;
    let mut needs = vec![BTreeSet::new(); conns.len()];
    for ((h, held), need) in conns.iter().zip(&before).zip(&mut needs) {
        for (img, state) in images.iter().zip(held) {
            let what = match state {
                Held::Same => "present (same image id), skipped".to_owned(),
                Held::Absent => "absent".to_owned(),
                Held::Other { digest, config } => {
                    format!("listed at {digest} with another image id ({config}): replaced")
                }
            };
            outln!("{:<16} {} {what}", h.name(), img.reference);
        }
        if held.iter().any(|s| *s != Held::Same) {
            need.insert(remote.clone());
        }
    }
    let lacking: Vec<usize> = (0..conns.len()).filter(|&i| !needs[i].is_empty()).collect();
    let mut summary = Summary {
        imported: lacking.len(),
        had: conns.len() - lacking.len(),
        sent_here: 0,
        sent_peers: 0,
    };
    if lacking.is_empty() {
        return Ok(summary);
    }
    let fleet = crate::fanout::Fleet {
        reporter,
        hosts: conns,
        assets,
    };
    let has = vec![BTreeSet::new(); conns.len()];
    let out = crate::fanout::run(&fleet, &needs, &has).await?;
    summary.sent_here = out.sent_here;
    summary.sent_peers = out.sent_peers;
    let script = import_script(remote, images);
    let results = join_all(lacking.iter().map(|&i| {
        let h = &conns[i];
        let script = &script;
        async move {
            let t = Instant::now();
            h.sh(PHASE, script).await?;
            let after = held(h, images).await?;
            for (img, state) in images.iter().zip(&after) {
                if *state != Held::Same {
                    bail!(
                        "host {}: after the import containerd holds {} as {state:?}, not image id {}",
                        h.name(),
                        img.reference,
                        img.config
                    );
                }
            }
            outln!(
                "{:<16} imported in {:.1} s",
                h.name(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }))
    .await;
    let (_, errors) = crate::hosts::successes_and_failures(results);
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_listing_gives_names_and_digests() {
        let text = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
                    strata.dev/pause:0.1.0 application/vnd.oci.image.manifest.v1+json sha256:03e4 1.2 MiB linux/amd64 io.cri-containerd.image=managed\n\
                    docker.io/library/app:1 application/vnd.docker.distribution.manifest.v2+json sha256:77aa 3.0 KiB linux/amd64 -\n";
        assert_eq!(
            listed(text),
            [
                (
                    "strata.dev/pause:0.1.0".to_owned(),
                    "sha256:03e4".to_owned()
                ),
                (
                    "docker.io/library/app:1".to_owned(),
                    "sha256:77aa".to_owned()
                )
            ]
        );
        assert!(listed("REF TYPE DIGEST SIZE PLATFORMS LABELS\n").is_empty());
    }

    #[test]
    fn the_import_removes_the_archive_and_keeps_full_names() {
        let img = |base: Option<&str>| ArchivedImage {
            reference: "x".into(),
            config: "sha256:c".into(),
            target: None,
            base_name: base.map(str::to_owned),
            layers: 1,
            size: 1,
        };
        let s = import_script(
            "/var/lib/strata/images/import-ab.tar",
            &[img(None), img(Some("registry.example/app")), img(None)],
        );
        assert!(
            s.contains("trap \"rm -f '/var/lib/strata/images/import-ab.tar'\" EXIT"),
            "{s}"
        );
        assert_eq!(s.matches("images import").count(), 2, "{s}");
        assert!(s.contains("--base-name 'registry.example/app'"), "{s}");
    }
}
