#!/usr/bin/env bash
# Strata side by side with kubeadm on three local machines (cp1: etcd and control plane;
# w1, w2: workers), in alternating rounds (Strata, kubeadm, Strata, ...; STRATA_BENCH_ROUNDS
# of each, default 3). Prints each round's time from booted machines to every node Ready,
# the medians and their ratio (target of the speed issue: Strata at most half of kubeadm's).
#
# Each round starts from freshly booted machines (`strata local up`) that hold the same
# pre-placed files, copied in before the clock starts: the asset directory's binaries,
# CNI plugins and image archives at the paths `strata apply` uses, and, for kubeadm, its
# own binary and the control-plane images it expects (k8s.gcr.io/kube-apiserver,
# kube-controller-manager, kube-scheduler:v1.20.2 and etcd:3.4.23, made with strata-image
# from the same binaries). Timed:
# - Strata: `strata apply` (PKI, files, containerd, etcd, control plane, nodes, overlay,
#   cluster DNS, update operator, until every node is Ready);
# - kubeadm: the images imported into containerd (what its preflight's image pull does),
#   `kubeadm init` on cp1, then `kubeadm join` on w1 and w2 and Strata's overlay objects
#   applied with kubectl, until every node is Ready.
# What kubeadm is given before its clock starts, as a package install or a machine image
# would give it (see the README's Measured section): containerd configured as Strata
# configures it and running; kubelet.service with kubeadm's 10-kubeadm.conf drop-in (the
# upstream packages' files) and the kubelet at /usr/bin/kubelet; the kernel settings; the
# local machines' kubelet settings (cgroupfs, failSwapOn false, eviction floors);
# Strata's cluster CA (so the overlay agents' identities, rendered by Strata, are valid on
# its cluster). Skipped: init's preflight phase (its image check runs crictl, which this
# distribution lacks, and no ignore list suppresses that error) and join's preflight
# errors (crictl and friends missing); the CoreDNS and kube-proxy addons (no image of
# either here: kubeadm's cluster is Ready without them, Strata's apply installs both
# cluster DNS and kube-proxy inside its time).
# Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-kubeadm: run as root (machines)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/strata/cargo-target}"
bash .ci/prepare >/dev/null
assets="$(bash .ci/build-assets 1.20.2)"
k8s="$(bash .ci/build-kubernetes 1.20.2)"
kubeadm="$(bash .ci/build-kubeadm 1.20.2)"
cargo build --release --locked -q -p strata -p strata-images --bin strata --bin strata-image
strata="$CARGO_TARGET_DIR/release/strata"
image_tool="$CARGO_TARGET_DIR/release/strata-image"
ROUNDS="${STRATA_BENCH_ROUNDS:-3}"
# STRATA_BENCH_SIDES=strata times Strata's rounds alone (while working on its speed).
SIDES="${STRATA_BENCH_SIDES:-strata kubeadm}"
CLUSTER=vs
HOSTS=(cp1 w1 w2)

work="$(mktemp -d /var/tmp/strata-bench-kubeadm.XXXXXX)"
state=""
cleanup() {
  [ -z "${STRATA_BENCH_KEEP:-}" ] || { echo "bench-kubeadm: kept $work" >&2; return; }
  [ -z "$state" ] || "$strata" local down -f "$work/cluster.yaml" --state-dir "$state" --yes >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench-kubeadm: $*" >&2; }
fail() { log "$*"; exit 1; }

cat > "$work/cluster.yaml" <<EOF
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: $CLUSTER}
spec:
  platform: {local: {}}
  hosts:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker]}
EOF

# The control-plane images kubeadm 1.20.2 expects, from the same binaries.
mkdir -p "$work/images"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  "$image_tool" --reference "k8s.gcr.io/$b:v1.20.2" --file "$k8s/$b=/usr/local/bin/$b:0755" \
    --out "$work/images/$b.tar" >/dev/null
done
# The distribution's etcd (the asset's) is linked against the C library: carried with it.
"$image_tool" --reference k8s.gcr.io/etcd:3.4.23 --file "$assets/bin/etcd=/usr/local/bin/etcd:0755" \
  --file "$(readlink -f /lib/x86_64-linux-gnu/libc.so.6)=/lib/x86_64-linux-gnu/libc.so.6:0755" \
  --file "$(readlink -f /lib64/ld-linux-x86-64.so.2)=/lib64/ld-linux-x86-64.so.2:0755" \
  --out "$work/images/etcd.tar" >/dev/null

# Runs a shell script (stdin or $2) in a machine's namespaces.
on() {
  local pid
  pid=$(cat "/var/lib/strata/machines/$CLUSTER/$1/nspawn.pid")
  pid=$(pgrep -P "$pid" | sed -n 1p)
  nsenter -t "$pid" -m -u -i -n -p -- sh -c "$2"
}
# Copies a file of this computer into a machine (inside its mount namespace: paths such as
# /opt/cni/bin are links there).
put() { # HOST SOURCE DEST MODE
  on "$1" "mkdir -p '$(dirname "$3")' && cat > '$3.tmp' && chmod $4 '$3.tmp' && mv '$3.tmp' '$3'" < "$2"
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Fresh machines, booted, holding the pre-placed asset files.
fresh_machines() { # STATE_DIR
  state="$1"
  "$strata" local down -f "$work/cluster.yaml" --state-dir "$state" --yes >/dev/null 2>&1 || true
  rm -rf "$state"
  "$strata" local up -f "$work/cluster.yaml" --state-dir "$state" >/dev/null
  for h in "${HOSTS[@]}"; do
    on "$h" 'systemctl is-system-running --wait >/dev/null 2>&1 || true'
    for f in "$assets"/bin/* "$assets"/cni/* "$assets"/images/*.tar; do
      case "$f" in
        */cni/*) dest=/opt/cni/bin ;;
        */images/*) dest=/var/lib/strata/images ;;
        *) dest=/opt/strata/bin ;;
      esac
      put "$h" "$f" "$dest/$(basename "$f")" 755
    done
  done
}
machines_down() {
  "$strata" local down -f "$work/cluster.yaml" --state-dir "$state" --yes >/dev/null
  state=""
}

strata_round() { # sets ms
  fresh_machines "$work/strata-state"
  local start end
  start=$(now_ms)
  # Each event line prefixed with the seconds since the clock started.
  "$strata" apply -f "$work/cluster.yaml" --state-dir "$work/strata-state" --output json \
    | perl -MTime::HiRes=time -ne 'BEGIN { $t0 = time } printf "%.2f %s", time - $t0, $_' \
    > "$work/strata-apply.json" || fail "strata apply failed: $work/strata-apply.json"
  end=$(now_ms)
  sed -n 's/.*"event":"phase-finished","phase":"\([^"]*\)","seconds":\([0-9.e-]*\).*/\1 \2/p' \
    "$work/strata-apply.json" | awk '$2 >= 0.05 { printf "%s%s %.1f", sep, $1, $2; sep = ", " } END { print "" }' \
    > "$work/strata-steps"
  # When the last node became Ready (before the overlay agents ran on every node).
  awk '/"phase":"wait-ready".*"step":"Ready"/ { t = $1 } END { if (t != "") printf "every node Ready at %.1f s, the overlay agents running at the end\n", t }' \
    "$work/strata-apply.json" >> "$work/strata-steps"
  # The same in milliseconds for the medians.
  awk '/"phase":"wait-ready".*"step":"Ready"/ { t = $1 } END { if (t != "") printf "%d\n", t * 1000 }' \
    "$work/strata-apply.json" >> "$work/strata-ready.ms"
  cp "$work/strata-apply.json" "$work/strata-apply-$round.json"
  machines_down
  ms=$((end - start))
}

# kubeadm's files, made once: Strata's rendering of this cluster gives the CA, the
# containerd configuration and the overlay agents' identities and objects.
"$strata" render -f "$work/cluster.yaml" --state-dir "$work/render-state" --out "$work/render" >/dev/null
r="$work/render"
node_ip() { sed -n 's/.*--node-ip=\([^ ]*\).*/\1/p' "$r/hosts/$1/etc/systemd/system/kubelet.service"; }
CP_IP="$(node_ip cp1)"
TOKEN="s7r4t4.0123456789abcdef"
CA_HASH="sha256:$(openssl x509 -pubkey -noout -in "$r/hosts/cp1/etc/kubernetes/pki/ca.crt" |
  openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)"
kubelet_settings() {
  cat <<EOF
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
nodeStatusUpdateFrequency: 4s
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1Gi
  nodefs.inodesFree: 5%
  imagefs.available: 1Gi
imageGCHighThresholdPercent: 100
EOF
}
cat > "$work/init.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
bootstrapTokens:
- token: $TOKEN
  ttl: 1h
localAPIEndpoint: {advertiseAddress: $CP_IP, bindPort: 6443}
nodeRegistration:
  name: cp1
  criSocket: /run/containerd/containerd.sock
  kubeletExtraArgs: {node-ip: $CP_IP}
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
clusterName: $CLUSTER
networking: {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}
etcd: {local: {imageTag: 3.4.23}}
$(kubelet_settings)
EOF
for h in w1 w2; do
  cat > "$work/join-$h.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: $CP_IP:6443
    token: $TOKEN
    caCertHashes: [$CA_HASH]
nodeRegistration:
  name: $h
  criSocket: /run/containerd/containerd.sock
  kubeletExtraArgs: {node-ip: $(node_ip "$h")}
EOF
done
# The upstream packages' kubelet unit and kubeadm drop-in.
cat > "$work/kubelet.service" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
cat > "$work/10-kubeadm.conf" <<'EOF'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
Environment="AWS_EC2_METADATA_DISABLED=true"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
# The overlay's objects, in dependency order.
overlay_objects=("$r/cluster/addons-namespace.yaml" "$r"/cluster/overlay-*.yaml)

kubeadm_round() { # sets ms
  fresh_machines "$work/kubeadm-state"
  for h in "${HOSTS[@]}"; do
    put "$h" "$kubeadm" /usr/bin/kubeadm 755
    on "$h" 'ln -sf /opt/strata/bin/kubelet /usr/bin/kubelet'
    for f in etc/containerd/config.toml etc/systemd/system/containerd.service \
      etc/sysctl.d/90-strata.conf etc/modules-load.d/strata.conf; do
      put "$h" "$r/hosts/$h/$f" "/$f" 644
    done
    sed "s#server: https://127.0.0.1:[0-9]*#server: https://$CP_IP:6443#" \
      "$r/hosts/$h/etc/strata/overlay/kubeconfig" > "$work/overlay-$h.conf"
    put "$h" "$work/overlay-$h.conf" /etc/strata/overlay/kubeconfig 600
    put "$h" "$work/kubelet.service" /etc/systemd/system/kubelet.service 644
    put "$h" "$work/10-kubeadm.conf" /etc/systemd/system/kubelet.service.d/10-kubeadm.conf 644
    for f in "$work"/images/*.tar; do put "$h" "$f" "/var/lib/kubeadm-images/$(basename "$f")" 644; done
    on "$h" 'sysctl --quiet --system >/dev/null 2>&1; systemctl daemon-reload &&
      systemctl enable --now containerd >/dev/null 2>&1 && systemctl enable kubelet >/dev/null 2>&1'
  done
  put cp1 "$r/hosts/cp1/etc/kubernetes/pki/ca.crt" /etc/kubernetes/pki/ca.crt 644
  put cp1 "$r/hosts/cp1/etc/kubernetes/pki/ca.key" /etc/kubernetes/pki/ca.key 600
  put cp1 "$work/init.yaml" /etc/kubernetes/kubeadm-init.yaml 600
  for h in w1 w2; do put "$h" "$work/join-$h.yaml" /etc/kubernetes/kubeadm-join.yaml 600; done
  local import='set -e; ctr="/opt/strata/bin/ctr -n k8s.io"
    until $ctr version >/dev/null 2>&1; do sleep 0.2; done
    for f in /var/lib/strata/images/pause.tar /var/lib/strata/images/overlay.tar "$@"; do
      $ctr images import "$f" >/dev/null; done
    $ctr images tag --force "$($ctr images ls -q | grep strata.dev/pause)" k8s.gcr.io/pause:3.2 >/dev/null'

  local start end pids=()
  start=$(now_ms)
  on cp1 "set -- /var/lib/kubeadm-images/*.tar; $import" &
  pids+=($!)
  for h in w1 w2; do on "$h" "set --; $import" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || fail "importing the images failed"; done
  local imported; imported=$(now_ms)
  on cp1 'kubeadm init --config /etc/kubernetes/kubeadm-init.yaml \
    --skip-phases=preflight,addon/coredns,addon/kube-proxy' > "$work/kubeadm-init.log" 2>&1 ||
    fail "kubeadm init failed: $(tail -n 20 "$work/kubeadm-init.log")"
  local initialized; initialized=$(now_ms)
  pids=()
  for h in w1 w2; do
    on "$h" 'kubeadm join --config /etc/kubernetes/kubeadm-join.yaml --ignore-preflight-errors=all' \
      > "$work/kubeadm-join-$h.log" 2>&1 &
    pids+=($!)
  done
  on cp1 'cat /etc/kubernetes/admin.conf' > "$work/admin.conf"
  local k=(kubectl --kubeconfig "$work/admin.conf")
  "${k[@]}" apply -f "${overlay_objects[0]}" -f "$r/cluster/overlay-1-crd.yaml" >/dev/null
  "${k[@]}" wait --for condition=established --timeout 60s crd/overlaynodes.overlay.strata.dev >/dev/null
  for f in "${overlay_objects[@]}"; do "${k[@]}" apply -f "$f" >/dev/null; done
  local overlaid; overlaid=$(now_ms)
  # Every node Ready ends the clock, whether or not the joins have returned yet (`kubeadm
  # join` looks for the kubelet's bootstrapped credentials every 5 s).
  local deadline=$(( $(now_ms) + 300000 ))
  until [ "$("${k[@]}" get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)" = 3 ]; do
    [ "$(now_ms)" -lt "$deadline" ] || fail "kubeadm's nodes not Ready in 300 s: $("${k[@]}" get nodes 2>&1)"
    sleep 0.2
  done
  end=$(now_ms)
  for p in "${pids[@]}"; do wait "$p" || fail "kubeadm join failed: $(tail -n 20 "$work"/kubeadm-join-*.log)"; done
  machines_down
  ms=$((end - start))
  awk -v a=$((imported - start)) -v b=$((initialized - imported)) -v c=$((overlaid - initialized)) \
    -v d=$((end - overlaid)) 'BEGIN { printf "images %.1f, init %.1f, joins started and overlay applied %.1f, then every node Ready %.1f\n",
      a / 1000, b / 1000, c / 1000, d / 1000 }' > "$work/kubeadm-steps"
}

: > "$work/strata.ms"; : > "$work/strata-ready.ms"; : > "$work/kubeadm.ms"
for round in $(seq 1 "$ROUNDS"); do
  s=0; k=0; : > "$work/kubeadm-steps"; : > "$work/strata-steps"
  case " $SIDES " in *" strata "*) strata_round; s=$ms; echo "$s" >> "$work/strata.ms" ;; esac
  case " $SIDES " in *" kubeadm "*) kubeadm_round; k=$ms; echo "$k" >> "$work/kubeadm.ms" ;; esac
  awk -v i="$round" -v s="$s" -v k="$k" 'BEGIN { printf "round %d: Strata %.1f s, kubeadm %.1f s\n", i, s / 1000, k / 1000 }'
  echo "  Strata (phases over 0.05 s): $(paste -sd ';' "$work/strata-steps" | sed 's/;/; /')"
  echo "  kubeadm: $(cat "$work/kubeadm-steps")"
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
if [ "$SIDES" != "strata kubeadm" ]; then
  for side in $SIDES; do echo "$side, median of $ROUNDS rounds: $(median "$work/$side.ms" | awk '{ printf "%.1f s", $1 / 1000 }')"; done
  exit 0
fi
# The issue's measure: booted machines to every node Ready. kubeadm's nodes turn Ready once
# the overlay agent has written their CNI configuration; Strata writes it before the kubelet
# starts, so its nodes are Ready before its agents run: the end of its apply (every agent
# running too) is printed beside it.
awk -v s="$(median "$work/strata-ready.ms")" -v e="$(median "$work/strata.ms")" -v k="$(median "$work/kubeadm.ms")" -v n="$ROUNDS" 'BEGIN {
  printf "three hosts to every node Ready, median of %d rounds: Strata %.1f s, kubeadm %.1f s; ratio %.2f (target at most 0.5: %s)\n",
    n, s / 1000, k / 1000, s / k, s / k <= 0.5 ? "ok" : "MISSED"
  printf "to the end of Strata'"'"'s apply (every overlay agent running too): Strata %.1f s; ratio %.2f\n", e / 1000, e / k }'
