#!/usr/bin/env bash
# Benchmark of `strata apply` on local clusters (release build), printing each figure of the
# speed work in one run:
# - for each host count (STRATA_BENCH_HOSTS, default "1 3 6"; the first host etcd and control
#   plane, the others workers): the first apply from booted machines to every node Ready, the
#   no-op re-run, the bytes this computer sent to the machines during the first apply (read
#   off the cluster bridge's counters: SSH and API traffic, rendered files and assets), and
#   the upload's asset figures: the distinct asset bytes, the bytes of assets this computer
#   sent and how many times each asset byte that is (target: at most 2 whatever the host
#   count), and the bytes the hosts passed each other (the fan-out);
# - the same first apply on the largest host count with the assets fetched by the hosts
#   themselves from an https asset source (a server on the machines' bridge, as an
#   operator's asset server; STRATA_BENCH_SOURCE=0 skips): what this computer sent then;
# - each phase's time of the three-host first apply and no-op re-run;
# - pod to pod against host to host with iperf3 on the three-host cluster (w1 and w2 share a
#   subnet: direct routing), and the overlay's datapath without Kubernetes (`overlay_netns`)
#   in the same run, through direct routing (the veth-and-bridge path alone) and through the
#   VXLAN tunnel;
# - Strata against kubeadm on three hosts (e2e/bench-kubeadm.sh; STRATA_BENCH_KUBEADM=0 skips).
# Targets (the speed issue): three hosts Ready in 30 s, the no-op re-run under 3 s, each
# asset byte sent from this computer at most twice. Local
# machines share this computer's cores: times measure the machine as much as the design.
# Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-apply: run as root (machines, network namespaces)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/strata/cargo-target}"
bash .ci/prepare >/dev/null
bash .ci/build-assets 1.20.2 >/dev/null
cargo build --release --locked -q -p strata -p strata-overlay
cargo build --release --locked -q -p strata-e2e --bin strata-asset-source
# The two measurements made through the test harness, built before any machine runs.
cargo test --locked -q -p strata-e2e --no-run --test cluster_throughput --test overlay_netns 2>/dev/null
strata="$CARGO_TARGET_DIR/release/strata"

work="$(mktemp -d /var/tmp/strata-bench.XXXXXX)"
cleanup() {
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The Cluster file of `n` hosts: cp1, then workers w1.. .
cluster_of() {
  printf 'apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {name: bench}\nspec:\n'
  printf '  platform: {local: {}}\n  hosts:\n'
  # One host is the whole cluster; from two on, the first is etcd and control plane only.
  if [ "$1" = 1 ]; then printf '  - {name: cp1, roles: [etcd, control-plane, worker]}\n'
  else printf '  - {name: cp1, roles: [etcd, control-plane]}\n'; fi
  for i in $(seq 1 $(($1 - 1))); do printf '  - {name: w%d, roles: [worker]}\n' "$i"; done
}

# One timed apply; its JSON events go to $work/$1.json. Prints the wall time in ms.
timed_apply() {
  local start end
  start=$(date +%s%N)
  "$strata" apply -f "$work/cluster.yaml" --output json > "$work/$1.json"
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}
phases() {
  sed -n 's/.*"event":"phase-finished","phase":"\([^"]*\)","seconds":\([0-9.e-]*\).*/\1 \2/p' "$work/$1.json"
}
# The bridge of the bench's machines.
bridge() {
  ip -o link show type bridge | awk -F': ' '{print $2}' | while read -r b; do
    # grep without -q reads every line: an early exit would fail the pipeline (pipefail).
    ip -o link show master "$b" 2>/dev/null | grep 'link-netns strata-bench-' >/dev/null && echo "$b"
  done | sed -n 1p
}
# Bytes this computer has sent into the cluster's bridge.
bridge_tx() {
  cat "/sys/class/net/$(bridge)/statistics/tx_bytes"
}

# The upload's asset figures: distinct asset MB, MB this computer sent, times each byte,
# MB between hosts, MB the hosts fetched from the asset source (0 when none).
fanout() {
  sed -n 's/.*"host":"assets","step":"\([0-9.]*\) MB of assets: \([0-9.]*\) MB sent from this computer (\([0-9.]*\) times each byte), \([0-9.]*\) MB between hosts\(, \([0-9.]*\) MB fetched by the hosts from the asset source\)\{0,1\}".*/\1 \2 \3 \4 \6/p' \
    "$work/$1.json" | awk '{ print $1, $2, $3, $4, ($5 == "" ? 0 : $5) }'
}

summary="$work/summary.txt"
printf '%-5s %9s %9s %9s %11s %10s %10s %10s %10s\n' hosts "first (s)" "no-op (s)" "down (s)" \
  "bridge (MB)" "assets (MB)" "here (MB)" "times" "peers (MB)" > "$summary"
for n in ${STRATA_BENCH_HOSTS:-1 3 6}; do
  cluster_of "$n" > "$work/cluster.yaml"
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
  rm -rf "$work/bench"
  "$strata" local up -f "$work/cluster.yaml" >/dev/null
  before=$(bridge_tx)
  first=$(timed_apply "first-$n")
  sent=$(( $(bridge_tx) - before ))
  second=$(timed_apply "second-$n")
  read -r assets here times peers _ < <(fanout "first-$n") || {
    echo "bench-apply: no asset figures in the upload phase of first-$n.json" >&2; exit 1; }
  awk -v n="$n" -v t="$times" 'BEGIN {
    printf "%d host(s): each asset byte sent from this computer %.2f times (target at most 2: %s)\n",
      n, t, t <= 2 ? "ok" : "MISSED" }' >> "$work/fanout.txt"
  row=$(awk -v n="$n" -v a="$first" -v b="$second" -v s="$sent" -v as="$assets" -v h="$here" \
    -v t="$times" -v p="$peers" 'BEGIN {
    printf "%-5d %9.1f %9.1f %%9s %11.1f %10.1f %10.1f %10.2f %10.1f\n", n, a / 1000, b / 1000, s / 1e6, as, h, t, p }')
  if [ "$n" = 3 ]; then
    printf '%-16s %10s %10s\n' phase "first (s)" "no-op (s)" > "$work/phases.txt"
    awk 'NR == FNR { noop[$1] = $2; next } { printf "%-16s %10.1f %10.1f\n", $1, $2, noop[$1] }' \
      <(phases second-3) <(phases first-3) >> "$work/phases.txt"
    awk -v a="$first" -v b="$second" 'BEGIN {
      printf "three hosts to every node Ready: %.1f s (target 30 s: %s)\n", a / 1000, a <= 30000 ? "ok" : "MISSED"
      printf "no-op re-run: %.1f s (target < 3 s: %s)\n", b / 1000, b < 3000 ? "ok" : "MISSED"
    }' >> "$work/phases.txt"
    # Pod to pod through the overlay (w1 and w2 share a subnet: direct routing) against
    # host to host, on this very cluster.
    STRATA_BENCH_CLUSTER=bench STRATA_BENCH_KUBECONFIG="$work/bench/auth/kubeconfig" \
      cargo test --locked -q -p strata-e2e --test cluster_throughput -- --ignored \
      --test-threads=1 --nocapture 2>&1 | grep -E '^throughput' > "$work/pods.txt" || {
      echo "bench-apply: the pod-to-pod measurement failed" >&2; exit 1; }
  fi
  # `local down` of the machines, timed (printed in the table).
  start=$(date +%s%N)
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null
  down=$(( ($(date +%s%N) - start) / 1000000 ))
  # shellcheck disable=SC2059 # the row is the format, with the down time's place.
  printf "$row\n" "$(awk -v d="$down" 'BEGIN { printf "%.1f", d / 1000 }')" >> "$summary"
done

# The largest host count again, the hosts fetching the assets from an https source
# themselves: a static file server on the bridge's address, trusted by the machines (its CA
# in their bundle) and by strata (SSL_CERT_FILE).
if [ "${STRATA_BENCH_SOURCE:-1}" != 0 ]; then
  n=$(echo ${STRATA_BENCH_HOSTS:-1 3 6} | awk '{ print $NF }')
  cluster_of "$n" > "$work/cluster.yaml"
  rm -rf "$work/bench"
  "$strata" local up -f "$work/cluster.yaml" >/dev/null
  gateway=$(ip -o -4 addr show dev "$(bridge)" | awk '{ split($4, a, "/"); print a[1]; exit }')
  assets_dir=/var/cache/strata/assets/1.20.2
  mkfifo "$work/source-in"
  "$CARGO_TARGET_DIR/release/strata-asset-source" --root "$assets_dir" --listen "$gateway" \
    --ca-out "$work/source-ca.crt" < "$work/source-in" > "$work/source.out" &
  exec 9> "$work/source-in"
  for _ in $(seq 50); do [ -s "$work/source.out" ] && break; sleep 0.2; done
  url=$(sed -n 1p "$work/source.out")
  [ -n "$url" ] || { echo "bench-apply: the https asset source did not start" >&2; exit 1; }
  for root in /var/lib/strata/machines/bench/*/root; do
    cat "$work/source-ca.crt" >> "$root/etc/ssl/certs/ca-certificates.crt"
  done
  printf '  assets:\n    source: %s\n    sha256: %s\n' "$url" \
    "$(sha256sum "$assets_dir/manifest.json" | cut -d' ' -f1)" >> "$work/cluster.yaml"
  before=$(bridge_tx)
  first=$(SSL_CERT_FILE="$work/source-ca.crt" timed_apply "source-$n")
  sent=$(( $(bridge_tx) - before ))
  exec 9>&-
  wait
  read -r assets here times peers fetched < <(fanout "source-$n") || {
    echo "bench-apply: no asset figures in the upload phase of source-$n.json" >&2; exit 1; }
  awk -v n="$n" -v a="$first" -v s="$sent" -v as="$assets" -v h="$here" -v f="$fetched" \
    -v p="$peers" 'BEGIN {
    printf "%d host(s), assets from an https source: first apply %.1f s; this computer sent %.1f MB of assets (the fetch program) and %.1f MB in all; the hosts fetched %.1f MB from the source, %.1f MB between hosts (%.1f MB of distinct assets)\n",
      n, a / 1000, h, s / 1e6, f, p, as }' > "$work/source.txt"
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null
fi

echo "== first apply from booted machines, by host count"
cat "$summary" "$work/fanout.txt"
[ -f "$work/source.txt" ] && cat "$work/source.txt"
if [ -f "$work/phases.txt" ]; then
  echo "== phases of the three-host apply"
  cat "$work/phases.txt"
fi

if [ -f "$work/pods.txt" ]; then
  echo "== overlay in the three-host cluster (iperf3 between pods on w1 and w2, alternating rounds)"
  cat "$work/pods.txt"
fi

echo "== overlay datapath without Kubernetes (iperf3, medians of alternating rounds)"
STRATA_OVERLAY_BIN="$CARGO_TARGET_DIR/release/strata-overlay" \
  cargo test --locked -q -p strata-e2e --test overlay_netns datapath -- \
  --test-threads=1 --nocapture 2>&1 | grep -E 'medians' || {
  echo "bench-apply: the overlay datapath measurement failed" >&2; exit 1; }

# Side by side with kubeadm on three hosts (its own machines, after these are gone).
if [ "${STRATA_BENCH_KUBEADM:-1}" != 0 ]; then
  echo "== side by side with kubeadm (three hosts from booted machines, binaries pre-placed)"
  bash e2e/bench-kubeadm.sh
fi
