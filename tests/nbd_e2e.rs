//! Block regions exported over NBD by a real `pmvisor serve`, attached by
//! real clients: `qemu-img`, `qemu-io`, `nbdinfo`, `nbdcopy` and fio's nbd
//! engine, with a resident quota smaller than the working set so that every
//! client runs through evictions and faults. Then SIGKILL and a restart: the
//! export comes back by itself and the data reads back.
//!
//! The clients come from Debian's qemu-utils, libnbd-bin and fio packages
//! (`scripts/setup` installs them). When one is missing the tests fail
//! naming the package under `CI=true`, and skip loudly otherwise.

mod common;

use std::path::Path;
use std::process::{Command as StdCommand, Output};

use common::{stdout_json, Sandbox};
use predicates::str::contains;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The client tools and the Debian package of each.
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("qemu-img", &["--version"], "qemu-utils"),
    ("qemu-io", &["--version"], "qemu-utils"),
    ("nbdinfo", &["--version"], "libnbd-bin"),
    ("nbdcopy", &["--version"], "libnbd-bin"),
    ("fio", &["--enghelp=nbd"], "fio (with its nbd engine)"),
];

/// Whether every client tool is here. Missing ones fail the test under
/// `CI=true` and skip it (loudly) elsewhere.
fn clients_available(test: &str) -> bool {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, args, _)| {
            !StdCommand::new(tool).args(*args).output().is_ok_and(|o| o.status.success())
        })
        .map(|(tool, _, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("missing NBD clients: {}; run scripts/setup", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("SKIPPED {test}: {message}");
    false
}

/// Run a client; panic with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> Output {
    let output = StdCommand::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `qemu-io -f raw` running `commands` against `uri`; qemu-io reports a
/// failed pattern check on stdout, so that is checked too.
fn qemu_io(uri: &str, commands: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(uri);
    let output = run("qemu-io", &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("Pattern verification failed") && !stdout.contains("failed:"),
        "qemu-io {commands:?}:\n{stdout}"
    );
}

/// `(offset, length, is_hole)` runs of `nbdinfo --map`.
fn allocation_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let output = run("nbdinfo", &["--map", "--json", uri]);
    let map: Value = serde_json::from_slice(&output.stdout).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = e["type"].as_u64().unwrap();
            (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), kind & 1 == 1)
        })
        .collect()
}

/// Deterministic incompressible bytes.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A fio job on the export with crc32c verification; returns its report.
fn fio_verified(uri: &str, name: &str, bs: &str, offset: u64, size: u64) -> Value {
    let args = [
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        format!("--bs={bs}"),
        "--iodepth=16".into(),
        format!("--offset={offset}"),
        format!("--size={size}"),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--verify_fatal=1".into(),
        "--verify_state_save=0".into(),
        "--output-format=json".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run("fio", &args);
    let text = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON document.
    let report: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio {name}: {job}");
    assert_eq!(job["write"]["io_bytes"], size, "fio {name} wrote everything");
    assert_eq!(job["read"]["io_bytes"], size, "fio {name} verified everything");
    report
}

fn stats(sandbox: &Sandbox, region: &str) -> Value {
    stdout_json(&mut sandbox.on_pool(&["region", "stats", region]))
}

#[test]
fn an_elastic_block_region_serves_real_nbd_clients_and_survives_sigkill() {
    if !clients_available("an_elastic_block_region_serves_real_nbd_clients_and_survives_sigkill") {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool_of("128M");
    // 64 MiB seen by clients, 8 MiB of pool memory, the rest in the swap tier.
    sandbox
        .on_pool(&["region", "create", "disk", "--size", "64M", "--resident", "8M", "--swap"])
        .assert()
        .success()
        .stdout("Created block region disk: 64.0 MiB, resident quota 8.0 MiB, swap on.\n");
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);

    let export = stdout_json(&mut sandbox.on_pool(&["export", "add", "disk", "--nbd"]));
    let socket = sandbox.path("nbd/disk.sock");
    assert_eq!(export["address"], format!("unix:{}", socket.display()));
    let uri = format!("nbd+unix:///disk?socket={}", socket.display());
    assert_eq!(export["uri"], uri.as_str());
    let listed = stdout_json(&mut sandbox.on_pool(&["export", "list"]));
    assert_eq!(listed, Value::Array(vec![export.clone()]));

    // qemu-img sees the virtual size, not the quota.
    let info = run("qemu-img", &["info", "--output=json", &uri]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 64 * MIB);

    // Writes, a trim in the middle, and pattern-checked reads.
    qemu_io(
        &uri,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 4M 1M",
            "discard 4352k 256k",
            "read -P 0x11 0 1M",
            "read -P 0x22 4M 256k",
            "read -P 0 4352k 256k",
            "read -P 0x22 4608k 512k",
            "read -P 0 1M 3M",
        ],
    );
    // The map shows exactly that: data, hole, data, trimmed hole, data, hole.
    assert_eq!(
        allocation_map(&uri),
        vec![
            (0, MIB, false),
            (MIB, 3 * MIB, true),
            (4 * MIB, 256 << 10, false),
            (4352 << 10, 256 << 10, true),
            (4608 << 10, 512 << 10, false),
            (5 * MIB, 59 * MIB, true),
        ]
    );

    // nbdcopy round trip of twice the quota: file → export → file. The
    // image is 16 MiB of data then a 48 MiB hole, over an export that holds
    // data there: nbdcopy zeroes the hole with WRITE_ZEROES requests longer
    // than the 32 MiB most a READ or WRITE may carry.
    qemu_io(&uri, &["write -P 0x33 8M 56M"]);
    let source = pseudo_random((16 * MIB) as usize, 0x9e37_79b9_7f4a_7c15);
    let (src, back) = (sandbox.path("src.img"), sandbox.path("back.img"));
    std::fs::write(&src, &source).unwrap();
    std::fs::File::options().write(true).open(&src).unwrap().set_len(64 * MIB).unwrap();
    run("nbdcopy", &[src.to_str().unwrap(), &uri]);
    run("nbdcopy", &[&uri, back.to_str().unwrap()]);
    let copied = std::fs::read(&back).unwrap();
    assert_eq!(copied.len() as u64, 64 * MIB);
    assert!(copied[..source.len()] == source[..], "nbdcopy round trip differs");
    assert!(copied[source.len()..].iter().all(|&b| b == 0), "bytes past the copy are not zero");

    // fio, verified, over a 32 MiB working set with 8 MiB resident.
    let before = stats(&sandbox, "disk");
    fio_verified(&uri, "rand4k", "4k", 32 * MIB, 32 * MIB);
    fio_verified(&uri, "rand128k", "128k", 32 * MIB, 32 * MIB);
    let after = stats(&sandbox, "disk");
    let grew = |key: &str| after[key].as_u64().unwrap() > before[key].as_u64().unwrap();
    assert!(grew("evictions") && grew("faults"), "no eviction or fault during fio: {after}");
    assert!(after["resident_blocks"].as_u64().unwrap() <= 2048, "{after}");
    assert!(after["swapped_blocks"].as_u64().unwrap() > 0, "{after}");
    assert!(after["mrr"].as_f64().unwrap() < 0.5, "{after}");
    // The faults of the last seconds show as a rate.
    let rate = stats(&sandbox, "disk")["faults_per_second"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= after["faults"].as_f64().unwrap(), "{rate} faults/s: {after}");

    // Flush, SIGKILL, restart: the export is served again and data is intact.
    qemu_io(&uri, &["write -P 0x5a 60M 1M", "flush"]);
    daemon.kill();
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let listed = stdout_json(&mut sandbox.on_pool(&["export", "list"]));
    assert_eq!(listed[0]["region"], "disk");
    assert_eq!(listed[0]["serving"], true, "{listed}");
    assert_eq!(listed[0]["uri"], uri.as_str());
    qemu_io(&uri, &["read -P 0x5a 60M 1M", "read -P 0 24M 1M"]);
    run("nbdcopy", &[&uri, back.to_str().unwrap()]);
    let copied = std::fs::read(&back).unwrap();
    assert!(copied[..source.len()] == source[..], "data changed across SIGKILL");
}

#[test]
fn exports_refuse_bad_requests_and_stop_cleanly() {
    if !clients_available("exports_refuse_bad_requests_and_stop_cleanly") {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    sandbox.on_pool(&["region", "create", "disk", "--size", "8M"]).assert().success();
    sandbox
        .on_pool(&["region", "create", "meta", "--size", "1M", "--kind", "fs"])
        .assert()
        .success();

    // No daemon: nothing can be served.
    sandbox
        .on_pool(&["export", "add", "disk", "--nbd"])
        .assert()
        .code(1)
        .stderr(contains("exports are served by the daemon and none is running for pool"));
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);

    let cases: &[(&[&str], &str)] = &[
        (&["export", "add", "ghost", "--nbd"], "no region named \"ghost\""),
        (
            &["export", "add", "meta", "--nbd"],
            "region \"meta\" is a fs region; only block regions can be exported",
        ),
        (
            &["export", "add", "disk", "--nbd", "10809"],
            "\"10809\" is not a listen address; use unix:PATH or tcp:IP:PORT",
        ),
        (
            &["export", "remove", "disk"],
            "region \"disk\" is not exported; `pmvisor export list` shows the exports",
        ),
    ];
    for (args, message) in cases {
        sandbox.on_pool(args).assert().code(1).stderr(contains(*message));
    }

    // Any address: a warning line, and clients can reach it.
    let export = sandbox
        .on_pool(&["export", "add", "disk", "--nbd", "tcp:0.0.0.0:0"])
        .assert()
        .success()
        .stderr(contains("warning: export disk listens on tcp:0.0.0.0:"))
        .stdout(contains("clients connect to nbd://0.0.0.0:"));
    let out = String::from_utf8_lossy(&export.get_output().stdout).to_string();
    let port = out.rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    run("qemu-img", &["info", &uri]);

    sandbox
        .on_pool(&["export", "add", "disk", "--nbd"])
        .assert()
        .code(1)
        .stderr(contains("region \"disk\" is already exported (nbd at tcp:0.0.0.0:"));
    sandbox.on_pool(&["region", "delete", "disk"]).assert().code(1).stderr(contains(
        "cannot be deleted; remove the export first with `pmvisor export remove disk`",
    ));
    sandbox
        .on_pool(&["export", "remove", "disk"])
        .assert()
        .success()
        .stdout("Removed the export of region disk.\n");
    assert!(
        StdCommand::new("qemu-img").args(["info", &uri]).output().unwrap().status.code() != Some(0)
    );

    // A recorded export survives a clean stop; without a daemon it is listed
    // as not serving and can be removed.
    sandbox.on_pool(&["export", "add", "disk", "--nbd"]).assert().success();
    let socket = sandbox.path("nbd/disk.sock");
    assert!(Path::new(&socket).exists());
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait().success(), "{}", daemon.log_text());
    assert!(!socket.exists(), "the stopped export removed its socket");
    let listed = stdout_json(&mut sandbox.on_pool(&["export", "list"]));
    assert_eq!(listed[0]["serving"], false, "{listed}");
    sandbox.on_pool(&["export", "remove", "disk"]).assert().success();
    sandbox.on_pool(&["export", "list"]).assert().success().stdout(contains("No exports"));
    sandbox.on_pool(&["region", "delete", "disk"]).assert().success();
}

/// ublk exports on a host without the ublk driver (this one: the VM test
/// covers the driver): the error says what to load and which kernel, and
/// nothing is recorded.
#[test]
fn a_ublk_export_without_the_driver_says_what_to_load() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("this host has the ublk driver; tests/vm_ublk.rs covers ublk exports");
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    sandbox.on_pool(&["region", "create", "disk", "--size", "8M"]).assert().success();
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    sandbox.on_pool(&["export", "add", "disk", "--ublk", "--queues", "2"]).assert().code(1).stderr(
        contains(
            "cannot serve region \"disk\" as a ublk device: the ublk driver is not loaded \
             (/dev/ublk-control is missing): load it with `modprobe ublk_drv`; it needs Linux \
             6.0 or newer built with CONFIG_BLK_DEV_UBLK",
        ),
    );
    sandbox.on_pool(&["export", "list"]).assert().success().stdout(contains("No exports"));
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait().success(), "{}", daemon.log_text());
}

#[test]
fn the_balancer_shrinks_overcommitted_regions_by_weight_when_the_pool_runs_short() {
    if !clients_available("the_balancer_shrinks_overcommitted_regions_by_weight") {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool_of("40M");
    // Two quotas of 24 MiB in a pool of about 38 MiB: writes take frames
    // as they come, until the pool runs short.
    for name in ["light", "heavy"] {
        sandbox
            .on_pool(&["region", "create", name, "--size", "24M", "--resident", "24M", "--swap"])
            .assert()
            .success();
    }
    let pool = sandbox.pool();
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let balance = |args: &[&str]| {
        let mut all = vec!["pool", "balance"];
        all.extend_from_slice(args);
        stdout_json(&mut sandbox.on_pool(&all))
    };
    // Refusals name the problem.
    let out = sandbox.on_pool(&["pool", "balance", "--low", "20%", "--high", "10%"]).assert();
    let stderr = String::from_utf8_lossy(&out.failure().get_output().stderr).into_owned();
    assert!(stderr.contains("must not be above the high one"), "{stderr}");
    let out = sandbox.on_pool(&["pool", "balance", "--weight", "light=0"]).assert();
    let stderr = String::from_utf8_lossy(&out.failure().get_output().stderr).into_owned();
    assert!(stderr.contains("from 1 to 10000"), "{stderr}");

    let view = balance(&["--low", "10%", "--high", "25%", "--weight", "heavy=300"]);
    assert_eq!((view["low"].as_f64(), view["high"].as_f64()), (Some(0.10), Some(0.25)));
    let weight = |view: &Value, name: &str| {
        view["regions"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["weight"]
            .as_u64()
    };
    assert_eq!((weight(&view, "light"), weight(&view, "heavy")), (Some(100), Some(300)));

    let mut uris = Vec::new();
    for name in ["light", "heavy"] {
        sandbox.on_pool(&["export", "add", name, "--nbd"]).assert().success();
        let socket = sandbox.path(&format!("nbd/{name}.sock"));
        uris.push(format!("nbd+unix:///{name}?socket={}", socket.display()));
    }
    // 20 MiB each: 40 MiB of frames wanted from a pool of about 39.
    qemu_io(&uris[0], &["write -P 0x11 0 20M"]);
    qemu_io(&uris[1], &["write -P 0x22 0 20M"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let view = loop {
        let view = balance(&[]);
        if view["last_run"].is_object() && view["wanted_pages"] == 0 {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "the balancer never acted: {view}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let run = &view["last_run"];
    let free_pages = view["free_pages"].as_u64().unwrap();
    let data_pages = view["data_pages"].as_u64().unwrap();
    assert!(free_pages as f64 >= 0.10 * data_pages as f64, "{view}");
    let given = |name: &str| {
        let shrinks = run["shrinks"].as_array().unwrap();
        let s = shrinks.iter().find(|s| s["region"] == name).unwrap();
        assert_eq!(s["error"], Value::Null, "{s}");
        s["from_frames"].as_u64().unwrap() - s["to_frames"].as_u64().unwrap()
    };
    // Same frames held, three times the weight: a third as much given.
    let (light, heavy) = (given("light"), given("heavy"));
    assert!(light > 2 * heavy && heavy > 0, "light gave {light}, heavy {heavy}: {run}");
    // The data is all there, some of it now in swap.
    qemu_io(&uris[0], &["read -P 0x11 0 20M"]);
    qemu_io(&uris[1], &["read -P 0x22 0 20M"]);
    assert!(stats(&sandbox, "light")["swapped_blocks"].as_u64().unwrap() > 0);
    // The human form shows the same.
    let out = sandbox.on_pool(&["pool", "balance"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("under 10.0% free, up to 25.0%"), "{text}");
    assert!(text.contains("Last pass:") && text.contains("light"), "{text}");
}
