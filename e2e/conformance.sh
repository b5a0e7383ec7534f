#!/usr/bin/env bash
# Kubernetes' conformance suite against a Strata cluster (root, for the local machines).
#
#   bash e2e/conformance.sh                        a local cluster (e2e/conformance/cluster.yaml),
#                                                  every [Conformance] test (about 1.5 h)
#   bash e2e/conformance.sh --kubeconfig FILE      your own cluster (its nodes pull the images)
#   ... --focus REGEX | --focus-file FILE  --skip REGEX  --results DIR  --nodes N  --keep
#
# Builds first what it needs, each cached by version (Kubernetes 1.20.2 from the
# distribution's source package: the server binaries, then e2e.test, ginkgo, kubectl and the
# test images' programs), then runs the tests that may run in parallel on 4 ginkgo nodes and
# the [Serial] ones on one. Prints `N passed, M failed` and the failures; JUnit reports and
# e2e.log in the results directory (default ./conformance-results).
set -euo pipefail
# Paths given as arguments are the caller's: only the builds run from the repository.
repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/strata/cargo-target}"
bash "$repo/.ci/prepare" >&2
STRATA_KUBERNETES_BIN="$(bash "$repo/.ci/build-kubernetes" 1.20.2)"
export STRATA_KUBERNETES_BIN
bash "$repo/.ci/build-assets" 1.20.2 >/dev/null   # also the static strata-pause (the pause image)
STRATA_CONFORMANCE="$(bash "$repo/.ci/build-conformance" 1.20.2)"
export STRATA_CONFORMANCE
(cd "$repo" && cargo build --locked -q -p strata -p strata-e2e --bin strata --bin strata-conformance)
export STRATA_BIN="$CARGO_TARGET_DIR/debug/strata"
export STRATA_PAUSE_BIN="$CARGO_TARGET_DIR/release/strata-pause"
exec "$CARGO_TARGET_DIR/debug/strata-conformance" "$@"
