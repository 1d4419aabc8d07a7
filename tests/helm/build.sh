#!/usr/bin/env bash
# Build the Helm CLI of the chart tests (tests/helm.rs) into the cache and print its path on the
# last line of stdout:
#
#   tests/helm/build.sh            # -> ~/.cache/redis-node-tuner/helm
#   RNT_HELM_BIN=/some/path tests/helm/build.sh
#
# helm.sh/helm/v3 at the version this directory's go.mod pins (a `tool` line), from the Go
# module proxy, stamped like upstream's Makefile does (its version, and the Kubernetes version of
# its client-go as the default of `helm template`'s .Capabilities). Rebuilds only when this
# script, go.mod, go.sum or the Go toolchain changed (a hash is kept in "$BIN.hash"); built under
# a lock, so concurrent callers build it once. The first build takes about 3 minutes on 2 cores.
# All go output goes to stderr; stdout carries only the binary path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${RNT_HELM_BIN:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/helm}"

command -v go >/dev/null 2>&1 || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
export CGO_ENABLED=0 GOWORK=off GOFLAGS=
mkdir -p "$(dirname "$bin")"

hash="$(
  cd "$here"
  go env GOVERSION GOOS GOARCH CGO_ENABLED
  for f in build.sh go.mod go.sum; do echo "== $f"; cat "$f"; done
)"
hash="$(sha256sum <<<"$hash" | cut -d' ' -f1)"

up_to_date() {
  [[ -x "$bin" && -f "$bin.hash" && "$(cat "$bin.hash")" == "$hash" ]]
}

build() {
  # Re-check under the lock: a concurrent caller may have just built it.
  if up_to_date; then return 0; fi
  local start=$SECONDS version kmod kminor ldflags tmp="$bin.tmp.$$"
  version="$(cd "$here" && go list -mod=readonly -m -f '{{.Version}}' helm.sh/helm/v3)"
  kmod="$(cd "$here" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/client-go)"
  kminor="${kmod#v0.}"
  kminor="${kminor%%.*}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
  done
  echo "build.sh: building helm $version..." >&2
  if ! (cd "$here" && go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" \
    -o "$tmp" helm.sh/helm/v3/cmd/helm) >&2; then
    rm -f "$tmp"
    echo "build.sh: go build failed" >&2
    return 1
  fi
  mv -f "$tmp" "$bin"
  echo "$hash" >"$bin.hash"
  echo "build.sh: built in $((SECONDS - start))s" >&2
}

exec 9>"$bin.lock"
flock 9
build
exec 9>&-
echo "$bin"
