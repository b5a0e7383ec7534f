//! `strata-asset-source`: serves an asset directory (with its manifest.json) over https for
//! benchmarks, as an operator's asset source would: `--root DIR --listen IP`, the CA
//! certificate written to `--ca-out FILE` (to add to the machines' trust bundles and to give
//! strata as SSL_CERT_FILE). Prints the directory's URL, then serves until standard input
//! closes, and prints the bytes served to each client address.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use strata_e2e::asset_source::AssetSource;

#[derive(Debug, Parser)]
#[command(about = "Serve an asset directory over https until standard input closes")]
struct Args {
    /// The directory served (Strata's assets with their manifest.json).
    #[arg(long)]
    root: PathBuf,
    /// The address to listen on (a free port is chosen).
    #[arg(long)]
    listen: IpAddr,
    /// Where the CA certificate (PEM) goes.
    #[arg(long)]
    ca_out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let source = AssetSource::start(work.path(), &args.root, args.listen, Vec::new());
    std::fs::write(&args.ca_out, &source.ca.pem)?;
    println!("{}", source.url);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for (ip, bytes) in source.served() {
        println!("served {bytes} bytes to {ip}");
    }
    Ok(())
}
