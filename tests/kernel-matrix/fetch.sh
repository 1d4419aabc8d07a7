#!/usr/bin/env bash
# Fetches a real Debian kernel for the kernel matrix and prints the path of its vmlinuz:
#
#   tests/kernel-matrix/fetch.sh 6.1     # Debian 12's kernel (the meta-package linux-image-amd64)
#   tests/kernel-matrix/fetch.sh 6.12    # the bookworm 6.12 (meta-package linux-image-6.12-amd64)
#   tests/kernel-matrix/fetch.sh 6.1 6.12  # both, one path per line
#   tests/kernel-matrix/fetch.sh linux-image-6.1.0-57-amd64   # an exact package
#
# The meta-package is resolved against the local apt lists (no network) to the exact image
# package and version; the vmlinuz (and the kernel's config) is cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/redis-node-tuner/kernels/<package>_<version>/, so a warm run
# downloads nothing. A cold one runs `apt-get download` (about 70 MB for 6.1, 105 MB for 6.12)
# and extracts only ./boot from the package (no modules: the matrix needs none).
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: $0 6.1|6.12|PACKAGE..." >&2; exit 2; }
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/kernels
mkdir -p "$cache"
for tool in apt-cache apt-get dpkg-deb tar flock; do
  command -v "$tool" >/dev/null || { echo "fetch.sh: $tool is required (a Debian system)" >&2; exit 1; }
done

# Resolves a meta-package to the image package it depends on (first Depends: linux-image-*).
resolve_meta() {
  apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1
}

updated=0
apt_update_once() {
  [[ $updated == 1 ]] && return 0
  [[ $(id -u) -eq 0 ]] || { echo "fetch.sh: the apt lists do not know $1: run apt-get update as root" >&2; exit 1; }
  echo "fetch.sh: apt-get update (the lists do not know $1)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  updated=1
}

fetch_one() {
  local want=$1 meta pkg version dir tmp
  case "$want" in
    6.1) meta=linux-image-amd64 ;;
    6.12) meta=linux-image-6.12-amd64 ;;
    linux-image-*) meta= ; pkg=$want ;;
    *) echo "fetch.sh: unknown kernel $want (6.1, 6.12 or a linux-image-* package)" >&2; exit 2 ;;
  esac
  if [[ -n $meta ]]; then
    pkg=$(resolve_meta "$meta")
    if [[ -z $pkg ]]; then
      apt_update_once "$meta"
      pkg=$(resolve_meta "$meta")
    fi
    [[ -n $pkg ]] || { echo "fetch.sh: apt serves no $meta (is deb.debian.org bookworm in the sources?)" >&2; exit 1; }
  fi
  version=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
  if [[ -z $version || $version == "(none)" ]]; then
    apt_update_once "$pkg"
    version=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
  fi
  [[ -n $version && $version != "(none)" ]] || { echo "fetch.sh: apt serves no $pkg" >&2; exit 1; }
  dir=$cache/${pkg}_${version}
  if [[ ! -f $dir/vmlinuz ]]; then
    # One fetch of a version at a time (the test and scripts/test.sh may race).
    exec 7>"$cache/.lock"
    flock 7
    if [[ ! -f $dir/vmlinuz ]]; then
      echo "fetch.sh: downloading $pkg $version" >&2
      tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
      # shellcheck disable=SC2064
      trap "rm -rf '$tmp'" EXIT
      (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$version" >&2)
      local deb
      deb=$(ls "$tmp"/*.deb)
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/*'
      mkdir -p "$tmp/out"
      mv "$tmp"/boot/vmlinuz-* "$tmp/out/vmlinuz"
      mv "$tmp"/boot/config-* "$tmp/out/config" 2>/dev/null || true
      echo "$pkg $version" >"$tmp/out/package"
      rm -rf "$dir"
      mv "$tmp/out" "$dir"
      rm -rf "$tmp"
      trap - EXIT
    fi
    exec 7>&-
  fi
  echo "$dir/vmlinuz"
}

for k in "$@"; do fetch_one "$k"; done
