//! A subset of Kubernetes' conformance suite, at least one test of each area (the list:
//! e2e/conformance/ci-focus.txt), on a local cluster of one control-plane host and two
//! workers installed by `strata apply`, with the test images loaded on every machine. The
//! whole suite is `bash e2e/conformance.sh` (see the README's conformance section).

use std::path::{Path, PathBuf};

use strata_e2e::conformance::{self, Focus, Run, Suite};
use strata_e2e::{CACHE, ok, require_root, strata};

const FOCUS: &str = include_str!("../conformance/ci-focus.txt");
const CLUSTER: &str = include_str!("../conformance/cluster.yaml");

/// Removes the cluster's machines when dropped (also when the test panics).
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = strata(self.0, &["local", "down", "--yes"]);
    }
}

#[test]
fn the_ci_subset_of_the_conformance_suite_passes() {
    require_root();
    let suite = Suite::locate().unwrap_or_else(|e| panic!("{e}"));
    let pause = PathBuf::from(
        std::env::var_os("STRATA_PAUSE_BIN").expect("STRATA_PAUSE_BIN (set by .ci/e2e)"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);
    let _down = Down(dir.path());
    ok(&strata(dir.path(), &["local", "up"]), "local up");
    ok(&strata(dir.path(), &["apply"]), "apply");
    conformance::load_images(
        &suite,
        "conformance",
        &["cp1", "w1", "w2"],
        Path::new(&format!("{CACHE}/assets/1.20.2/bin")),
        &pause,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let focus = Focus::names(FOCUS);
    let Focus::Names(names) = &focus else {
        unreachable!()
    };
    let expected = names.len();
    let run = Run {
        kubeconfig: dir.path().join("conformance/auth/kubeconfig"),
        // Kept for a look after a failure (replaced by the next run).
        results: PathBuf::from("/var/tmp/strata-conformance-subset"),
        focus,
        ..Run::default()
    };
    let (summary, took) = conformance::run(&suite, &run).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "conformance subset: {}in {:.1} min",
        summary.render(),
        took.as_secs_f64() / 60.0
    );
    assert!(summary.failed.is_empty(), "{}", summary.render());
    assert_eq!(
        summary.passed.len(),
        expected,
        "every test of the list ran (a name that matches nothing is a stale list)"
    );
}
