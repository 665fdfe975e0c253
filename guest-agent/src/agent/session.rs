//! The link to the host: connect, introduce the agent (`Hello`), answer the
//! host's requests in order, and when the link ends for any reason, log one
//! line saying why and connect again after a backoff.
//!
//! Every request is answered from the shared [`Knowledge`] under a short
//! lock; nothing waits on the host while holding it. A frame the agent
//! cannot read (oversized, garbage, truncated) ends the link: after it the
//! stream is out of step. The agent tells the host why in an `Error` frame
//! on a best-effort basis, then reconnects.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::protocol::{
    check_version, read_frame_async, write_frame_async, Hello, Message, ProtocolError,
    PROTOCOL_VERSION,
};

use super::devices::Discovery;
use super::endpoint::{Endpoint, HostLink};
use super::knowledge::Knowledge;

/// How long the agent waits between attempts: doubling from `initial` up
/// to `max`, back to `initial` once a host welcomed it.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) }
    }
}

/// What the agent serves and where it finds its devices.
#[derive(Debug, Clone)]
pub struct Agent {
    knowledge: Arc<Mutex<Knowledge>>,
    discovery: Discovery,
    declared: Vec<crate::protocol::Device>,
}

impl Agent {
    /// An agent finding devices with `discovery`, plus the `declared` ones
    /// (for devices without a serial in sysfs, and for tests).
    pub fn new(discovery: Discovery, declared: Vec<crate::protocol::Device>) -> Self {
        let agent = Agent { knowledge: Arc::default(), discovery, declared };
        agent.rediscover();
        agent
    }

    /// The shared knowledge.
    pub fn knowledge(&self) -> MutexGuard<'_, Knowledge> {
        // A panic while holding the lock leaves the maps consistent (every
        // update is a single map operation), so a poisoned lock is usable.
        self.knowledge.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks for devices again and adds those found.
    pub fn rediscover(&self) {
        let found = self.discovery.discover();
        let mut knowledge = self.knowledge();
        for device in found.iter().chain(&self.declared) {
            knowledge.add_device(device);
        }
    }
}

/// Why one link to the host ended.
#[derive(Debug, Error)]
pub enum LinkError {
    /// Could not open the endpoint.
    #[error("cannot reach the host at {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `Hello` could not be sent.
    #[error("cannot send Hello to the host")]
    SendHello(#[source] ProtocolError),
    /// The host refused the agent.
    #[error("the host refused the agent: {reason}")]
    Refused {
        /// The host's reason.
        reason: String,
    },
    /// The host answered `Hello` with something other than `Welcome`.
    #[error("the host answered Hello with {kind} instead of Welcome")]
    NotWelcomed {
        /// The message kind.
        kind: &'static str,
    },
    /// The host's `Welcome` names another protocol version.
    #[error("the host welcomed the agent with another protocol version")]
    Version(#[source] ProtocolError),
    /// The host closed the link.
    #[error("the host closed the connection")]
    Closed,
    /// A frame from the host could not be read.
    #[error("cannot read the host's frame")]
    Receive(#[source] ProtocolError),
    /// An answer could not be sent.
    #[error("cannot send {kind} to the host")]
    Send {
        /// The message kind.
        kind: &'static str,
        /// The cause.
        #[source]
        source: ProtocolError,
    },
}

impl LinkError {
    /// Whether the host was talking to the agent before the link ended.
    fn after_welcome(&self) -> bool {
        matches!(self, LinkError::Closed | LinkError::Receive(_) | LinkError::Send { .. })
    }
}

/// An error and its causes in one line, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

/// Connects to the host at `endpoint` and serves it, reconnecting forever.
///
/// While the host stays away the same failure repeats at every attempt
/// (a refused connection, a hung-up port): it is logged as a warning once,
/// then at debug level until something else happens.
pub async fn serve_host_forever(agent: &Agent, endpoint: &Endpoint, backoff: Backoff) {
    let mut delay = backoff.initial;
    let mut last_failure = String::new();
    loop {
        let error = serve_host_once(agent, endpoint).await;
        if error.after_welcome() {
            delay = backoff.initial;
        }
        let line = error_chain(&error);
        match &error {
            LinkError::Closed => info!("{line}; reconnecting in {delay:?}"),
            _ if line == last_failure => debug!("{line}; reconnecting in {delay:?}"),
            _ => warn!("{line}; reconnecting in {delay:?}"),
        }
        last_failure = line;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

/// One link: connect, `Hello`, then answer until the link ends.
pub async fn serve_host_once(agent: &Agent, endpoint: &Endpoint) -> LinkError {
    let endpoint = endpoint.resolve();
    let mut link = match endpoint.connect().await {
        Ok(link) => link,
        Err(source) => return LinkError::Connect { endpoint: endpoint.to_string(), source },
    };
    let error = match introduce(agent, &mut link).await {
        Ok(()) => {
            info!(%endpoint, "connected to the host");
            answer_requests(agent, &mut link).await
        }
        Err(e) => e,
    };
    if let LinkError::Receive(e) = &error {
        // Best effort: the host may have gone already.
        let report = Message::Error { id: None, message: error_chain(e) };
        let _ =
            tokio::time::timeout(Duration::from_millis(100), write_frame_async(&mut link, &report))
                .await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), link.shutdown()).await;
    error
}

async fn introduce(agent: &Agent, link: &mut Box<dyn HostLink>) -> Result<(), LinkError> {
    agent.rediscover();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: env!("CARGO_PKG_VERSION").to_owned(),
        devices: agent.knowledge().devices(),
    });
    write_frame_async(link, &hello).await.map_err(LinkError::SendHello)?;
    match read_frame_async(link).await {
        Ok(Message::Welcome { version }) => check_version(version).map_err(LinkError::Version),
        Ok(Message::Refused { reason }) => Err(LinkError::Refused { reason }),
        Ok(other) => Err(LinkError::NotWelcomed { kind: other.kind() }),
        Err(ProtocolError::Closed) => Err(LinkError::Closed),
        Err(e) => Err(LinkError::Receive(e)),
    }
}

async fn answer_requests(agent: &Agent, link: &mut Box<dyn HostLink>) -> LinkError {
    loop {
        let request = match read_frame_async(link).await {
            Ok(message) => message,
            Err(ProtocolError::Closed) => return LinkError::Closed,
            Err(e) => return LinkError::Receive(e),
        };
        let received = Instant::now();
        let Some(reply) = answer(agent, request, received) else { continue };
        if let Err(source) = write_frame_async(link, &reply).await {
            return LinkError::Send { kind: reply.kind(), source };
        }
        debug!(kind = reply.kind(), micros = received.elapsed().as_micros(), "answered");
    }
}

/// The reply to one message from the host, if it needs one.
fn answer(agent: &Agent, request: Message, received: Instant) -> Option<Message> {
    let failed = |id, e: &dyn std::error::Error| {
        warn!("cannot serve the host's request: {}", error_chain(e));
        Message::Error { id, message: error_chain(e) }
    };
    Some(match request {
        Message::EvictRequest(req) => {
            if !agent.knowledge().has_device(&req.serial) {
                agent.rediscover();
            }
            let result = agent.knowledge().answer_evict(&req, received);
            match result {
                Ok(answer) => {
                    let blocks: u64 = answer.ranges.iter().map(|r| r.count).sum();
                    info!(
                        id = req.id,
                        serial = %req.serial,
                        asked = req.count,
                        offered = blocks,
                        ranges = answer.ranges.len(),
                        "evict request answered"
                    );
                    Message::EvictAnswer(answer)
                }
                Err(e) => failed(Some(req.id), &e),
            }
        }
        Message::GrowNotice(notice) => {
            let result = agent.knowledge().answer_grow(&notice);
            match result {
                Ok(hot) => {
                    info!(
                        id = notice.id,
                        serial = %notice.serial,
                        grew = notice.count,
                        wanted_back = hot.ranges.len(),
                        "grow notice answered"
                    );
                    Message::HotRanges(hot)
                }
                Err(e) => failed(Some(notice.id), &e),
            }
        }
        Message::StatsRequest => Message::Stats(agent.knowledge().stats()),
        Message::Ping { nonce } => Message::Pong { nonce },
        Message::Pong { .. } => return None,
        Message::Error { id, message } => {
            warn!(?id, "the host reports an error: {message}");
            return None;
        }
        other => {
            let message = format!("the agent does not expect {} from the host", other.kind());
            warn!("{message}");
            Message::Error { id: None, message }
        }
    })
}
