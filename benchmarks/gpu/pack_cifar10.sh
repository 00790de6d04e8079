#!/usr/bin/env bash
# Re-pack the shared CIFAR-10 JPEG zip as .gpu/cifar10.tar.xz for a lent GPU machine: the
# 60,000 small JPEGs repeat the same headers, so a solid xz tar takes 19 MB instead of 62 and
# fits the 64 MiB a device call may carry. .gpu/ is kept out of git (.git/info/exclude).
#   bash benchmarks/gpu/pack_cifar10.sh [ZIP]
set -eu
src=${1:-../shared/data/cifar10-jpeg.zip}
[ -f "$src" ] || { echo "no CIFAR-10 zip at $src" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unzip -q "$src" -d "$tmp"
mkdir -p .gpu
tar cf - -C "$tmp" train test | xz -9 -T2 > .gpu/cifar10.tar.xz
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
ls -l .gpu/cifar10.tar.xz
