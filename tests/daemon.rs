//! `pmvisor serve` as a real process on a real Unix socket: the CLI routed
//! through it, the control API's answers (raw HTTP written by hand), the
//! metrics, the pool lock, signals and the socket file's life cycle.
//!
//! Every daemon is killed by a drop guard if a test fails; waits poll with a
//! deadline instead of sleeping blindly.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;

use common::{http, stdout_json, try_http, Sandbox, DEADLINE};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use rustix::process::Signal;
use serde_json::Value;

#[test]
fn commands_go_through_the_daemon_while_it_holds_the_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let via_daemon = format!("using the daemon (PID {})", daemon.pid());

    // The pool is locked by the daemon, so these can only work through it.
    sandbox
        .on_pool(&["-v", "pool", "info"])
        .assert()
        .success()
        .stdout(contains("64.0 MiB"))
        .stderr(contains(via_daemon.as_str()));
    sandbox
        .on_pool(&["-v", "region", "create", "vm1", "--size", "8M"])
        .assert()
        .success()
        .stdout("Created block region vm1: 8.0 MiB, resident quota 8.0 MiB, swap off.\n")
        .stderr(contains(via_daemon.as_str()));
    sandbox
        .on_pool(&["region", "create", "ram", "--size", "4M", "--kind", "memory"])
        .assert()
        .success();
    // No pool named: whatever pool the daemon serves.
    let list = stdout_json(sandbox.pmvisor().args(["region", "list"]));
    let names: Vec<_> = list.as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, ["ram", "vm1"]);
    assert!(!sandbox.path("state").exists(), "the default pool was created");

    assert_eq!(stdout_json(&mut sandbox.on_pool(&["region", "show", "ram"]))["kind"], "memory");
    sandbox.on_pool(&["region", "rename", "vm1", "vm2"]).assert().code(1).stderr(contains(
        "block region \"vm1\" cannot be renamed while `pmvisor serve` has it open",
    ));
    assert_eq!(
        stdout_json(&mut sandbox.on_pool(&["region", "rename", "ram", "vm-ram"]))["name"],
        "vm-ram"
    );
    sandbox.on_pool(&["region", "rename", "vm-ram", "ram"]).assert().success();
    let shrunk =
        stdout_json(&mut sandbox.on_pool(&["region", "resize", "vm1", "--resident", "2M"]));
    assert_eq!(shrunk["block"]["resident_quota"], 2 << 20);
    let stats = stdout_json(&mut sandbox.on_pool(&["region", "stats", "vm1"]));
    assert_eq!(
        (stats["size"].as_u64(), stats["resident_quota"].as_u64()),
        (Some(8 << 20), Some(2 << 20))
    );
    let resized = stdout_json(&mut sandbox.on_pool(&["region", "resize", "ram", "--size", "16M"]));
    assert_eq!(resized["size"], 16 << 20);
    sandbox
        .on_pool(&["region", "delete", "ram"])
        .assert()
        .success()
        .stdout("Deleted region ram.\n");
    sandbox
        .on_pool(&["region", "show", "ram"])
        .assert()
        .code(1)
        .stderr("error: no region named \"ram\"; `pmvisor region list` shows the regions\n");
    sandbox
        .on_pool(&["pool", "check"])
        .assert()
        .success()
        .stdout(contains("Checked 1 region:").and(contains("No problems found.")));
    sandbox.on_pool(&["pool", "check", "--repair"]).assert().code(1).stderr(contains(format!(
        "repair needs the pool closed, but the daemon (PID {})",
        daemon.pid()
    )));
    let info = stdout_json(&mut sandbox.on_pool(&["pool", "info"]));
    assert_eq!(info["regions"], 1);
    assert_eq!(info["path"], sandbox.pool().canonicalize().unwrap().to_str().unwrap());
}

#[test]
fn a_command_that_cannot_reach_the_daemon_names_the_pid_holding_the_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let elsewhere = sandbox.path("elsewhere.sock");
    sandbox
        .on_pool(&["region", "list"])
        .arg("--socket")
        .arg(&elsewhere)
        .assert()
        .code(1)
        .stderr(contains(format!("is in use by process {}", daemon.pid())))
        .stderr(contains(format!(
            "run the command through the daemon (--socket {})",
            elsewhere.display()
        )));
}

#[test]
fn a_daemon_serving_another_pool_is_not_used_for_a_named_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let other = sandbox.path("other.pool");
    sandbox.pmvisor().args(["pool", "create", "--size", "16M"]).arg(&other).assert().success();
    let _daemon = sandbox.serve(&["--pool", other.to_str().unwrap()]);
    sandbox.on_pool(&["region", "create", "direct", "--size", "1M"]).assert().success();
    // The daemon's pool did not get it; the named pool did.
    let (_, regions) = http(&sandbox.socket(), "GET", "/v1/regions", None);
    assert_eq!(regions, Value::Array(vec![]));
    let (status, _) = http(&sandbox.socket(), "GET", "/v1/regions/direct", None);
    assert_eq!(status, 404);
}

#[test]
fn api_errors_are_json_sentences_with_the_right_status() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let _daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let socket = sandbox.socket();

    let (status, region) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a", "size": 1048576}"#));
    assert_eq!(status, 201, "{region}");
    assert_eq!(region["kind"], "block");
    assert_eq!(region["block"]["size"], 1 << 20);
    assert_eq!(region["block"]["resident_quota"], 1 << 20);
    assert_eq!(region["size"], 4096, "one page of block map; frames come as blocks are written");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "b", "size": 1, "colour": "red"}"#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown field `colour`"), "{body}");

    let (status, body) = http(&socket, "POST", "/v1/regions", Some(r#"{"name": "b", "#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("the request body is not valid"), "{body}");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a", "size": 4096}"#));
    assert_eq!(status, 409);
    assert_eq!(body["error"], "region \"a\" already exists; pick another name or delete it first");

    let (status, body) = http(&socket, "GET", "/v1/regions/ghost", None);
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no region named \"ghost\"; `pmvisor region list` shows the regions");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "huge", "size": 1099511627776}"#));
    assert_eq!(status, 507);
    assert!(body["error"].as_str().unwrap().contains("is more than the whole pool's"), "{body}");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a/b", "size": 4096}"#));
    assert_eq!(status, 400, "{body}");

    let (status, body) = http(&socket, "POST", "/v1/regions/a/resize", Some(r#"{"size": "big"}"#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid type"), "{body}");

    let (status, body) = http(&socket, "POST", "/v1/regions/a/resize", Some(r#"{"size": 8192}"#));
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "block region \"a\" has a fixed virtual size of 1.0 MiB; change its resident quota with \
         `pmvisor region resize a --resident SIZE`"
    );
    let (status, body) =
        http(&socket, "POST", "/v1/regions/a/resize", Some(r#"{"resident": 2097152}"#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("a resident quota of 2.0 MiB is larger"));
    let (status, body) =
        http(&socket, "POST", "/v1/regions/a/resize", Some(r#"{"resident": 8192}"#));
    assert_eq!((status, body["block"]["resident_quota"].as_u64()), (200, Some(8192)));
    let (status, body) = http(&socket, "GET", "/v1/regions/a/stats", None);
    assert_eq!((status, body["resident_quota"].as_u64()), (200, Some(8192)));

    let (status, body) = http(
        &socket,
        "POST",
        "/v1/regions",
        Some(r#"{"name": "f", "kind": "fs", "size": 4096, "resident": 4096}"#),
    );
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("for block regions only"), "{body}");
    let (status, _) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "f", "kind": "fs", "size": 4096}"#));
    assert_eq!(status, 201);
    let (status, body) = http(&socket, "GET", "/v1/regions/f/stats", None);
    assert_eq!(status, 400);
    assert_eq!(body["error"], "region \"f\" is a fs region; stats are kept for block regions only");
    let (status, body) =
        http(&socket, "POST", "/v1/regions/f/rename", Some(r#"{"new_name": "c"}"#));
    assert_eq!((status, body["name"].as_str()), (200, Some("c")));

    let (status, body) = http(&socket, "DELETE", "/v1/regions/c", None);
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = http(&socket, "DELETE", "/v1/regions/a", None);
    assert_eq!((status, body), (204, Value::Null));

    let (status, body) =
        http(&socket, "POST", "/v1/exports", Some(r#"{"region": "ghost", "transport": "nbd"}"#));
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&socket, "DELETE", "/v1/exports/ghost", None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&socket, "GET", "/v1/exports", None);
    assert_eq!((status, body), (200, Value::Array(vec![])));

    let (status, body) = http(&socket, "GET", "/v2/nothing", None);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().starts_with("there is no endpoint /v2/nothing"));

    let (status, body) = http(&socket, "PUT", "/v1/pool", None);
    assert_eq!(status, 405);
    assert!(body["error"].is_string());

    let (status, health) = http(&socket, "GET", "/v1/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pool"], sandbox.pool().canonicalize().unwrap().to_str().unwrap());
}

#[test]
fn metrics_show_the_pool_regions_and_requests() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let _daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    sandbox.on_pool(&["region", "create", "vm1", "--size", "8M"]).assert().success();
    let (status, text) = try_http(&sandbox.socket(), "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    for line in [
        "pmvisor_pool_size_bytes 67108864",
        "pmvisor_regions 1",
        "pmvisor_region_size_bytes{name=\"vm1\"} 16384",
        "pmvisor_block_resident_blocks{region=\"vm1\"} 0",
        "pmvisor_block_mrr{region=\"vm1\"} 1.0",
        "pmvisor_block_writes_total{region=\"vm1\"} 0",
        "pmvisor_gate_in_flight 0",
        "pmvisor_api_requests_total{method=\"POST\",route=\"/v1/regions\",status=\"201\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("pmvisor_pool_free_pages "), "{text}");
    assert!(text.contains("pmvisor_pool_data_pages "), "{text}");
}

#[test]
fn a_second_daemon_on_the_same_pool_names_the_first_ones_pid() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let first = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    sandbox
        .on_pool(&["serve", "--socket"])
        .arg(sandbox.path("second.sock"))
        .timeout(DEADLINE)
        .assert()
        .code(1)
        .stderr(contains(format!("is in use by process {}", first.pid())));
    assert!(!sandbox.path("second.sock").exists());
}

#[test]
fn the_daemon_keeps_its_warm_reserve_of_swap_space_allocated_once_a_region_swaps() {
    use std::os::unix::fs::MetadataExt;
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let swap = sandbox.path("test.pool.swap");
    let allocated = || std::fs::metadata(&swap).map_or((0, 0), |m| (m.len(), m.blocks() * 512));
    sandbox
        .on_pool(&["serve", "--warm-reserve", "lots"])
        .assert()
        .code(2)
        .stderr(contains("invalid value 'lots' for '--warm-reserve <SIZE>'"));
    let daemon = sandbox.serve_with(&["--pool", pool.to_str().unwrap()], &["--warm-reserve", "6M"]);
    assert!(daemon.log_text().contains("warm_reserve=6.0 MiB"), "{}", daemon.log_text());
    sandbox.on_pool(&["region", "create", "plain", "--size", "8M"]).assert().success();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(allocated().0, 0, "no swap space before a region swaps");
    sandbox
        .on_pool(&["region", "create", "d", "--size", "16M", "--resident", "1M", "--swap"])
        .assert()
        .success();
    let deadline = std::time::Instant::now() + DEADLINE;
    while allocated().0 < 6 << 20 {
        assert!(std::time::Instant::now() < deadline, "no swap space ready: {:?}", allocated());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (len, blocks) = allocated();
    assert_eq!(len, 6 << 20, "as much as asked");
    assert!(blocks >= len, "allocated, not sparse: {blocks} of {len}");
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let other = sandbox.path("other.pool");
    sandbox.pmvisor().args(["pool", "create", "--size", "16M"]).arg(&other).assert().success();

    // A socket file nobody listens on is replaced.
    drop(UnixListener::bind(sandbox.socket()).unwrap());
    let first = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);

    sandbox
        .pmvisor()
        .arg("--pool")
        .arg(&other)
        .arg("serve")
        .timeout(DEADLINE)
        .assert()
        .code(1)
        .stderr(contains(format!(
            "another pmvisor daemon (PID {}, pool {}) is already listening on {}",
            first.pid(),
            sandbox.pool().canonicalize().unwrap().display(),
            sandbox.socket().display()
        )));
}

#[test]
fn sigterm_drains_exits_zero_and_removes_the_socket() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let socket = sandbox.path("run/pmvisor/api.sock");
    let mut daemon = sandbox.serve(&[
        "--pool",
        sandbox.pool().to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let log = daemon.log_text();
    assert!(log.contains("pmvisor daemon serving"), "{log}");
    assert!(log.contains(&format!("pid={}", daemon.pid())), "{log}");

    daemon.signal(Signal::TERM);
    let status = daemon.wait();
    assert!(status.success(), "{status}: {}", daemon.log_text());
    assert!(!socket.exists());
    assert!(daemon.log_text().contains("received SIGTERM"));
    // The pool is free again for a direct open.
    sandbox.on_pool(&["region", "list"]).arg("--socket").arg(&socket).assert().success();
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let sandbox = Sandbox::new();
    let mut daemon = sandbox.serve(&[]);
    // serve without --pool created the default pool.
    assert!(sandbox.path("state/default.pool").exists());
    assert!(daemon.log_text().contains("note: creating the default pool"));
    daemon.signal(Signal::INT);
    assert!(daemon.wait().success(), "{}", daemon.log_text());
    assert!(!sandbox.socket().exists());
}

/// A fake guest agent on a real Unix socket: says hello for `serial` and
/// answers every grow notice with no hot ranges and every evict request
/// with no victims.
fn fake_agent(path: &std::path::Path, serial: &str) -> std::thread::JoinHandle<()> {
    use pmvisor_agent::{read_frame, write_frame, Device, EvictAnswer, Hello, HotRanges, Message};
    let path = path.to_path_buf();
    let serial = serial.to_string();
    std::thread::spawn(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let hello = Hello {
            version: pmvisor_agent::PROTOCOL_VERSION,
            agent: "fake-agent 1".into(),
            devices: vec![Device { serial, size_bytes: 4 << 20 }],
        };
        write_frame(&mut stream, &Message::Hello(hello)).unwrap();
        assert!(matches!(read_frame(&mut stream).unwrap(), Message::Welcome { .. }));
        while let Ok(request) = read_frame(&mut stream) {
            let reply = match request {
                Message::GrowNotice(n) => {
                    Message::HotRanges(HotRanges { id: n.id, serial: n.serial, ranges: vec![] })
                }
                Message::EvictRequest(r) => {
                    Message::EvictAnswer(EvictAnswer { id: r.id, serial: r.serial, ranges: vec![] })
                }
                _ => continue,
            };
            if write_frame(&mut stream, &reply).is_err() {
                return;
            }
        }
    })
}

fn wait_for_agent(socket: &std::path::Path, region: &str) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (status, agent) = http(socket, "GET", &format!("/v1/regions/{region}/agent"), None);
        assert_eq!(status, 200, "{agent}");
        if agent["connected"] == true {
            return agent;
        }
        assert!(std::time::Instant::now() < deadline, "the agent never connected: {agent}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_region_with_an_agent_asks_it_on_resize_shows_it_in_stats_and_qemu_args() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    sandbox
        .on_pool(&["region", "create", "d", "--size", "4M", "--resident", "1M", "--swap"])
        .assert()
        .success();
    let agent_socket = sandbox.path("agents/d.sock");
    let address = format!("unix:{}", agent_socket.display());
    sandbox
        .on_pool(&["region", "attach-agent", "d", &address, "--deadline", "1s"])
        .assert()
        .success()
        .stdout(format!(
            "Attached the agent of block region d at {address} (disk serial pmv-d, deadline 1000 \
             ms).\n"
        ));
    sandbox
        .on_pool(&["region", "attach-agent", "d", "tcp:1.2.3.4:5"])
        .assert()
        .code(1)
        .stderr(contains("\"tcp:1.2.3.4:5\" is not an agent address (unknown scheme)"));
    let _agent = fake_agent(&agent_socket, "pmv-d");
    let agent = wait_for_agent(&sandbox.socket(), "d");
    assert_eq!(
        (agent["serial"].as_str(), agent["agent"].as_str()),
        (Some("pmv-d"), Some("fake-agent 1"))
    );

    // A grow tells the agent; its (empty) answer comes back in the report.
    sandbox
        .on_pool(&["region", "resize", "d", "--resident", "2M"])
        .assert()
        .success()
        .stdout(contains("Set the resident quota of block region d to "))
        .stdout(contains("  agent: offered 0 of 256 blocks\n"))
        .stdout(contains("(the agent's answer"));
    let resized = stdout_json(&mut sandbox.on_pool(&["region", "resize", "d", "--resident", "3M"]));
    let report = &resized["resize"];
    assert_eq!(
        (report["frames_before"].as_u64(), report["frames_after"].as_u64()),
        (Some(512), Some(768))
    );
    assert_eq!(report["agent"]["request"], "grow");
    assert_eq!(report["agent"]["failure"], Value::Null);
    // Nothing resident to evict: the shrink needs no agent.
    let shrunk = stdout_json(&mut sandbox.on_pool(&["region", "resize", "d", "--resident", "1M"]));
    assert_eq!(shrunk["resize"]["host_chosen"], 0);

    let stats = stdout_json(&mut sandbox.on_pool(&["region", "stats", "d"]));
    assert_eq!(stats["agent"]["connected"], true);
    assert_eq!(stats["agent"]["answers"], 2);
    assert_eq!(stats["agent"]["deadline_ms"], 1000);
    assert_eq!(stats["evictions_by_chooser"]["host"], 0);
    sandbox
        .on_pool(&["region", "stats", "d"])
        .assert()
        .success()
        .stdout(contains("connected (fake-agent 1) at unix:"))
        .stdout(contains("agent failures:  none"))
        .stdout(contains("MRR:"));
    let (_, metrics) = try_http(&sandbox.socket(), "GET", "/metrics", None).unwrap();
    for line in [
        "pmvisor_agent_connected{region=\"d\"} 1",
        "pmvisor_agent_answer_seconds_count{region=\"d\"} 2",
        "pmvisor_agent_failures_total{region=\"d\",reason=\"timeout\"} 0",
        "pmvisor_block_evictions_by_chooser_total{region=\"d\",chooser=\"guest_keep\"} 0",
        "pmvisor_agent_rejected_blocks_total{region=\"d\",reason=\"out_of_range\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }

    sandbox
        .on_pool(&["region", "qemu-args", "d"])
        .assert()
        .code(1)
        .stderr("error: block region d is not exported; export it over NBD first with `pmvisor export add d --nbd`\n");
    sandbox.on_pool(&["export", "add", "d", "--nbd"]).assert().success();
    let nbd = sandbox.path("nbd/d.sock");
    sandbox.on_pool(&["region", "qemu-args", "d"]).assert().success().stdout(format!(
        "-blockdev driver=nbd,node-name=pmv-d,server.type=unix,server.path={},export=d \\\n\
         -device virtio-blk-pci,drive=pmv-d,serial=pmv-d,logical_block_size=4096,\
         physical_block_size=4096,discard=on\n",
        nbd.display()
    ));
    let serial_socket = sandbox.path("qemu-d.sock");
    sandbox
        .on_pool(&["region", "attach-agent", "d", &format!("serial:{}", serial_socket.display())])
        .assert()
        .success();
    let args = stdout_json(&mut sandbox.on_pool(&["region", "qemu-args", "d"]));
    let args: Vec<&str> =
        args["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args[4..],
        [
            "-chardev",
            &format!("socket,id=pmv-d-agent,path={},server=on,wait=off", serial_socket.display()),
            "-device",
            "virtio-serial-pci,id=pmv-d-vser",
            "-device",
            "virtserialport,bus=pmv-d-vser.0,chardev=pmv-d-agent,name=org.pmvisor.agent.0",
        ]
    );
    assert!(!agent_socket.exists(), "the replaced link left its socket behind");

    // The agent is recorded: a new daemon reaches for it again.
    daemon.signal(Signal::TERM);
    assert!(daemon.wait().success());
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let (status, agent) = http(&sandbox.socket(), "GET", "/v1/regions/d/agent", None);
    assert_eq!(status, 200);
    assert_eq!(
        (agent["serving"].as_bool(), agent["address"].as_str()),
        (Some(true), Some(format!("serial:{}", serial_socket.display()).as_str()))
    );
    sandbox
        .on_pool(&["region", "detach-agent", "d"])
        .assert()
        .success()
        .stdout("Detached the agent of block region d.\n");
    let (status, body) = http(&sandbox.socket(), "GET", "/v1/regions/d/agent", None);
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        "region \"d\" has no agent; attach one with `pmvisor region attach-agent d serial:PATH`"
    );
}
