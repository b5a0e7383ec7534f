//! Host facts, gathered once per apply by one script per host (architecture, kernel, init
//! system, filesystems, cgroups, disk, swap, clock, MTU, who listens on the ports Strata's
//! components need, foreign container runtimes), and preflight: a pure judgement of those
//! facts against what the host's components need.

use serde::{Deserialize, Serialize};
use strata_manifests::catalog;
use strata_manifests::versions::{self, Item};
use strata_manifests::{Cluster, Host};

/// What a host is, as far as installing Kubernetes on it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub arch: String,
    pub kernel: String,
    /// systemd runs as PID 1.
    pub systemd: bool,
    pub overlayfs: bool,
    /// `none`, `v1` or `v2` (unified hierarchy).
    pub cgroup: String,
    pub disk_free_kib: u64,
    /// Logical processors and total memory, as the kubelet counts them (0: unknown).
    pub cpus: u32,
    pub memory_kib: u64,
    /// Active swap areas.
    pub swaps: u32,
    /// The host's clock, Unix seconds.
    pub time: i64,
    /// The MTU of the interface of the default route.
    pub mtu: u32,
    /// Each address of the host with the MTU of its interface.
    pub address_mtus: Vec<(String, u32)>,
    /// The executables listening on the ports asked about: (port, executable or `unknown`).
    pub listeners: Vec<(u16, String)>,
    /// Container runtimes running that Strata did not install: (pid, executable).
    pub foreign_runtimes: Vec<(u32, String)>,
}

/// The script that prints a host's facts, one `KEY value` line each; `ports` are the TCP
/// ports whose listeners it names.
pub fn script(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("PORTS='{}'\n{FACTS}", ports.join(" "))
}

const FACTS: &str = r#"set -u
echo "ARCH $(uname -m)"
echo "KERNEL $(uname -r)"
[ -d /run/systemd/system ] && echo "SYSTEMD yes" || echo "SYSTEMD no"
grep -qw overlay /proc/filesystems && echo "OVERLAYFS yes" || echo "OVERLAYFS no"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo "CGROUP v2"
elif [ -d /sys/fs/cgroup ]; then echo "CGROUP v1"; else echo "CGROUP none"; fi
echo "DISK_FREE_KIB $(df -Pk / | awk 'NR==2{print $4}')"
echo "CPUS $(grep -c '^processor' /proc/cpuinfo)"
echo "MEMORY_KIB $(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
echo "SWAPS $(tail -n +2 /proc/swaps | wc -l)"
echo "TIME $(date +%s)"
# MTUs from the kernel's netlink answer (`ip`): a container's /sys may show another network
# namespace's interfaces. LINKS: "NAME MTU" lines.
LINKS=$(ip -o link show 2>/dev/null | awk '{ n = $2; sub(/:$/, "", n); sub(/@.*/, "", n)
  for (i = 3; i < NF; i++) if ($i == "mtu") { print n, $(i + 1); break } }')
export LINKS
dev=$(ip -o route show default 2>/dev/null | awk '{print $5; exit}')
echo "MTU $(echo "$LINKS" | awk -v d="${dev:-lo}" '$1 == d { m = $2 } END { print m ? m : 1500 }')"
ip -o addr show 2>/dev/null | awk 'BEGIN { n = split(ENVIRON["LINKS"], l, "\n")
    for (i = 1; i <= n; i++) { split(l[i], f, " "); mtu[f[1]] = f[2] } }
  { a = $4; sub(/\/.*/, "", a); d = $2; sub(/@.*/, "", d)
    print "ADDRESS_MTU", a, (d in mtu) ? mtu[d] : 1500 }'
# listener PORT: the executable listening on TCP PORT, if any (from /proc: no ss needed).
listener() {
  hex=$(printf ':%04X' "$1")
  for inode in $(awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    fd=$(find /proc/[0-9]*/fd -lname "socket:\[$inode\]" 2>/dev/null | head -n 1)
    [ -n "$fd" ] || { echo unknown; return; }
    pid=${fd#/proc/}; pid=${pid%%/*}
    readlink "/proc/$pid/exe" || echo "pid $pid"
    return
  done
}
for port in $PORTS; do
  exe=$(listener "$port")
  [ -z "$exe" ] || echo "LISTEN $port $exe"
done
# Another container runtime would fight over the CRI socket, cgroups and iptables.
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  case "$exe" in
    /opt/strata/bin/*) ;;
    */containerd|*/dockerd|*/crio|*/podman) echo "RUNTIME ${p#/proc/} $exe" ;;
  esac
done
"#;

impl HostFacts {
    /// The MTU of the interface holding `address` (the default route's when the host has no
    /// such address).
    pub fn mtu_at(&self, address: Option<std::net::IpAddr>) -> u32 {
        address
            .and_then(|a| {
                self.address_mtus
                    .iter()
                    .find(|(s, _)| s.parse() == Ok(a))
                    .map(|(_, mtu)| *mtu)
            })
            .unwrap_or(self.mtu)
    }
}

/// Reads the script's output.
pub fn parse(out: &str) -> HostFacts {
    let mut f = HostFacts::default();
    for line in out.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "ARCH" => f.arch = value.into(),
            "KERNEL" => f.kernel = value.into(),
            "SYSTEMD" => f.systemd = value == "yes",
            "OVERLAYFS" => f.overlayfs = value == "yes",
            "CGROUP" => f.cgroup = value.into(),
            "DISK_FREE_KIB" => f.disk_free_kib = value.parse().unwrap_or(0),
            "CPUS" => f.cpus = value.parse().unwrap_or(0),
            "MEMORY_KIB" => f.memory_kib = value.parse().unwrap_or(0),
            "SWAPS" => f.swaps = value.parse().unwrap_or(0),
            "TIME" => f.time = value.parse().unwrap_or(0),
            "MTU" => f.mtu = value.parse().unwrap_or(1500),
            "ADDRESS_MTU" => {
                if let Some((address, mtu)) = value.split_once(' ')
                    && let Ok(mtu) = mtu.parse()
                {
                    f.address_mtus.push((address.into(), mtu));
                }
            }
            "LISTEN" => {
                if let Some((port, exe)) = value.split_once(' ')
                    && let Ok(port) = port.parse()
                {
                    f.listeners.push((port, exe.into()));
                }
            }
            "RUNTIME" => {
                if let Some((pid, exe)) = value.split_once(' ')
                    && let Ok(pid) = pid.parse()
                {
                    f.foreign_runtimes.push((pid, exe.into()));
                }
            }
            _ => {}
        }
    }
    f
}

/// Free space binaries and images need on `/`.
const DISK_NEEDED_KIB: u64 = 2 * 1024 * 1024;
/// How far a host's clock may be from this computer's.
const CLOCK_SKEW_SECONDS: i64 = 30;

/// Everything that stops host `h` from running its components, given its facts and this
/// computer's clock (`now`, Unix seconds). Empty: the host may be provisioned.
pub fn problems(c: &Cluster, h: &Host, f: &HostFacts, now: i64) -> Vec<String> {
    let local = matches!(c.spec.platform, strata_manifests::model::Platform::Local(_));
    let mut out = Vec::new();
    if f.arch != "x86_64" {
        out.push(format!(
            "architecture {}: Strata installs x86-64 binaries",
            f.arch
        ));
    }
    if !f.systemd {
        out.push("systemd is not running (PID 1): units cannot be installed".into());
    }
    if !f.overlayfs {
        out.push("the kernel has no overlay filesystem (containerd needs it)".into());
    }
    if f.cgroup == "none" {
        out.push("no cgroup filesystem at /sys/fs/cgroup".into());
    }
    if f.disk_free_kib <= DISK_NEEDED_KIB {
        out.push(format!(
            "only {} MiB free on /; binaries and images need 2 GiB",
            f.disk_free_kib / 1024
        ));
    }
    let ports = catalog::ports(c, h);
    for (port, exe) in &f.listeners {
        if ports.contains(port) && !exe.starts_with(catalog::BIN_DIR) {
            out.push(format!(
                "TCP port {port} is in use by {exe}; Strata's components need it: stop that service"
            ));
        }
    }
    for (pid, exe) in &f.foreign_runtimes {
        out.push(format!(
            "a container runtime Strata did not install is running: {exe} (pid {pid}); stop and \
             disable it (Strata installs its own containerd)"
        ));
    }
    let minor = c.spec.kubernetes.version.minor();
    if !local && versions::uses(Item::KubeletRefusesCgroupV1, minor) && f.cgroup != "v2" {
        out.push(
            "the host runs cgroup v1; the kubelet of Kubernetes 1.35 and later needs cgroup v2 \
             (boot with systemd.unified_cgroup_hierarchy=1)"
                .into(),
        );
    }
    // Local machines share this computer's swap; the kubelet there is told to accept it.
    if !local && f.swaps > 0 {
        out.push(
            "swap is on; the kubelet refuses to run with swap: `swapoff -a` and remove it from \
             /etc/fstab"
                .into(),
        );
    }
    if (f.time - now).abs() > CLOCK_SKEW_SECONDS {
        out.push(format!(
            "clock is {}s off this computer's; certificates and etcd need synchronised clocks \
             (enable NTP)",
            f.time - now
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(platform: &str, version: &str) -> Cluster {
        let text = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  \
             kubernetes: {{version: \"{version}\"}}\n  platform: {{{platform}: {{}}}}\n  \
             ssh: {{agent: true}}\n  hosts:\n  \
             - {{name: cp1, address: 198.18.0.2, roles: [etcd, control-plane]}}\n  \
             - {{name: w1, address: 198.18.0.3, roles: [worker]}}\n"
        );
        let ctx = strata_manifests::Context {
            file: "t.yaml".into(),
            base_dir: std::env::temp_dir(),
            home: None,
        };
        strata_manifests::load_str(&text, &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .cluster
    }

    #[test]
    fn mtu_at_an_address_is_its_interfaces() {
        let f = parse(
            "MTU 1400\nADDRESS_MTU 127.0.0.1 65536\nADDRESS_MTU 198.18.0.3 1500\nADDRESS_MTU fd00::3 9000\n",
        );
        assert_eq!(f.mtu_at("198.18.0.3".parse().ok()), 1500);
        assert_eq!(f.mtu_at("fd00::3".parse().ok()), 9000);
        // An address the host does not hold, or none: the default route's interface.
        assert_eq!(f.mtu_at("198.18.0.9".parse().ok()), 1400);
        assert_eq!(f.mtu_at(None), 1400);
    }

    fn healthy() -> HostFacts {
        parse(
            "ARCH x86_64\nKERNEL 6.1.0\nSYSTEMD yes\nOVERLAYFS yes\nCGROUP v2\n\
             DISK_FREE_KIB 10000000\nSWAPS 0\nTIME 1000\nMTU 1500\n",
        )
    }

    #[test]
    fn a_healthy_host_passes() {
        let c = cluster("ssh", "1.20.2");
        for h in &c.spec.hosts {
            assert_eq!(problems(&c, h, &healthy(), 1010), Vec::<String>::new());
        }
        assert_eq!(healthy().mtu, 1500);
    }

    #[test]
    fn each_problem_is_named_with_what_to_do() {
        let c = cluster("ssh", "1.35.0");
        let f = parse(
            "ARCH aarch64\nSYSTEMD no\nOVERLAYFS no\nCGROUP v1\nDISK_FREE_KIB 1024\nSWAPS 1\n\
             TIME 0\nLISTEN 10250 /usr/sbin/sshd\nLISTEN 6443 /opt/strata/bin/kube-apiserver\n\
             LISTEN 2379 /usr/bin/etcd\nRUNTIME 42 /usr/bin/containerd\n",
        );
        let w1 = &c.spec.hosts[1];
        let p = problems(&c, w1, &f, 100);
        let all = p.join("\n");
        for want in [
            "architecture aarch64",
            "systemd is not running",
            "no overlay filesystem",
            "only 1 MiB free",
            "TCP port 10250 is in use by /usr/sbin/sshd",
            "a container runtime Strata did not install is running: /usr/bin/containerd (pid 42)",
            "needs cgroup v2",
            "swap is on",
            "clock is -100s off",
        ] {
            assert!(all.contains(want), "{want} in\n{all}");
        }
        // A worker does not need etcd's port; Strata's own API server may hold its port.
        assert!(!all.contains("2379") && !all.contains("6443"), "{all}");
        let cp1 = &c.spec.hosts[0];
        assert!(
            problems(&c, cp1, &f, 100)
                .join("\n")
                .contains("TCP port 2379")
        );
    }

    #[test]
    fn local_machines_may_share_swap_and_cgroup_v1() {
        let c = cluster("local", "1.35.0");
        let mut f = healthy();
        f.swaps = 1;
        f.cgroup = "v1".into();
        assert!(problems(&c, &c.spec.hosts[0], &f, 1000).is_empty());
    }
}
