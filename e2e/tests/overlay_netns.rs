//! The overlay's kernel programming between two network namespaces joined by a veth pair
//! (the underlay, 198.19.255.0/24): each gets a VXLAN device through netlink and, for the
//! other, a route, a neighbour and a forwarding entry; then one pod subnet reaches the other
//! through the tunnel (the underlay knows nothing of 10.244.0.0/16). Programming again
//! changes nothing; direct routing (the two share a subnet) replaces the tunnel's entries by
//! one route through the veth, and back; a node that leaves is removed with all its entries.

use std::process::{Command, Output};

use strata_e2e::{require_root, throughput};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn run(args: &[&str]) -> Output {
    run_input(args, "")
}

/// `args` with stdin `input`; fails the test unless it succeeds.
fn run_input(args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn overlay_bin() -> String {
    std::env::var("STRATA_OVERLAY_BIN")
        .expect("STRATA_OVERLAY_BIN: the strata-overlay binary (set by .ci/e2e)")
}

/// `strata-overlay ARGS` inside namespace `ns`, with stdin `input`; its stdout.
fn overlay(ns: &str, args: &[&str], input: &str) -> String {
    let bin = overlay_bin();
    let device = ["--device", "strata.1", "--vni", "1", "--port", "8472"];
    let all: Vec<&str> = ["ip", "netns", "exec", ns, &bin]
        .into_iter()
        .chain(args.iter().copied())
        .chain(device)
        .collect();
    String::from_utf8_lossy(&run_input(&all, input).stdout)
        .trim()
        .to_owned()
}

/// `strata-overlay program` in `ns` for node `me` with the node list `nodes` (JSON).
fn program(ns: &str, me: &str, underlay: &str, nodes: &str) -> String {
    program_with(ns, me, underlay, nodes, &[])
}

/// The same with more options (`--direct-routing`).
fn program_with(ns: &str, me: &str, underlay: &str, nodes: &str, more: &[&str]) -> String {
    let mut args = vec![
        "program",
        "--me",
        me,
        "--underlay",
        underlay,
        "--nodes",
        "-",
    ];
    args.extend_from_slice(more);
    overlay(ns, &args, nodes)
}

/// Packets the VXLAN device of namespace `ns` has sent.
fn tunnelled(ns: &str) -> u64 {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        "/sys/class/net/strata.1/statistics/tx_packets",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tx_packets")
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", to])
        .output()
        .expect("ping (package iputils-ping)")
        .status
        .success()
}

/// Two nodes `a` and `b`: network namespaces joined by a veth pair (the underlay, 198.19.255.1
/// and .2), pod subnets 10.244.1.0/24 and 10.244.2.0/24.
struct Nodes {
    _cleanup: Namespaces,
    a: String,
    b: String,
    mac_a: String,
    mac_b: String,
    /// Both nodes, as `strata-overlay program --nodes` reads them.
    list: String,
}

fn two_nodes(tag: &str) -> Nodes {
    let id = std::process::id();
    let (a, b) = (format!("{tag}-a-{id}"), format!("{tag}-b-{id}"));
    let cleanup = Namespaces(vec![a.clone(), b.clone()]);
    for ns in [&a, &b] {
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (va, vb) = (format!("{tag}a{id}"), format!("{tag}b{id}"));
    run(&[
        "ip", "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]);
    for (ns, dev, addr) in [(&a, &va, "198.19.255.1/24"), (&b, &vb, "198.19.255.2/24")] {
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let mac = |ns: &str, underlay: &str, cidr: &str| {
        overlay(ns, &["mac", "--underlay", underlay, "--pod-cidr", cidr], "")
    };
    let mac_a = mac(&a, "198.19.255.1", "10.244.1.0/24");
    let mac_b = mac(&b, "198.19.255.2", "10.244.2.0/24");
    let list = format!(
        r#"[{{"name": "a", "pod_cidr": "10.244.1.0/24", "underlay": "198.19.255.1", "vtep_mac": {}}},
            {{"name": "b", "pod_cidr": "10.244.2.0/24", "underlay": "198.19.255.2", "vtep_mac": {}}}]"#,
        serde_json::to_string(&mac_json(&mac_a)).expect("json"),
        serde_json::to_string(&mac_json(&mac_b)).expect("json"),
    );
    Nodes {
        _cleanup: cleanup,
        a,
        b,
        mac_a,
        mac_b,
        list,
    }
}

#[test]
fn two_namespaces_reach_each_others_pod_subnet_through_vxlan() {
    require_root();
    let Nodes {
        _cleanup,
        a,
        b,
        mac_a,
        mac_b,
        list: nodes,
    } = two_nodes("ovl");
    assert!(!ping(&a, "10.244.2.0"), "no route before programming");
    let out_a = program(&a, "a", "198.19.255.1", &nodes);
    let out_b = program(&b, "b", "198.19.255.2", &nodes);
    assert_eq!(out_a, format!("{mac_a} added=3 removed=0"));
    assert_eq!(out_b, format!("{mac_b} added=3 removed=0"));
    // The device: VXLAN id 1, port 8472, no learning, MTU of the veth (1500) minus 50.
    let link =
        String::from_utf8_lossy(&run(&["ip", "-d", "-n", &a, "link", "show", "strata.1"]).stdout)
            .into_owned();
    assert!(
        link.contains("mtu 1450")
            && link.contains("vxlan id 1")
            && link.contains("dstport 8472")
            && link.contains("nolearning"),
        "{link}"
    );
    assert!(
        ping(&a, "10.244.2.0"),
        "a reaches b's pod subnet through the tunnel"
    );
    assert!(
        ping(&b, "10.244.1.0"),
        "b reaches a's pod subnet through the tunnel"
    );

    // Again: nothing to change.
    let again = program(&a, "a", "198.19.255.1", &nodes);
    assert_eq!(again, format!("{mac_a} added=0 removed=0"));

    // Direct routing: b shares a's subnet, so its pod subnet is routed through the veth, the
    // route replaced in one step and the VXLAN entries dropped; the tunnel carries nothing.
    let direct = ["--direct-routing"];
    let out = program_with(&a, "a", "198.19.255.1", &nodes, &direct);
    assert_eq!(out, format!("{mac_a} added=1 removed=2"));
    program_with(&b, "b", "198.19.255.2", &nodes, &direct);
    let route =
        String::from_utf8_lossy(&run(&["ip", "-n", &a, "route", "show", "10.244.2.0/24"]).stdout)
            .into_owned();
    assert!(
        route.contains("via 198.19.255.2 dev ") && route.contains("proto 83"),
        "{route}"
    );
    let before = tunnelled(&a);
    assert!(ping(&a, "10.244.2.0"), "a reaches b's pod subnet directly");
    assert_eq!(tunnelled(&a), before, "nothing went through the tunnel");
    assert_eq!(
        program_with(&a, "a", "198.19.255.1", &nodes, &direct),
        format!("{mac_a} added=0 removed=0")
    );
    // And back to the tunnel.
    let out = program(&a, "a", "198.19.255.1", &nodes);
    assert_eq!(out, format!("{mac_a} added=3 removed=0"));
    program(&b, "b", "198.19.255.2", &nodes);
    assert!(ping(&a, "10.244.2.0"), "through the tunnel again");
    assert!(tunnelled(&a) > before, "the tunnel carried the ping");

    // b leaves the cluster: a drops its route, neighbour and forwarding entry.
    let only_a = format!(
        r#"[{{"name": "a", "pod_cidr": "10.244.1.0/24", "underlay": "198.19.255.1", "vtep_mac": {}}}]"#,
        serde_json::to_string(&mac_json(&mac_a)).expect("json")
    );
    let gone = program(&a, "a", "198.19.255.1", &only_a);
    assert_eq!(gone, format!("{mac_a} added=0 removed=3"));
    let routes =
        String::from_utf8_lossy(&run(&["ip", "-n", &a, "route", "show", "dev", "strata.1"]).stdout)
            .into_owned();
    assert!(!routes.contains("10.244.2.0/24"), "{routes}");
    let fdb = String::from_utf8_lossy(
        &run(&[
            "ip", "netns", "exec", &a, "bridge", "fdb", "show", "dev", "strata.1",
        ])
        .stdout,
    )
    .into_owned();
    assert!(!fdb.contains(&mac_b), "{fdb}");
    assert!(!ping(&a, "10.244.2.0"));
}

/// The datapath the overlay builds, without Kubernetes: on each node the agent's VXLAN device
/// and a pod attached as the CNI bridge plugin attaches one (a veth into the node's `cni0`
/// bridge, which holds the subnet's gateway; MTU of the VXLAN device). iperf3 from pod to pod
/// and between the nodes' underlay addresses, alternating rounds: the figure the cluster's
/// own measurement (apply_local) is compared with, since both ride the same kernel paths.
#[test]
fn the_overlay_datapath_against_the_underlay() {
    datapath_against_the_underlay("ovd", &[]);
}

/// The same with direct routing (the nodes share a subnet): pods' packets go through veth,
/// bridge and the underlay unencapsulated, the figure direct routing in a cluster is held to.
#[test]
fn the_direct_routing_datapath_against_the_underlay() {
    datapath_against_the_underlay("ovr", &["--direct-routing"]);
}

fn datapath_against_the_underlay(tag: &str, options: &[&str]) {
    require_root();
    let nodes = two_nodes(tag);
    let id = std::process::id();
    let pods = [format!("{tag}-pa-{id}"), format!("{tag}-pb-{id}")];
    let _pods = Namespaces(pods.to_vec());
    for (n, (node, pod)) in [(&nodes.a, &pods[0]), (&nodes.b, &pods[1])]
        .into_iter()
        .enumerate()
    {
        let subnet = n + 1;
        let me = ["a", "b"][n];
        program_with(
            node,
            me,
            &format!("198.19.255.{subnet}"),
            &nodes.list,
            options,
        );
        run(&["ip", "netns", "add", pod]);
        let forwarding = "net.ipv4.ip_forward=1";
        run(&["ip", "netns", "exec", node, "sysctl", "-qw", forwarding]);
        let node_side = format!(
            "link add cni0 mtu 1450 type bridge\n\
             addr add 10.244.{subnet}.1/24 dev cni0\n\
             link set cni0 up\n\
             link add veth0 mtu 1450 type veth peer name eth0 netns {pod}\n\
             link set veth0 master cni0 up\n"
        );
        run_input(&["ip", "-n", node, "-batch", "-"], &node_side);
        let pod_side = format!(
            "link set lo up\n\
             addr add 10.244.{subnet}.2/24 dev eth0\n\
             link set eth0 mtu 1450 up\n\
             route add default via 10.244.{subnet}.1\n"
        );
        run_input(&["ip", "-n", pod, "-batch", "-"], &pod_side);
    }
    assert!(ping(&pods[0], "10.244.2.2"), "pod a reaches pod b");
    println!(
        "overlay datapath: congestion control {}",
        throughput::congestion_control(&pods[0])
    );
    let what = if options.is_empty() {
        "overlay datapath (VXLAN) without Kubernetes, pod to pod vs node to node"
    } else {
        "overlay datapath (direct routing) without Kubernetes, pod to pod vs node to node"
    };
    let ratio = throughput::compare(
        what,
        5,
        || throughput::between_namespaces(&pods[0], &pods[1], "10.244.2.2", 4),
        || throughput::between_namespaces(&nodes.a, &nodes.b, "198.19.255.2", 4),
    );
    assert!(ratio > 0.0, "traffic crossed between the pods");
}

/// A MAC as the JSON of `strata_overlay::plan::Mac` (an array of six numbers).
fn mac_json(mac: &str) -> Vec<u8> {
    mac.split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect()
}
