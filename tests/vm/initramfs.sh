#!/usr/bin/env bash
# Build the test VM's initramfs: busybox, the given programs with the shared
# libraries ldd names, kernel modules with their dependencies, and an /init
# that reports each guest step on the serial console.
#
# Usage: tests/vm/initramfs.sh --kernel DIR --script FILE... --out FILE.cpio.gz
#                              [--module NAME]... [--bin PATH]...
#
#   --kernel DIR   a directory from tests/vm/kernel.sh (lib/modules/<version>/)
#   --script FILE  a guest script; /init sources the scripts, in the order
#                  given, after loading modules (repeat for several)
#   --module NAME  a module to load at boot (e.g. ublk_drv); its dependencies
#                  (from each module's modinfo) come along, built-ins are
#                  skipped, compressed modules are decompressed
#   --bin PATH     a program to install as /bin/<basename of PATH>, symlinks
#                  resolved (so /sbin/mkfs.ext4 stays mkfs.ext4), stripped.
#                  Debian's busybox shell runs its own applet before searching
#                  PATH, so call one that shares an applet's name by its full
#                  path (/bin/blkdiscard)
#
# The guest script sees these shell functions from /init:
#   pass NAME [DETAIL] / fail NAME [DETAIL]  print "STEP NAME PASS|FAIL DETAIL"
#   check NAME FUNC [ARGS...]                run FUNC; PASS with its last output
#                                            line, or FAIL with its last three
#                                            followed by its last 80 lines
#   and returns FUNC's status
# /init prints "STEP load_modules PASS|FAIL ..." first and "GUEST DONE" last,
# then powers the VM off (without waiting more than 10 s for a sync that a
# device left hanging by a failed step would never finish).
set -euo pipefail

kernel='' scripts=() out='' modules=() bins=()
while (($#)); do
  case $1 in
    --kernel) kernel=$2; shift 2 ;;
    --script) scripts+=("$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --module) modules+=("$2"); shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    *) echo "initramfs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$kernel" ] && ((${#scripts[@]})) && [ -n "$out" ] ||
  { echo "initramfs.sh: --kernel, --script and --out are required" >&2; exit 2; }
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "initramfs.sh: busybox is missing; install busybox-static" >&2; exit 1; }
command -v cpio >/dev/null || { echo "initramfs.sh: cpio is missing; install cpio" >&2; exit 1; }

moddir=$(find "$kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -d "$moddir" ] || { echo "initramfs.sh: no lib/modules/<version> under $kernel" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib/modules}
cp -L "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Programs and the libraries they load (ldd prints "name => path (addr)"
# or "path (addr)" for the loader).
copy_libs() {
  local libs lib
  libs=$( (ldd "$1" 2>/dev/null || true) | grep -o '/[^ ]*' || true)  # none when static
  for lib in $libs; do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
copy_libs "$busybox"
for bin in "${bins[@]}"; do
  [ -x "$bin" ] || { echo "initramfs.sh: $bin is not an executable" >&2; exit 1; }
  dest=$root/bin/$(basename "$bin")
  rm -f "$dest"
  cp -L "$bin" "$dest"
  strip --strip-debug "$dest" 2>/dev/null || true
  copy_libs "$bin"
done
[ -e /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

# Modules: name -> file index, dependencies from modinfo, load order in
# /etc/modules (dependencies first).
norm() { echo "${1//-/_}"; }
declare -A file_of=() builtin=() queued=()
while read -r f; do
  b=$(basename "$f"); b=${b%%.ko*}
  file_of[$(norm "$b")]=$f
done < <(find "$moddir/kernel" -name '*.ko*')
if [ -f "$moddir/modules.builtin" ]; then
  while read -r f; do
    b=$(basename "$f"); builtin[$(norm "${b%%.ko*}")]=1
  done <"$moddir/modules.builtin"
fi
decompress() {
  case $1 in
    *.xz) xz -dc "$1" ;;
    *.zst) zstd -qdc "$1" ;;
    *.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
order=()
add_module() {
  local name; name=$(norm "$1")
  [ -n "${queued[$name]:-}" ] && return 0
  if [ -z "${file_of[$name]:-}" ]; then
    [ -n "${builtin[$name]:-}" ] && return 0
    echo "initramfs.sh: module $1 is neither in $moddir nor built in" >&2
    exit 1
  fi
  queued[$name]=1
  decompress "${file_of[$name]}" >"$root/lib/modules/$name.ko"
  local deps
  deps=$(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p' | head -n 1)
  for dep in ${deps//,/ }; do add_module "$dep"; done
  order+=("$name")
}
for m in "${modules[@]}"; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/modules"

cat "${scripts[@]}" >"$root/guest.sh"
cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

pass() { echo "STEP $1 PASS ${2:-}"; }
fail() { echo "STEP $1 FAIL ${2:-}"; }
check() {
  name=$1; shift
  # Not in a subshell: a step may set variables for later steps.
  "$@" >/tmp/step.out 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    pass "$name" "$(tail -n 1 /tmp/step.out)"
  else
    fail "$name" "exit $rc: $(tail -n 3 /tmp/step.out | tr '\n' ' ')"
    # The whole story (diagnostics of a hang are longer than 3 lines).
    echo "--- output of step $name:"
    tail -n 80 /tmp/step.out
    echo "--- end of step $name"
  fi
  return $rc
}

loaded='' failed=''
for m in $(cat /etc/modules); do
  if err=$(insmod "/lib/modules/$m.ko" 2>&1); then loaded="$loaded $m"; else failed="$failed $m($err)"; fi
done
if [ -z "$failed" ]; then pass load_modules "$loaded"; else fail load_modules "$failed"; fi

. /guest.sh
echo "GUEST DONE"
# Bounded: after a failed step a device's I/O may hang, and the VM must
# still power off rather than wait for the test's deadline.
sync & i=0
while kill -0 $! 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
poweroff -f
INIT
chmod +x "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
