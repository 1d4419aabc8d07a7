#!/usr/bin/env bash
# Builds the writer watch's BPF object from bpf/writers.bpf.c (Debian: clang, libbpf-dev).
# Usage: bpf/build.sh [OUT]   (default: bpf/writers.bpf.o, the committed object)
# Deterministic: run from the repository root with relative paths, DWARF stripped (the BTF
# the loader needs stays), so a rebuild of the same source with the same clang is identical.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bpf/writers.bpf.o}
clang=${CLANG:-clang}
strip=${LLVM_STRIP:-llvm-strip}
command -v "$clang" >/dev/null || { echo "bpf/build.sh: clang is required (apt-get install clang libbpf-dev)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$clang" -O2 -g -target bpf -D__TARGET_ARCH_x86 \
  -I/usr/include/x86_64-linux-gnu -Wall -Werror -ffile-prefix-map="$PWD"=. \
  -c bpf/writers.bpf.c -o "$tmp/writers.bpf.o"
"$strip" -g "$tmp/writers.bpf.o"
mv "$tmp/writers.bpf.o" "$out"
