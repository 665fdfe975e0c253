//! The real `pmvisor-agent` binary against a fake host on a Unix socket:
//! devices found in a sysfs-like tree, hints given with `pmvisor-agent
//! hint`, evict requests answered with exactly the expected victims within
//! their deadline, reconnection after the host closes or restarts, and
//! hostile host input answered with a clear error and a reconnect.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pmvisor_agent::protocol::{
    read_frame, validate_answer, write_frame, BlockRange, Device, Disposition, EvictAnswer,
    EvictRange, EvictRequest, GrowNotice, Hello, Hint, HintKind, HotRanges, Message,
    PROTOCOL_VERSION,
};

const BIN: &str = env!("CARGO_BIN_EXE_pmvisor-agent");
const SERIAL: &str = "region-a";
/// 64 MiB: 16,384 blocks of 4 KiB.
const SIZE: u64 = 64 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// A guest: a fake `/sys/block` and `/dev/disk/by-id`, and the paths of
/// the agent's sockets and log.
struct Guest {
    dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vdb = dir.path().join("block/vdb");
        std::fs::create_dir_all(&vdb).unwrap();
        std::fs::write(vdb.join("serial"), SERIAL).unwrap();
        std::fs::write(vdb.join("size"), format!("{}\n", SIZE / 512)).unwrap();
        std::fs::create_dir_all(dir.path().join("by-id")).unwrap();
        Guest { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host_socket(&self) -> PathBuf {
        self.path("host.sock")
    }

    fn hint_socket(&self) -> PathBuf {
        self.path("hint.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Starts `pmvisor-agent run` connecting to the fake host.
    fn start_agent(&self) -> Agent {
        let log = std::fs::File::create(self.path("agent.log")).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--connect")
            .arg(format!("unix:{}", self.host_socket().display()))
            .arg("--hint-socket")
            .arg(self.hint_socket())
            .arg("--sys-block")
            .arg(self.path("block"))
            .arg("--by-id")
            .arg(self.path("by-id"))
            .args(["--max-retry-delay-ms", "200"])
            .env("PMVISOR_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child }
    }

    /// `pmvisor-agent hint --device SERIAL --KIND RANGES`.
    fn hint_cli(&self, device: &str, kind: &str, ranges: &str) -> Output {
        Command::new(BIN)
            .arg("hint")
            .arg("--socket")
            .arg(self.hint_socket())
            .args(["--device", device, kind, ranges])
            .output()
            .unwrap()
    }

    fn hint(&self, kind: &str, ranges: &str) -> String {
        let out = self.hint_cli(SERIAL, kind, ranges);
        assert!(out.status.success(), "hint failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits for the agent's hint socket.
    fn wait_for_hint_socket(&self) {
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(self.hint_socket()).is_err() {
            assert!(Instant::now() < deadline, "no hint socket; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The agent process; killed when dropped.
struct Agent {
    child: Child,
}

impl Agent {
    fn assert_running(&mut self, guest: &Guest) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "the agent exited ({status:?}); log:\n{}", guest.log());
    }

    /// The nice value of each of the agent's threads.
    fn nice_values(&self) -> Vec<i64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        tasks
            .map(|task| {
                let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
                // Field 19, counted after the parenthesized command name.
                let after_name = stat.rsplit_once(") ").unwrap().1;
                after_name.split(' ').nth(16).unwrap().parse().unwrap()
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake host's listening socket.
struct Host {
    listener: UnixListener,
}

impl Host {
    fn listen(guest: &Guest) -> Self {
        let _ = std::fs::remove_file(guest.host_socket());
        let listener = UnixListener::bind(guest.host_socket()).unwrap();
        listener.set_nonblocking(true).unwrap();
        Host { listener }
    }

    /// Accepts the agent's next connection and returns it with its Hello,
    /// unanswered.
    fn accept_hello(&self, guest: &Guest) -> (UnixStream, Hello) {
        let deadline = Instant::now() + WAIT;
        let mut stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no agent came; log:\n{}", guest.log());
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        match read_frame(&mut stream).unwrap() {
            Message::Hello(hello) => (stream, hello),
            other => panic!("the agent began with {other:?}"),
        }
    }

    /// Accepts the agent and welcomes it.
    fn accept(&self, guest: &Guest) -> (UnixStream, Hello) {
        let (mut stream, hello) = self.accept_hello(guest);
        write_frame(&mut stream, &Message::Welcome { version: PROTOCOL_VERSION }).unwrap();
        (stream, hello)
    }
}

fn ask(stream: &mut UnixStream, request: &Message) -> Message {
    write_frame(stream, request).unwrap();
    read_frame(stream).unwrap()
}

fn evict_request(id: u64, count: u64, block_size: u32, deadline_ms: u32) -> EvictRequest {
    EvictRequest { id, serial: SERIAL.into(), count, block_size, deadline_ms, resident: None }
}

fn evict(stream: &mut UnixStream, request: &EvictRequest) -> EvictAnswer {
    match ask(stream, &Message::EvictRequest(request.clone())) {
        Message::EvictAnswer(answer) => answer,
        other => panic!("evict request answered with {other:?}"),
    }
}

fn er(start: u64, count: u64, disposition: Disposition) -> EvictRange {
    EvictRange { start, count, disposition }
}

/// Reads until the agent closes the stream; returns the frames it sent.
fn frames_until_close(stream: &mut UnixStream) -> Vec<Message> {
    let mut frames = Vec::new();
    loop {
        match read_frame(stream) {
            Ok(m) => frames.push(m),
            Err(_) => return frames,
        }
    }
}

#[test]
fn scripted_hints_decide_the_evicted_blocks() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let mut agent = guest.start_agent();
    let (mut link, hello) = host.accept(&guest);
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_eq!(hello.devices, [Device { serial: SERIAL.into(), size_bytes: SIZE }]);

    guest.wait_for_hint_socket();
    assert_eq!(guest.hint("--hot", "0-99"), "100 blocks of 4 KiB on region-a are now hot\n");
    guest.hint("--hot", "16000-16383");
    guest.hint("--cold", "1000+500");
    guest.hint("--cold", "150-199");
    // The latest hint wins: 150-199 become disposable again.
    assert_eq!(
        guest.hint("--disposable", "100-199"),
        "100 blocks of 4 KiB on region-a are now disposable\n"
    );

    // Disposable as Drop, then cold, then unhinted from the end, short of
    // the hot tail.
    let request = evict_request(1, 1000, 4096, 200);
    let answer = evict(&mut link, &request);
    assert_eq!(
        answer.ranges,
        [
            er(100, 100, Disposition::Drop),
            er(1000, 500, Disposition::Keep),
            er(15600, 400, Disposition::Keep)
        ]
    );
    assert_eq!(validate_answer(&request, SIZE / 4096, &answer).unwrap(), answer.ranges);

    // In 512-byte blocks, the next answer skips what was given away.
    let request = evict_request(2, 20, 512, 200);
    let answer = evict(&mut link, &request);
    assert_eq!(answer.ranges, [er(15600 * 8 - 20, 20, Disposition::Keep)]);

    // All but three of the blocks not given away yet (4 KiB blocks
    // 100-199, 1000-1499 and 15597-15999, the last partly): hot blocks go
    // last, from the end, so the three kept are the lowest hot ones.
    let everything = 16384 - 1003 - 3;
    let request = evict_request(3, everything, 4096, 1000);
    let answer = evict(&mut link, &request);
    let total: u64 = answer.ranges.iter().map(|r| r.count).sum();
    assert_eq!(total, everything);
    assert!(validate_answer(&request, SIZE / 4096, &answer).is_ok());
    let offered: Vec<u64> =
        answer.ranges.iter().flat_map(|r| r.start..r.start + r.count).take(3).collect();
    assert_eq!(offered, [3, 4, 5]);

    // Grow: the given-away hot blocks are asked back, lowest first.
    let notice = GrowNotice { id: 4, serial: SERIAL.into(), count: 10, block_size: 4096 };
    match ask(&mut link, &Message::GrowNotice(notice)) {
        Message::HotRanges(HotRanges { id: 4, ranges, .. }) => {
            assert_eq!(ranges, [BlockRange { start: 3, count: 10 }]);
        }
        other => panic!("grow notice answered with {other:?}"),
    }

    match ask(&mut link, &Message::StatsRequest) {
        Message::Stats(stats) => {
            let d = &stats.devices[0];
            assert_eq!((d.serial.as_str(), d.hot_blocks, d.cold_blocks), (SERIAL, 484, 500));
            assert_eq!((d.disposable_blocks, d.evict_requests_answered), (100, 3));
            assert_eq!(d.grow_notices_answered, 1);
        }
        other => panic!("stats request answered with {other:?}"),
    }
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 42 }), Message::Pong { nonce: 42 });

    let stats = Command::new(BIN).arg("stats").arg("--socket").arg(guest.hint_socket()).output();
    let stats = String::from_utf8(stats.unwrap().stdout).unwrap();
    assert!(stats.lines().nth(1).unwrap().starts_with("region-a"), "{stats}");
    agent.assert_running(&guest);
}

#[test]
fn answers_arrive_within_the_deadline() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let agent = guest.start_agent();
    let (mut link, _) = host.accept(&guest);
    guest.wait_for_hint_socket();
    // Busy guest CPUs do not make it late: as root it raises its priority.
    if rustix::process::geteuid().is_root() {
        let nice = agent.nice_values();
        assert!(!nice.is_empty() && nice.iter().all(|&n| n == -10), "threads at nice {nice:?}");
    }

    // The worst fragmentation: every other block cold, 8,192 ranges.
    let hint = Hint {
        serial: SERIAL.into(),
        kind: HintKind::Cold,
        ranges: (0..8192).map(|i| BlockRange { start: 2 * i, count: 1 }).collect(),
    };
    let mut client = UnixStream::connect(guest.hint_socket()).unwrap();
    assert_eq!(
        ask(&mut client, &Message::Hint(hint)),
        Message::HintAccepted { serial: SERIAL.into(), blocks: 8192 }
    );

    // The second and third requests find only given-away cold blocks and
    // go on to the unhinted ones: as fragmented, and more work.
    for (id, deadline_ms) in [(1, 200), (2, 100), (3, 0)] {
        let request = evict_request(id, 8192, 4096, deadline_ms);
        let sent = Instant::now();
        let answer = evict(&mut link, &request);
        let took = sent.elapsed();
        assert!(
            took <= Duration::from_millis(u64::from(deadline_ms.max(100))),
            "deadline {deadline_ms} ms, answered in {took:?}"
        );
        assert!(validate_answer(&request, SIZE / 4096, &answer).is_ok());
        let total: u64 = answer.ranges.iter().map(|r| r.count).sum();
        if id == 1 {
            assert_eq!(total, 8192);
            assert_eq!(answer.ranges.len(), 8192);
        }
    }
}

#[test]
fn the_agent_reconnects_after_the_host_closes_or_restarts() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let mut agent = guest.start_agent();
    let (mut link, _) = host.accept(&guest);
    guest.wait_for_hint_socket();
    guest.hint("--disposable", "0-9");
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 1 }), Message::Pong { nonce: 1 });

    // The host closes the connection: the agent comes back, and still
    // knows its hints.
    drop(link);
    let (mut link, hello) = host.accept(&guest);
    assert_eq!(hello.devices.len(), 1);
    let answer = evict(&mut link, &evict_request(1, 10, 4096, 200));
    assert_eq!(answer.ranges, [er(0, 10, Disposition::Drop)]);

    // The host goes away altogether and comes back later.
    drop(link);
    drop(host);
    std::fs::remove_file(guest.host_socket()).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    agent.assert_running(&guest);
    let host = Host::listen(&guest);
    let (mut link, _) = host.accept(&guest);
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 2 }), Message::Pong { nonce: 2 });
    let log = guest.log();
    assert!(log.contains("the host closed the connection; reconnecting in"), "{log}");
    assert!(log.contains("cannot reach the host at unix:"), "{log}");
}

#[test]
fn hostile_host_input_gets_a_clear_error_and_a_reconnect() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let mut agent = guest.start_agent();

    let oversized = u32::MAX.to_le_bytes().to_vec();
    let garbage = [5u8, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff].to_vec();
    let unknown_kind = [1u8, 0, 0, 0, 60].to_vec();
    let cases = [
        (oversized, "frame of 4294967295 bytes exceeds the 4194304-byte bound"),
        (garbage, "frame payload is not a valid message"),
        (unknown_kind, "unknown message kind 60 (the peer speaks a newer protocol)"),
    ];
    for (bytes, error) in &cases {
        let (mut link, _) = host.accept(&guest);
        std::io::Write::write_all(&mut link, bytes).unwrap();
        let frames = frames_until_close(&mut link);
        assert!(
            matches!(&frames[..], [Message::Error { id: None, message }] if message.starts_with(error)),
            "{frames:?}"
        );
        agent.assert_running(&guest);
    }

    // Requests the agent cannot serve get an error naming them; the link
    // stays up.
    let (mut link, _) = host.accept(&guest);
    // The agent logged each bad frame before it came back.
    let log = guest.log();
    for (_, error) in cases {
        let line = format!("cannot read the host's frame: {error}");
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
    let unknown = EvictRequest { serial: "other".into(), ..evict_request(7, 1, 4096, 200) };
    assert_eq!(
        ask(&mut link, &Message::EvictRequest(unknown)),
        Message::Error {
            id: Some(7),
            message: "no device with serial \"other\" in this guest".into()
        }
    );
    assert_eq!(
        ask(&mut link, &Message::EvictRequest(evict_request(8, 1, 1000, 200))),
        Message::Error {
            id: Some(8),
            message: "block size 1000 is not a power of two of at least 512".into()
        }
    );
    let hello = Message::Hello(Hello { version: 1, agent: "x".into(), devices: vec![] });
    assert_eq!(
        ask(&mut link, &hello),
        Message::Error {
            id: None,
            message: "the agent does not expect Hello from the host".into()
        }
    );
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 3 }), Message::Pong { nonce: 3 });

    // A host that refuses the agent, or welcomes it in another version.
    drop(link);
    let (mut link, _) = host.accept_hello(&guest);
    write_frame(&mut link, &Message::Refused { reason: "busy".into() }).unwrap();
    drop(link);
    let (mut link, _) = host.accept_hello(&guest);
    write_frame(&mut link, &Message::Welcome { version: 99 }).unwrap();
    drop(link);
    let (mut link, _) = host.accept(&guest);
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 4 }), Message::Pong { nonce: 4 });
    let log = guest.log();
    assert!(log.contains("the host refused the agent: busy"), "{log}");
    assert!(
        log.contains(
            "the host welcomed the agent with another protocol version: the peer speaks \
             protocol version 99, this side speaks version 2"
        ),
        "{log}"
    );
    agent.assert_running(&guest);
}

#[test]
fn a_host_that_stops_mid_frame_is_survived() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let mut agent = guest.start_agent();
    let (mut link, _) = host.accept(&guest);
    // Half a frame, then the host is gone.
    std::io::Write::write_all(&mut link, &[10, 0, 0, 0, 9]).unwrap();
    drop(link);
    let (mut link, _) = host.accept(&guest);
    assert_eq!(ask(&mut link, &Message::Ping { nonce: 5 }), Message::Pong { nonce: 5 });
    assert!(guest.log().contains("frame truncated: expected 10 bytes, got 1"), "{}", guest.log());
    agent.assert_running(&guest);
}

#[test]
fn hint_cli_errors_say_what_to_do() {
    let guest = Guest::new();
    let out = guest.hint_cli(SERIAL, "--cold", "0-9");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "pmvisor-agent: the hint was not applied (is `pmvisor-agent run` running?): cannot \
             reach the agent's hint socket {}: No such file or directory (os error 2)\n",
            guest.hint_socket().display()
        )
    );
    let out = guest.hint_cli(SERIAL, "--cold", "5-4");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pmvisor-agent: bad RANGES: \"5-4\" names no blocks\n"
    );

    let host = Host::listen(&guest);
    let _agent = guest.start_agent();
    let _link = host.accept(&guest);
    guest.wait_for_hint_socket();
    let out = guest.hint_cli("nope", "--hot", "1");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pmvisor-agent: the hint was not applied (is `pmvisor-agent run` running?): the agent \
         refused: no device with serial \"nope\" in this guest\n"
    );
    let out = guest.hint_cli(SERIAL, "--hot", "16380+5");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pmvisor-agent: the hint was not applied (is `pmvisor-agent run` running?): the agent \
         refused: hinted range 16380+5 ends past the device's 16384 blocks of 4 KiB\n"
    );
}

#[test]
fn a_second_agent_does_not_steal_the_hint_socket() {
    let guest = Guest::new();
    let host = Host::listen(&guest);
    let _first = guest.start_agent();
    let _link = host.accept(&guest);
    guest.wait_for_hint_socket();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--connect")
        .arg(format!("unix:{}", guest.host_socket().display()))
        .arg("--hint-socket")
        .arg(guest.hint_socket())
        .arg("--sys-block")
        .arg(guest.path("block"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with(&format!(
            "pmvisor-agent: cannot start the agent: another agent already listens on {}\n",
            guest.hint_socket().display()
        )),
        "{stderr}"
    );
}
