#!/usr/bin/env bash
# Build the node components of the real-node test cluster into a cache directory and print
# that directory on the last line of stdout:
#
#   tests/cluster/build.sh     # -> ~/.cache/redis-node-tuner/node/{kubelet,kube-scheduler,kube-controller-manager,crictl}
#
# kubelet, kube-scheduler and kube-controller-manager come from k8s.io/kubernetes at the version
# tests/apiserver pins (this directory's go.mod is that go.mod plus three `tool` lines, no
# version changed), so they share its GOCACHE: after the apiserver build they take ~3 min, not
# ~10. crictl (sigs.k8s.io/cri-tools, not packaged by Debian 12) is built from the Go module
# proxy: tear-down removes pod sandboxes through CRI with it, so that CNI cleans up.
# Rebuilds only when this script, go.mod, go.sum or the Go toolchain changed ("$DIR/hash").
# All go output goes to stderr; stdout carries only the directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${RNT_NODE_BIN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/node}"
crictl_version=v1.34.0

command -v go >/dev/null 2>&1 || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
export CGO_ENABLED=0 GOWORK=off GOFLAGS=
mkdir -p "$out"

hash="$(
  cd "$here"
  go env GOVERSION GOOS GOARCH CGO_ENABLED
  echo "crictl $crictl_version"
  for f in build.sh go.mod go.sum; do echo "== $f"; cat "$f"; done
)"
hash="$(sha256sum <<<"$hash" | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$out/hash" && "$(cat "$out/hash")" == "$hash" ]] &&
    for b in kubelet kube-scheduler kube-controller-manager crictl; do [[ -x "$out/$b" ]] || return 1; done
}

build() {
  if up_to_date; then return 0; fi
  rm -f "$out/hash"
  local start=$SECONDS kver major minor ldflags pkg cmd
  kver="$(cd "$here" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)"
  major="${kver#v}"; major="${major%%.*}"
  minor="${kver#v*.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  for cmd in kube-scheduler kube-controller-manager kubelet; do
    echo "build.sh: building $cmd $kver..." >&2
    (cd "$here" && go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" \
      -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") >&2
    mv -f "$out/$cmd.tmp" "$out/$cmd"
  done
  echo "build.sh: building crictl $crictl_version..." >&2
  local gobin
  gobin="$(mktemp -d)"
  (cd / && GOBIN="$gobin" go install -trimpath -ldflags="-s -w" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$crictl_version") >&2
  mv -f "$gobin/crictl" "$out/crictl"
  rmdir "$gobin"
  echo "$hash" >"$out/hash"
  echo "build.sh: node components built in $((SECONDS - start))s" >&2
}

exec 9>"$out.lock"
flock 9
build
exec 9>&-
echo "$out"
