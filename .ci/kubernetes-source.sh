# Sourced by build-kubernetes and build-conformance: the distribution's Kubernetes source
# package, unpacked and made buildable with the Go of the distribution.
#
# kubernetes_source VERSION WORKDIR   unpacks the tree below WORKDIR and prints its path.
# kubernetes_make TREE LOG ARGS...    runs `make ARGS` in TREE (GOPATH mode, static binaries;
#                                     Go build tags from GO_TAGS, comma-separated).
# kubernetes_go TREE LOG ARGS...      runs `go ARGS` from the tree's GOPATH path.

# kubernetes_source runs inside $(...): without this a failing step there would not stop it.
shopt -s inherit_errexit

kubernetes_source_version() {
  case "$1" in
    1.20.2) echo "1.20.5+really1.20.2-1.1+deb12u1" ;;
    *) return 1 ;;
  esac
}

kubernetes_source() {
  local version="$1" work="$2" source_version src_list known_sources orig top
  source_version="$(kubernetes_source_version "$version")" || {
    echo "no source package known for Kubernetes $version" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  # Source entries derived from the machine's own apt configuration (same archives).
  src_list=/etc/apt/sources.list.d/strata-deb-src.sources
  # (Captured first: `apt-cache | grep -q` would die of SIGPIPE under pipefail.)
  known_sources="$(apt-cache showsrc kubernetes 2>/dev/null || true)"
  if ! grep -qx "Version: $source_version" <<<"$known_sources"; then
    echo "adding deb-src entries derived from the apt configuration" >&2
    : > "$src_list.tmp"
    for f in /etc/apt/sources.list.d/*.sources; do
      [ "$f" = "$src_list" ] && continue
      sed -e 's/^Types:.*/Types: deb-src/' "$f" >> "$src_list.tmp"
      echo >> "$src_list.tmp"
    done
    if [ -f /etc/apt/sources.list ]; then
      grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/strata-deb-src.list || true
    fi
    mv "$src_list.tmp" "$src_list"
    apt-get update -qq
  fi
  echo "installing build dependencies" >&2
  apt-get install -y -qq --no-install-recommends golang-1.19-go rsync jq dpkg-dev \
    golang-github-modern-go-reflect2-dev ca-certificates >/dev/null
  echo "downloading the source package kubernetes=$source_version" >&2
  (cd "$work" && apt-get source -qq --download-only "kubernetes=$source_version" >/dev/null)
  orig="$(cd "$work" && ls kubernetes_*.orig.tar.gz)"
  top="$(tar tzf "$work/$orig" | sed -n 1p | cut -d/ -f1)"  # sed reads all: no SIGPIPE
  tar xzf "$work/$orig" -C "$work"
  local tree="$work/$top"
  # reflect2 v1.0.1 (vendored) crashes kube-apiserver under Go >= 1.18 on the first custom
  # resource; v1.0.2 from the distribution fixes it.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/go.{mod,sum}
  mkdir -p "$tree/.go/src/k8s.io" "$work/home"
  ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
  echo "$tree"
}

kubernetes_make() {
  local tree="$1" log="$2"; shift 2
  (cd "$tree" && GOPATH="$tree/.go" PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 \
    HOME="$tree/../home" GOFLAGS="-mod=vendor${GO_TAGS:+ -tags=$GO_TAGS}" make "$@") >>"$log" 2>&1 || {
    tail -n 40 "$log" >&2
    return 1
  }
}

kubernetes_go() {
  local tree="$1" log="$2"; shift 2
  (cd "$tree/.go/src/k8s.io/kubernetes" && GOPATH="$tree/.go" GO111MODULE=off \
    PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 HOME="$tree/../home" go "$@") >>"$log" 2>&1 || {
    tail -n 40 "$log" >&2
    return 1
  }
}
