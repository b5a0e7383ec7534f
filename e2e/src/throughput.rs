//! iperf3 throughput of the overlay against the underlay it rides: alternating rounds (what
//! else the machine does weighs on both alike), every round printed, medians and their ratio.

use std::process::Command;

/// Received bits per second in an `iperf3 -J` report.
pub fn iperf_bps(report: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(report).unwrap_or_else(|e| panic!("iperf3 report: {e}: {report}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no bits_per_second: {report}"))
}

/// iperf3 for `seconds` from network namespace `client` to a one-shot server started in
/// namespace `server`, reached at address `to`: received bits per second.
pub fn between_namespaces(client: &str, server: &str, to: &str, seconds: u32) -> f64 {
    let netns = |ns: &str, args: &[&str], what: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} iperf3: {e}"));
        crate::ok(&out, &format!("{what} in {ns}"))
    };
    netns(server, &["-s", "-1", "-D", "-p", "5301"], "iperf3 server");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let seconds = seconds.to_string();
    iperf_bps(&netns(
        client,
        &["-c", to, "-p", "5301", "-t", &seconds, "-J"],
        "iperf3 client",
    ))
}

/// The TCP congestion control of network namespace `netns`: it decides whether a single
/// stream is limited by pacing (bbr) or by the CPU (cubic), so it is printed with the figures.
pub fn congestion_control(netns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg("/proc/sys/net/ipv4/tcp_congestion_control")
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `rounds` alternating measurements of `overlay` and `underlay` (bits per second each);
/// prints the rounds, the medians and their ratio under `label`, and returns the ratio.
pub fn compare(
    label: &str,
    rounds: usize,
    mut overlay: impl FnMut() -> f64,
    mut underlay: impl FnMut() -> f64,
) -> f64 {
    let (mut over, mut under) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        over.push(overlay());
        under.push(underlay());
    }
    let gbits = |v: &[f64]| {
        v.iter()
            .map(|b| format!("{:.2}", b / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{label}: rounds (Gbit/s): overlay {}, underlay {}",
        gbits(&over),
        gbits(&under)
    );
    let (o, u) = (median(&mut over), median(&mut under));
    let ratio = o / u;
    println!(
        "{label}: overlay {:.2} Gbit/s, underlay {:.2} Gbit/s (medians of {rounds}), ratio {:.0}%",
        o / 1e9,
        u / 1e9,
        100.0 * ratio
    );
    ratio
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn a_report_gives_the_received_rate() {
        let report = r#"{"end": {"sum_received": {"bits_per_second": 9.5e9}}}"#;
        assert_eq!(iperf_bps(report), 9.5e9);
    }
}
