//! `pause`: the first process of every pod sandbox. It holds the pod's namespaces open,
//! reaps orphaned children (it is PID 1 when the pod shares its process namespace) and exits
//! cleanly on SIGINT or SIGTERM. Same contract as Kubernetes' own pause, in safe Rust.

use std::process::ExitCode;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("strata-pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if std::process::id() != 1 {
        eprintln!("Warning: pause should be the first process");
    }
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGCHLD]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pause: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    for signal in signals.forever() {
        match signal {
            SIGCHLD => reap(),
            _ => {
                eprintln!("Shutting down, got signal");
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Collects every child that has exited, without blocking.
fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
