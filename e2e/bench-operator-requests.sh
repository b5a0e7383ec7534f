#!/usr/bin/env bash
# The update operator's API requests per minute on an idle four-node local cluster (one
# control-plane node, three workers), counted from the API server's audit log (user
# system:serviceaccount:strata-system:strata-update-operator): LIST and GET of nodes,
# nodeupdates, updatepolicies and rebootlocks, WATCH, writes, and the leader lease apart.
#
#   bash e2e/bench-operator-requests.sh [BEFORE.tar]
#
# With BEFORE.tar (an update-operator image archive of an earlier commit, as
# .ci/build-assets writes it, with its .ref beside it), the same minute is measured first with
# that operator, then with this tree's, and both are printed. Needs root; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-operator-requests: run as root (machines)" >&2; exit 1; }
before_tar="${1:-}"
window="${STRATA_BENCH_WINDOW:-60}"
bash .ci/prepare >/dev/null
assets="$(bash .ci/build-assets 1.20.2)"
cargo build --release --locked -q -p strata
strata="${CARGO_TARGET_DIR:-$PWD/target}/release/strata"
command -v jq >/dev/null || { echo "bench-operator-requests: needs jq" >&2; exit 1; }

work="$(mktemp -d /var/tmp/strata-opreq.XXXXXX)"
cat > "$work/cluster.yaml" <<'EOF'
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: opreq}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker]}
  - {name: w3, roles: [worker]}
  assets: {source: assets}
EOF
cleanup() {
  "$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# An assets directory like $assets, with the update-operator image taken from $1 (.tar
# with its .ref beside it) and the manifest's digests adjusted.
assets_with_operator() {
  rm -rf "$work/assets"
  cp -a "$assets" "$work/assets"
  [ -n "$1" ] || return 0
  cp "$1" "$work/assets/images/update-operator.tar"
  read -r ref digest < "${1%.tar}.ref"
  sha="$(sha256sum "$1" | cut -d' ' -f1)"
  jq --arg sha "$sha" --arg ref "$ref" --arg digest "$digest" \
    '.files["images/update-operator.tar"] = {sha256: $sha, image: $ref, digest: $digest}' \
    "$assets/manifest.json" > "$work/assets/manifest.json"
}

kc="$work/opreq/auth/kubeconfig"
audit="/var/lib/strata/machines/opreq/cp1/root/var/log/kubernetes/audit.log"

# Applies, restarts the operator on the image now imported, waits until it leads and the
# cluster is idle, then counts its requests over $window seconds. Prints one table row set.
measure() {
  local label="$1"
  "$strata" apply -f "$work/cluster.yaml" --output json > "$work/apply-$label.json"
  kubectl --kubeconfig "$kc" -n strata-system rollout restart deployment/strata-update-operator >/dev/null
  kubectl --kubeconfig "$kc" -n strata-system rollout status deployment/strata-update-operator --timeout=120s >/dev/null
  sleep 30
  local from to
  from="$(date -u +%Y-%m-%dT%H:%M:%S)"
  sleep "$window"
  to="$(date -u +%Y-%m-%dT%H:%M:%S)"
  jq -r --arg from "$from" --arg to "$to" --arg label "$label" --argjson window "$window" '
    select(.user.username == "system:serviceaccount:strata-system:strata-update-operator")
    | select(.stageTimestamp >= $from and .stageTimestamp < $to)
    | select((.verb == "watch" and .stage == "ResponseStarted") or (.verb != "watch" and .stage == "ResponseComplete"))
    | (.objectRef.resource // "-") as $r
    | if $r == "leases" then "lease \(.verb)"
      elif (.verb == "list" or .verb == "get") and ($r | IN("nodes","nodeupdates","updatepolicies","rebootlocks")) then "read \(.verb) \($r)"
      else "other \(.verb) \($r)" end' "$audit" \
    | sort | uniq -c | awk -v label="$label" -v w="$window" '
      { n = $1; $1 = ""; sub(/^ /, ""); printf "%-8s %-36s %7.1f/min\n", label, $0, n * 60 / w
        split($0, word, " "); total[word[1]] += n }
      END { for (kind in total) printf "%-8s %-36s %7.1f/min\n", label, "TOTAL " kind, total[kind] * 60 / w }'
}

"$strata" local down -f "$work/cluster.yaml" --yes >/dev/null 2>&1 || true
"$strata" local up -f "$work/cluster.yaml" >/dev/null
echo "update operator API requests per minute, idle four-node cluster, ${window}s windows"
if [ -n "$before_tar" ]; then
  assets_with_operator "$before_tar"
  measure before | tee "$work/before.txt"
fi
assets_with_operator ""
measure after | tee "$work/after.txt"
if [ -n "$before_tar" ]; then
  b="$(awk '/TOTAL read/ {print $(NF)}' "$work/before.txt" | sed 's,/min,,')"
  a="$(awk '/TOTAL read/ {print $(NF)}' "$work/after.txt" | sed 's,/min,,')"
  awk -v b="${b:-0}" -v a="${a:-0}" 'BEGIN {
    printf "LIST+GET of nodes, nodeupdates, updatepolicies, rebootlocks: %.1f/min before, %.1f/min after", b, a
    if (b > 0) printf " (%.0f%% of before; target at most 20%%)", 100 * a / b
    printf "\n" }'
fi
