//! The archives are valid OCI image layouts as other tools read them: skopeo inspects them,
//! umoci unpacks them to the files, modes and links that went in; and the same inputs give
//! the same bytes.

use std::path::Path;
use std::process::Command;

use strata_images::{ImageSpec, build, digest};

fn spec() -> ImageSpec {
    let mut s = ImageSpec::new("strata.dev/test/hello:1.2.3");
    s.file("/bin/hello", b"#!/bin/sh\necho hello\n".to_vec(), 0o755)
        .expect("file");
    s.file("/etc/hello/config", b"greeting=hi\n".to_vec(), 0o600)
        .expect("file");
    s.symlink("/usr/bin/hi", "/bin/hello").expect("symlink");
    s.dir("/var/lib/hello", 0o700).expect("dir");
    s.entrypoint = vec!["/bin/hello".into()];
    s.user = "65534:65534".into();
    s
}

fn tool(name: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name} (run .ci/prepare to install it): {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn same_inputs_same_bytes() {
    let a = build(&spec()).expect("build");
    let b = build(&spec()).expect("build");
    assert_eq!(a.archive, b.archive);
    assert_eq!(a.manifest_digest, b.manifest_digest);
    let mut other = spec();
    other.env.push("X=1".into());
    assert_ne!(
        build(&other).expect("build").manifest_digest,
        a.manifest_digest
    );
}

#[test]
fn skopeo_and_umoci_read_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = build(&spec()).expect("build");
    std::fs::write(dir.path().join("hello.tar"), &built.archive).expect("write");

    let raw = tool(
        "skopeo",
        &["inspect", "--raw", "oci-archive:hello.tar:1.2.3"],
        dir.path(),
    );
    assert_eq!(digest(raw.trim_end().as_bytes()), built.manifest_digest);
    let config: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--config", "oci-archive:hello.tar:1.2.3"],
        dir.path(),
    ))
    .expect("config json");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["Entrypoint"][0], "/bin/hello");
    assert_eq!(config["config"]["User"], "65534:65534");

    // umoci works on an OCI layout directory: unpack the archive's layout, then the image.
    std::fs::create_dir(dir.path().join("layout")).expect("mkdir");
    tool("tar", &["-xf", "hello.tar", "-C", "layout"], dir.path());
    tool(
        "umoci",
        &["unpack", "--rootless", "--image", "layout:1.2.3", "bundle"],
        dir.path(),
    );
    let root = dir.path().join("bundle/rootfs");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        std::fs::read(root.join("bin/hello")).expect("hello"),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(mode("bin/hello"), 0o755);
    assert_eq!(mode("etc/hello/config"), 0o600);
    assert_eq!(mode("var/lib/hello"), 0o700);
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/hi")).expect("link"),
        Path::new("/bin/hello")
    );
}

/// A dynamically linked program carried with its libraries runs from the unpacked image
/// through the image's own loader and libraries (none of this computer's).
#[test]
fn a_dynamic_program_runs_from_the_libraries_it_carries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ImageSpec::new("strata.dev/test/ls:1");
    s.program_with_libraries("/bin/ls").expect("ls");
    let libs: Vec<&String> = s.entries.keys().filter(|p| p.contains(".so")).collect();
    assert!(libs.iter().any(|p| p.contains("libc.so")), "{libs:?}");
    assert!(libs.iter().any(|p| p.contains("ld-linux")), "{libs:?}");
    let built = build(&s).expect("build");
    std::fs::write(dir.path().join("ls.tar"), &built.archive).expect("write");
    std::fs::create_dir(dir.path().join("layout")).expect("mkdir");
    tool("tar", &["-xf", "ls.tar", "-C", "layout"], dir.path());
    tool(
        "umoci",
        &["unpack", "--rootless", "--image", "layout:1", "bundle"],
        dir.path(),
    );
    let root = dir.path().join("bundle/rootfs");
    let loader = libs
        .iter()
        .find(|p| p.contains("ld-linux"))
        .map(|p| root.join(p))
        .expect("loader");
    let lib_dirs: Vec<String> = libs
        .iter()
        .filter_map(|p| Path::new(p.as_str()).parent())
        .map(|d| root.join(d).display().to_string())
        .collect();
    let out = std::process::Command::new(loader)
        .arg("--library-path")
        .arg(lib_dirs.join(":"))
        .arg(root.join("bin/ls"))
        .arg(root.join("bin"))
        .output()
        .expect("run the image's ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ls");
}
