#!/usr/bin/env bash
# Installs what the real-node tests (tests/real_node.rs) and up.sh need, and builds the node
# components (cached: build.sh). Called by scripts/test.sh; run as root.
#   Debian: containerd 1.6 (+ runc), containernetworking-plugins (bridge, host-local, loopback),
#   iptables, podman/buildah (FROM scratch images), musl-tools (the pause binary), redis-server
#   (its binaries go into the Redis image).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../../scripts/apt-lib.sh"
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v podman >/dev/null || need+=(podman buildah)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v redis-server >/dev/null || need+=(redis-server)
# policy-rc.d or not: the packaged containerd service is not used (up.sh runs its own).
apt_install ${need[@]+"${need[@]}"}
start=$SECONDS
bash "$here/build.sh" >/dev/null
echo "setup.sh: node components ready ($((SECONDS - start))s)" >&2
