# Guest steps of the ublk VM test that run the real daemon: `pmvisor serve`
# exporting a block region over ublk (sourced by the initramfs /init after
# guest_ublk.sh, which provides nothing this file needs; /init provides
# pass/fail/check). Each step prints one STEP line; the first failure ends
# this chain, so later steps are missing, which the test reports.
#
# The region: 96 MiB virtual, 32 MiB resident quota, swap on, in a pool
# file on the guest's tmpfs. Device layout:
#   0-32 MiB ext4, later 0-48 MiB the working set | 48-56 MiB O_DIRECT
#   pattern | 64-72 MiB dm-cache metadata | 72-96 MiB dm-cache cache blocks

PMV=/bin/pmvisor
PMV_DIR=/tmp/pmv
PMV_LOG=$PMV_DIR/serve.log
MIB=1048576
export PMVISOR_STATE_DIR=$PMV_DIR PMVISOR_SOCKET=/run/pmvisor/test.sock

same() { cmp "$1" "$2" || { echo "$1 and $2 differ"; return 1; }; }

# pmv_start: run `pmvisor serve` in the background and wait until it
# serves its API (after restoring its exports); sets PMV_PID.
pmv_start() {
  : >$PMV_LOG
  PMVISOR_LOG=info $PMV serve >>$PMV_LOG 2>&1 &
  PMV_PID=$!
  i=0
  while ! grep -q 'pmvisor daemon serving' $PMV_LOG; do
    kill -0 $PMV_PID 2>/dev/null || { echo "serve exited: $(tail -n 3 $PMV_LOG)"; return 1; }
    i=$((i + 1))
    [ $i -lt 900 ] || { echo "serve not up after 90 s: $(tail -n 3 $PMV_LOG)"; return 1; }
    sleep 0.1
  done
}

# wait_gone PID SECONDS: wait until PID has exited, at most SECONDS; on a
# timeout print what the daemon logged and where the stuck tasks wait.
wait_gone() {
  i=0
  while kill -0 "$1" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt $(($2 * 10)) ] || { echo "process $1 still there after $2 s"; pmv_dump; return 1; }
    sleep 0.1
  done
  wait "$1" 2>/dev/null
  return 0
}

# pmv_dump: what a hung step needs explained: the end of the daemon's log,
# its threads and where they wait, the tasks stuck in uninterruptible
# sleep, the block layer's view of the device, and the kernel's log.
pmv_dump() {
  echo "--- serve log (last 30 lines):"
  tail -n 30 $PMV_LOG
  for t in /proc/$PMV_PID/task/*; do
    [ -d "$t" ] || continue
    echo "--- daemon thread $(cat $t/comm) $(awk '/^State:/ {print $2}' $t/status) $(tr '\n' '<' <$t/stack 2>/dev/null)"
  done
  for t in /proc/[0-9]*; do
    [ "$(awk '/^State:/ {print $2}' $t/status 2>/dev/null)" = D ] || continue
    echo "--- D: $(cat $t/comm) $(tr '\n' '<' <$t/stack 2>/dev/null)"
  done
  dev=$(basename "${PMV_DEV:-ublkb0}")
  echo "--- /sys/block/$dev/inflight: $(cat /sys/block/$dev/inflight 2>/dev/null)"
  grep -q " /sys/kernel/debug " /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  for f in /sys/kernel/debug/block/$dev/state /sys/kernel/debug/block/$dev/requeue_list \
    /sys/kernel/debug/block/$dev/hctx*/state /sys/kernel/debug/block/$dev/hctx*/busy \
    /sys/kernel/debug/block/$dev/hctx*/dispatch; do
    [ -e "$f" ] && echo "--- $f: $(tr '\n' '<' <$f)"
  done
  echo "--- dmesg:"
  dmesg | tail -n 15
}

# pmv_stop: SIGTERM the daemon; it must exit 0.
pmv_stop() {
  kill -TERM $PMV_PID
  wait $PMV_PID
  rc=$?
  [ $rc = 0 ] || { echo "serve exited $rc: $(tail -n 3 $PMV_LOG)"; return 1; }
}

# json_field NAME < JSON: the value of the first "NAME": string or number.
json_field() { sed -n "s/.*\"$1\": \"*\([^\",]*\)\"*,*$/\1/p" | head -n 1; }

# pmv_device: the device of region d's export, as `export list` reports it,
# when it is being served.
pmv_device() {
  $PMV --json export list >$PMV_DIR/exports.json || return 1
  [ "$(json_field serving <$PMV_DIR/exports.json)" = true ] ||
    { echo "export not serving: $(tr -d '\n' <$PMV_DIR/exports.json)"; return 1; }
  json_field device <$PMV_DIR/exports.json
}

# stat_field NAME: a field of `pmvisor region stats d --json`.
stat_field() { $PMV --json region stats d | json_field "$1"; }

step_pmv_serve() {
  # The target steps' files are done with; the pool gets its own tmpfs.
  rm -f /tmp/backing.img /tmp/origin.img
  mkdir -p $PMV_DIR && mount -t tmpfs -o size=700M tmpfs $PMV_DIR || return 1
  $PMV pool create --size 256M >/dev/null || return 1
  pmv_start || return 1
  $PMV region create d --kind block --size 96M --resident 32M --swap >/dev/null || return 1
  out=$($PMV export add d --ublk) || { echo "$out"; return 1; }
  PMV_DEV=$(pmv_device) || return 1
  case $out in *"as $PMV_DEV."*) ;; *) echo "export add said: $out"; return 1 ;; esac
  [ -b "$PMV_DEV" ] || { echo "$PMV_DEV is not a block device"; return 1; }
  $PMV export list | grep -q "^d  *ublk  *$PMV_DEV  *-  *serving" ||
    { echo "export list: $($PMV export list | tr '\n' ' ')"; return 1; }
  size=$(blockdev --getsize64 "$PMV_DEV")
  [ "$size" = $((96 * MIB)) ] || { echo "$PMV_DEV has $size bytes"; return 1; }
  echo "pmvisor serve (pid $PMV_PID) exports region d as $PMV_DEV ($size bytes)"
}

step_pmv_direct_io() {
  dd if=/dev/urandom of=$PMV_DIR/pattern bs=1M count=8 2>/dev/null || return 1
  dd if=$PMV_DIR/pattern of="$PMV_DEV" bs=1M seek=48 oflag=direct conv=fsync 2>/dev/null || return 1
  dd if="$PMV_DEV" of=$PMV_DIR/readback bs=1M skip=48 count=8 iflag=direct 2>/dev/null || return 1
  same $PMV_DIR/pattern $PMV_DIR/readback || return 1
  echo "8 MiB written and read back with O_DIRECT at 48 MiB"
}

step_pmv_ext4() {
  mkfs.ext4 -q -F "$PMV_DEV" 32M || return 1
  mount -t ext4 "$PMV_DEV" /mnt || return 1
  mkdir /mnt/dir && cp $PMV_DIR/pattern /mnt/pattern || return 1
  for i in $(seq 1 100); do echo "file $i" >/mnt/dir/f$i || return 1; done
  sync && umount /mnt && mount -t ext4 "$PMV_DEV" /mnt || return 1
  same /mnt/pattern $PMV_DIR/pattern || return 1
  [ "$(cat /mnt/dir/f* | wc -l)" = 100 ] && [ "$(cat /mnt/dir/f57)" = "file 57" ] || return 1
  echo "ext4 made, 101 files written, remounted and verified (left mounted)"
}

step_pmv_recovery() {
  old_dev=$PMV_DEV old_pid=$PMV_PID
  kill -9 $PMV_PID
  wait_gone $PMV_PID 30 || return 1
  # An fsync'd write issued while no daemon runs must wait for the next one.
  rm -f $PMV_DIR/writer.rc
  (dd if=$PMV_DIR/pattern of=/mnt/after bs=1M conv=fsync 2>$PMV_DIR/writer.err
    echo $? >$PMV_DIR/writer.rc) &
  writer=$!
  sleep 1
  [ ! -e $PMV_DIR/writer.rc ] || { echo "the write finished with no daemon: rc $(cat $PMV_DIR/writer.rc)"; return 1; }
  t0=$(cut -d' ' -f1 /proc/uptime)
  pmv_start || return 1
  wait_gone $writer 60 || { echo "the pending write never completed"; return 1; }
  t1=$(cut -d' ' -f1 /proc/uptime)
  [ "$(cat $PMV_DIR/writer.rc)" = 0 ] || { echo "writer failed: $(cat $PMV_DIR/writer.err)"; return 1; }
  grep -q 'recovering the ublk device a previous daemon left' $PMV_LOG ||
    { echo "the daemon did not recover the device: $(tail -n 3 $PMV_LOG)"; return 1; }
  PMV_DEV=$(pmv_device) || return 1
  [ "$PMV_DEV" = "$old_dev" ] || { echo "recovered as $PMV_DEV, not $old_dev"; return 1; }
  same /mnt/after $PMV_DIR/pattern && same /mnt/pattern $PMV_DIR/pattern || return 1
  [ "$(cat /mnt/dir/f99)" = "file 99" ] || return 1
  umount /mnt || return 1
  e2fsck -fn "$PMV_DEV" >$PMV_DIR/fsck.out 2>&1 || { tail -n 5 $PMV_DIR/fsck.out; return 1; }
  dd if="$PMV_DEV" of=$PMV_DIR/readback bs=1M skip=48 count=8 iflag=direct 2>/dev/null || return 1
  same $PMV_DIR/pattern $PMV_DIR/readback || return 1
  if dmesg | grep -i 'I/O error' | grep -q "$(basename "$PMV_DEV")"; then
    echo "the kernel logged I/O errors on $PMV_DEV"; return 1
  fi
  echo "SIGKILLed daemon $old_pid replaced by $PMV_PID, which recovered $PMV_DEV, $(awk "BEGIN{print $t1 - $t0}") s after it started: the fsync'd write pending during the outage completed; files, e2fsck -fn and raw data intact"
}

# Recovery again and again: each new daemon's first ublk control commands
# must complete (libublk once lost one in about fifteen restarts under load,
# and the device's I/O then waited for ever), with a read pending each time.
step_pmv_recovery_repeated() {
  for n in 1 2 3 4 5; do
    kill -9 $PMV_PID
    wait_gone $PMV_PID 30 || return 1
    (dd if="$PMV_DEV" of=$PMV_DIR/pending bs=1M skip=48 count=8 iflag=direct 2>/dev/null
      echo $? >$PMV_DIR/reader.rc) &
    reader=$!
    pmv_start || return 1
    wait_gone $reader 60 || { echo "cycle $n: the pending read never completed"; return 1; }
    [ "$(cat $PMV_DIR/reader.rc)" = 0 ] && same $PMV_DIR/pending $PMV_DIR/pattern ||
      { echo "cycle $n: the pending read failed"; return 1; }
    [ "$(pmv_device)" = "$PMV_DEV" ] || { echo "cycle $n: not recovered as $PMV_DEV"; return 1; }
  done
  echo "5 more SIGKILLs, each recovered by the next daemon with an O_DIRECT read pending"
}

step_pmv_working_set() {
  evictions0=$(stat_field evictions) faults0=$(stat_field faults)
  dd if=/dev/urandom of=$PMV_DIR/ws bs=1M count=48 2>/dev/null || return 1
  dd if=$PMV_DIR/ws of="$PMV_DEV" bs=1M oflag=direct conv=fsync 2>/dev/null || return 1
  dd if="$PMV_DEV" of=$PMV_DIR/ws.back bs=1M count=48 iflag=direct 2>/dev/null || return 1
  same $PMV_DIR/ws $PMV_DIR/ws.back || return 1
  rm -f $PMV_DIR/ws.back
  $PMV --json region stats d >$PMV_DIR/stats.json || return 1
  evictions=$(json_field evictions <$PMV_DIR/stats.json) faults=$(json_field faults <$PMV_DIR/stats.json)
  resident=$(json_field resident_blocks <$PMV_DIR/stats.json)
  swapped=$(json_field swapped_blocks <$PMV_DIR/stats.json)
  [ "$evictions" -gt "$evictions0" ] && [ "$faults" -gt "$faults0" ] ||
    { echo "no eviction or fault: $(tr -d '\n' <$PMV_DIR/stats.json)"; return 1; }
  [ "$resident" -le $((32 * MIB / 4096)) ] || { echo "$resident blocks resident over a 32 MiB quota"; return 1; }
  echo "48 MiB through a 32 MiB quota verified: evictions $evictions0->$evictions faults $faults0->$faults resident=$resident swapped=$swapped"
}

step_pmv_discard() {
  used0=$(( $(stat_field resident_blocks) + $(stat_field swapped_blocks) ))
  /bin/blkdiscard -o 0 -l $((16 * MIB)) "$PMV_DEV" || return 1
  used=$(( $(stat_field resident_blocks) + $(stat_field swapped_blocks) ))
  [ $((used0 - used)) -ge $((16 * MIB / 4096)) ] || { echo "discard freed $((used0 - used)) blocks of $used0"; return 1; }
  dd if="$PMV_DEV" of=$PMV_DIR/readback bs=1M count=16 iflag=direct 2>/dev/null || return 1
  dd if=/dev/zero of=$PMV_DIR/zeroes bs=1M count=16 2>/dev/null || return 1
  same $PMV_DIR/zeroes $PMV_DIR/readback || return 1
  dd if="$PMV_DEV" of=$PMV_DIR/readback bs=1M skip=16 count=32 iflag=direct 2>/dev/null || return 1
  dd if=$PMV_DIR/ws of=$PMV_DIR/expected bs=1M skip=16 count=32 2>/dev/null || return 1
  same $PMV_DIR/expected $PMV_DIR/readback || return 1
  rm -f $PMV_DIR/ws $PMV_DIR/expected $PMV_DIR/zeroes
  echo "discarding 16 MiB freed $((used0 - used)) blocks ($used0 -> $used) and reads zeroes; the rest intact"
}

# dmsetup without udev: tables name devices by the nodes devtmpfs makes.
dm() { dmsetup --noudevsync --noudevrules "$@"; }
dmdev() { echo "/dev/$(dm info -c --noheadings -o blkdevname "$1")"; }
cache_field() { dm status "$1" | awk -v n="$2" '{print $n}'; }

step_pmv_dm_cache() {
  dd if=/dev/zero of=$PMV_DIR/origin.img bs=1M count=64 2>/dev/null || return 1
  loop=$(losetup -f) && losetup "$loop" $PMV_DIR/origin.img || return 1
  dm create pmv-meta --table "0 16384 linear $PMV_DEV 131072" || return 1
  dm create pmv-blocks --table "0 49152 linear $PMV_DEV 147456" || return 1
  meta=$(dmdev pmv-meta) blocks=$(dmdev pmv-blocks)
  [ -b "$meta" ] && [ -b "$blocks" ] || { echo "no nodes for the linear devices"; return 1; }
  dd if=/dev/zero of="$meta" bs=1M count=1 oflag=direct 2>/dev/null || return 1
  table="0 131072 cache $meta $blocks $loop 128 1 writeback"
  dm create pmv-cached --table "$table smq 0" || return 1
  cached=$(dmdev pmv-cached)
  dd if=$PMV_DIR/pattern of="$cached" bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null || return 1
  for pass in 1 2 3; do
    dd if="$cached" of=$PMV_DIR/readback bs=1M skip=8 count=8 iflag=direct 2>/dev/null || return 1
    same $PMV_DIR/pattern $PMV_DIR/readback || return 1
  done
  used=$(cache_field pmv-cached 7) dirty=$(cache_field pmv-cached 14)
  [ "${used%%/*}" -gt 0 ] || { echo "no block in the cache: $(dm status pmv-cached)"; return 1; }
  dm suspend pmv-cached && dm reload pmv-cached --table "$table cleaner 0" && dm resume pmv-cached || return 1
  i=0
  while [ "$(cache_field pmv-cached 14)" != 0 ]; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "cleaner stuck: $(dm status pmv-cached)"; return 1; }
    sleep 0.1
  done
  dm remove pmv-cached && dm remove pmv-blocks && dm remove pmv-meta && losetup -d "$loop" || return 1
  dd if=$PMV_DIR/origin.img of=$PMV_DIR/readback bs=1M skip=8 count=8 2>/dev/null || return 1
  same $PMV_DIR/pattern $PMV_DIR/readback || return 1
  rm -f $PMV_DIR/origin.img
  echo "dm-cache over $loop with cache on $PMV_DEV: cached=$used dirty=$dirty; read back 3x and written back to the origin intact"
}

step_pmv_sigterm() {
  pmv_stop || return 1
  grep -q 'flushed block region' $PMV_LOG || { echo "no flush at shutdown: $(tail -n 3 $PMV_LOG)"; return 1; }
  [ ! -e /sys/block/$(basename "$PMV_DEV") ] || { echo "$PMV_DEV still exists"; return 1; }
  [ -z "$(ls /sys/class/ublk-char)" ] || { echo "ublk devices left: $(ls /sys/class/ublk-char)"; return 1; }
  echo "SIGTERM: exit 0, $PMV_DEV stopped and deleted, regions flushed"
}

# After a clean stop nothing is left to recover: the recorded export gets a
# new device with the same data. Removing the export of a SIGKILLed daemon
# with no daemon running deletes the device it left; `export remove` through
# the daemon deletes the device it serves.
step_pmv_restart() {
  pmv_start || return 1
  ! grep -q 'recovering the ublk device' $PMV_LOG || { echo "recovered a device after a clean stop"; return 1; }
  PMV_DEV=$(pmv_device) || return 1
  dd if="$PMV_DEV" of=$PMV_DIR/readback bs=1M skip=48 count=8 iflag=direct 2>/dev/null || return 1
  same $PMV_DIR/pattern $PMV_DIR/readback || return 1
  kill -9 $PMV_PID
  wait_gone $PMV_PID 30 || return 1
  [ -e /sys/block/$(basename "$PMV_DEV") ] || { echo "$PMV_DEV vanished with its daemon"; return 1; }
  $PMV export remove d >/dev/null || return 1
  [ -z "$(ls /sys/class/ublk-char)" ] || { echo "offline export remove left $(ls /sys/class/ublk-char)"; return 1; }
  pmv_start || return 1
  [ "$($PMV --json export list | tr -d ' \n')" = "[]" ] || { echo "exports after removal: $($PMV export list)"; return 1; }
  $PMV export add d --ublk --queues 1 --depth 32 >/dev/null || return 1
  PMV_DEV=$(pmv_device) || return 1
  [ "$(ls /sys/block/$(basename "$PMV_DEV")/mq | wc -l)" = 1 ] || { echo "--queues 1 not honoured"; return 1; }
  $PMV export remove d >/dev/null || return 1
  [ ! -e /sys/block/$(basename "$PMV_DEV") ] || { echo "$PMV_DEV still exists after export remove"; return 1; }
  [ "$($PMV --json export list | tr -d ' \n')" = "[]" ] || { echo "exports left: $($PMV export list)"; return 1; }
  pmv_stop || return 1
  echo "a clean restart served the recorded export as a new device, data intact; offline export remove deleted the device a SIGKILLed daemon left; export add --queues 1 and export remove through the daemon; exit 0"
}

check pmv_serve step_pmv_serve &&
  check pmv_direct_io step_pmv_direct_io &&
  check pmv_ext4 step_pmv_ext4 &&
  check pmv_recovery step_pmv_recovery &&
  check pmv_recovery_repeated step_pmv_recovery_repeated &&
  check pmv_working_set step_pmv_working_set &&
  check pmv_discard step_pmv_discard &&
  check pmv_dm_cache step_pmv_dm_cache &&
  check pmv_sigterm step_pmv_sigterm &&
  check pmv_restart step_pmv_restart
