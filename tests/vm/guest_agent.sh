# Guest steps of the agent VM test (tests/vm_agent.rs), sourced by the
# initramfs /init, which provides pass/fail/check. Each step prints one STEP
# line; the first failure ends the chain, so later steps are missing, which
# the test reports.
#
# The host exports a pmvisor block region over NBD as a virtio-blk disk
# with serial pmvagent.serial and attaches its agent to the virtio-serial
# port org.pmvisor.agent.0. The kernel command line names the disk and the
# ranges (in 4 KiB blocks, the agent's syntax) this script fills with
# random data and hints:
#   pmvagent.serial=SERIAL pmvagent.disposable=RANGES pmvagent.cold=RANGES
#   pmvagent.hot=RANGES
# Where the host must act, a step prints `HOST shrink` or `HOST grow` on
# the console and reads the host's answer from it: `ok ...` to go on,
# anything else to stop.

AGENT=/bin/pmvisor-agent
PORT_NAME=org.pmvisor.agent.0
PORT=/dev/virtio-ports/$PORT_NAME
PAT=/tmp/patterns

# cmdline_value KEY: the value of KEY=VALUE on the kernel command line.
cmdline_value() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | head -n 1; }

SERIAL=$(cmdline_value pmvagent.serial)
DISPOSABLE=$(cmdline_value pmvagent.disposable)
COLD=$(cmdline_value pmvagent.cold)
HOT=$(cmdline_value pmvagent.hot)

# for_ranges RANGES FUNC: FUNC START COUNT for each range of RANGES
# (FIRST-LAST, START+COUNT or N, comma-separated).
for_ranges() {
  for r in $(echo "$1" | tr ',' ' '); do
    case $r in
      *-*) start=${r%-*}; count=$((${r#*-} - start + 1)) ;;
      *+*) start=${r%+*}; count=${r#*+} ;;
      *) start=$r; count=1 ;;
    esac
    "$2" "$start" "$count" || return 1
  done
}

# blocks RANGES: how many 4 KiB blocks RANGES cover.
count_range() { total=$((total + $2)); }
blocks() { total=0; for_ranges "$1" count_range; echo $total; }

# read_blocks START COUNT FILE: O_DIRECT read of blocks from the disk.
read_blocks() { dd if="$DEV" of="$3" bs=4096 skip="$1" count="$2" iflag=direct 2>/dev/null; }

write_pattern() {
  dd if=/dev/urandom of=$PAT/$1 bs=4096 count="$2" 2>/dev/null &&
    dd if=$PAT/$1 of="$DEV" bs=4096 seek="$1" oflag=direct conv=fsync 2>/dev/null &&
    read_blocks "$1" "$2" /tmp/readback && cmp -s $PAT/$1 /tmp/readback ||
    { echo "blocks $1+$2 did not read back what was written"; return 1; }
}

expect_pattern() {
  read_blocks "$1" "$2" /tmp/readback || { echo "reading blocks $1+$2 failed"; return 1; }
  cmp -s $PAT/$1 /tmp/readback || { echo "blocks $1+$2 lost their data"; return 1; }
}

expect_zeros() {
  read_blocks "$1" "$2" /tmp/readback || { echo "reading blocks $1+$2 failed"; return 1; }
  dd if=/dev/zero of=/tmp/zeros bs=4096 count="$2" 2>/dev/null
  cmp -s /tmp/zeros /tmp/readback || { echo "blocks $1+$2 do not read as zeros"; return 1; }
}

# ask_host WHAT: tell the host to act and wait for its answer (the host
# reads the console; check sends our stdout to a file, hence /dev/console).
ask_host() {
  echo "HOST $1" >/dev/console
  read -r -t 120 answer || { echo "no answer from the host within 120 s"; return 1; }
  echo "host: $answer"
  case $answer in ok*) ;; *) return 1 ;; esac
}

# agent_field NAME: a number from `pmvisor-agent stats --json` (one device).
agent_field() { $AGENT stats --json | sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" | head -n 1; }

step_agent_devices() {
  [ -n "$SERIAL" ] && [ -n "$DISPOSABLE" ] && [ -n "$COLD" ] && [ -n "$HOT" ] ||
    { echo "the kernel command line lacks pmvagent.*: $(cat /proc/cmdline)"; return 1; }
  i=0 DEV=''
  while [ -z "$DEV" ]; do
    for s in /sys/block/*/serial; do
      [ "$(cat "$s" 2>/dev/null)" = "$SERIAL" ] && DEV=/dev/$(basename "$(dirname "$s")")
    done
    i=$((i + 1))
    [ -n "$DEV" ] || [ $i -lt 300 ] || { echo "no disk with serial $SERIAL after 30 s: $(ls /sys/block)"; return 1; }
    [ -n "$DEV" ] || sleep 0.1
  done
  # No udev here: make the /dev/virtio-ports link the agent looks for.
  i=0 port=''
  while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = $PORT_NAME ] && port=$(basename "$p")
    done
    i=$((i + 1))
    [ -n "$port" ] || [ $i -lt 300 ] || { echo "no virtio-serial port $PORT_NAME after 30 s"; return 1; }
    [ -n "$port" ] || sleep 0.1
  done
  mkdir -p /dev/virtio-ports && ln -sf /dev/$port $PORT || return 1
  listed=$($AGENT devices | grep "^$SERIAL[[:space:]]") || { echo "pmvisor-agent devices: $($AGENT devices)"; return 1; }
  echo "disk $DEV has serial $SERIAL ($(blockdev --getsize64 "$DEV") bytes, agent lists: $listed); port $PORT -> /dev/$port"
}

step_agent_write() {
  mkdir -p $PAT
  for_ranges "$DISPOSABLE,$COLD,$HOT" write_pattern || return 1
  echo "wrote and read back random data with O_DIRECT: disposable $DISPOSABLE, cold $COLD, hot $HOT"
}

step_agent_start() {
  $AGENT run --connect serial:$PORT </dev/null >/tmp/agent.log 2>&1 &
  AGENT_PID=$!
  i=0
  while [ ! -S /run/pmvisor-agent.sock ]; do
    kill -0 $AGENT_PID 2>/dev/null || { echo "the agent exited: $(tail -n 3 /tmp/agent.log)"; return 1; }
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "no hint socket after 30 s: $(tail -n 3 /tmp/agent.log)"; return 1; }
    sleep 0.1
  done
  echo "pmvisor-agent (pid $AGENT_PID) runs, connecting to serial:$PORT"
}

step_agent_hints() {
  $AGENT hint --device "$SERIAL" --hot "$HOT" || return 1
  $AGENT hint --device "$SERIAL" --cold "$COLD" || return 1
  $AGENT hint --device "$SERIAL" --disposable "$DISPOSABLE" || return 1
  hot=$(agent_field hot_blocks) cold=$(agent_field cold_blocks) disp=$(agent_field disposable_blocks)
  [ "$hot" = "$(blocks "$HOT")" ] && [ "$cold" = "$(blocks "$COLD")" ] &&
    [ "$disp" = "$(blocks "$DISPOSABLE")" ] ||
    { echo "agent stats: $($AGENT stats)"; return 1; }
  echo "the agent knows $hot hot, $cold cold and $disp disposable blocks"
}

step_host_shrink() { ask_host shrink; }

# After the shrink: the dropped (disposable) blocks read zeros, the hot ones
# their data (the cold ones, in swap, are left there for the grow); then
# the cold ranges are hinted hot, so that the grow brings them back.
step_verify_shrunk() {
  for_ranges "$DISPOSABLE" expect_zeros || return 1
  for_ranges "$HOT" expect_pattern || return 1
  given=$(agent_field given_away_blocks) answered=$(agent_field evict_requests_answered)
  expected=$(($(blocks "$DISPOSABLE") + $(blocks "$COLD")))
  [ "$given" = "$expected" ] && [ "$answered" = 1 ] ||
    { echo "agent stats after the shrink: $($AGENT stats)"; return 1; }
  $AGENT hint --device "$SERIAL" --hot "$COLD" >/dev/null || return 1
  echo "disposable blocks read zeros, hot ones their data; the agent gave away $given blocks in $answered answer; cold ranges now hinted hot"
}

step_host_grow() { ask_host grow; }

step_verify_grown() {
  for_ranges "$DISPOSABLE" expect_zeros || return 1
  for_ranges "$COLD" expect_pattern || return 1
  for_ranges "$HOT" expect_pattern || return 1
  given=$(agent_field given_away_blocks) grows=$(agent_field grow_notices_answered)
  [ "$given" = "$(blocks "$DISPOSABLE")" ] && [ "$grows" = 1 ] ||
    { echo "agent stats after the grow: $($AGENT stats)"; return 1; }
  echo "after the grow: disposable blocks read zeros, cold and hot ones their data; the agent asked back the cold ones ($given blocks still given away)"
}

step_agent_stop() {
  kill -TERM $AGENT_PID
  wait $AGENT_PID
  rc=$?
  grep -qi 'panic' /tmp/agent.log && { echo "the agent panicked: $(grep -i panic /tmp/agent.log)"; return 1; }
  echo "the agent exited with $rc after SIGTERM; its log has $(wc -l </tmp/agent.log) lines"
}

check agent_devices step_agent_devices &&
  check agent_write step_agent_write &&
  check agent_start step_agent_start &&
  check agent_hints step_agent_hints &&
  check host_shrink step_host_shrink &&
  check verify_shrunk step_verify_shrunk &&
  check host_grow step_host_grow &&
  check verify_grown step_verify_grown &&
  check agent_stop step_agent_stop
