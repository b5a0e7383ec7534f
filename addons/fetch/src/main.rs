//! `strata-fetch`: hosts pass Strata's public assets to each other during an apply (see the
//! library). `strata apply` runs it over SSH; its standard input carries the apply's token
//! and the list of files, so that neither shows in the process list.
//!
//! ```text
//! strata-fetch serve --listen ADDR:PORT [--max-seconds N] --public-dir DIR...
//!     stdin: the token, one path per line, an empty line; then held open: the server
//!     stops when it closes (or after N seconds, default 1800).
//! strata-fetch get --public-dir DIR...
//!     stdin: the token, then `<sha256> <size or -> <octal mode> <url> <path>` per file,
//!     the URL a peer's (`http://host:port/path`, sent the token) or the asset source's
//!     (`https://...`, checked against the host's trust store, never sent the token);
//!     prints `fetched <path> <bytes>` for each (transfers that stall 30 s fail).
//! ```

#![forbid(unsafe_code)]

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use strata_fetch::{PublicDirs, Token, get, serve};

const USAGE: &str = "usage: strata-fetch serve --listen ADDR:PORT [--max-seconds N] --public-dir DIR...\n       \
                     strata-fetch get --public-dir DIR...";

/// The command line (read by hand: the program goes to every host and is kept small).
struct Args {
    command: String,
    listen: Option<String>,
    max_seconds: u64,
    public_dirs: Vec<String>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = argv.next().ok_or("no command")?;
    let mut args = Args {
        command,
        listen: None,
        max_seconds: 1800,
        public_dirs: Vec::new(),
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = Some(value()?),
            "--max-seconds" => {
                args.max_seconds = value()?
                    .parse()
                    .map_err(|_| "--max-seconds takes a number".to_string())?;
            }
            "--public-dir" => args.public_dirs.push(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Stops the whole process after `seconds`, whatever it is doing (the server only: a
/// fetch stopped this way would leave its temporary file).
fn time_limit(seconds: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        eprintln!("strata-fetch: stopped after {seconds} s");
        std::process::exit(2);
    });
}

fn run() -> Result<(), String> {
    let args = parse(std::env::args().skip(1)).map_err(|e| format!("{e}\n{USAGE}"))?;
    let dirs = PublicDirs::new(&args.public_dirs).map_err(|e| e.to_string())?;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| format!("reading the token: {e}"))?;
    let token = Token::new(&line).map_err(|e| e.to_string())?;
    match args.command.as_str() {
        "serve" => {
            time_limit(args.max_seconds);
            let listen = args
                .listen
                .ok_or(format!("serve needs --listen\n{USAGE}"))?;
            let mut paths = Vec::new();
            loop {
                line.clear();
                let n = stdin.read_line(&mut line).map_err(|e| e.to_string())?;
                if n == 0 || line.trim().is_empty() {
                    break;
                }
                paths.push(line.trim().to_owned());
            }
            let allowed = serve::AllowList::new(&dirs, paths).map_err(|e| e.to_string())?;
            let listener = serve::listen(&listen).map_err(|e| e.to_string())?;
            println!("serving {} file(s) on {listen}", allowed.len());
            let served = serve::spawn(listener, token, allowed);
            // The apply holds standard input open while it needs this server: its end (or
            // the apply's connection dropping) stops it.
            let _ = std::io::copy(&mut stdin, &mut std::io::sink());
            println!("{}", served.summary());
            Ok(())
        }
        "get" => {
            let mut rest = String::new();
            stdin.read_to_string(&mut rest).map_err(|e| e.to_string())?;
            let wants = rest
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| get::Want::parse(&dirs, l.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let errors = get::Getter::new(token).fetch_all(&wants, |w, r| {
                if let Ok(bytes) = r {
                    println!("fetched {} {bytes}", w.path);
                }
            });
            if errors.is_empty() {
                Ok(())
            } else {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                Err(list.join("\n"))
            }
        }
        other => Err(format!("unknown command {other}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-fetch: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split(' ').map(String::from))
    }

    #[test]
    fn the_command_line() {
        let a = args("serve --listen 1.2.3.4:5 --public-dir /a --public-dir /b --max-seconds 9")
            .expect("valid");
        assert_eq!(a.command, "serve");
        assert_eq!(a.listen.as_deref(), Some("1.2.3.4:5"));
        assert_eq!(a.public_dirs, ["/a", "/b"]);
        assert_eq!(a.max_seconds, 9);
        assert!(args("get --public-dir").is_err());
        assert!(args("get --bogus x").is_err());
        assert!(args("get --max-seconds x").is_err());
    }
}
