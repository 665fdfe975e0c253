//! The NBD server against the real clients users attach with: qemu-img,
//! qemu-io, nbdinfo, nbdcopy and fio's nbd engine. Each test serves a
//! `MemDevice` in-process on a temporary Unix socket (one over TCP), drives
//! a client, and checks both what the client reports and what the device
//! holds afterwards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run, run_ok, tool, TestServer};

const MIB: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(90);

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn qemu_img_info_reports_the_export_size() {
    let Some(qemu_img) = tool("qemu-img", "qemu-utils") else { return };
    let server = TestServer::unix("disk0", 16 * MIB);
    let info = json(&run_ok(
        Command::new(&qemu_img).args(["info", "--output=json", &server.uri()]),
        DEADLINE,
    ));
    assert_eq!(info["virtual-size"], 16 * MIB);
    assert_eq!(info["format"], "raw");
    // qemu's nbd+unix:/// (no name) asks for "", the default export.
    let default_uri = format!("nbd+unix:///?socket={}", server.socket().display());
    let info = json(&run_ok(
        Command::new(&qemu_img).args(["info", "--output=json", &default_uri]),
        DEADLINE,
    ));
    assert_eq!(info["virtual-size"], 16 * MIB);
}

#[test]
fn an_unknown_export_name_is_refused_with_the_servers_message() {
    let Some(qemu_img) = tool("qemu-img", "qemu-utils") else { return };
    let server = TestServer::unix("disk0", 4 * MIB);
    let output = run(Command::new(&qemu_img).args(["info", &server.uri_of("nope")]), DEADLINE);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no export named \"nope\""), "stderr: {stderr}");
}

#[test]
fn qemu_io_writes_read_back_with_their_patterns() {
    let Some(qemu_io) = tool("qemu-io", "qemu-utils") else { return };
    let server = TestServer::unix("disk0", 16 * MIB);
    let uri = server.uri();
    let script = [
        "write -P 0xab 0 64k",
        "write -P 0xcd 100000 3000",
        "write -f -P 0x11 1M 128k",
        "aio_write -P 0x22 2M 64k",
        "aio_write -P 0x33 3M 1M",
        "aio_flush",
        "read -P 0xab 0 64k",
        "read -P 0xcd 100000 3000",
        "read -P 0x11 1M 128k",
        "read -P 0x22 2M 64k",
        "read -P 0x33 3M 1M",
        "read -P 0 8M 64k",
    ];
    let mut command = Command::new(&qemu_io);
    command.args(["-f", "raw", &uri]);
    for line in script {
        command.args(["-c", line]);
    }
    let stdout = run_ok(&mut command, DEADLINE);
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
    assert_eq!(stdout.matches("read ").count(), 6, "{stdout}");

    // The bytes really are on the device, and FUA and flush reached it.
    assert!(server.device_bytes(0, 65536).iter().all(|&b| b == 0xab));
    assert!(server.device_bytes(100_000, 3000).iter().all(|&b| b == 0xcd));
    assert_eq!(server.device_bytes(99_999, 1), [0]);
    assert!(server.device_bytes(3 * MIB, MIB as usize).iter().all(|&b| b == 0x33));
    assert!(server.device.fua_write_count() >= 1);
    assert!(server.device.flush_count() >= 1);

    // A wrong pattern is caught: the check above can fail.
    let output =
        run(Command::new(&qemu_io).args(["-f", "raw", &uri, "-c", "read -P 0xee 0 4k"]), DEADLINE);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("Pattern verification failed"));
}

#[test]
fn nbdinfo_lists_exports_and_their_capabilities() {
    let Some(nbdinfo) = tool("nbdinfo", "libnbd-bin") else { return };
    let server = TestServer::unix("disk0", 16 * MIB);
    let info = json(&run_ok(Command::new(&nbdinfo).args(["--json", &server.uri()]), DEADLINE));
    assert_eq!(info["protocol"], "newstyle-fixed");
    assert_eq!(info["structured"], true);
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "disk0");
    assert_eq!(export["export-size"], 16 * MIB);
    assert_eq!(export["is_read_only"], false);
    for capability in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df"] {
        assert_eq!(export[capability], true, "{capability}");
    }
    assert_eq!(export["block_size_minimum"], 1);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32 * MIB);
    assert_eq!(export["contexts"], serde_json::json!(["base:allocation"]));

    // --list walks NBD_OPT_LIST, then NBD_OPT_INFO for each export.
    let second = std::sync::Arc::new(pmvisor_blk::MemDevice::new(MIB));
    server.server.add_export("disk1", second, true).unwrap();
    let list_uri = format!("nbd+unix:///?socket={}", server.socket().display());
    let list =
        json(&run_ok(Command::new(&nbdinfo).args(["--json", "--list", &list_uri]), DEADLINE));
    let exports = list["exports"].as_array().expect("exports");
    let names: Vec<_> = exports.iter().map(|e| e["export-name"].as_str().unwrap()).collect();
    assert_eq!(names, ["disk0", "disk1"]);
    assert_eq!(exports[1]["export-size"], MIB);
    assert_eq!(exports[1]["is_read_only"], true);
    assert_eq!(exports[1]["can_trim"], false);
}

#[test]
fn nbdinfo_map_shows_holes_and_data_as_they_are() {
    let Some(qemu_io) = tool("qemu-io", "qemu-utils") else { return };
    let Some(nbdinfo) = tool("nbdinfo", "libnbd-bin") else { return };
    let server = TestServer::unix("disk0", 16 * MIB);
    let uri = server.uri();
    let script = [
        "write -P 1 0 64k",
        "write -P 2 1M 128k",
        "write -P 3 2M 64k",
        "discard 2M 64k",
        "write -P 4 3M 12k",
        "discard 3M 4k",
        "write -z 4M 64k",
    ];
    let mut command = Command::new(&qemu_io);
    command.args(["-f", "raw", &uri]);
    for line in script {
        command.args(["-c", line]);
    }
    run_ok(&mut command, DEADLINE);

    let map = run_ok(Command::new(&nbdinfo).args(["--map", &uri]), DEADLINE);
    let rows: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[0].parse().unwrap(), fields[1].parse().unwrap(), fields[2].parse().unwrap())
        })
        .collect();
    let k = 1024;
    let expected = vec![
        (0, 64 * k, 0),
        (64 * k, MIB - 64 * k, 3),
        (MIB, 128 * k, 0),
        // 2M..2M+64k and 3M..3M+4k were discarded: one hole up to 3M+4k.
        (MIB + 128 * k, 2 * MIB - 128 * k + 4 * k, 3),
        (3 * MIB + 4 * k, 8 * k, 0),
        (3 * MIB + 12 * k, MIB - 12 * k, 3),
        // Write-zeroes without unmap: allocated, reads as zeroes.
        (4 * MIB, 64 * k, 2),
        (4 * MIB + 64 * k, 12 * MIB - 64 * k, 3),
    ];
    assert_eq!(rows, expected, "nbdinfo --map printed:\n{map}");
    assert_eq!(server.device.mapped_blocks(), 16 + 32 + 2 + 16);
}

#[test]
fn nbdcopy_round_trips_a_sparse_image() {
    let Some(nbdcopy) = tool("nbdcopy", "libnbd-bin") else { return };
    let server = TestServer::unix("disk0", 8 * MIB);
    let source = server.dir.path().join("source.img");
    let target = server.dir.path().join("target.img");
    let mut image = vec![0u8; 8 * MIB as usize];
    let mut data_blocks = 0;
    for (i, block) in image.chunks_mut(4096).enumerate() {
        // Runs of data and holes of varying length.
        if (i / 7) % 3 != 1 && i % 11 != 5 {
            for (j, byte) in block.iter_mut().enumerate() {
                *byte = ((i * 31 + j * 7) % 255 + 1) as u8;
            }
            data_blocks += 1;
        }
    }
    std::fs::write(&source, &image).unwrap();
    let uri = server.uri();
    run_ok(Command::new(&nbdcopy).arg(&source).arg(&uri), DEADLINE);
    assert_eq!(server.device_bytes(0, image.len()), image);
    assert_eq!(server.device.mapped_blocks(), data_blocks, "zero blocks should stay holes");
    run_ok(Command::new(&nbdcopy).arg(&uri).arg(&target), DEADLINE);
    assert!(std::fs::read(&target).unwrap() == image, "round trip changed the image");
}

/// Run fio's nbd engine: random writes of `bs`, verified with crc32c.
fn fio_verified_random_writes(bs: &str) {
    let Some(fio) = tool("fio", "fio") else { return };
    let server = TestServer::unix("disk0", 8 * MIB);
    let uri = server.uri();
    let output = run_ok(
        // fio writes its verify state into the working directory.
        Command::new(&fio).current_dir(server.dir.path()).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            &format!("--bs={bs}"),
            "--iodepth=16",
            "--size=4M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ]),
        DEADLINE,
    );
    let start = output.find('{').expect("fio JSON output");
    let report = json(&output[start..]);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio reported an error: {output}");
    assert_eq!(job["write"]["io_bytes"], 4 * MIB, "{output}");
    assert_eq!(job["read"]["io_bytes"], 4 * MIB, "verification read everything back: {output}");
    assert!(server.device.mapped_blocks() >= 1024, "the writes reached the device");
}

#[test]
fn fio_random_4k_writes_verify_at_queue_depth_16() {
    fio_verified_random_writes("4k");
}

#[test]
fn fio_random_128k_writes_verify_at_queue_depth_16() {
    fio_verified_random_writes("128k");
}

#[test]
fn qemu_io_and_nbdinfo_work_over_tcp_on_loopback() {
    let Some(qemu_io) = tool("qemu-io", "qemu-utils") else { return };
    let Some(nbdinfo) = tool("nbdinfo", "libnbd-bin") else { return };
    let server = TestServer::tcp("disk0", 4 * MIB);
    let uri = server.uri();
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
    let stdout = run_ok(
        Command::new(&qemu_io).args([
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0x5a 512k 256k",
            "-c",
            "read -P 0x5a 512k 256k",
        ]),
        DEADLINE,
    );
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
    assert!(server.device_bytes(512 * 1024, 256 * 1024).iter().all(|&b| b == 0x5a));
    let size = run_ok(Command::new(&nbdinfo).args(["--size", &uri]), DEADLINE);
    assert_eq!(size.trim(), (4 * MIB).to_string());
}
