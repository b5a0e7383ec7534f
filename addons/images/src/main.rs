//! `strata-image`: builds an OCI image archive from files on this computer.
//!
//! ```text
//! strata-image --reference strata.dev/pause:0.1.0 \
//!   --file target/release/strata-pause=/pause:0755 --entrypoint /pause --out pause.tar
//! ```
//! `--program /usr/bin/iperf3` carries a dynamically linked program with its libraries.
//! Prints the image's manifest digest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use strata_images::{ImageSpec, build};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Build an OCI image archive (oci-archive) without Docker"
)]
struct Args {
    /// The image's full reference, NAME:TAG.
    #[arg(long)]
    reference: String,
    /// SOURCE=/PATH[:MODE] (octal mode; default: the source's own mode).
    #[arg(long = "file", value_name = "SOURCE=/PATH[:MODE]")]
    files: Vec<String>,
    /// A dynamically linked program of this computer, carried at the same path with the
    /// shared libraries and the loader it loads.
    #[arg(long = "program", value_name = "/PATH")]
    programs: Vec<String>,
    /// An empty directory in the image, /PATH[:MODE] (default 0755).
    #[arg(long = "dir", value_name = "/PATH[:MODE]")]
    dirs: Vec<String>,
    /// /PATH=TARGET: a symbolic link in the image.
    #[arg(long = "symlink", value_name = "/PATH=TARGET")]
    symlinks: Vec<String>,
    /// The entrypoint, one argument per occurrence.
    #[arg(long = "entrypoint")]
    entrypoint: Vec<String>,
    /// NAME=VALUE environment variables (added to the default PATH).
    #[arg(long = "env")]
    env: Vec<String>,
    /// uid[:gid] to run as.
    #[arg(long, default_value = "")]
    user: String,
    /// Where to write the archive.
    #[arg(long)]
    out: PathBuf,
}

fn run(a: Args) -> Result<()> {
    let mut spec = ImageSpec::new(&a.reference);
    for f in &a.files {
        let Some((src, rest)) = f.split_once('=') else {
            bail!("--file {f}: expected SOURCE=/PATH[:MODE]");
        };
        let (dest, mode) = match rest.rsplit_once(':') {
            Some((d, m)) => (
                d,
                Some(u32::from_str_radix(m, 8).with_context(|| format!("--file {f}: mode {m}"))?),
            ),
            None => (rest, None),
        };
        let data = std::fs::read(src).with_context(|| format!("--file {f}: reading {src}"))?;
        let mode = match mode {
            Some(m) => m,
            None => {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::metadata(src)?.permissions().mode() & 0o7777
            }
        };
        spec.file(dest, data, mode)
            .with_context(|| format!("--file {f}"))?;
    }
    for p in &a.programs {
        spec.program_with_libraries(p)
            .with_context(|| format!("--program {p}"))?;
    }
    for d in &a.dirs {
        let (path, mode) = match d.rsplit_once(':') {
            Some((p, m)) => (
                p,
                u32::from_str_radix(m, 8).with_context(|| format!("--dir {d}: mode {m}"))?,
            ),
            None => (d.as_str(), 0o755),
        };
        spec.dir(path, mode).with_context(|| format!("--dir {d}"))?;
    }
    for l in &a.symlinks {
        let Some((path, target)) = l.split_once('=') else {
            bail!("--symlink {l}: expected /PATH=TARGET");
        };
        spec.symlink(path, target)
            .with_context(|| format!("--symlink {l}"))?;
    }
    spec.entrypoint = a.entrypoint;
    spec.env.extend(a.env);
    spec.user = a.user;
    let built = build(&spec)?;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, &built.archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", built.manifest_digest);
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
