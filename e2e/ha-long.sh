#!/usr/bin/env bash
# The long run of the highly available control plane (about fifteen minutes, root): a rolling
# reboot of three control-plane nodes by the update operator under a writer, then a host
# replaced (e2e/tests/ha_reboots.rs). Builds what .ci/e2e builds; prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
STRATA_KUBERNETES_BIN="$(bash .ci/build-kubernetes 1.20.2)"
export STRATA_KUBERNETES_BIN
bash .ci/build-assets 1.20.2 >/dev/null
STRATA_PAUSE_BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/strata-pause"
export STRATA_PAUSE_BIN
cargo build --locked -p strata -p strata-overlay
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"
export STRATA_BIN="$bin/strata" STRATA_OVERLAY_BIN="$bin/strata-overlay"
cargo test --locked -p strata-e2e --test ha_reboots -- --ignored --test-threads=1 --nocapture
