//! The link against an in-process fake agent speaking the real protocol
//! over a real Unix socket: a scripted answer is what the shrink evicts,
//! and every hostile answer leaves the host choosing, the data intact and
//! one clear log line.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pmvisor_agent::{
    read_frame_async, write_frame_async, BlockRange, Device, EvictAnswer, EvictRange, Hello,
    HotRanges, Message, PROTOCOL_VERSION,
};
use pmvisor_blk::BlockDevice;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::*;
use crate::block::{BlockRegion, BlockRegions, BlockSpec, BlockState};
use crate::pool::{CreateOptions, Pool};

const BLOCKS: u64 = 64;
const RESIDENT: u64 = 16;
const SERIAL: &str = "pmv-disk";
const PATIENT: Duration = Duration::from_secs(5);

/// A block region of 64 blocks, 16 resident, each written with its pattern.
fn rig(dir: &Path) -> (BlockRegions, Arc<BlockRegion>) {
    let options = CreateOptions { size: 16 << 20, ..CreateOptions::default() };
    let pool = Arc::new(Pool::create(&dir.join("p"), &options).unwrap());
    let regions = BlockRegions::open_file_swap(pool, &dir.join("p.swap")).unwrap();
    let spec = BlockSpec { size: BLOCKS * 4096, resident: RESIDENT * 4096, swap: true };
    let disk = regions.create("disk", spec).unwrap();
    for b in 0..RESIDENT {
        disk.write_at(b * 4096, &pattern(b), false).unwrap();
    }
    (regions, disk)
}

fn pattern(block: u64) -> Vec<u8> {
    (0..4096u64).map(|i| (block * 7 + i / 512) as u8 | 1).collect()
}

fn read_block(disk: &BlockRegion, block: u64) -> Vec<u8> {
    let mut got = vec![0u8; 4096];
    disk.read_at(block * 4096, &mut got).unwrap();
    got
}

async fn link(dir: &Path) -> AgentLink {
    let options = LinkOptions {
        region: "disk".into(),
        serial: SERIAL.into(),
        device_blocks: BLOCKS,
        addr: AgentAddr::Unix(dir.join("agent.sock")),
    };
    AgentLink::start(options).await.unwrap()
}

/// What the fake agent does with one request.
#[derive(Debug, Clone)]
enum Reply {
    /// Send this message.
    Send(Message),
    /// Send these bytes as they are.
    Raw(Vec<u8>),
    /// Wait, then reply.
    Later(Duration, Box<Reply>),
    /// Send these bytes, then close the connection.
    RawThenClose(Vec<u8>),
}

/// Connect to `path` as an agent listing `serial` and answer each request
/// with `script(request)`. Returns the host's answer to the hello.
async fn fake_agent<F>(path: &Path, serial: &str, mut script: F) -> Message
where
    F: FnMut(&Message) -> Reply + Send + 'static,
{
    let mut stream = UnixStream::connect(path).await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        agent: "fake-agent 1".into(),
        devices: vec![Device { serial: serial.into(), size_bytes: BLOCKS * 4096 }],
    };
    write_frame_async(&mut stream, &Message::Hello(hello)).await.unwrap();
    let welcome = read_frame_async(&mut stream).await.unwrap();
    if matches!(welcome, Message::Welcome { .. }) {
        tokio::spawn(async move {
            while let Ok(request) = read_frame_async(&mut stream).await {
                let mut reply = script(&request);
                loop {
                    match reply {
                        Reply::Send(message) => {
                            let _ = write_frame_async(&mut stream, &message).await;
                        }
                        Reply::Raw(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                        }
                        Reply::RawThenClose(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                            return;
                        }
                        Reply::Later(wait, then) => {
                            tokio::time::sleep(wait).await;
                            reply = *then;
                            continue;
                        }
                    }
                    break;
                }
            }
        });
    }
    welcome
}

fn answer(request: &Message, ranges: Vec<EvictRange>) -> Message {
    let Message::EvictRequest(r) = request else {
        panic!("expected an evict request: {request:?}")
    };
    Message::EvictAnswer(EvictAnswer { id: r.id, serial: r.serial.clone(), ranges })
}

fn range(start: u64, count: u64, drop: bool) -> EvictRange {
    let disposition =
        if drop { pmvisor_agent::Disposition::Drop } else { pmvisor_agent::Disposition::Keep };
    EvictRange { start, count, disposition }
}

/// Log lines written while it is installed on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self, containing: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).to_string();
        text.lines().filter(|l| l.contains(containing)).map(str::to_string).collect()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_agents_choice_is_what_the_shrink_evicts_and_a_grow_brings_hot_blocks_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_regions, disk) = rig(dir.path());
    let link = link(dir.path()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::clone(&seen);
    let welcome = fake_agent(&dir.path().join("agent.sock"), SERIAL, move |request| {
        requests.lock().unwrap().push(request.clone());
        match request {
            // Disposable 0..4 first, then cold 8..12.
            Message::EvictRequest(_) => {
                Reply::Send(answer(request, vec![range(0, 4, true), range(8, 4, false)]))
            }
            Message::GrowNotice(n) => Reply::Send(Message::HotRanges(HotRanges {
                id: n.id,
                serial: n.serial.clone(),
                ranges: vec![BlockRange { start: 9, count: 2 }, BlockRange { start: 40, count: 1 }],
            })),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(welcome, Message::Welcome { version: PROTOCOL_VERSION });
    assert!(link.wait_connected(PATIENT).await);

    let done = resize_with_agent(Arc::clone(&disk), Some(&link), 8 * 4096, PATIENT).await.unwrap();
    let r = &done.report;
    assert_eq!((r.guest_dropped, r.guest_kept, r.host_chosen), (4, 4, 0), "{r:?}");
    let agent = done.agent.unwrap();
    assert_eq!((agent.request, agent.asked, agent.offered, agent.failure), ("evict", 8, 8, None));
    {
        let requests = seen.lock().unwrap();
        let Message::EvictRequest(request) = &requests[0] else { panic!() };
        assert_eq!((request.count, request.block_size, request.serial.as_str()), (8, 4096, SERIAL));
    }
    for b in 0..RESIDENT {
        let state = disk.block_state(b).unwrap();
        match b {
            0..=3 => assert_eq!(state, BlockState::Unmapped, "block {b}"),
            8..=11 => assert!(matches!(state, BlockState::Swapped(_)), "block {b}: {state:?}"),
            _ => assert!(matches!(state, BlockState::Resident(_)), "block {b}: {state:?}"),
        }
    }
    let done = resize_with_agent(Arc::clone(&disk), Some(&link), 16 * 4096, PATIENT).await.unwrap();
    assert_eq!(done.report.brought_back, 2, "{:?}", done.report);
    assert_eq!(done.agent.unwrap().offered, 3);
    assert!(matches!(disk.block_state(9), Some(BlockState::Resident(_))));
    assert!(matches!(disk.block_state(10), Some(BlockState::Resident(_))));
    assert!(matches!(disk.block_state(8), Some(BlockState::Swapped(_))));
    for b in 0..RESIDENT {
        let want = if b < 4 { vec![0u8; 4096] } else { pattern(b) };
        assert_eq!(read_block(&disk, b), want, "block {b}");
    }
    let stats = link.stats();
    assert_eq!((stats.connections, stats.answers, stats.refused), (1, 2, 0));
    assert_eq!(link.latency().count, 2);
}

/// A hostile agent's behaviour: its name, the failure reason it must
/// produce (`None`: a usable, short answer) and its script.
type HostileCase = (&'static str, Option<&'static str>, fn(&Message) -> Reply);

fn hostile_cases() -> Vec<HostileCase> {
    vec![
        ("oversized frame", Some("oversize"), |_| Reply::Raw(vec![0xff, 0xff, 0xff, 0xff])),
        ("garbage", Some("garbage"), |_| Reply::Raw(vec![3, 0, 0, 0, 0x63, 0xff, 0xff])),
        ("wrong device", Some("wrong_request"), |r| {
            let Message::EvictAnswer(mut a) = answer(r, vec![range(0, 2, true)]) else { panic!() };
            a.serial = "pmv-other".into();
            Reply::Send(Message::EvictAnswer(a))
        }),
        ("out of range", Some("out_of_range"), |r| {
            Reply::Send(answer(r, vec![range(0, 2, true), range(BLOCKS - 1, 3, false)]))
        }),
        ("duplicate ranges", Some("duplicate"), |r| {
            Reply::Send(answer(r, vec![range(0, 4, true), range(2, 2, false)]))
        }),
        ("more than asked", Some("too_many"), |r| Reply::Send(answer(r, vec![range(0, 9, false)]))),
        ("late answer", Some("timeout"), |r| {
            Reply::Later(Duration::from_millis(600), Box::new(Reply::Send(answer(r, vec![]))))
        }),
        ("disconnect mid-answer", Some("disconnected"), |_| {
            Reply::RawThenClose(vec![100, 0, 0, 0, 4, 1])
        }),
        ("fewer than asked", None, |r| Reply::Send(answer(r, vec![range(3, 2, true)]))),
    ]
}

#[tokio::test]
async fn a_hostile_agent_leaves_the_host_choosing_with_bounded_memory_and_one_log_line() {
    let logs = Logs::default();
    let _guard = logs.install();
    for (case, reason, script) in hostile_cases() {
        let dir = tempfile::tempdir().unwrap();
        let (_regions, disk) = rig(dir.path());
        let link = link(dir.path()).await;
        fake_agent(&dir.path().join("agent.sock"), SERIAL, script).await;
        assert!(link.wait_connected(PATIENT).await, "{case}");
        let before = logs.lines("gave no usable answer").len();
        let deadline = Duration::from_millis(300);
        let done = resize_with_agent(Arc::clone(&disk), Some(&link), 8 * 4096, deadline)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let r = &done.report;
        let agent = done.agent.unwrap();
        assert_eq!(agent.failure, reason, "{case}: {agent:?}");
        match reason {
            Some(_) => {
                assert_eq!((r.guest_dropped, r.guest_kept, r.host_chosen), (0, 0, 8), "{case}");
                let lines = logs.lines("gave no usable answer");
                assert_eq!(lines.len(), before + 1, "{case}: {lines:?}");
                let line = lines.last().unwrap();
                assert!(
                    line.contains("region disk") && line.contains("the host chooses"),
                    "{line}"
                );
                assert_eq!(link.stats().failures[reason.unwrap()], 1, "{case}");
            }
            None => {
                assert_eq!((r.guest_dropped, r.host_chosen), (2, 6), "{case}");
                assert_eq!(link.stats().short_answers, 1);
            }
        }
        assert_eq!(r.frames_after, 8, "{case}");
        let stats = disk.stats();
        assert!(stats.resident_blocks <= 8, "{case}: {stats:?}");
        let dropped = if reason.is_none() { 3..5 } else { 0..0 };
        for b in 0..RESIDENT {
            let want = if dropped.contains(&b) { vec![0u8; 4096] } else { pattern(b) };
            assert_eq!(read_block(&disk, b), want, "{case}: block {b}");
        }
    }
}

#[tokio::test]
async fn a_late_answer_is_skipped_and_the_next_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_regions, disk) = rig(dir.path());
    let link = link(dir.path()).await;
    let mut first = true;
    fake_agent(&dir.path().join("agent.sock"), SERIAL, move |r| {
        let wait = if std::mem::take(&mut first) { 400 } else { 0 };
        let reply = Reply::Send(answer(r, vec![range(12, 2, false)]));
        Reply::Later(Duration::from_millis(wait), Box::new(reply))
    })
    .await;
    assert!(link.wait_connected(PATIENT).await);
    let short = Duration::from_millis(100);
    let done = resize_with_agent(Arc::clone(&disk), Some(&link), 12 * 4096, short).await.unwrap();
    assert_eq!(done.agent.unwrap().failure, Some("timeout"));
    assert_eq!(done.report.host_chosen, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = resize_with_agent(Arc::clone(&disk), Some(&link), 10 * 4096, PATIENT).await.unwrap();
    let agent = done.agent.unwrap();
    assert_eq!((agent.failure, agent.offered), (None, 2), "{agent:?}");
    assert!(link.is_connected());
    assert_eq!(link.stats().late_answers, 1);
}

#[tokio::test]
async fn an_agent_that_does_not_list_the_disk_is_refused_and_the_host_chooses() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().unwrap();
    let (_regions, disk) = rig(dir.path());
    let link = link(dir.path()).await;
    let path = dir.path().join("agent.sock");
    let refused = fake_agent(&path, "pmv-elsewhere", |_| panic!("never asked")).await;
    let Message::Refused { reason } = refused else { panic!("{refused:?}") };
    assert_eq!(
        reason,
        "this connection serves the disk with serial \"pmv-disk\" (region disk), and the agent \
         sees \"pmv-elsewhere\""
    );
    let lines = logs.lines("refused agent");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"fake-agent 1\" for region disk"), "{}", lines[0]);
    assert!(!link.is_connected());
    let done = resize_with_agent(Arc::clone(&disk), Some(&link), 8 * 4096, PATIENT).await.unwrap();
    assert_eq!(done.agent.unwrap().failure, Some("absent"));
    assert_eq!(done.report.host_chosen, 8);
    assert_eq!(link.stats().refused, 1);
    // A right agent may still come.
    fake_agent(&path, SERIAL, |r| Reply::Send(answer(r, vec![]))).await;
    assert!(link.wait_connected(PATIENT).await);
}

#[tokio::test]
async fn a_serial_link_connects_to_the_chardev_socket_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qemu.sock");
    let options = LinkOptions {
        region: "disk".into(),
        serial: SERIAL.into(),
        device_blocks: BLOCKS,
        addr: AgentAddr::Serial(path.clone()),
    };
    let link = AgentLink::start(options).await.unwrap();
    // QEMU comes up after the daemon: the link keeps trying.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let qemu = tokio::net::UnixListener::bind(&path).unwrap();
    for round in 0..2 {
        let (mut guest, _) = tokio::time::timeout(PATIENT, qemu.accept()).await.unwrap().unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            agent: format!("agent {round}"),
            devices: vec![Device { serial: SERIAL.into(), size_bytes: 0 }],
        };
        write_frame_async(&mut guest, &Message::Hello(hello)).await.unwrap();
        assert!(matches!(read_frame_async(&mut guest).await.unwrap(), Message::Welcome { .. }));
        assert!(link.wait_connected(PATIENT).await);
        assert_eq!(link.stats().agent.as_deref(), Some(format!("agent {round}").as_str()));
        drop(guest);
    }
    assert_eq!(link.stats().connections, 2);
}

#[tokio::test]
async fn a_unix_link_refuses_an_address_in_use_and_removes_its_socket_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = link(dir.path()).await;
    let options = LinkOptions {
        region: "other".into(),
        serial: "pmv-other".into(),
        device_blocks: BLOCKS,
        addr: AgentAddr::Unix(dir.path().join("agent.sock")),
    };
    let err = AgentLink::start(options).await.unwrap_err();
    assert!(err.to_string().starts_with("another process already listens at"), "{err}");
    drop(first);
    assert!(!dir.path().join("agent.sock").exists());
}
