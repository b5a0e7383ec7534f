//! `strata-api-balancer`: the node-local API load balancer (see the library).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use strata_api_balancer::health::IdentityFiles;
use strata_api_balancer::{Balancer, Options};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:7445")]
    listen: SocketAddr,
    /// The API servers, one host:port per line (re-read while running).
    #[arg(long)]
    backends: PathBuf,
    /// The CA that signed the API servers' serving certificates.
    #[arg(long)]
    ca: PathBuf,
    /// The balancer's client certificate for /readyz (these three files are read again
    /// when they change).
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Milliseconds between checks of each API server.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds a check may take.
    #[arg(long, default_value_t = 1500)]
    timeout_ms: u64,
    /// Failed checks in a row before an API server is dropped.
    #[arg(long, default_value_t = 2)]
    fall: u32,
    /// Milliseconds a connection to an API server may take to open.
    #[arg(long, default_value_t = 2000)]
    connect_timeout_ms: u64,
    /// Milliseconds the connections through an API server that went down while it still
    /// answers (unready, refusing) are left to it before they are closed: one shutting down
    /// finishes their requests and closes them itself (Strata's API servers: a 5 s shutdown
    /// delay, killed 10 s after their stop began).
    #[arg(long, default_value_t = 15000)]
    drain_grace_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .without_time()
        .init();
    let args = Args::parse();
    let identity = IdentityFiles {
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let checker = identity
        .read()
        .and_then(|content| identity.checker(&content))
        .context("the health-check identity (--ca, --cert, --key)")?;
    let options = Options {
        listen: args.listen,
        backends_file: args.backends,
        interval: Duration::from_millis(args.interval_ms),
        fall: args.fall,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        drain_grace: Duration::from_millis(args.drain_grace_ms),
        identity: Some(identity),
    };
    Balancer::bind(options, checker).await?.run().await;
    Ok(())
}
