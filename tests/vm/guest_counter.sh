# Guest of the persistent-VM tests (tests/vm_persist.rs, tests/pod_e2e.rs),
# sourced by the initramfs /init after its `STEP load_modules` line: print an
# incrementing counter on the console forever. The host saves the VM, kills
# its QEMU, resumes it in a new QEMU and checks the counter goes on with no
# boot output in between.
#
# With a disk (/dev/vda: the initramfs loads virtio_blk), every tick also
# writes `COUNT n` to its first sector before printing it, bypassing the
# page cache, and first reads the sector back from the disk: a disk that
# does not hold the count written last (a resumed guest whose image lost
# writes acknowledged before the save) prints `DISK ...` instead of going
# on silently, which the host sees in the console.
i=0
disk=''
[ -b /dev/vda ] && disk=/dev/vda
while true; do
  if [ -n "$disk" ]; then
    held=$(dd if=$disk bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1)
    if [ "$i" -gt 0 ] && [ "$held" != "COUNT $i" ]; then
      echo "DISK holds '$held' after COUNT $i"
    fi
  fi
  i=$((i + 1))
  if [ -n "$disk" ]; then
    echo "COUNT $i" | dd of=$disk bs=512 conv=sync oflag=direct 2>/dev/null ||
      echo "DISK write of COUNT $i failed"
  fi
  echo "COUNT $i"
  sleep 0.1
done
