//! Pod-to-pod iperf3 between the workers w1 and w2 of a local cluster that is already up
//! (`STRATA_BENCH_CLUSTER`, its admin kubeconfig in `STRATA_BENCH_KUBECONFIG`), against the
//! two hosts' own addresses, in alternating rounds: `e2e/bench-apply.sh` runs it on its
//! three-host cluster, so that one bench run prints the in-cluster figure beside the bare
//! datapath's (`overlay_netns`). Ignored by default: it needs that cluster.

use std::path::PathBuf;

use strata_e2e::require_root;

#[test]
#[ignore = "run by e2e/bench-apply.sh against the cluster it made"]
fn pod_to_pod_on_a_running_local_cluster() {
    require_root();
    let cluster = std::env::var("STRATA_BENCH_CLUSTER").expect("STRATA_BENCH_CLUSTER");
    let kubeconfig =
        PathBuf::from(std::env::var("STRATA_BENCH_KUBECONFIG").expect("STRATA_BENCH_KUBECONFIG"));
    strata_e2e::throughput::pod_to_pod_direct_routing(&cluster, &kubeconfig);
}
