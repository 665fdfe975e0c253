# Guest steps of the ublk VM test (sourced by the initramfs /init, which
# provides pass/fail/check). Each step prints one STEP line; the first
# failure ends the run, so later steps are missing, which the test reports.
#
# Device layout (96 MiB ublk device backed by a file in the guest's tmpfs):
#   0-32 MiB ext4 | 40-42 MiB discard checks | 48-56 MiB O_DIRECT pattern
#   64-72 MiB dm-cache metadata | 72-96 MiB dm-cache cache blocks

SERVER=/bin/ublk_memdev
BACKING=/tmp/backing.img
MIB=1048576

# start_server [ARGS...]: run the ublk server in the background and wait for
# its LIVE line; sets SERVER_PID and DEV.
start_server() {
  : >/tmp/server.out
  $SERVER --file $BACKING --size 96M --queues 2 --depth 64 "$@" >/tmp/server.out 2>/tmp/server.err &
  SERVER_PID=$!
  i=0
  while ! grep -q '^LIVE ' /tmp/server.out; do
    if ! kill -0 $SERVER_PID 2>/dev/null; then
      echo "server exited: $(tail -n 3 /tmp/server.err | tr '\n' ' ')"
      return 1
    fi
    i=$((i + 1))
    [ $i -lt 600 ] || { echo "server not live after 60 s"; return 1; }
    sleep 0.1
  done
  DEV=$(sed -n 's/^LIVE \([^ ]*\).*/\1/p' /tmp/server.out)
  [ -b "$DEV" ] || { echo "$DEV is not a block device"; return 1; }
  echo "$(cat /tmp/server.out) pid=$SERVER_PID"
}

# same FILE_A FILE_B: byte-identical files.
same() { cmp "$1" "$2" || { echo "$1 and $2 differ"; return 1; }; }

step_ublk_drv() {
  [ -c /dev/ublk-control ] || { echo "/dev/ublk-control missing"; return 1; }
  echo "/dev/ublk-control present, kernel $(uname -r)"
}

step_ublk_start() {
  start_server || return 1
  case $(cat /tmp/server.out) in
    *" state=LIVE queues=2 depth=64 recoverable=true reissue=true label=ublk_memdev"*) ;;
    *) echo "unexpected device: $(cat /tmp/server.out)"; return 1 ;;
  esac
}

step_ublk_limits() {
  q=/sys/block/$(basename "$DEV")/queue
  lbs=$(cat $q/logical_block_size) pbs=$(cat $q/physical_block_size)
  gran=$(cat $q/discard_granularity) wz=$(cat $q/write_zeroes_max_bytes)
  cache=$(cat $q/write_cache) fua=$(cat $q/fua)
  queues=$(ls /sys/block/$(basename "$DEV")/mq | wc -l)
  depth=$(cat $q/nr_requests)
  size=$(blockdev --getsize64 "$DEV")
  echo "lbs=$lbs pbs=$pbs discard_granularity=$gran write_zeroes_max=$wz cache=$cache fua=$fua queues=$queues nr_requests=$depth size=$size"
  [ "$lbs" = 512 ] && [ "$pbs" = 4096 ] && [ "$gran" = 4096 ] && [ "$wz" -gt 0 ] &&
    [ "$cache" = "write back" ] && [ "$fua" = 1 ] && [ "$queues" = 2 ] &&
    [ "$depth" -ge 64 ] && [ "$size" = $((96 * MIB)) ]
}

# expect_failure PATTERN CMD...: CMD must fail with PATTERN in its output.
expect_failure() {
  pattern=$1; shift
  if out=$("$@" 2>&1); then echo "$* succeeded"; return 1; fi
  case $out in *"$pattern"*) ;; *) echo "$* said: $(echo "$out" | tail -n 1)"; return 1 ;; esac
}

step_ublk_refusals() {
  expect_failure "cannot be recovered: it is LIVE, served by process $SERVER_PID" \
    $SERVER --file /tmp/other.img --size 96M --recover 0 || return 1
  expect_failure "could not query ublk device 7" $SERVER --size 16M --recover 7 || return 1
  expect_failure "did not go live within 0ns" $SERVER --size 16M --timeout 0 || return 1
  left=$(ls /sys/class/ublk-char | tr '\n' ' ')
  [ "$left" = "ublkc0 " ] || { echo "devices after the refusals: $left"; return 1; }
  echo "refused recovering a served device and an unknown id; a start timeout left no device"
}

step_direct_io() {
  dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null || return 1
  dd if=/tmp/pattern of="$DEV" bs=1M seek=48 oflag=direct conv=fsync || { cat /tmp/server.err; return 1; }
  dd if="$DEV" of=/tmp/readback bs=1M skip=48 count=8 iflag=direct 2>/dev/null || return 1
  same /tmp/pattern /tmp/readback || return 1
  echo "8 MiB written and read back with O_DIRECT at 48 MiB"
}

# Write 2 MiB of pattern at 40 MiB, let CMD clear the middle MiB, and check
# that exactly that MiB reads back as zeroes.
clear_middle() {
  dd if=/tmp/pattern of="$DEV" bs=1M seek=40 count=2 oflag=direct 2>/dev/null || return 1
  "$@" || { echo "$* failed"; return 1; }
  dd if="$DEV" of=/tmp/cleared bs=512K skip=80 count=4 iflag=direct 2>/dev/null || return 1
  { dd if=/tmp/pattern bs=512K count=1; dd if=/dev/zero bs=512K count=2
    dd if=/tmp/pattern bs=512K skip=3 count=1; } 2>/dev/null >/tmp/expected
  same /tmp/expected /tmp/cleared
}

step_discard() {
  clear_middle /bin/blkdiscard -o $((40 * MIB + 512 * 1024)) -l $MIB "$DEV" || return 1
  clear_middle /bin/blkdiscard -z -o $((40 * MIB + 512 * 1024)) -l $MIB "$DEV" || return 1
  echo "discard and write-zeroes cleared exactly their range"
}

step_ext4() {
  mkfs.ext4 -q -F "$DEV" 32M || return 1
  mount -t ext4 "$DEV" /mnt || return 1
  mkdir /mnt/dir && cp /tmp/pattern /mnt/pattern || return 1
  for i in $(seq 1 100); do echo "file $i" >/mnt/dir/f$i || return 1; done
  sync && umount /mnt && mount -t ext4 "$DEV" /mnt || return 1
  same /mnt/pattern /tmp/pattern || return 1
  [ "$(cat /mnt/dir/f*| wc -l)" = 100 ] && [ "$(cat /mnt/dir/f57)" = "file 57" ] || return 1
  echo "ext4 made, 101 files written, remounted and verified (left mounted)"
}

step_recovery() {
  id=$(sed -n 's/.* id=\([0-9]*\).*/\1/p' /tmp/server.out)
  old_dev=$DEV
  kill -9 $SERVER_PID
  wait $SERVER_PID 2>/dev/null
  # Writes issued while no server runs must wait for the successor.
  rm -f /tmp/writer.rc
  (dd if=/tmp/pattern of=/mnt/after bs=1M conv=fsync 2>/tmp/writer.err; echo $? >/tmp/writer.rc) &
  writer=$!
  sleep 1
  [ ! -e /tmp/writer.rc ] || { echo "the write finished with no server: $(cat /tmp/writer.rc)"; return 1; }
  t0=$(date +%s)
  start_server --recover "$id" || return 1
  t1=$(date +%s)
  [ "$DEV" = "$old_dev" ] || { echo "recovered as $DEV, not $old_dev"; return 1; }
  grep -q "^LIVE .* state=LIVE .*reissue=true label=ublk_memdev" /tmp/server.out ||
    { echo "recovered device: $(cat /tmp/server.out)"; return 1; }
  wait $writer
  [ "$(cat /tmp/writer.rc)" = 0 ] || { echo "writer failed: $(cat /tmp/writer.err)"; return 1; }
  same /mnt/after /tmp/pattern && same /mnt/pattern /tmp/pattern || return 1
  [ "$(cat /mnt/dir/f99)" = "file 99" ] || return 1
  umount /mnt || return 1
  e2fsck -fn "$DEV" >/tmp/fsck.out 2>&1 || { tail -n 5 /tmp/fsck.out; return 1; }
  dd if="$DEV" of=/tmp/readback bs=1M skip=48 count=8 iflag=direct 2>/dev/null || return 1
  same /tmp/pattern /tmp/readback || return 1
  if dmesg | grep -i 'I/O error' | grep -q "$(basename "$DEV")"; then
    echo "the kernel logged I/O errors on $DEV"; return 1
  fi
  echo "SIGKILLed server replaced by pid $SERVER_PID on $DEV after $((t1 - t0)) s: write pending during the outage completed, files, fsck and raw data intact"
}

# dmsetup without udev: the guest has none, so /dev/mapper stays empty and
# tables name devices by the nodes devtmpfs makes (/dev/dm-N).
dm() { dmsetup --noudevsync --noudevrules "$@"; }
dmdev() { echo "/dev/$(dm info -c --noheadings -o blkdevname "$1")"; }

# Fields of `dmsetup status` for a cache target.
cache_field() { dm status "$1" | awk -v n="$2" '{print $n}'; }

step_dm_cache() {
  dd if=/dev/zero of=/tmp/origin.img bs=1M count=64 2>/dev/null || return 1
  loop=$(losetup -f) && losetup "$loop" /tmp/origin.img || return 1
  dm create pmv-meta --table "0 16384 linear $DEV 131072" || return 1
  dm create pmv-blocks --table "0 49152 linear $DEV 147456" || return 1
  meta=$(dmdev pmv-meta) blocks=$(dmdev pmv-blocks)
  [ -b "$meta" ] && [ -b "$blocks" ] || { echo "no nodes for the linear devices"; return 1; }
  dd if=/dev/zero of="$meta" bs=1M count=1 oflag=direct 2>/dev/null || return 1
  table="0 131072 cache $meta $blocks $loop 128 1 writeback"
  dm create pmv-cached --table "$table smq 0" || return 1
  cached=$(dmdev pmv-cached)
  dd if=/tmp/pattern of="$cached" bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null || return 1
  for pass in 1 2 3; do
    dd if="$cached" of=/tmp/readback bs=1M skip=8 count=8 iflag=direct 2>/dev/null || return 1
    same /tmp/pattern /tmp/readback || return 1
  done
  used=$(cache_field pmv-cached 7) dirty=$(cache_field pmv-cached 14)
  hits="read_hits=$(cache_field pmv-cached 8) write_hits=$(cache_field pmv-cached 10)"
  [ "${used%%/*}" -gt 0 ] || { echo "no block in the cache: $(dm status pmv-cached)"; return 1; }
  # Write the dirty blocks back to the origin, then check the origin itself.
  dm suspend pmv-cached && dm reload pmv-cached --table "$table cleaner 0" && dm resume pmv-cached || return 1
  i=0
  while [ "$(cache_field pmv-cached 14)" != 0 ]; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "cleaner stuck: $(dm status pmv-cached)"; return 1; }
    sleep 0.1
  done
  dm remove pmv-cached && dm remove pmv-blocks && dm remove pmv-meta && losetup -d "$loop" || return 1
  dd if=/tmp/origin.img of=/tmp/readback bs=1M skip=8 count=8 2>/dev/null || return 1
  same /tmp/pattern /tmp/readback || return 1
  echo "dm-cache over $loop with cache on $DEV: cached=${used} dirty=$dirty $hits; read back 3x and written back to the origin intact"
}

step_ublk_stop() {
  kill -TERM $SERVER_PID
  wait $SERVER_PID
  rc=$?
  [ $rc = 0 ] || { echo "server exited $rc: $(tail -n 3 /tmp/server.err)"; return 1; }
  grep -q '^STOPPED' /tmp/server.out || { echo "no STOPPED line"; return 1; }
  [ ! -e /sys/block/$(basename "$DEV") ] || { echo "$DEV still exists"; return 1; }
  [ -z "$(ls /sys/class/ublk-char)" ] || { echo "ublk devices left: $(ls /sys/class/ublk-char)"; return 1; }
  counts=$(grep '^STOPPED' /tmp/server.out)
  case $counts in *" flushes=0 "*) echo "no flush reached the server: $counts"; return 1 ;; esac
  echo "SIGTERM stopped and deleted $DEV; $counts"
}

check ublk_drv step_ublk_drv &&
  check ublk_start step_ublk_start &&
  check ublk_limits step_ublk_limits &&
  check ublk_refusals step_ublk_refusals &&
  check direct_io step_direct_io &&
  check discard step_discard &&
  check ext4 step_ext4 &&
  check recovery step_recovery &&
  check dm_cache step_dm_cache &&
  check ublk_stop step_ublk_stop
