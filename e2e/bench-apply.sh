#!/usr/bin/env bash
# Benchmark of `strata apply` on the local three-host cluster (examples/local.yaml shape,
# own name and state): prints each phase's wall time, the whole first apply (assets cached,
# machines already booted) and the no-op re-run, against the targets (first apply < 120 s
# to all nodes Ready; no-op re-run < 10 s). Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-apply: run as root (machines, network namespaces)" >&2; exit 1; }
bash .ci/prepare >/dev/null
bash .ci/build-assets 1.20.2 >/dev/null
cargo build --release --locked -q -p strata
strata="${CARGO_TARGET_DIR:-$PWD/target}/release/strata"

work="$(mktemp -d /var/tmp/strata-bench.XXXXXX)"
sed 's/^  name: local$/  name: bench/' examples/local.yaml > "$work/cluster.yaml"
cleanup() {
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
"$strata" local up -f "$work/cluster.yaml" >/dev/null

# One timed apply; its JSON events go to $work/$1.json. Prints the wall time in ms.
timed_apply() {
  local start end
  start=$(date +%s%N)
  "$strata" apply -f "$work/cluster.yaml" --output json > "$work/$1.json"
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}
phases() {
  sed -n 's/.*"event":"phase-finished","phase":"\([^"]*\)","seconds":\([0-9.]*\).*/\1 \2/p' "$work/$1.json"
}

first=$(timed_apply first)
second=$(timed_apply second)
printf '%-16s %10s %10s\n' phase "first (s)" "no-op (s)"
# Phases in the order they ran, with both runs' times.
awk 'NR == FNR { noop[$1] = $2; next } { printf "%-16s %10.1f %10.1f\n", $1, $2, noop[$1] }' \
  <(phases second) <(phases first)
awk -v a="$first" -v b="$second" 'BEGIN {
  printf "%-16s %10.1f %10.1f\n", "whole apply", a / 1000, b / 1000
  printf "first apply to all nodes Ready: %.1f s (target < 120 s: %s)\n", a / 1000, a < 120000 ? "ok" : "MISSED"
  printf "no-op re-run: %.1f s (target < 10 s: %s)\n", b / 1000, b < 10000 ? "ok" : "MISSED"
}'
