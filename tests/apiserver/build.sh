#!/usr/bin/env bash
# Build the test kube-apiserver (upstream kube-apiserver + embedded etcd) into a
# cache location and print its path on the last line of stdout.
#
#   tests/apiserver/build.sh            # -> ~/.cache/redis-node-tuner/kube-apiserver-test
#   RNT_APISERVER_BIN=/some/path tests/apiserver/build.sh
#
# Rebuilds only when the Go sources, go.mod, go.sum, this script or the Go
# toolchain changed (a hash is kept in "$BIN.hash"). Uses the normal
# GOMODCACHE/GOCACHE, so a rebuild after a small change is fast. The first
# build compiles k8s.io/kubernetes and takes a long time (see README.md).
# All go output goes to stderr; stdout carries only the binary path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${RNT_APISERVER_BIN:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/kube-apiserver-test}"

command -v go >/dev/null 2>&1 || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }

export CGO_ENABLED=0
# Go workspaces of an enclosing directory must not leak in.
export GOWORK=off

mkdir -p "$(dirname "$bin")"

compute_hash() {
  (
    cd "$here"
    go env GOVERSION GOOS GOARCH CGO_ENABLED
    for f in build.sh go.mod go.sum $(ls ./*.go | LC_ALL=C sort); do
      echo "== $f"
      cat "$f"
    done
  ) | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [[ -x "$bin" && -f "$bin.hash" && "$(cat "$bin.hash")" == "$1" ]]
}

hash="$(compute_hash)"
if up_to_date "$hash"; then
  echo "$bin"
  exit 0
fi

build() {
  # Re-check under the lock: a concurrent caller may have just built it.
  if up_to_date "$hash"; then
    return 0
  fi
  local tmp="$bin.tmp.$$"
  echo "build.sh: building $bin (first build of k8s.io/kubernetes takes a while)..." >&2
  local start=$SECONDS
  # Upstream release builds stamp the version with -X (hack/lib/version.sh);
  # without it /version says "v0.0.0-master+$Format:%H$", which kubectl and
  # other clients fail to parse. Take it from go.mod.
  local kver
  kver="$(cd "$here" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)"
  local major="${kver#v}" minor
  major="${major%%.*}"
  minor="${kver#v*.}"
  minor="${minor%%.*}"
  local ldflags="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  if ! (cd "$here" && go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" -o "$tmp" .) >&2; then
    rm -f "$tmp"
    echo "build.sh: go build failed" >&2
    return 1
  fi
  mv -f "$tmp" "$bin"
  echo "$hash" >"$bin.hash"
  echo "build.sh: built in $((SECONDS - start))s" >&2
}

if command -v flock >/dev/null 2>&1; then
  exec 9>"$bin.lock"
  flock 9
  build
  exec 9>&-
else
  build
fi

echo "$bin"
