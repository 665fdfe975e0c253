//! The local hint socket (default [`DEFAULT_HINT_SOCKET`]): guest
//! applications tell the agent which ranges are hot, cold or disposable.
//! It speaks the host protocol's framing: a client sends `Hint` and gets
//! `HintAccepted` or `Error`; `StatsRequest` gets `Stats`; `Ping` gets
//! `Pong`. A client may send many requests on one connection.
//!
//! The socket is created mode 0600: a `Disposable` hint lets the host throw
//! data away, so only root may give hints unless the administrator opens
//! the socket up.
//!
//! [`send_hint`] and [`request_stats`] are the blocking client behind
//! `pmvisor-agent hint` and `pmvisor-agent stats`.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::protocol::{
    read_frame, read_frame_async, write_frame, write_frame_async, Hint, Message, ProtocolError,
    Stats,
};

use super::session::{error_chain, Agent};

/// Where the agent listens for hints unless told otherwise.
pub const DEFAULT_HINT_SOCKET: &str = "/run/pmvisor-agent.sock";

/// How long a client waits for the agent's reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hint socket could not be set up.
#[derive(Debug, Error)]
pub enum HintSocketError {
    /// Another process answers on the socket.
    #[error("another agent already listens on {}", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale socket {}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding (or restricting the mode of) the socket failed.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The listening hint socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct HintSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl HintSocket {
    /// Listens on `path`, replacing a stale socket left by a dead agent.
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, HintSocketError> {
        let owned = || path.to_owned();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(HintSocketError::NotASocket { path: owned() });
            }
            if StdUnixStream::connect(path).is_ok() {
                return Err(HintSocketError::InUse { path: owned() });
            }
            std::fs::remove_file(path)
                .map_err(|source| HintSocketError::RemoveStale { path: owned(), source })?;
        }
        let bind = || -> io::Result<UnixListener> {
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(listener)
        };
        let listener = bind().map_err(|source| HintSocketError::Bind { path: owned(), source })?;
        Ok(HintSocket { listener, path: owned() })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each served on its own task.
    pub async fn serve(self, agent: Agent) {
        info!(path = %self.path.display(), "listening for hints");
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(stream, agent.clone()));
                }
                Err(e) => {
                    warn!("cannot accept a hint client: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for HintSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client(mut stream: UnixStream, agent: Agent) {
    loop {
        let request = match read_frame_async(&mut stream).await {
            Ok(message) => message,
            Err(ProtocolError::Closed) => return,
            Err(e) => {
                let message = error_chain(&e);
                debug!("hint client sent a bad frame: {message}");
                let _ = write_frame_async(&mut stream, &Message::Error { id: None, message }).await;
                return;
            }
        };
        let reply = match request {
            Message::Hint(hint) => apply_hint(&agent, &hint),
            Message::StatsRequest => Message::Stats(agent.knowledge().stats()),
            Message::Ping { nonce } => Message::Pong { nonce },
            other => Message::Error {
                id: None,
                message: format!("the hint socket does not serve {}", other.kind()),
            },
        };
        if write_frame_async(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

fn apply_hint(agent: &Agent, hint: &Hint) -> Message {
    if !agent.knowledge().has_device(&hint.serial) {
        agent.rediscover();
    }
    let result = agent.knowledge().apply_hint(hint);
    match result {
        Ok(blocks) => {
            info!(serial = %hint.serial, kind = ?hint.kind, blocks, "hint applied");
            Message::HintAccepted { serial: hint.serial.clone(), blocks }
        }
        Err(e) => {
            let message = error_chain(&e);
            warn!("hint refused: {message}");
            Message::Error { id: None, message }
        }
    }
}

/// A hint-socket request failed.
#[derive(Debug, Error)]
pub enum HintClientError {
    /// No agent answers on the socket.
    #[error("cannot reach the agent's hint socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The exchange with the agent failed.
    #[error("the exchange with the agent failed")]
    Exchange(#[source] ProtocolError),
    /// The agent refused the request.
    #[error("the agent refused: {message}")]
    Refused {
        /// The agent's reason.
        message: String,
    },
    /// The agent answered with a message of the wrong kind.
    #[error("the agent answered {kind}")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
    },
}

fn exchange(socket: &Path, request: &Message) -> Result<Message, HintClientError> {
    let connect = || -> io::Result<StdUnixStream> {
        let stream = StdUnixStream::connect(socket)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(stream)
    };
    let mut stream =
        connect().map_err(|source| HintClientError::Connect { path: socket.to_owned(), source })?;
    write_frame(&mut stream, request).map_err(HintClientError::Exchange)?;
    match read_frame(&mut stream).map_err(HintClientError::Exchange)? {
        Message::Error { message, .. } => Err(HintClientError::Refused { message }),
        reply => Ok(reply),
    }
}

/// Sends `hint` to the agent listening on `socket`; returns the number of
/// 4 KiB blocks it covered.
pub fn send_hint(socket: &Path, hint: &Hint) -> Result<u64, HintClientError> {
    match exchange(socket, &Message::Hint(hint.clone()))? {
        Message::HintAccepted { blocks, .. } => Ok(blocks),
        other => Err(HintClientError::Unexpected { kind: other.kind() }),
    }
}

/// Asks the agent listening on `socket` what it knows.
pub fn request_stats(socket: &Path) -> Result<Stats, HintClientError> {
    match exchange(socket, &Message::StatsRequest)? {
        Message::Stats(stats) => Ok(stats),
        other => Err(HintClientError::Unexpected { kind: other.kind() }),
    }
}
