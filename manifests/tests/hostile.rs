//! Hostile Cluster files: each class of input that once panicked, exhausted memory or was
//! accepted although it cannot work is refused with a located error (exit 1 for `strata`),
//! and generated bombs (aliases, long keys, deep nesting, huge scalars) stay within bounded
//! memory: the test process's peak resident set is checked after each case.

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use strata_manifests::validate::MAX_FILE_BYTES;
use strata_manifests::{Context, Report, load_str};

/// The peak resident set any input may cost (the bound), for this whole process.
const PEAK_LIMIT_KB: u64 = 200 * 1024;

fn ctx() -> Context {
    Context {
        file: "hostile.yaml".into(),
        base_dir: std::env::temp_dir(),
        home: None,
    }
}

/// This process's peak resident set (VmHWM), in kB.
fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn refused(text: &str) -> Report {
    let report = match load_str(text, &ctx()) {
        Ok(_) => panic!("accepted: {}", &text[..text.len().min(300)]),
        Err(r) => r,
    };
    assert!(report.has_errors());
    let _ = report.to_string();
    report
}

/// Loads `text` and checks the peak resident set it cost. One measurement at a time (the
/// tests of this file run on parallel threads of one process), each from a reset peak.
fn bounded(text: &str) {
    let _one_at_a_time = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    reset_peak();
    if let Err(r) = load_str(text, &ctx()) {
        let _ = r.to_string();
    }
    let peak = peak_kb();
    assert!(peak < PEAK_LIMIT_KB, "peak resident set {peak} kB");
}

static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Resets this process's VmHWM to its current resident set (Linux 4.0+, own process).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
}

/// A valid local cluster with `spec` lines replaced or added.
fn cluster(extra_spec: &str, hosts: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: h}}\nspec:\n  \
         platform: {{local: {{}}}}\n  hosts:\n{hosts}{extra_spec}"
    )
}

const HOSTS: &str =
    "  - {name: cp1, roles: [etcd, control-plane]}\n  - {name: w1, roles: [worker]}\n";

fn message(r: &Report) -> String {
    r.errors()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_file_over_the_cap_is_refused_naming_the_limit() {
    let text = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
    let r = refused(&text);
    assert!(
        message(&r).contains("at most 1048576 bytes"),
        "{}",
        message(&r)
    );
    // Read from disk: only the cap (plus one byte) is read.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &text).expect("write");
    let r = strata_manifests::load_file(&path).expect_err("refused");
    assert!(message(&r).contains("at most 1048576 bytes"));
}

#[test]
fn a_long_scalar_aliased_many_times_is_bounded_by_bytes() {
    let mut text = format!("big: &b \"{}\"\nlist:\n", "y".repeat(200_000));
    for _ in 0..100 {
        text.push_str("- *b\n");
    }
    let r = refused(&text);
    assert!(message(&r).contains("bytes of text"), "{}", message(&r));
}

#[test]
fn long_keys_are_bounded() {
    // One long key over many small children: every child's path repeats it.
    // (Explicit keys: YAML limits implicit ones to 1024 characters.)
    let mut text = format!("? {}\n:\n", "k".repeat(20_000));
    for i in 0..40_000 {
        text.push_str(&format!("  c{i}: 1\n"));
    }
    let r = refused(&text);
    assert!(message(&r).contains("deep"), "{}", message(&r));
    bounded(&text);
}

#[test]
fn certificates_cannot_end_after_year_9999() {
    let r = refused(&cluster(
        "  pki: {caValidity: 90000000h, certValidity: 8760h}\n",
        HOSTS,
    ));
    assert!(
        message(&r).contains("spec.pki.caValidity"),
        "{}",
        message(&r)
    );
    assert!(message(&r).contains("9999"));
}

#[test]
fn service_ranges_must_hold_the_api_server_and_dns_addresses() {
    let r = refused(&cluster("  network: {serviceCIDR: 10.96.0.0/32}\n", HOSTS));
    assert!(message(&r).contains("too small"), "{}", message(&r));
    let ok = load_str(
        &cluster("  network: {serviceCIDR: 10.96.0.0/28}\n", HOSTS),
        &ctx(),
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|r| r.to_string()));
}

#[test]
fn pod_range_size_uses_its_own_family_and_ipv6_pods_need_another_cni() {
    // An IPv6 pod range: its node mask is /64, whatever the service range's family.
    let r = refused(&cluster("  network: {podCIDR: \"fd00::/56\"}\n", HOSTS));
    let m = message(&r);
    assert!(m.contains("IPv4 pods only"), "{m}");
    assert!(!m.contains("too small"), "{m}");
    let r = refused(&cluster("  network: {podCIDR: \"fd00::/64\"}\n", HOSTS));
    assert!(
        message(&r).contains("every node receives a /64"),
        "{}",
        message(&r)
    );
}

#[test]
fn host_addresses_must_be_one_hosts() {
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
        let hosts = format!(
            "  - {{name: cp1, address: \"{bad}\", roles: [etcd, control-plane, worker]}}\n"
        );
        let r = refused(&cluster("", &hosts));
        assert!(
            message(&r).contains("not the address of one host"),
            "{bad}: {}",
            message(&r)
        );
    }
}

#[test]
fn ssh_ports_and_users_are_checked() {
    let r = refused(&cluster("  ssh: {port: 0, user: \"bad user\"}\n", HOSTS));
    let m = message(&r);
    assert!(m.contains("spec.ssh.port") && m.contains("port 0"), "{m}");
    assert!(
        m.contains("spec.ssh.user") && m.contains("not a user name"),
        "{m}"
    );
    let hosts = "  - {name: cp1, roles: [etcd, control-plane, worker], ssh: {port: 0, user: \"-oProxyCommand=x\"}}\n";
    let m = message(&refused(&cluster("", hosts)));
    assert!(m.contains("spec.hosts[0].ssh.port"), "{m}");
    assert!(m.contains("spec.hosts[0].ssh.user"), "{m}");
}

#[test]
fn local_ranges_must_not_overlap_the_machines_addresses() {
    let r = refused(&cluster("  network: {podCIDR: 198.18.0.0/16}\n", HOSTS));
    assert!(
        message(&r).contains("local machines get their addresses"),
        "{}",
        message(&r)
    );
}

#[test]
fn host_names_of_the_api_server_are_refused() {
    for name in ["kubernetes", "localhost"] {
        let hosts = format!("  - {{name: {name}, roles: [etcd, control-plane, worker]}}\n");
        let r = refused(&cluster("", &hosts));
        assert!(
            message(&r).contains("the API server answers to"),
            "{name}: {}",
            message(&r)
        );
    }
}

#[test]
fn control_characters_are_never_echoed_raw() {
    let hosts = "  - {name: \"cp\\e[2J1\", roles: [etcd, control-plane, worker]}\n";
    let r = refused(&cluster("", hosts));
    let shown = r.to_string();
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "{shown:?}"
    );
    assert!(shown.contains("\\u{1b}"), "{shown}");
}

/// Runs generated inputs through [`bounded`]. A runner of its own, not the `proptest!` macro:
/// the macro lets `PROPTEST_CASES` override the count (CI raises it for the cheap property
/// tests), and each case here is up to a megabyte of YAML. Few shrink steps: a failing case
/// is already small enough to read from its parameters.
fn generated<S>(strategy: S, text: impl Fn(S::Value) -> String)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |value| {
        bounded(&text(value));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn alias_bombs() {
    generated((1usize..16, 2usize..12), |(depth, fanout)| {
        let mut text = format!("a0: &a0 [{}]\n", vec!["x"; fanout].join(", "));
        for i in 1..depth {
            let p = i - 1;
            let refs = vec![format!("*a{p}"); fanout].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        text
    });
}

#[test]
fn long_scalar_aliases() {
    generated((1usize..300_000, 1usize..400), |(len, count)| {
        let mut text = format!("s: &s \"{}\"\nl:\n", "z".repeat(len));
        for _ in 0..count {
            text.push_str("- *s\n");
        }
        text
    });
}

#[test]
fn long_key_nests() {
    generated((1usize..40_000, 1usize..80), |(key_len, depth)| {
        let mut text = String::new();
        for d in 0..depth {
            let indent = " ".repeat(d * 2);
            text.push_str(&format!(
                "{indent}? {}{d}\n{indent}:\n",
                "k".repeat(key_len)
            ));
            if text.len() > MAX_FILE_BYTES * 2 {
                break;
            }
        }
        text.push_str(&" ".repeat(depth * 2));
        text.push_str("leaf\n");
        text
    });
}

#[test]
fn deep_flow_nesting() {
    generated(1usize..20_000, |depth| {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    });
}

#[test]
fn huge_scalars() {
    generated(1usize..(MAX_FILE_BYTES + 4096), |len| {
        format!("apiVersion: \"{}\"\n", "v".repeat(len))
    });
}
