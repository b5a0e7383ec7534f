//! `strata-update-operator`: `operator` (the Deployment), `agent` (the DaemonSet), `crds`
//! (prints the CRDs generated from the types).
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", strata_update_operator::crd::crds_yaml()?),
    }
    Ok(())
}
