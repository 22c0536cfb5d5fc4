#!/usr/bin/env bash
# Build kube-apiserver, etcd and kubectl at the Kubernetes release pinned in
# go.mod, into a per-version cache:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/edge-fleet/kube/<k8s-version>/
#
# Nothing is downloaded as a prebuilt binary: everything is compiled from the
# Go module proxy. The first (cold) build takes 10-30 minutes on 2 cores; later
# runs find the binaries and return at once. Safe to run concurrently (flock).
#
# Usage: tools/kube/build.sh [--force] [--print-dir]
#   --force      rebuild even if the cached binaries are up to date
#   --print-dir  print only the cache directory on stdout (progress to stderr)
#
# Exit codes: 0 ok, 3 Go is missing or too old, other: the build failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
force=0
print_dir=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-dir) print_dir=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "kube-build: $*" >&2; }

# The pinned release is the one go.mod requires; the staging modules are
# replaced with the matching v0.N.M, checked here so the two never drift.
kube_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$here/go.mod")"
if [[ -z "$kube_version" ]]; then
  log "cannot find the k8s.io/kubernetes version in $here/go.mod"; exit 2
fi
staging_version="v0.${kube_version#v1.}"
if grep -E '^\s+k8s\.io/[a-z-]+ => k8s\.io/[a-z-]+ v0\.' "$here/go.mod" | grep -vq " $staging_version\$"; then
  log "go.mod replaces a staging module with a version other than $staging_version"; exit 2
fi

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/edge-fleet/kube/$kube_version"
binaries=(kube-apiserver etcd kubectl)

# A stamp of the inputs: a changed go.sum or main.go rebuilds.
stamp_of_inputs() {
  (cd "$here" && cat go.mod go.sum cmd/*/main.go build.sh) | sha256sum | cut -d' ' -f1
}

up_to_date() {
  local b
  for b in "${binaries[@]}"; do
    [[ -x "$cache_dir/$b" ]] || return 1
  done
  [[ -f "$cache_dir/.stamp" && "$(cat "$cache_dir/.stamp")" == "$(stamp_of_inputs)" ]]
}

done_msg() {
  if (( print_dir )); then echo "$cache_dir"; else log "binaries in $cache_dir"; fi
}

if (( ! force )) && up_to_date; then
  log "cached: kube-apiserver, etcd and kubectl $kube_version (nothing to build)"
  done_msg
  exit 0
fi

# The usual place of an upstream Go install, for shells whose PATH lacks it.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed (needed once to build kube-apiserver $kube_version; see tools/kube/README.md)"
  exit 3
fi
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [[ ! "$go_minor" =~ ^[0-9]+$ ]] || (( go_minor < 26 )); then
  log "Go $(go env GOVERSION) is too old: k8s.io/kubernetes $kube_version needs go1.26 or newer"
  exit 3
fi

mkdir -p "$cache_dir"
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  log "another build holds $cache_dir/.lock; waiting for it"
  flock 9
fi
# Someone else may have finished the build while we waited.
if (( ! force )) && up_to_date; then
  log "cached: built by a concurrent run"
  done_msg
  exit 0
fi

# Version stamps as the upstream build sets them (hack/lib/version.sh), so the
# server reports v1.N.M rather than v0.0.0-master and kubectl sees no skew.
minor="${kube_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

tmp="$(mktemp -d "$cache_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "building kube-apiserver, etcd and kubectl $kube_version with $(go env GOVERSION) (cold: 10-30 min)"
start=$(date +%s)
(
  cd "$here"
  export CGO_ENABLED=0 GOMAXPROCS="${GOMAXPROCS:-2}" GOFLAGS="-trimpath -mod=readonly"
  go build -p "$GOMAXPROCS" -ldflags="$ldflags" -o "$tmp/" ./cmd/kube-apiserver ./cmd/etcd ./cmd/kubectl
)
for b in "${binaries[@]}"; do
  mv -f "$tmp/$b" "$cache_dir/$b"
done
stamp_of_inputs >"$cache_dir/.stamp"
elapsed=$(( $(date +%s) - start ))
log "build time: ${elapsed}s ($(( elapsed / 60 ))m$(( elapsed % 60 ))s)"
log "$("$cache_dir/kube-apiserver" --version 2>&1 | head -1); etcd $("$cache_dir/etcd" --version 2>&1 | awk '/etcd Version/ {print $3}')"
done_msg
