#!/usr/bin/env bash
# The main job on the embedded default: a three-host Kubernetes 1.20.2 cluster of
# systemd-nspawn machines on this computer (examples/local.yaml). Needs root.
# Builds what it needs once (Kubernetes from the distribution's source, ~7 minutes; the
# base image, ~2 minutes; the project's images, ~4 minutes), then `strata local up` and
# `strata apply`.
# Afterwards: kubectl --kubeconfig examples/local/auth/kubeconfig get nodes
# Remove it all with: target/release/strata local down -f examples/local.yaml --yes
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the machines need network namespaces and mounts" >&2; exit 1; }
bash .ci/prepare
bash .ci/build-assets 1.20.2 >/dev/null
cargo build --release --locked -p strata
target/release/strata local up -f examples/local.yaml
target/release/strata apply -f examples/local.yaml
