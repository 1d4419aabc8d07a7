#!/usr/bin/env bash
# Prints the prometheus-operator CRDs that deploy/base/monitoring needs (PodMonitor,
# PrometheusRule) on stdout, taken from the upstream Go module through the Go module proxy
# (checksum pinned below; `go` verifies the download, this script verifies the pin).
#
#   deploy/crds/fetch.sh | kubectl apply --server-side -f -          # PodMonitor + PrometheusRule
#   deploy/crds/fetch.sh podmonitors servicemonitors                 # any CRDs of the module
#   PROMETHEUS_OPERATOR_VERSION=v0.86.0 PROMETHEUS_OPERATOR_SUM=h1:... deploy/crds/fetch.sh
#
# Only for clusters without prometheus-operator (or for tests): an installed operator ships
# its own CRDs. Needs `go` (>= 1.21) and GOPROXY access; uses the normal GOMODCACHE, so a
# second run is offline. All go output goes to stderr.
set -euo pipefail

version="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# The go.sum hash of github.com/prometheus-operator/prometheus-operator at $version.
want_sum="${PROMETHEUS_OPERATOR_SUM:-h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=}"
module=github.com/prometheus-operator/prometheus-operator

command -v go >/dev/null 2>&1 || { echo "fetch.sh: 'go' not found in PATH" >&2; exit 1; }

crds=("$@")
[ ${#crds[@]} -gt 0 ] || crds=(podmonitors prometheusrules)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# A throwaway module, so `go mod download` has a main module and no project go.mod applies.
(cd "$tmp" && GOWORK=off go mod init fetch-prometheus-operator-crds >/dev/null 2>&1)
json="$(cd "$tmp" && GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod" go mod download -json "$module@$version")" || {
  echo "fetch.sh: go mod download $module@$version failed:" >&2
  printf '%s\n' "${json:-}" >&2
  exit 1
}

field() { printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }
err="$(field Error)"
[ -z "$err" ] || { echo "fetch.sh: go mod download $module@$version: $err" >&2; exit 1; }
dir="$(field Dir)"
sum="$(field Sum)"
if [ "$sum" != "$want_sum" ]; then
  echo "fetch.sh: $module@$version has checksum $sum, expected $want_sum" >&2
  exit 1
fi

for crd in "${crds[@]}"; do
  f="$dir/example/prometheus-operator-crd/monitoring.coreos.com_${crd}.yaml"
  [ -f "$f" ] || { echo "fetch.sh: no CRD $crd in $module@$version ($f)" >&2; exit 1; }
  case "$(head -n1 "$f")" in
    ---) ;;
    *) echo "---" ;;
  esac
  cat "$f"
done
