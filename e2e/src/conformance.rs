//! Kubernetes' conformance suite against a Strata cluster: the suite built by
//! `.ci/build-conformance` (e2e.test, ginkgo and kubectl of the cluster's release), the images
//! its tests run (built here without a registry, under the names the tests use), one ginkgo
//! run of the tests that may run in parallel and one of the [Serial] ones, and the summary of
//! their JUnit reports.
//!
//! The images are stand-ins made of this computer's programs; e2e/conformance/README.md says
//! for each what the upstream image has and what ours has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_images::ImageSpec;

/// Taints of control-plane hosts the suite may ignore when it waits for schedulable nodes.
pub const NON_BLOCKING_TAINTS: &str =
    "node-role.kubernetes.io/master,node-role.kubernetes.io/control-plane";

/// The suite of one Kubernetes release, as `.ci/build-conformance` leaves it.
#[derive(Debug, Clone)]
pub struct Suite {
    pub dir: PathBuf,
}

impl Suite {
    /// `STRATA_CONFORMANCE` or the cache of `.ci/build-conformance 1.20.2`.
    pub fn locate() -> Result<Self, String> {
        let dir = std::env::var_os("STRATA_CONFORMANCE").map_or_else(
            || PathBuf::from(format!("{}/conformance/1.20.2", crate::CACHE)),
            PathBuf::from,
        );
        if !dir.join("bin/e2e.test").exists() {
            return Err(format!(
                "no conformance suite in {}: run `bash .ci/build-conformance`",
                dir.display()
            ));
        }
        Ok(Self { dir })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    fn share(&self, name: &str) -> PathBuf {
        self.dir.join("share").join(name)
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Programs of this computer an image carries besides busybox, at their own paths with their
/// libraries: the tools the tests run inside agnhost and jessie-dnsutils.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/dash", "dash"),
    ("/usr/bin/bash", "bash"),
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/nc.openbsd", "netcat-openbsd"),
    ("/usr/bin/dig", "bind9-dnsutils"),
    ("/usr/bin/getent", "libc-bin"),
    ("/usr/bin/ip", "iproute2"),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n";

fn image_error(reference: &str) -> impl Fn(strata_images::ImageError) -> String + '_ {
    move |e| format!("image {reference}: {e}")
}

/// busybox with a link for each of its applets (not those `spec` has a program for), a
/// passwd and group file, /tmp, and name lookup through files then DNS.
fn busybox_base(spec: &mut ImageSpec) -> Result<(), String> {
    let reference = spec.reference.clone();
    let err = image_error(&reference);
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox (package busybox-static): {e}"))?;
    spec.file("/bin/busybox", busybox, 0o755).map_err(&err)?;
    let list = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .map_err(|e| format!("busybox --list-full: {e}"))?;
    let taken: BTreeSet<String> = spec
        .entries
        .keys()
        .filter_map(|p| p.rsplit('/').next().map(str::to_owned))
        .collect();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if name == "busybox" || taken.contains(name) {
            continue;
        }
        let path = format!("/{applet}");
        if !spec.entries.contains_key(path.trim_start_matches('/')) {
            spec.symlink(&path, "/bin/busybox").map_err(&err)?;
        }
    }
    for (path, text) in [
        ("/etc/passwd", PASSWD),
        ("/etc/group", GROUP),
        (
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        ),
    ] {
        if !spec.entries.contains_key(path.trim_start_matches('/')) {
            spec.file(path, text.as_bytes().to_vec(), 0o644)
                .map_err(&err)?;
        }
    }
    spec.dir("/tmp", 0o1777).map_err(&err)?;
    Ok(())
}

/// The real tools (see [`TOOLS`]), /bin/sh being dash: busybox's own shell would run its
/// applets (whose nc has no -u) before anything on PATH.
fn tools(spec: &mut ImageSpec) -> Result<(), String> {
    let reference = spec.reference.clone();
    let err = image_error(&reference);
    for (program, package) in TOOLS {
        spec.program_with_libraries(program)
            .map_err(|e| format!("{program} (package {package}): {e}"))?;
    }
    for (link, target) in [
        ("/bin/sh", "/usr/bin/dash"),
        ("/bin/bash", "/usr/bin/bash"),
        ("/usr/bin/nc", "/usr/bin/nc.openbsd"),
        ("/usr/bin/sh", "/usr/bin/dash"),
    ] {
        spec.symlink(link, target).map_err(&err)?;
    }
    Ok(())
}

fn add_file(spec: &mut ImageSpec, suite: &Suite, from: &Path, to: &str) -> Result<(), String> {
    let data = suite.read(from)?;
    spec.file(to, data, 0o644)
        .map_err(image_error(&spec.reference.clone()))
}

fn add_program(spec: &mut ImageSpec, suite: &Suite, from: &Path, to: &str) -> Result<(), String> {
    let data = suite.read(from)?;
    spec.file(to, data, 0o755)
        .map_err(image_error(&spec.reference.clone()))
}

/// Every image the [Conformance] tests of 1.20 run, under its upstream name. `etcd` and
/// `pause` are the cluster's own binaries (`assets`: the asset directory's bin/).
pub fn images(suite: &Suite, assets: &Path, pause: &Path) -> Result<Vec<ImageSpec>, String> {
    let mut out = Vec::new();

    // agnhost: the test server of most tests, and the tools they exec in it.
    let mut agnhost = ImageSpec::new("k8s.gcr.io/e2e-test-images/agnhost:2.21");
    add_program(&mut agnhost, suite, &suite.bin("agnhost"), "/agnhost")?;
    agnhost
        .symlink("/agnhost-2", "/agnhost")
        .map_err(image_error("agnhost"))?;
    for f in ["localhost.crt", "localhost.key"] {
        add_file(&mut agnhost, suite, &suite.share(f), &format!("/{f}"))?;
    }
    agnhost
        .dir("/uploads", 0o777)
        .map_err(image_error("agnhost"))?;
    tools(&mut agnhost)?;
    busybox_base(&mut agnhost)?;
    agnhost.entrypoint = vec!["/agnhost".into()];
    agnhost.cmd = vec!["pause".into()];
    out.push(agnhost);

    let mut dnsutils = ImageSpec::new("gcr.io/kubernetes-e2e-test-images/jessie-dnsutils:1.0");
    tools(&mut dnsutils)?;
    busybox_base(&mut dnsutils)?;
    out.push(dnsutils);

    let mut busybox = ImageSpec::new("docker.io/library/busybox:1.29");
    busybox_base(&mut busybox)?;
    busybox.cmd = vec!["sh".into()];
    out.push(busybox);

    // httpd and nginx: busybox's httpd serving the page from the upstream image's directory.
    for (reference, root) in [
        (
            "docker.io/library/httpd:2.4.38-alpine",
            "/usr/local/apache2/htdocs",
        ),
        (
            "docker.io/library/httpd:2.4.39-alpine",
            "/usr/local/apache2/htdocs",
        ),
        (
            "docker.io/library/nginx:1.14-alpine",
            "/usr/share/nginx/html",
        ),
        (
            "docker.io/library/nginx:1.15-alpine",
            "/usr/share/nginx/html",
        ),
    ] {
        let mut spec = ImageSpec::new(reference);
        let err = image_error(reference);
        spec.file(
            &format!("{root}/index.html"),
            b"<html><body><h1>It works!</h1></body></html>\n".to_vec(),
            0o644,
        )
        .map_err(&err)?;
        busybox_base(&mut spec)?;
        spec.cmd = ["httpd", "-f", "-p", "80", "-h", root]
            .map(str::to_owned)
            .to_vec();
        out.push(spec);
    }

    // nautilus and kitten: agnhost's test web server serving their pages from /.
    for name in ["nautilus", "kitten"] {
        let reference = format!("gcr.io/kubernetes-e2e-test-images/{name}:1.0");
        let mut spec = ImageSpec::new(&reference);
        add_program(&mut spec, suite, &suite.bin("agnhost"), "/agnhost")?;
        let html = suite.share(name);
        let entries = std::fs::read_dir(&html).map_err(|e| format!("{}: {e}", html.display()))?;
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            add_file(&mut spec, suite, &e.path(), &format!("/{file}"))?;
        }
        spec.entrypoint = vec!["/agnhost".into()];
        spec.cmd = vec!["test-webserver".into()];
        out.push(spec);
    }

    let mut nnp = ImageSpec::new("gcr.io/kubernetes-e2e-test-images/nonewprivs:1.0");
    // Set-user-ID root, as upstream: the test sees whether no_new_privs stops it.
    let data = suite.read(&suite.bin("nonewprivs"))?;
    nnp.file("/usr/local/bin/nnp", data, 0o4755)
        .map_err(image_error("nonewprivs"))?;
    busybox_base(&mut nnp)?;
    nnp.cmd = vec!["nnp".into()];
    out.push(nnp);

    let mut sample = ImageSpec::new("gcr.io/kubernetes-e2e-test-images/sample-apiserver:1.17");
    add_program(
        &mut sample,
        suite,
        &suite.bin("sample-apiserver"),
        "/kube-sample-apiserver",
    )?;
    sample.entrypoint = vec!["/kube-sample-apiserver".into()];
    out.push(sample);

    // The distribution's etcd is linked dynamically: it comes with its libraries.
    let mut etcd = ImageSpec::new("k8s.gcr.io/etcd:3.4.13-0");
    for program in ["etcd", "etcdctl"] {
        let host = assets.join(program);
        etcd.program_with_libraries_at(
            &host.display().to_string(),
            &format!("/usr/local/bin/{program}"),
        )
        .map_err(|e| format!("{}: {e}", host.display()))?;
    }
    busybox_base(&mut etcd)?;
    out.push(etcd);

    let mut p = ImageSpec::new("k8s.gcr.io/pause:3.2");
    add_program(&mut p, suite, pause, "/pause")?;
    p.entrypoint = vec!["/pause".into()];
    out.push(p);

    Ok(out)
}

/// The local machines' containerd keeps the loaded test images on this computer's disk. Their
/// kubelets collect unused images only when it is full and evict pods below 1 GiB free (the
/// local platform's kubelet settings); the images and the tests' pods need a few GiB more.
/// Refuse to start below `MIN_FREE` rather than fail in the middle of a run.
pub fn check_disk(path: &Path) -> Result<(), String> {
    const MIN_FREE: u64 = 6 << 30;
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(avail) = text
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
    else {
        return Err(format!("df {}: {text}", path.display()));
    };
    if avail < MIN_FREE {
        return Err(format!(
            "{} has {:.1} GiB free; the test images and pods need at least {} GiB: free some \
             space first",
            path.display(),
            avail as f64 / f64::from(1u32 << 30),
            MIN_FREE >> 30
        ));
    }
    Ok(())
}

/// Builds the images and imports them into the containerd of each of `hosts` of the local
/// cluster `cluster` (the tests' pods then run them without a registry).
pub fn load_images(
    suite: &Suite,
    cluster: &str,
    hosts: &[&str],
    assets_bin: &Path,
    pause: &Path,
) -> Result<(), String> {
    check_disk(Path::new(crate::MACHINES))?;
    for (i, spec) in images(suite, assets_bin, pause)?.iter().enumerate() {
        let built = strata_images::build(spec).map_err(|e| format!("{}: {e}", spec.reference))?;
        eprintln!(
            "conformance: loading {} ({} MB) on {}",
            spec.reference,
            built.archive.len() / 1_000_000,
            hosts.join(", ")
        );
        crate::import_image(cluster, hosts, &format!("conformance-{i}"), &built.archive);
    }
    Ok(())
}

/// One test's result in a JUnit report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped,
}

/// What the runs' JUnit reports say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub passed: Vec<String>,
    /// Test name and the first line of its failure.
    pub failed: Vec<(String, String)>,
}

impl Summary {
    /// Adds the test cases of one JUnit report (ginkgo's reporter writes one per node).
    pub fn add_report(&mut self, xml: &str) -> Result<(), String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("JUnit report: {e}"))?;
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let name = case.attribute("name").unwrap_or_default().to_owned();
            let child = |tag: &str| case.children().find(|c| c.has_tag_name(tag));
            let outcome = if let Some(f) = child("failure").or_else(|| child("error")) {
                let text = f
                    .attribute("message")
                    .filter(|m| !m.trim().is_empty())
                    .or_else(|| f.text())
                    .unwrap_or_default();
                Outcome::Failed(reason(text))
            } else if child("skipped").is_some() {
                Outcome::Skipped
            } else {
                Outcome::Passed
            };
            match outcome {
                Outcome::Passed => self.passed.push(name),
                Outcome::Failed(why) => self.failed.push((name, why)),
                // Every ginkgo node reports the tests it did not run as skipped.
                Outcome::Skipped => {}
            }
        }
        Ok(())
    }

    /// Every `junit*.xml` below `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let mut s = Self::default();
        let mut files = Vec::new();
        collect_reports(dir, &mut files)?;
        files.sort();
        for f in files {
            let xml = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            s.add_report(&xml)
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        Ok(s)
    }

    /// `N passed, M failed` and a line per failure.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} passed, {} failed\n",
            self.passed.len(),
            self.failed.len()
        );
        for (name, why) in &self.failed {
            text.push_str(&format!("FAILED {name}\n    {why}\n"));
        }
        text
    }
}

/// The first line of a failure that is not the test's source location.
fn reason(text: &str) -> String {
    let is_location = |l: &str| {
        l.starts_with('/')
            && l.rsplit_once(':')
                .is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
    };
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !is_location(l))
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn collect_reports(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect_reports(&path, out)?;
        } else if path.file_name().is_some_and(|n| {
            n.to_string_lossy().starts_with("junit") && path.extension().is_some_and(|x| x == "xml")
        }) {
            out.push(path);
        }
    }
    Ok(())
}

/// Which tests a run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Focus {
    /// Ginkgo's -focus, a regular expression on the tests' names.
    Regex(String),
    /// Exactly these tests, by name.
    Names(Vec<String>),
}

impl Focus {
    /// A list of names, one per line (empty lines and lines starting with # left out).
    pub fn names(list: &str) -> Self {
        Self::Names(
            list.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The names of the tests the run takes: a list as it is, a regular expression as
    /// the suite resolves it (a dry run with the run's -skip).
    pub fn resolve(&self, suite: &Suite, run: &Run) -> Result<Vec<String>, String> {
        match self {
            Self::Names(names) => Ok(names.clone()),
            Self::Regex(focus) => {
                let dir = run.results.join("dry-run");
                reset_dir(&dir)?;
                let mut cmd = Command::new(suite.bin("e2e.test"));
                cmd.arg("--ginkgo.dryRun")
                    .arg("--ginkgo.noColor")
                    .arg(format!("--ginkgo.focus={focus}"));
                if !run.skip.is_empty() {
                    cmd.arg(format!("--ginkgo.skip={}", run.skip));
                }
                let out = cmd
                    .arg("--provider=skeleton")
                    .arg(format!("--kubeconfig={}", run.kubeconfig.display()))
                    .arg(format!("--report-dir={}", dir.display()))
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("{}: {e}", suite.bin("e2e.test").display()))?;
                // A dry run reports the tests it would run as passed, the others as skipped.
                let listed = Summary::from_dir(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                let names = listed?.passed;
                if !out.status.success() || names.is_empty() {
                    return Err(format!(
                        "-focus {focus:?} selects no test ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .rev()
                            .take(5)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
                Ok(names)
            }
        }
    }
}

/// The -focus of the parallel part and of the serial one (None: nothing to run there).
pub fn partition(names: &[String]) -> [Option<String>; 2] {
    let (serial, parallel): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|n| n.contains("[Serial]") || n.contains("[Disruptive]"));
    [exact(&parallel), exact(&serial)]
}

fn reset_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// A regular expression matching exactly the tests named (ginkgo matches it against the
/// name, which may be preceded by a space).
fn exact(names: &[&String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let escaped: Vec<String> = names
        .iter()
        .map(|l| {
            let mut e = String::new();
            for c in l.chars() {
                if "\\.+*?()|[]{}^$".contains(c) {
                    e.push('\\');
                }
                e.push(c);
            }
            e
        })
        .collect();
    Some(format!("(?:^| )(?:{})$", escaped.join("|")))
}

/// One run of the suite.
#[derive(Debug, Clone)]
pub struct Run {
    pub kubeconfig: PathBuf,
    /// Receives parallel/ and serial/ (JUnit reports and e2e.log each) and summary.txt.
    pub results: PathBuf,
    pub focus: Focus,
    pub skip: String,
    /// Ginkgo nodes of the parallel part.
    pub nodes: u32,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            kubeconfig: PathBuf::new(),
            results: PathBuf::from("conformance-results"),
            focus: Focus::Regex(r"\[Conformance\]".into()),
            skip: String::new(),
            nodes: 4,
        }
    }
}

/// Runs the tests of `run` that may run in parallel on `nodes` ginkgo nodes, then the
/// [Serial] and [Disruptive] ones on one; returns the summary of both (also written to
/// results/summary.txt) and the time taken.
pub fn run(suite: &Suite, run: &Run) -> Result<(Summary, Duration), String> {
    let start = Instant::now();
    std::fs::create_dir_all(&run.results).map_err(|e| format!("{}: {e}", run.results.display()))?;
    let names = run.focus.resolve(suite, run)?;
    let [parallel, serial] = partition(&names);
    let parts = [("parallel", run.nodes, parallel), ("serial", 1, serial)];
    for (name, nodes, focus) in parts {
        let dir = run.results.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if let Some(focus) = focus {
            reset_dir(&dir)?;
            ginkgo(suite, run, &dir, nodes, &focus)?;
        }
    }
    let summary = Summary::from_dir(&run.results)?;
    let file = run.results.join("summary.txt");
    std::fs::write(&file, summary.render()).map_err(|e| format!("{}: {e}", file.display()))?;
    // A ginkgo node that died takes its tests' reports with it: every test must be there.
    let reported: std::collections::HashSet<&str> = summary
        .passed
        .iter()
        .map(String::as_str)
        .chain(summary.failed.iter().map(|(n, _)| n.as_str()))
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !reported.contains(n.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} test(s) ran without a report (a ginkgo node died? see the e2e.log files in {}): {missing:?}\n{}",
            missing.len(),
            run.results.display(),
            summary.render()
        ));
    }
    Ok((summary, start.elapsed()))
}

fn ginkgo(suite: &Suite, run: &Run, dir: &Path, nodes: u32, focus: &str) -> Result<(), String> {
    let log_path = dir.join("e2e.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err_log = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(suite.bin("ginkgo"));
    cmd.arg(format!("-nodes={nodes}"))
        .arg("-noColor")
        .arg(format!("-focus={focus}"));
    if !run.skip.is_empty() {
        cmd.arg(format!("-skip={}", run.skip));
    }
    cmd.arg(suite.bin("e2e.test"))
        .arg("--")
        .arg("--provider=skeleton")
        .arg(format!("--kubeconfig={}", run.kubeconfig.display()))
        .arg(format!("--kubectl-path={}", suite.bin("kubectl").display()))
        .arg(format!("--report-dir={}", dir.display()))
        .arg(format!("--non-blocking-taints={NON_BLOCKING_TAINTS}"))
        .arg("--disable-log-dump")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // The suite's kubectl is the one its kubectl tests run (a newer one fails them).
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env(
        "PATH",
        format!("{}:{path}", suite.dir.join("bin").display()),
    );
    eprintln!(
        "conformance: {} part ({nodes} node(s)), log in {}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        log_path.display()
    );
    // ginkgo exits non-zero when a test fails; the reports say which, and a run that made
    // no report at all is an error of its own.
    let status = cmd
        .status()
        .map_err(|e| format!("{}: {e}", suite.bin("ginkgo").display()))?;
    let mut reports = Vec::new();
    collect_reports(dir, &mut reports)?;
    let failures = Summary::from_dir(dir).map(|s| s.failed.len()).unwrap_or(0);
    if reports.is_empty() || (!status.success() && failures == 0) {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "ginkgo failed ({status}) in {} with {} JUnit report(s) and no failed test in them; \
             the end of its log:\n{}",
            dir.display(),
            reports.len(),
            tail.join("\n")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_reports_of_ginkgo_count_passes_failures_and_skips() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="Kubernetes e2e suite" tests="3" failures="1" errors="0" time="12.5">
  <testcase name="[sig-network] DNS should provide DNS for services  [Conformance]" classname="Kubernetes e2e suite" time="40.1"></testcase>
  <testcase name="[sig-cli] Kubectl client Kubectl version should check is all data is printed  [Conformance]" classname="Kubernetes e2e suite" time="1.2">
      <failure type="Failure">/workspace/test/e2e/kubectl/kubectl.go:1507&#xA;Expected &#34;v1.20.2&#34;</failure>
  </testcase>
  <testcase name="[sig-storage] Something [Slow]" classname="Kubernetes e2e suite" time="0">
      <skipped></skipped>
  </testcase>
</testsuite>"#;
        let mut s = Summary::default();
        s.add_report(xml).expect("parse");
        assert_eq!(
            s.passed,
            ["[sig-network] DNS should provide DNS for services  [Conformance]"]
        );
        assert_eq!(s.failed.len(), 1);
        assert_eq!(
            s.failed[0].1, "Expected \"v1.20.2\"",
            "the failure's first line after its location"
        );
        assert!(s.render().starts_with("1 passed, 1 failed\n"));
        assert!(
            s.add_report("<testsuite>").is_err(),
            "a broken report is an error"
        );
    }

    #[test]
    fn a_focus_list_matches_exactly_its_names_and_serial_ones_run_alone() {
        let focus = Focus::names(
            "# DNS\n[sig-network] DNS should provide DNS for the cluster  [Conformance]\n\n\
             [sig-apps] Job should run a job to completion (a+b)?\n\
             [sig-apps] Daemon set [Serial] should rollback  [Conformance]\n",
        );
        let Focus::Names(names) = focus else {
            panic!("a list")
        };
        let [parallel, serial] = partition(&names);
        assert_eq!(
            parallel.as_deref(),
            Some(
                r"(?:^| )(?:\[sig-network\] DNS should provide DNS for the cluster  \[Conformance\]|\[sig-apps\] Job should run a job to completion \(a\+b\)\?)$"
            )
        );
        assert_eq!(
            serial.as_deref(),
            Some(
                r"(?:^| )(?:\[sig-apps\] Daemon set \[Serial\] should rollback  \[Conformance\])$"
            )
        );
        let [_, none] = partition(&["[sig-node] Pods should run".to_owned()]);
        assert_eq!(none, None, "no serial part without serial tests");
    }

    /// A suite directory with stand-in files where the build puts the real ones.
    fn fake_suite(dir: &Path) -> Suite {
        for f in [
            "bin/agnhost",
            "bin/nonewprivs",
            "bin/sample-apiserver",
            "bin/e2e.test",
        ] {
            std::fs::create_dir_all(dir.join(f).parent().expect("parent")).expect("mkdir");
            std::fs::write(dir.join(f), f).expect("write");
        }
        for f in [
            "share/localhost.crt",
            "share/localhost.key",
            "share/nautilus/nautilus.jpg",
            "share/nautilus/data.json",
            "share/kitten/kitten.jpg",
            "share/kitten/data.json",
            "assets/etcdctl",
            "pause",
        ] {
            std::fs::create_dir_all(dir.join(f).parent().expect("parent")).expect("mkdir");
            std::fs::write(dir.join(f), f).expect("write");
        }
        // A dynamically linked program, as the distribution's etcd is.
        std::fs::copy("/usr/bin/dash", dir.join("assets/etcd")).expect("copy");
        Suite {
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn the_images_carry_what_the_tests_run_under_the_upstream_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let suite = fake_suite(dir.path());
        let images = images(
            &suite,
            &dir.path().join("assets"),
            &dir.path().join("pause"),
        )
        .expect("images");
        let find = |r: &str| {
            images
                .iter()
                .find(|i| i.reference == r)
                .unwrap_or_else(|| panic!("{r}"))
        };
        let agnhost = find("k8s.gcr.io/e2e-test-images/agnhost:2.21");
        assert_eq!(agnhost.entrypoint, ["/agnhost"]);
        assert_eq!(agnhost.cmd, ["pause"]);
        let link = |i: &ImageSpec, p: &str| match i.entries.get(p) {
            Some(strata_images::Content::Symlink { target }) => target.clone(),
            other => panic!("{}: {p}: {other:?}", i.reference),
        };
        assert_eq!(link(agnhost, "bin/sh"), "/usr/bin/dash", "a real shell");
        assert_eq!(
            link(agnhost, "usr/bin/nc"),
            "/usr/bin/nc.openbsd",
            "nc with -u"
        );
        assert_eq!(link(agnhost, "agnhost-2"), "/agnhost");
        for f in [
            "localhost.crt",
            "localhost.key",
            "usr/bin/dig",
            "usr/bin/getent",
            "usr/bin/curl",
        ] {
            assert!(agnhost.entries.contains_key(f), "agnhost has {f}");
        }
        let busybox = find("docker.io/library/busybox:1.29");
        assert_eq!(link(busybox, "bin/sh"), "/bin/busybox");
        assert_eq!(busybox.cmd, ["sh"]);
        let httpd = find("docker.io/library/httpd:2.4.38-alpine");
        assert!(
            httpd
                .entries
                .contains_key("usr/local/apache2/htdocs/index.html")
        );
        assert_eq!(link(httpd, "bin/mv"), "/bin/busybox");
        assert!(
            find("gcr.io/kubernetes-e2e-test-images/kitten:1.0")
                .entries
                .contains_key("data.json")
        );
        match find("gcr.io/kubernetes-e2e-test-images/nonewprivs:1.0")
            .entries
            .get("usr/local/bin/nnp")
        {
            Some(strata_images::Content::File { mode, .. }) => assert_eq!(mode & 0o4000, 0o4000),
            other => panic!("nnp: {other:?}"),
        }
        let etcd = find("k8s.gcr.io/etcd:3.4.13-0");
        assert!(etcd.entries.contains_key("usr/local/bin/etcd"));
        assert!(
            etcd.entries.contains_key("lib64/ld-linux-x86-64.so.2"),
            "etcd's loader and libraries"
        );
        assert_eq!(find("k8s.gcr.io/pause:3.2").entrypoint, ["/pause"]);
    }
}
