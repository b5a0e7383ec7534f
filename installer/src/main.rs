//! The `strata` command.
#![forbid(unsafe_code)]
// Functions stay short enough to read at once (threshold in clippy.toml).
#![deny(clippy::too_many_lines)]

/// `println!` for command output that stops quietly when stdout is closed early (for
/// example when piped into `head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod apply;
mod assets;
mod backup;
mod certs;
mod cli;
mod departures;
mod engine;
mod etcd;
mod facts;
mod fanout;
mod hosts;
mod images;
mod init;
mod local;
mod membership;
mod ops;
mod phases;
mod pod_restarts;
mod render;
mod reset;
mod restored;
mod updates;
mod upstream;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, OutputFormat, Shell, ValidateArgs};

fn main() -> ExitCode {
    // The one TLS crypto provider of the whole program, installed before anything uses TLS.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("strata: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init(args) => init::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => validate(&args),
        Command::Apply(args) => apply::run(&args),
        Command::Status(args) => ops::status(&args),
        Command::Kubeconfig { state, out } => ops::kubeconfig(&state, out.as_deref()),
        Command::Reset { state, yes } => reset::run(&state, yes),
        Command::Backup { state, out } => backup::run(&state, out.as_deref()),
        Command::Restore(args) => backup::run_restore(&args),
        Command::Certs(cmd) => certs::run(&cmd),
        Command::Local(cmd) => local::run(&cmd),
        Command::Updates(cmd) => updates::run(&cmd),
        Command::Images(cli::ImagesCommand::Import(args)) => images::run(&args),
        Command::Render { state, out } => render::run_render(&state, &out),
        Command::Plan(args) => render::run_plan(&args.state, args.output),
        Command::Schema => {
            let schema = strata_manifests::cluster_schema();
            let text = serde_json::to_string_pretty(&schema).context("printing the schema")?;
            outln!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout();
            match shell {
                Shell::Bash => clap_complete::generate(
                    clap_complete::Shell::Bash,
                    &mut cmd,
                    "strata",
                    &mut out,
                ),
                Shell::Zsh => {
                    clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "strata", &mut out)
                }
                Shell::Fish => clap_complete::generate(
                    clap_complete::Shell::Fish,
                    &mut cmd,
                    "strata",
                    &mut out,
                ),
            }
            out.flush().context("writing the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The async runtime of the commands that talk to hosts or the API.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn validate(args: &ValidateArgs) -> Result<ExitCode> {
    let path = &args.file.file;
    let (ok, report, summary) = match strata_manifests::load_file(path) {
        Ok(loaded) => {
            let c = &loaded.cluster;
            let summary = format!(
                "{}: valid: cluster {} with {} host{} (Kubernetes {}, platform {})",
                path.display(),
                c.name(),
                c.spec.hosts.len(),
                if c.spec.hosts.len() == 1 { "" } else { "s" },
                c.spec.kubernetes.version,
                c.spec.platform.name(),
            );
            (true, loaded.report, summary)
        }
        Err(report) => (false, report, String::new()),
    };
    match args.output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "file": path.display().to_string(),
                "valid": ok,
                "diagnostics": report.diagnostics,
            });
            outln!("{doc}");
        }
        OutputFormat::Text => {
            if !report.diagnostics.is_empty() {
                eprint!("{report}");
            }
            if ok {
                outln!("{summary}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
