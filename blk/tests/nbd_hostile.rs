//! Hostile clients: the classic NBD server attacks (huge option payloads,
//! long export names, commands before negotiation, giant reads and writes,
//! bad magic, block status past the end, request floods, connection
//! floods). After each, the server must still serve a normal client, must
//! not have grown its memory beyond its bounds, and must have logged one
//! clear line saying why the client was rejected.
//!
//! This file is its own test binary so that its peak-memory readings are
//! not disturbed by the client-tool tests.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use common::{run_ok, tool, RawClient, TestServer};
use pmvisor_blk::BlockDevice;

const MIB: u64 = 1 << 20;
const EINVAL: u32 = 22;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Route the server's tracing output into `LOGS`.
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
    });
}

/// Wait (the log line follows the close) for a rejection line containing
/// `reason`; return how many such lines there are.
fn rejections_mentioning(reason: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs =
            String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let count = logs
            .lines()
            .filter(|line| {
                line.contains("WARN")
                    && line.contains("NBD client rejected")
                    && line.contains(reason)
            })
            .count();
        if count > 0 || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Connect, greet, and send client flags: ready for options.
fn negotiating(server: &TestServer) -> std::os::unix::net::UnixStream {
    let mut stream = RawClient::connect(&server.socket());
    stream.write_all(&3u32.to_be_bytes()).unwrap();
    stream
}

/// A well-behaved client still gets its data through.
fn assert_serves_a_normal_client(server: &TestServer) {
    let mut client = RawClient::open(&server.socket(), &server.name, true, true);
    client.request(0, 1, 77, 8192, 5, b"alive");
    assert_eq!(client.any_reply().payload, [0, 0, 0, 0]);
    client.request(4, 0, 78, 8192, 5, &[]);
    let chunk = client.any_reply();
    assert_eq!((chunk.kind, chunk.handle), (1, 78));
    assert_eq!(&chunk.payload[8..], b"alive");
}

#[test]
fn an_oversized_option_is_refused_without_reading_its_payload() {
    capture_logs();
    let server = TestServer::unix("hostile-option", 16 * MIB);
    let mut stream = negotiating(&server);
    let mut header = common::IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&7u32.to_be_bytes());
    header.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    stream.write_all(&header).unwrap();
    let (option, kind, _) = RawClient::read_option_reply(&mut stream);
    assert_eq!((option, kind), (7, 0x8000_0009), "NBD_REP_ERR_TOO_BIG");
    assert!(RawClient::closed_by_server(&mut stream));
    assert_eq!(rejections_mentioning("declares 4294967280 payload bytes"), 1);
    assert_serves_a_normal_client(&server);
}

#[test]
fn huge_export_names_are_refused() {
    capture_logs();
    let server = TestServer::unix("hostile-name", 16 * MIB);

    // NBD_OPT_EXPORT_NAME cannot answer with an error: the session ends.
    let mut stream = negotiating(&server);
    let mut message = common::IHAVEOPT.to_be_bytes().to_vec();
    message.extend_from_slice(&1u32.to_be_bytes());
    message.extend_from_slice(&(MIB as u32).to_be_bytes());
    message.extend(std::iter::repeat_n(b'a', MIB as usize));
    let _ = stream.write_all(&message); // the server may close mid-way
    assert!(RawClient::closed_by_server(&mut stream));
    assert_eq!(rejections_mentioning("option 1 declares 1048576 payload bytes"), 1);

    // NBD_OPT_GO can: a name over 4096 bytes, or a name length pointing
    // past the payload, is an error reply and haggling goes on.
    let mut stream = negotiating(&server);
    let mut payload = 5000u32.to_be_bytes().to_vec();
    payload.extend(std::iter::repeat_n(b'a', 5000));
    payload.extend_from_slice(&0u16.to_be_bytes());
    RawClient::send_option(&mut stream, 7, &payload);
    let (_, kind, message) = RawClient::read_option_reply(&mut stream);
    assert_eq!(kind, 0x8000_0009);
    assert_eq!(message, b"a string is longer than 4096 bytes");
    let mut payload = 4000u32.to_be_bytes().to_vec();
    payload.extend_from_slice(b"disk\0\0");
    RawClient::send_option(&mut stream, 7, &payload);
    let (_, kind, _) = RawClient::read_option_reply(&mut stream);
    assert_eq!(kind, 0x8000_0003, "NBD_REP_ERR_INVALID");
    RawClient::send_option(&mut stream, 2, &[]);
    assert_eq!(RawClient::read_option_reply(&mut stream).1, 1, "NBD_OPT_ABORT is acknowledged");
    assert_serves_a_normal_client(&server);
}

#[test]
fn a_command_before_negotiation_ends_the_session() {
    capture_logs();
    let server = TestServer::unix("hostile-early", 16 * MIB);
    let mut stream = negotiating(&server);
    let mut request = 0x2560_9513u32.to_be_bytes().to_vec();
    request.extend_from_slice(&[0, 0, 0, 0]);
    request.extend_from_slice(&1u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(&4096u32.to_be_bytes());
    stream.write_all(&request).unwrap();
    assert!(RawClient::closed_by_server(&mut stream));
    assert_eq!(rejections_mentioning("not IHAVEOPT"), 1);
    assert_serves_a_normal_client(&server);
}

#[test]
fn a_1_gib_read_is_refused_without_allocating_it() {
    capture_logs();
    let server = TestServer::unix("hostile-read", 2048 * MIB);
    let before = peak_rss();
    let mut client = RawClient::open(&server.socket(), "hostile-read", true, false);
    client.request(0, 0, 1, 0, 1 << 30, &[]);
    let chunk = client.any_reply();
    assert_eq!((chunk.kind, chunk.handle), (0x8001, 1), "a structured error chunk");
    assert_eq!(u32::from_be_bytes(chunk.payload[..4].try_into().unwrap()), EINVAL);
    let mut simple = RawClient::open(&server.socket(), "hostile-read", false, false);
    simple.request(0, 0, 2, 0, 1 << 30, &[]);
    assert_eq!(simple.simple_reply(), (EINVAL, 2));
    simple.request(0, 0, 3, 0, 4, &[]);
    assert_eq!(simple.simple_reply(), (0, 3), "no data was sent for the refused read");
    assert_eq!(simple.read_data(4), [0; 4]);
    assert!(peak_rss() - before < 256 * MIB, "the server allocated for a refused read");
    assert_serves_a_normal_client(&server);
}

#[test]
fn a_1_gib_write_ends_the_session_before_its_payload() {
    capture_logs();
    let server = TestServer::unix("hostile-write", 16 * MIB);
    let mut client = RawClient::open(&server.socket(), "hostile-write", false, false);
    client.request(0, 1, 1, 0, 1 << 30, &[]);
    assert_eq!(client.simple_reply(), (EINVAL, 1));
    assert!(RawClient::closed_by_server(&mut client.stream));
    assert_eq!(rejections_mentioning("NBD_CMD_WRITE of 1073741824 bytes"), 1);
    assert_serves_a_normal_client(&server);
}

#[test]
fn bad_request_magic_closes_the_connection() {
    capture_logs();
    let server = TestServer::unix("hostile-magic", 16 * MIB);
    let mut client = RawClient::open(&server.socket(), "hostile-magic", true, false);
    let mut request = 0xdead_beefu32.to_be_bytes().to_vec();
    request.extend_from_slice(&[0u8; 24]);
    client.stream.write_all(&request).unwrap();
    assert!(RawClient::closed_by_server(&mut client.stream));
    assert_eq!(rejections_mentioning("has magic 0xdeadbeef"), 1);
    assert_serves_a_normal_client(&server);
}

#[test]
fn block_status_past_the_end_is_einval_and_harmless() {
    capture_logs();
    let server = TestServer::unix("hostile-status", 16 * MIB);
    let mut client = RawClient::open(&server.socket(), "hostile-status", true, true);
    for (handle, offset, len) in
        [(1, 16 * MIB - 4096, u32::MAX), (2, u64::MAX - 100, 4096), (3, 16 * MIB, 1)]
    {
        client.request(0, 7, handle, offset, len, &[]);
        let chunk = client.any_reply();
        assert_eq!((chunk.kind, chunk.handle), (0x8001, handle));
        assert_eq!(u32::from_be_bytes(chunk.payload[..4].try_into().unwrap()), EINVAL);
    }
    // The connection is still good.
    client.request(0, 7, 4, 0, 16 * MIB as u32, &[]);
    let chunk = client.any_reply();
    let mut whole_hole = (16 * MIB as u32).to_be_bytes().to_vec();
    whole_hole.extend_from_slice(&3u32.to_be_bytes());
    assert_eq!(chunk.payload[4..], whole_hole);
    assert_serves_a_normal_client(&server);
}

#[test]
fn a_flood_of_huge_reads_stays_within_the_in_flight_budget() {
    capture_logs();
    let server = TestServer::unix("hostile-flood", 64 * MIB);
    // Real data, so that replies carry 32 MiB payloads (not hole chunks).
    server.device.write_at(0, &vec![0x5au8; 32 * MIB as usize], false).unwrap();
    let before = peak_rss();
    let client = RawClient::open(&server.socket(), "hostile-flood", true, false);
    let mut sender = client.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        for handle in 0..2000u64 {
            let mut request = 0x2560_9513u32.to_be_bytes().to_vec();
            request.extend_from_slice(&[0, 0, 0, 0]);
            request.extend_from_slice(&handle.to_be_bytes());
            request.extend_from_slice(&0u64.to_be_bytes());
            request.extend_from_slice(&(32 * MIB as u32).to_be_bytes());
            if sender.write_all(&request).is_err() {
                return;
            }
        }
    });
    // Never read a reply; give the server time to fill whatever it would.
    std::thread::sleep(Duration::from_secs(2));
    let grown = peak_rss() - before;
    assert!(grown < 200 * MIB, "peak memory grew by {} MiB", grown / MIB);
    // Shut the socket (not just this descriptor): the flooding thread is
    // blocked writing, as the server stopped reading its requests.
    client.stream.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    assert_serves_a_normal_client(&server);
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    capture_logs();
    let server = TestServer::unix("hostile-conns", 16 * MIB);
    let limit = pmvisor_blk::nbd::MAX_CONNECTIONS;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..limit + 4 {
        let mut stream = std::os::unix::net::UnixStream::connect(server.socket()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 18];
        match stream.read_exact(&mut greeting) {
            Ok(()) => open.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((open.len(), refused), (limit, 4));
    assert_eq!(rejections_mentioning("connections are already open"), 4);
    drop(open);
    // Slots come back as the server notices the closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = std::os::unix::net::UnixStream::connect(server.socket()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if stream.read_exact(&mut [0u8; 18]).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "connection slots were not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_serves_a_normal_client(&server);
    if let Some(qemu_img) = tool("qemu-img", "qemu-utils") {
        let info =
            run_ok(Command::new(qemu_img).args(["info", &server.uri()]), Duration::from_secs(60));
        assert!(info.contains("virtual size: 16 MiB"), "{info}");
    }
}
