#!/usr/bin/env bash
# Fetch Debian's 6.12 cloud kernel for the test VM, once, into the VM cache.
#
# Usage: tests/vm/kernel.sh
# Prints the directory that holds `vmlinuz` and `lib/modules/<version>/` on
# its last line of stdout. The cache is $PMVISOR_VM_CACHE, by default
# target/vm-cache/ in the repository. The package is the newest
# linux-image-6.12.*-cloud-amd64-unsigned that apt knows (scripts/setup adds
# bookworm-backports when the release itself has none); it is fetched with
# `apt-get download` and unpacked with `dpkg-deb`, nothing else touches the
# network. When apt knows no such package but the cache holds one, the
# newest cached kernel is used.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${PMVISOR_VM_CACHE:-$repo/target/vm-cache}
mkdir -p "$cache"

newest_cached() {
  find "$cache" -mindepth 2 -maxdepth 2 -name vmlinuz -printf '%h\n' 2>/dev/null | sort -V | tail -n 1
}

pkg=$(apt-cache search --names-only '^linux-image-6\.12\..*-cloud-amd64-unsigned$' 2>/dev/null |
  awk '{print $1}' | sort -V | tail -n 1)

if [ -z "$pkg" ]; then
  dir=$(newest_cached)
  if [ -n "$dir" ]; then
    echo "$dir"
    exit 0
  fi
  echo "kernel.sh: apt knows no linux-image-6.12.*-cloud-amd64-unsigned package; run scripts/setup as root (it adds bookworm-backports) and try again." >&2
  exit 1
fi

dir=$cache/$pkg
if [ -f "$dir/vmlinuz" ]; then
  echo "$dir"
  exit 0
fi

work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kernel.sh: downloading $pkg (once) into $cache" >&2
# apt-get download drops privileges to _apt where it can; let it write here.
chmod 777 "$work"
(cd "$work" && apt-get download -q "$pkg" >&2)
deb=$(find "$work" -maxdepth 1 -name '*.deb' | head -n 1)
[ -n "$deb" ] || { echo "kernel.sh: apt-get download produced no .deb for $pkg" >&2; exit 1; }
mkdir "$work/root"
dpkg-deb -x "$deb" "$work/root"
vmlinuz=$(find "$work/root/boot" -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || { echo "kernel.sh: $pkg holds no /boot/vmlinuz-*" >&2; exit 1; }
mkdir "$work/out"
mv "$vmlinuz" "$work/out/vmlinuz"
mkdir -p "$work/out/lib"
mv "$work/root/lib/modules" "$work/out/lib/modules" 2>/dev/null ||
  mv "$work/root/usr/lib/modules" "$work/out/lib/modules"
mv "$work/out" "$dir"
echo "$dir"
