#!/usr/bin/env bash
# Builds the images the test cluster runs, FROM scratch with podman (no registry is reachable),
# and saves each as an archive for `ctr images import`. Prints one archive path per line.
#   localhost/rnt-pause:1            the pod sandbox image: a 10-line C pause (musl-gcc, static)
#   localhost/rnt-redis:<version>    Debian's redis-server and redis-cli with their libraries
#   localhost/redis-node-tuner:real-node   this tree's Containerfile (scripts/build-image.sh)
# pause and redis are cached in ~/.cache/redis-node-tuner/images keyed by their inputs; the
# agent image is rebuilt every time (cargo's cache keeps that quick).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/images"
mkdir -p "$cache"
podman() { command podman --runtime runc "$@"; }

build_ctx() { # tag ctxdir archive
  podman build --layers=false -f "$2/Containerfile" -t "$1" "$2" >&2
  rm -f "$3.tmp"
  podman save -o "$3.tmp" "$1" >&2
  mv -f "$3.tmp" "$3"
}

# pause
pause_src='#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0};
  a.sa_handler = quit; sigaction(SIGINT, &a, 0); sigaction(SIGTERM, &a, 0);
  a.sa_handler = reap; a.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &a, 0);
  for (;;) pause();
}'
h=$( (echo "$pause_src"; musl-gcc --version | head -1) | sha256sum | cut -c1-16)
if [[ ! -f "$cache/pause-$h.tar" ]]; then
  ctx=$(mktemp -d)
  echo "$pause_src" >"$ctx/pause.c"
  musl-gcc -static -Os -o "$ctx/pause" "$ctx/pause.c"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
  build_ctx localhost/rnt-pause:1 "$ctx" "$cache/pause-$h.tar"
  rm -rf "$ctx"
fi
echo "$cache/pause-$h.tar"

# redis: the distribution's binaries and exactly the libraries ldd lists.
bins="/usr/bin/redis-server /usr/bin/redis-cli"
libs=$(ldd $bins | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u)
cf='FROM scratch
COPY root/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /data
ENTRYPOINT ["/usr/bin/redis-server"]'
h=$( (echo "$cf"; for f in $bins $libs; do sha256sum "$(readlink -f "$f")"; done) | sha256sum | cut -c1-16)
ver=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
if [[ ! -f "$cache/redis-$h.tar" ]]; then
  ctx=$(mktemp -d)
  mkdir -p "$ctx/root/data" "$ctx/root/tmp"
  for f in $bins $libs; do install -D -m 0755 "$(readlink -f "$f")" "$ctx/root$f"; done
  chmod 1777 "$ctx/root/tmp"
  echo "$cf" >"$ctx/Containerfile"
  build_ctx "localhost/rnt-redis:$ver" "$ctx" "$cache/redis-$h.tar"
  rm -rf "$ctx"
fi
echo "$cache/redis-$h.tar"

# the agent, from this tree
tag=localhost/redis-node-tuner:real-node
bash "$HERE/../../scripts/build-image.sh" "$tag" >&2
podman save -o "$cache/agent.tar.tmp" "$tag" >&2
mv -f "$cache/agent.tar.tmp" "$cache/agent.tar"
echo "$cache/agent.tar"
