//! A subset of Kubernetes' conformance suite, at least one test of each area (the list:
//! e2e/conformance/ci-focus.txt), on a local cluster of one control-plane host and two
//! workers installed by `strata apply`, with the test images loaded on every machine. The
//! whole suite is `bash e2e/conformance.sh` (see the README's conformance section).

use std::path::{Path, PathBuf};

use strata_e2e::conformance::{self, Focus, Run, Suite};
use strata_e2e::{CACHE, ok, require_root, strata};

const FOCUS: &str = include_str!("../conformance/ci-focus.txt");
const CLUSTER: &str = include_str!("../conformance/cluster.yaml");
/// Not `conformance`: a cluster kept by `strata-conformance --keep` is the user's.
const NAME: &str = "e2e-conformance";

#[test]
fn the_ci_subset_of_the_conformance_suite_passes() {
    require_root();
    let suite = Suite::locate().unwrap_or_else(|e| panic!("{e}"));
    let pause = PathBuf::from(
        std::env::var_os("STRATA_PAUSE_BIN").expect("STRATA_PAUSE_BIN (set by .ci/e2e)"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = CLUSTER.replace("{name: conformance}", &format!("{{name: {NAME}}}"));
    assert_ne!(text, CLUSTER, "the cluster file names its cluster");
    std::fs::write(dir.path().join("cluster.yaml"), text).expect("write");
    let _ = strata(dir.path(), &["local", "down", "--yes"]);
    let _down = strata_e2e::LocalDown(dir.path());
    ok(&strata(dir.path(), &["local", "up"]), "local up");
    ok(&strata(dir.path(), &["apply"]), "apply");
    conformance::load_images(
        &suite,
        NAME,
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
        kubeconfig: dir.path().join(NAME).join("auth/kubeconfig"),
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

#[test]
fn a_focus_expression_is_resolved_by_the_suite_and_serial_tests_run_alone() {
    let suite = Suite::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    // A dry run reads no cluster: an empty kubeconfig will do.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .expect("write");
    let run = |focus: &str, skip: &str| Run {
        kubeconfig: kubeconfig.clone(),
        results: dir.path().join("results"),
        focus: Focus::Regex(focus.into()),
        skip: skip.into(),
        ..Run::default()
    };
    let r = run(
        r"SchedulerPredicates \[Serial\].*\[Conformance\]",
        "not matching",
    );
    let names = r.focus.resolve(&suite, &r).expect("resolve");
    assert_eq!(names.len(), 4, "5 such tests, one skipped: {names:#?}");
    let [parallel, serial] = conformance::partition(&names);
    assert_eq!(parallel, None, "[Serial] tests never run in parallel");
    assert!(serial.is_some());
    let none = run("no test is called like this", "");
    let err = none
        .focus
        .resolve(&suite, &none)
        .expect_err("nothing selected");
    assert!(err.contains("selects no test"), "{err}");
}
