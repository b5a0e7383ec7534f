//! `strata-conformance`: Kubernetes' conformance suite against a Strata cluster.
//!
//! Without `--kubeconfig` it makes a local cluster from a Cluster file (by default
//! e2e/conformance/cluster.yaml: one control-plane host and two workers) with `strata local
//! up` and `strata apply`, loads the test images into every machine's containerd (no
//! registry), runs the suite, prints `N passed, M failed` with the failures, and removes
//! the machines (unless `--keep`). With `--kubeconfig` it runs against that cluster, whose
//! nodes pull the upstream images themselves. `e2e/conformance.sh` builds what this needs.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use strata_e2e::conformance::{self, Focus, Run, Suite};

const DEFAULT_CLUSTER: &str = include_str!("../../conformance/cluster.yaml");

#[derive(Debug, Parser)]
#[command(about = "Run Kubernetes' conformance suite against a Strata cluster")]
struct Args {
    /// Run against this cluster instead of making a local one.
    #[arg(long, conflicts_with = "cluster")]
    kubeconfig: Option<PathBuf>,
    /// The Cluster file of the local cluster to make (platform: local) [default: one
    /// control-plane host and two workers, e2e/conformance/cluster.yaml].
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Ginkgo's -focus [default: \[Conformance\]].
    #[arg(long, conflicts_with = "focus_file")]
    focus: Option<String>,
    /// A file naming the tests to run, one per line (# comments).
    #[arg(long)]
    focus_file: Option<PathBuf>,
    /// Ginkgo's -skip.
    #[arg(long, default_value = "")]
    skip: String,
    /// Where the JUnit reports, e2e.log files and summary.txt go.
    #[arg(long, default_value = "conformance-results")]
    results: PathBuf,
    /// Ginkgo nodes for the tests that may run in parallel.
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// Leave the local cluster running afterwards.
    #[arg(long)]
    keep: bool,
}

fn strata(dir: &Path, args: &[&str]) -> Result<()> {
    let bin = std::env::var_os("STRATA_BIN").unwrap_or_else(|| "strata".into());
    eprintln!("conformance: strata {}", args.join(" "));
    let status = std::process::Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", PathBuf::from(&bin).display()))?;
    if !status.success() {
        bail!("strata {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A local cluster made for the run: its directory and the machines' names.
struct Local {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "conformance: the cluster runs on; remove it with `strata local down --yes` in {}",
                self.dir.display()
            );
        } else if let Err(e) = strata(&self.dir, &["local", "down", "--yes"]) {
            eprintln!("conformance: {e:#}");
        }
    }
}

fn local_cluster(args: &Args, suite: &Suite) -> Result<(Local, PathBuf)> {
    let (file, text) = match &args.cluster {
        Some(f) => (
            f.display().to_string(),
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        None => (
            "e2e/conformance/cluster.yaml".to_owned(),
            DEFAULT_CLUSTER.to_owned(),
        ),
    };
    let ctx = strata_manifests::Context {
        file,
        base_dir: PathBuf::from("."),
        home: None,
    };
    let cluster = strata_manifests::load_str(&text, &ctx)
        .map_err(|r| anyhow::anyhow!("{r}"))?
        .cluster;
    let dir = std::path::absolute(args.results.join("cluster"))?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cluster.yaml"), &text)?;
    let local = Local {
        dir: dir.clone(),
        keep: args.keep,
    };
    strata(&dir, &["local", "up"])?;
    strata(&dir, &["apply"])?;

    let assets = PathBuf::from(format!("{}/assets/1.20.2", strata_e2e::CACHE));
    let pause = std::env::var_os("STRATA_PAUSE_BIN")
        .map(PathBuf::from)
        .context("STRATA_PAUSE_BIN: the static strata-pause binary (e2e/conformance.sh sets it)")?;
    let hosts: Vec<&str> = cluster.spec.hosts.iter().map(|h| h.name.as_str()).collect();
    conformance::load_images(suite, cluster.name(), &hosts, &assets.join("bin"), &pause)
        .map_err(anyhow::Error::msg)?;
    let kubeconfig = dir.join(cluster.name()).join("auth/kubeconfig");
    Ok((local, kubeconfig))
}

fn main_result() -> Result<bool> {
    let args = Args::parse();
    let suite = Suite::locate().map_err(anyhow::Error::msg)?;
    let focus = match (&args.focus, &args.focus_file) {
        (_, Some(file)) => Focus::names(
            &std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
        ),
        (Some(f), None) => Focus::Regex(f.clone()),
        (None, None) => Run::default().focus,
    };
    let (_local, kubeconfig) = match &args.kubeconfig {
        Some(k) => (None, k.clone()),
        None => {
            let (l, k) = local_cluster(&args, &suite)?;
            (Some(l), k)
        }
    };
    let run = Run {
        kubeconfig: std::path::absolute(kubeconfig)?,
        results: std::path::absolute(&args.results)?,
        focus,
        skip: args.skip.clone(),
        nodes: args.nodes,
    };
    let (summary, took) = conformance::run(&suite, &run).map_err(anyhow::Error::msg)?;
    print!("{}", summary.render());
    println!(
        "conformance: {} tests in {:.1} min; reports in {}",
        summary.passed.len() + summary.failed.len(),
        took.as_secs_f64() / 60.0,
        run.results.display()
    );
    Ok(summary.failed.is_empty() && !summary.passed.is_empty())
}

fn main() -> ExitCode {
    match main_result() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("strata-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}
