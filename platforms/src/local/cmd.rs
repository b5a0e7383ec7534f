//! Running the system tools the local platform is built on.

use std::process::{Command, Output};

/// A tool failed: which command, its status and the tail of what it printed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed ({status}): {output}")]
pub struct CommandError {
    pub command: String,
    pub status: String,
    pub output: String,
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `c`; an error carries the command line and the end of its output.
pub fn run(c: &mut Command) -> Result<Output, CommandError> {
    let out = c.output().map_err(|e| CommandError {
        command: describe(c),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        Err(CommandError {
            command: describe(c),
            status: out.status.to_string(),
            output: tail(&all),
        })
    }
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<Output, CommandError> {
    run(Command::new("ip").args(args))
}
