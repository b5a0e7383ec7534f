//! Two local clusters at once, each on its own range (`spec.platform.local.range`): both
//! installed, both nodes Ready and both API servers answering their own admin kubeconfig; a
//! third whose range overlaps a running one is refused before any machine is made, naming
//! it and a free range; `local down` of each leaves no address, bridge or namespace behind.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use strata_e2e::{kubectl, ok, require_root, strata};

fn cluster(name: &str, range: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  platform: {{local: {{range: {range}}}}}
  hosts:
  - {{name: {name}-1, roles: [etcd, control-plane, worker]}}
"
    )
}

/// A directory with one Cluster file, and its machines removed when dropped.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(name: &str, range: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cluster.yaml"), cluster(name, range)).expect("write");
        let _ = strata(dir.path(), &["local", "down", "--yes"]);
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = strata(self.dir.path(), &["local", "down", "--yes"]);
    }
}

/// This computer's IPv4 addresses in 198.18.0.0/15, as `ip -o -4 addr` shows them.
fn local_range_addresses() -> String {
    let o = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(" inet 198.18.") || l.contains(" inet 198.19."))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn two_local_clusters_run_at_once_on_their_own_ranges() {
    require_root();
    let a = Dir::new("e2e-two-a", "198.18.40.0/24");
    let b = Dir::new("e2e-two-b", "198.18.41.0/24");
    for (d, range) in [(&a, "198.18.40.0/24"), (&b, "198.18.41.0/24")] {
        ok(&strata(d.path(), &["local", "up"]), "local up");
        let list = ok(&strata(d.path(), &["local", "list"]), "local list");
        let router = range.replace(".0/24", ".1");
        assert!(
            list.contains(&format!("range {range}, this computer {router} on bridge")),
            "{list}"
        );
        assert!(list.contains(&range.replace(".0/24", ".2")), "{list}");
    }
    // A third whose range overlaps a's is refused, naming a's machine and a free range.
    let c = Dir::new("e2e-two-c", "198.18.40.128/25");
    let o = strata(c.path(), &["local", "up"]);
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "an overlapping range was taken: {said}"
    );
    assert!(
        said.contains("the local range 198.18.40.128/25 overlaps 198.18.40.0/24")
            && said.contains("strata-e2e-two-a-e2e-two-a-1")
            && said.contains("e.g. 198.18."),
        "{said}"
    );
    let list = ok(&strata(c.path(), &["local", "list"]), "local list");
    assert!(list.contains("absent"), "{list}");

    for d in [&a, &b] {
        ok(&strata(d.path(), &["apply"]), "apply");
    }
    for (d, name, address) in [
        (&a, "e2e-two-a", "198.18.40.2"),
        (&b, "e2e-two-b", "198.18.41.2"),
    ] {
        let kc = d.path().join(format!("{name}/auth/kubeconfig"));
        let nodes = ok(
            &kubectl(
                &kc,
                &[
                    "get",
                    "nodes",
                    "--no-headers",
                    "-o",
                    "custom-columns=NAME:.metadata.name,IP:.status.addresses[0].address,READY:.status.conditions[?(@.type==\"Ready\")].status",
                ],
            ),
            "get nodes",
        );
        let rows: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [vec![format!("{name}-1").as_str(), address, "True"]],
            "{name}: {nodes}"
        );
        let server = ok(
            &kubectl(
                &kc,
                &[
                    "config",
                    "view",
                    "-o",
                    "jsonpath={.clusters[0].cluster.server}",
                ],
            ),
            "server",
        );
        assert_eq!(server, format!("https://{address}:6443"));
    }

    for d in [&a, &b] {
        let t = Instant::now();
        ok(&strata(d.path(), &["local", "down", "--yes"]), "local down");
        println!(
            "local down of one machine: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    assert_eq!(
        local_range_addresses(),
        "",
        "addresses of the local range left"
    );
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(!listed.contains("e2e-two-"), "{listed}");
}
