//! A client of QEMU's machine protocol (QMP) on a Unix socket.
//!
//! QMP is line-delimited JSON: QEMU greets with its version, the client
//! sends `qmp_capabilities`, then every `{"execute": ...}` is answered by
//! one `{"return": ...}` or `{"error": ...}` carrying the command's `id`,
//! with asynchronous `{"event": ...}` lines interleaved. This client sends
//! one command at a time (a connection is a mutex), reads until the answer
//! with its id and keeps the last few events for diagnostics.
//!
//! Hand-written on tokio and serde_json: the QMP crates on crates.io are
//! either unmaintained or synchronous and generated from a QAPI schema much
//! larger than the half-dozen commands pmvisor needs (`stop`, `cont`,
//! `migrate*`, `query-*`, `quit`).
//!
//! Everything QEMU sends is untrusted: a line longer than [`MAX_LINE`] ends
//! the connection.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::version::QemuVersion;

/// Longest line accepted from QEMU (`query-*` answers are a few KiB).
pub const MAX_LINE: u64 = 1 << 20;
/// Events kept for diagnostics.
const KEPT_EVENTS: usize = 32;

/// What failed in a QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Nothing accepted a connection on the socket.
    #[error("cannot connect to the QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("the QMP connection failed")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection (it exited).
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// The peer's first line was not a QMP greeting.
    #[error("{path} does not speak QMP: {detail}")]
    Greeting { path: PathBuf, detail: String },
    /// A line was not QMP.
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Refused { command: String, class: String, desc: String },
    /// No answer before the deadline.
    #[error("QEMU did not answer {command} within {after:?}")]
    Timeout { command: String, after: Duration },
}

/// An asynchronous event QEMU sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QmpEvent {
    /// Its name, e.g. `STOP`, `RESUME`, `MIGRATION`.
    pub event: String,
    /// Its data, if any.
    #[serde(default)]
    pub data: Value,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    version: QemuVersion,
    /// The process at the other end (QEMU), when the kernel says.
    peer: Option<u32>,
    next_id: AtomicU64,
    conn: Mutex<Conn>,
}

#[derive(Debug)]
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<QmpEvent>,
    /// The line being read: kept across a cancelled read (a command that
    /// timed out), so the next read resumes it instead of starting mid-line.
    partial: Vec<u8>,
}

impl Qmp {
    /// Connect to `path`, read the greeting and leave capability
    /// negotiation, within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let setup = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Connect { path: path.to_path_buf(), source })?;
            let peer = stream.peer_cred().ok().and_then(|c| c.pid()).map(|p| p as u32);
            let (read, writer) = stream.into_split();
            let mut conn = Conn {
                reader: BufReader::new(read),
                writer,
                events: VecDeque::new(),
                partial: Vec::new(),
            };
            let greeting = conn.read_message().await?;
            let version = parse_greeting(&greeting).ok_or_else(|| QmpError::Greeting {
                path: path.to_path_buf(),
                detail: truncate(&greeting.to_string()),
            })?;
            let qmp = Qmp {
                path: path.to_path_buf(),
                version,
                peer,
                next_id: AtomicU64::new(1),
                conn: Mutex::new(conn),
            };
            qmp.execute("qmp_capabilities", Value::Null).await?;
            Ok(qmp)
        };
        tokio::time::timeout(timeout, setup).await.unwrap_or_else(|_| {
            Err(QmpError::Timeout { command: "the QMP greeting".into(), after: timeout })
        })
    }

    /// Connect to `path`, retrying while the socket does not exist yet or
    /// refuses (QEMU starting), until `deadline`.
    pub async fn connect_when_ready(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Qmp::connect(path, left.max(Duration::from_millis(1))).await {
                Err(QmpError::Connect { source, .. })
                    if Instant::now() < deadline
                        && matches!(
                            source.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    // QEMU's monitor comes up tens of ms after its start;
                    // a resume waits for it, so look often.
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                other => return other,
            }
        }
    }

    /// The socket this session is on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The process id of the QEMU at the other end, when known.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.version
    }

    /// Run `command` with `arguments` (`Value::Null` for none); its
    /// `return` value.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let mut conn = self.conn.lock().await;
        conn.writer.write_all(line.as_bytes()).await.map_err(QmpError::Io)?;
        loop {
            let message = conn.read_message().await?;
            if message.get("event").is_some() {
                conn.keep_event(message);
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                // An answer to a command whose caller gave up (timed out).
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let field = |name: &str| error[name].as_str().unwrap_or("?").to_string();
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(truncate(&message.to_string())));
        }
    }

    /// [`Qmp::execute`] that gives up at `deadline`.
    pub async fn execute_by(
        &self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let after = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(after, self.execute(command, arguments))
            .await
            .unwrap_or_else(|_| Err(QmpError::Timeout { command: command.to_string(), after }))
    }

    /// Wait until QEMU sends an event that `wanted` accepts (one received
    /// already counts), or `deadline` passes; other events are kept.
    pub async fn wait_event(
        &self,
        wanted: impl Fn(&QmpEvent) -> bool,
        what: &str,
        deadline: Instant,
    ) -> Result<QmpEvent, QmpError> {
        let after = deadline.saturating_duration_since(Instant::now());
        let wait = async {
            let mut conn = self.conn.lock().await;
            if let Some(i) = conn.events.iter().position(&wanted) {
                return Ok(conn.events.remove(i).expect("the position is in the queue"));
            }
            loop {
                let message = conn.read_message().await?;
                if message.get("event").is_none() {
                    // An answer to a command whose caller gave up.
                    continue;
                }
                let Ok(event) = serde_json::from_value::<QmpEvent>(message) else { continue };
                if wanted(&event) {
                    return Ok(event);
                }
                conn.push_event(event);
            }
        };
        tokio::time::timeout(after, wait)
            .await
            .unwrap_or_else(|_| Err(QmpError::Timeout { command: what.to_string(), after }))
    }

    /// The events received so far (the last few), oldest first; emptied.
    pub async fn take_events(&self) -> Vec<QmpEvent> {
        self.conn.lock().await.events.drain(..).collect()
    }
}

impl Conn {
    /// One JSON object line, bounded by [`MAX_LINE`]. Cancel-safe: bytes
    /// read so far stay in `partial`.
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let room = (MAX_LINE + 1).saturating_sub(self.partial.len() as u64);
        let read = (&mut self.reader)
            .take(room)
            .read_until(b'\n', &mut self.partial)
            .await
            .map_err(QmpError::Io)?;
        if self.partial.len() as u64 > MAX_LINE {
            return Err(QmpError::Protocol(format!("a line longer than {MAX_LINE} bytes")));
        }
        if read == 0 || !self.partial.ends_with(b"\n") {
            return Err(QmpError::Closed);
        }
        let line = std::mem::take(&mut self.partial);
        let value: Value = serde_json::from_slice(&line)
            .map_err(|err| QmpError::Protocol(format!("{err}: {}", lossy(&line))))?;
        if !value.is_object() {
            return Err(QmpError::Protocol(lossy(&line)));
        }
        Ok(value)
    }

    fn keep_event(&mut self, message: Value) {
        if let Ok(event) = serde_json::from_value::<QmpEvent>(message) {
            self.push_event(event);
        }
    }

    fn push_event(&mut self, event: QmpEvent) {
        if self.events.len() == KEPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// The QEMU version in a greeting `{"QMP": {"version": {"qemu": ...}}}`.
fn parse_greeting(greeting: &Value) -> Option<QemuVersion> {
    let qemu = &greeting.get("QMP")?["version"]["qemu"];
    let part = |name: &str| qemu[name].as_u64().and_then(|v| u32::try_from(v).ok());
    Some(QemuVersion { major: part("major")?, minor: part("minor")?, micro: part("micro")? })
}

fn lossy(line: &[u8]) -> String {
    truncate(String::from_utf8_lossy(line).trim_end())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}"#;

    /// A fake QEMU: greets, then answers each command with `answer(cmd)`
    /// (lines to send), the command's id filled in for `ID`.
    async fn fake_qemu(
        dir: &Path,
        greeting: &'static str,
        answer: fn(&str) -> Vec<String>,
    ) -> PathBuf {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(format!("{greeting}\n").as_bytes()).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                let command = request["execute"].as_str().unwrap().to_string();
                for reply in answer(&command) {
                    let reply = reply.replace("ID", &request["id"].to_string());
                    write.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            }
        });
        path
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_session_negotiates_and_returns_answers_past_interleaved_events() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = fake_qemu(dir.path(), GREETING, |command| match command {
                "stop" => vec![
                    r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#.into(),
                    r#"{"return": {}, "id": ID}"#.into(),
                ],
                "query-status" => vec![r#"{"return": {"status": "paused"}, "id": ID}"#.into()],
                _ => vec![r#"{"return": {}, "id": ID}"#.into()],
            })
            .await;
            let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
            assert_eq!(qmp.version(), QemuVersion { major: 10, minor: 0, micro: 2 });
            qmp.execute("stop", Value::Null).await.unwrap();
            let status = qmp.execute("query-status", Value::Null).await.unwrap();
            assert_eq!(status["status"], "paused");
            let events = qmp.take_events().await;
            assert_eq!(events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["STOP"]);
        });
    }

    #[test]
    fn a_refused_command_names_the_command_and_qemus_reason() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = fake_qemu(dir.path(), GREETING, |command| match command {
                "migrate" => {
                    vec![r#"{"error": {"class": "GenericError", "desc": "no space"}, "id": ID}"#
                        .into()]
                }
                _ => vec![r#"{"return": {}, "id": ID}"#.into()],
            })
            .await;
            let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
            let err = qmp.execute("migrate", json!({"uri": "file:/x"})).await.unwrap_err();
            assert_eq!(err.to_string(), "QEMU refused migrate: no space (GenericError)");
        });
    }

    #[test]
    fn a_peer_that_is_not_qemu_and_a_silent_one_are_errors() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = fake_qemu(dir.path(), r#"{"hello": 1}"#, |_| vec![]).await;
            let err = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap_err();
            assert!(err.to_string().ends_with("does not speak QMP: {\"hello\":1}"), "{err}");

            let dir = tempfile::tempdir().unwrap();
            let path = fake_qemu(dir.path(), GREETING, |_| vec![]).await;
            let err = Qmp::connect(&path, Duration::from_millis(100)).await.unwrap_err();
            assert!(matches!(err, QmpError::Timeout { .. }), "{err}");

            let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(err.to_string().starts_with("cannot connect to the QMP socket"), "{err}");
        });
    }
}
