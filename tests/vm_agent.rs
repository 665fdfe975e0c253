//! Guest-directed elasticity end to end (SPEC §5–§6): `pmvisor serve` on
//! the host, a QEMU TCG guest with the region as a virtio-blk disk and
//! `pmvisor-agent` on a virtio-serial port, hints given in the guest, and
//! resizes whose victims the guest chose.
//!
//! The host runs the daemon in a sandbox in memory: a 64 MiB block region,
//! fully resident, swap on, exported over NBD on a Unix socket, its agent
//! attached at `serial:PATH` (QEMU's chardev socket), and boots the test VM
//! (tests/common/vm.rs) with the arguments `pmvisor region qemu-args`
//! prints. The guest (tests/vm/guest_agent.sh) finds the disk by serial,
//! writes random data with O_DIRECT to the [`DISPOSABLE`], [`COLD`] and
//! [`HOT`] ranges, starts the agent, gives those hints and asks the host
//! to shrink (a `HOST shrink` line on the serial console; the host answers
//! on the console's input).
//!
//! - Shrink: the quota goes down by exactly the disposable and cold blocks.
//!   The agent must name them all — disposable as `drop`, cold as `keep` —
//!   and the host choose none. The guest then reads zeros from the dropped
//!   blocks and its data from the hot ones, and hints the cold ranges hot.
//! - Grow: back to 64 MiB; the agent asks back the hinted-hot blocks, so
//!   the cold blocks come back from swap. The guest reads its data from
//!   the cold and hot blocks without a single fault, and zeros from the
//!   dropped ones.
//!
//! Each guest step prints `STEP name PASS|FAIL detail`; the host's checks
//! are answered to the guest (`ok ...` or a stop) and collected. The test
//! asserts every step passed and every host check held, and prints the
//! guest console and the daemon log when not.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::vm::{self, Vm};
use common::{Daemon, Sandbox};

/// The region; its disk serial is `pmv-` and this.
const REGION: &str = "vmagent";
/// The region's virtual size, in bytes.
const SIZE: u64 = 64 << 20;
/// 4 KiB blocks the guest writes and hints disposable: 288 blocks.
const DISPOSABLE: &str = "1024-1279,7000+32";
/// ... cold: 512 blocks.
const COLD: &str = "2048-2559";
/// ... hot: 512 blocks.
const HOT: &str = "256-511,4096-4351";
/// Block counts of the ranges above.
const DISPOSABLE_BLOCKS: u64 = 288;
const COLD_BLOCKS: u64 = 512;
const HOT_BLOCKS: u64 = 512;
const BLOCK: u64 = 4096;

/// How long the VM may run, boot included.
const VM_DEADLINE: Duration = Duration::from_secs(240);
/// How long the host waits for the agent to connect.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// The guest steps, in order; every one must report PASS.
const STEPS: [&str; 10] = [
    "load_modules",
    "agent_devices",
    "agent_write",
    "agent_start",
    "agent_hints",
    "host_shrink",
    "verify_shrunk",
    "host_grow",
    "verify_grown",
    "agent_stop",
];

#[test]
fn a_shrink_evicts_what_the_guest_agent_chose_and_a_grow_brings_back_its_hot_blocks() {
    if let Err(why) = vm::check_tools(&vm::VM_TOOLS) {
        return vm::skip("agent", &why);
    }
    let kernel = match vm::kernel() {
        Ok(kernel) => kernel,
        Err(why) => return vm::skip("agent", &why),
    };
    let agent = vm::cargo_build("pmvisor-agent", "bin", "pmvisor-agent");
    let sandbox = Sandbox::in_memory();
    let initrd = sandbox.path("initrd.gz");
    vm::initramfs(
        &kernel,
        &["tests/vm/guest_agent.sh"],
        &initrd,
        &[agent.display().to_string()],
        &["virtio_blk", "virtio_console"],
    );

    let mut host = Host::start(&sandbox);
    let serial = format!("pmv-{REGION}");
    let append = format!(
        "pmvagent.serial={serial} pmvagent.disposable={DISPOSABLE} pmvagent.cold={COLD} \
         pmvagent.hot={HOT}"
    );
    let started = Instant::now();
    let deadline = started + VM_DEADLINE;
    let mut vm = Vm::boot(&kernel.join("vmlinuz"), &initrd, &append, "512M", &host.qemu_args);
    let mut problems = Vec::new();
    while let Some(line) = vm.next_line(deadline) {
        let Some(request) = line.find("HOST ").map(|at| line[at + 5..].trim().to_string()) else {
            continue;
        };
        let checked = match request.as_str() {
            "shrink" => host.shrink(),
            "grow" => host.grow(),
            other => Err(format!("the guest asked for {other:?}, which the host does not know")),
        };
        match checked {
            Ok(summary) => {
                eprintln!("host {request} at {:.1} s: {summary}", started.elapsed().as_secs_f64());
                vm.send(&format!("ok {request}"));
            }
            Err(problem) => {
                problems.push(format!("host {request}: {problem}"));
                vm.send("stop: the host's checks failed");
            }
        }
    }
    let log = vm.finish(deadline);
    eprintln!("VM ran for {:.1} s", started.elapsed().as_secs_f64());
    if let Err(problem) = host.after_guest() {
        problems.push(format!("host, after the guest: {problem}"));
    }
    let results = vm::parse_steps(&log);
    vm::print_steps(&results);
    problems.extend(vm::step_problems(&results, &STEPS));
    assert!(
        problems.is_empty(),
        "{}\n--- guest console ---\n{log}\n--- daemon log ---\n{}",
        problems.join("\n"),
        host.daemon.log_text()
    );
}

/// The host's side: the daemon with the region, its export and its agent.
struct Host<'a> {
    sandbox: &'a Sandbox,
    daemon: Daemon,
    qemu_args: Vec<String>,
    /// The region's fault count right after the grow.
    faults_after_grow: Option<u64>,
}

impl<'a> Host<'a> {
    /// Pool, daemon, region, NBD export and agent; panics on any failure
    /// (no VM runs yet).
    fn start(sandbox: &'a Sandbox) -> Host<'a> {
        sandbox.create_pool_of("160M");
        let daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
        let size = SIZE.to_string();
        let region = ["region", "create", REGION, "--kind", "block", "--size", &size];
        sandbox.on_pool(&region).args(["--resident", &size, "--swap"]).assert().success();
        let nbd = format!("unix:{}", sandbox.path("nbd.sock").display());
        sandbox.on_pool(&["export", "add", REGION, "--nbd", &nbd]).assert().success();
        let agent = format!("serial:{}", sandbox.path("agent.sock").display());
        // TCG is slow: give the agent far more than the default 200 ms.
        let attach = ["region", "attach-agent", REGION, &agent, "--deadline", "10s"];
        sandbox.on_pool(&attach).assert().success();
        let args = pmvisor_json(sandbox, &["region", "qemu-args", REGION]).unwrap();
        let qemu_args = args["args"]
            .as_array()
            .unwrap_or_else(|| panic!("qemu-args printed no args: {args}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        Host { sandbox, daemon, qemu_args, faults_after_grow: None }
    }

    fn stats(&self) -> Result<Value, String> {
        pmvisor_json(self.sandbox, &["region", "stats", REGION])
    }

    /// Shrink by exactly the disposable and cold blocks: the guest must
    /// choose every victim.
    fn shrink(&mut self) -> Result<String, String> {
        self.wait_for_agent()?;
        let written = DISPOSABLE_BLOCKS + COLD_BLOCKS + HOT_BLOCKS;
        expect(
            &self.stats()?,
            &[("/resident_blocks", json!(written)), ("/swapped_blocks", json!(0))],
        )?;
        let given = DISPOSABLE_BLOCKS + COLD_BLOCKS;
        let resident = ((written - given) * BLOCK).to_string();
        let resized =
            pmvisor_json(self.sandbox, &["region", "resize", REGION, "--resident", &resident])?;
        expect(
            &resized,
            &[
                ("/resize/frames_before", json!(SIZE / BLOCK)),
                ("/resize/frames_after", json!(written - given)),
                ("/resize/guest_dropped", json!(DISPOSABLE_BLOCKS)),
                ("/resize/guest_kept", json!(COLD_BLOCKS)),
                ("/resize/host_chosen", json!(0)),
                (
                    "/resize/rejected",
                    json!({"out_of_range": 0, "duplicate": 0, "not_resident": 0, "surplus": 0, "no_swap": 0}),
                ),
                ("/resize/agent/request", json!("evict")),
                ("/resize/agent/asked", json!(given)),
                ("/resize/agent/offered", json!(given)),
                ("/resize/agent/failure", Value::Null),
            ],
        )?;
        let stats = self.stats()?;
        expect(
            &stats,
            &[
                ("/resident_quota", json!((written - given) * BLOCK)),
                ("/resident_blocks", json!(HOT_BLOCKS)),
                ("/swapped_blocks", json!(COLD_BLOCKS)),
                (
                    "/evictions_by_chooser",
                    json!({"guest_keep": COLD_BLOCKS, "guest_drop": DISPOSABLE_BLOCKS, "host": 0}),
                ),
                ("/agent/connected", json!(true)),
                ("/agent/answers", json!(1)),
            ],
        )?;
        Ok(format!(
            "quota {} -> {} blocks: guest dropped {DISPOSABLE_BLOCKS}, kept {COLD_BLOCKS}, host chose 0 \
             in {} us (the agent's answer {} us); resident {HOT_BLOCKS}, swapped {COLD_BLOCKS}",
            SIZE / BLOCK,
            written - given,
            resized["resize"]["elapsed_micros"],
            resized["resize"]["agent"]["answer_micros"],
        ))
    }

    /// Grow back to the whole region: the agent asks back the hinted-hot
    /// blocks (the cold ranges, hinted hot since, and the hot ones), and
    /// the swapped ones among them come back.
    fn grow(&mut self) -> Result<String, String> {
        let size = SIZE.to_string();
        let resized =
            pmvisor_json(self.sandbox, &["region", "resize", REGION, "--resident", &size])?;
        let shrunk = DISPOSABLE_BLOCKS + COLD_BLOCKS;
        expect(
            &resized,
            &[
                (
                    "/resize/frames_before",
                    json!(HOT_BLOCKS + COLD_BLOCKS + DISPOSABLE_BLOCKS - shrunk),
                ),
                ("/resize/frames_after", json!(SIZE / BLOCK)),
                ("/resize/brought_back", json!(COLD_BLOCKS)),
                ("/resize/host_chosen", json!(0)),
                ("/resize/agent/request", json!("grow")),
                ("/resize/agent/asked", json!(SIZE / BLOCK - HOT_BLOCKS)),
                ("/resize/agent/offered", json!(COLD_BLOCKS + HOT_BLOCKS)),
                ("/resize/agent/failure", Value::Null),
            ],
        )?;
        let stats = self.stats()?;
        expect(
            &stats,
            &[
                ("/resident_quota", json!(SIZE)),
                ("/resident_blocks", json!(HOT_BLOCKS + COLD_BLOCKS)),
                ("/swapped_blocks", json!(0)),
                ("/agent/answers", json!(2)),
            ],
        )?;
        let faults = stats["faults"].as_u64().unwrap_or_default();
        self.faults_after_grow = Some(faults);
        Ok(format!(
            "quota -> {} blocks in {} us (the agent's answer {} us): brought back {COLD_BLOCKS} \
             hinted-hot blocks from swap (no read asked for them: {faults} faults in all); \
             resident {}, swapped 0",
            SIZE / BLOCK,
            resized["resize"]["elapsed_micros"],
            resized["resize"]["agent"]["answer_micros"],
            HOT_BLOCKS + COLD_BLOCKS,
        ))
    }

    /// After the guest read everything back: the cold blocks were resident
    /// (no fault since the grow), and nothing moved.
    fn after_guest(&self) -> Result<(), String> {
        let Some(faults) = self.faults_after_grow else { return Ok(()) };
        let stats = self.stats()?;
        eprintln!(
            "region stats after the guest:\n{}",
            String::from_utf8_lossy(
                &self
                    .sandbox
                    .on_pool(&["region", "stats", REGION])
                    .output()
                    .map_err(|e| e.to_string())?
                    .stdout
            )
        );
        expect(
            &stats,
            &[
                ("/faults", json!(faults)),
                ("/resident_blocks", json!(HOT_BLOCKS + COLD_BLOCKS)),
                ("/swapped_blocks", json!(0)),
                ("/evictions_by_chooser/host", json!(0)),
            ],
        )
    }

    /// Poll `region stats` until the agent is connected.
    fn wait_for_agent(&self) -> Result<(), String> {
        let deadline = Instant::now() + AGENT_DEADLINE;
        loop {
            let stats = self.stats()?;
            if stats["agent"]["connected"] == true {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agent did not connect within {AGENT_DEADLINE:?}: {}",
                    stats["agent"]
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `pmvisor --pool POOL ARGS --json` through the daemon; its output.
fn pmvisor_json(sandbox: &Sandbox, args: &[&str]) -> Result<Value, String> {
    let out = sandbox.on_pool(args).arg("--json").output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`pmvisor {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`pmvisor {}` printed no JSON: {e}", args.join(" ")))
}

/// `Err` listing every `(JSON pointer, expected)` that `value` does not
/// hold, with `value` itself.
fn expect(value: &Value, fields: &[(&str, Value)]) -> Result<(), String> {
    let wrong: Vec<String> = fields
        .iter()
        .filter(|(pointer, expected)| value.pointer(pointer).unwrap_or(&Value::Null) != expected)
        .map(|(pointer, expected)| {
            format!(
                "{pointer} is {}, not {expected}",
                value.pointer(pointer).unwrap_or(&Value::Null)
            )
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{} in {value}", wrong.join(", ")))
    }
}

#[test]
fn block_counts_match_the_ranges() {
    let blocks = |ranges: &str| -> u64 {
        ranges
            .split(',')
            .map(|r| match (r.split_once('-'), r.split_once('+')) {
                (Some((a, b)), _) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
                (_, Some((_, n))) => n.parse().unwrap(),
                _ => 1,
            })
            .sum()
    };
    assert_eq!(blocks(DISPOSABLE), DISPOSABLE_BLOCKS);
    assert_eq!(blocks(COLD), COLD_BLOCKS);
    assert_eq!(blocks(HOT), HOT_BLOCKS);
}

#[test]
fn unmet_expectations_are_listed_with_the_value() {
    let value = json!({"resize": {"guest_kept": 3, "agent": null}});
    assert_eq!(expect(&value, &[("/resize/guest_kept", json!(3))]), Ok(()));
    assert_eq!(
        expect(&value, &[("/resize/guest_kept", json!(4)), ("/resize/agent/failure", Value::Null)]),
        Err(r#"/resize/guest_kept is 3, not 4 in {"resize":{"agent":null,"guest_kept":3}}"#.into())
    );
}
