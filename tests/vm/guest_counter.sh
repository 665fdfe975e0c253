# Guest of the persistent-VM test (tests/vm_persist.rs), sourced by the
# initramfs /init after its `STEP load_modules` line: print an incrementing
# counter on the console forever. The host saves the VM, kills its QEMU,
# resumes it in a new QEMU and checks the counter goes on with no boot
# output in between.
i=0
while true; do
  i=$((i + 1))
  echo "COUNT $i"
  sleep 0.1
done
