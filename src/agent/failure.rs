//! Why an agent exchange gave the host nothing to use. Every failure is
//! survivable: the resize goes on with the host's own choice.

use std::time::Duration;

use pmvisor_agent::{ProtocolError, RangeError};

/// Why an evict request or grow notice produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentFailure {
    /// No agent is connected.
    #[error("no agent is connected")]
    Absent,
    /// The answer did not arrive within the deadline.
    #[error("the agent did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The connection ended (or failed) before the answer.
    #[error("the agent disconnected before answering ({0})")]
    Disconnected(String),
    /// The agent announced a frame over the protocol's bound.
    #[error("the agent sent a frame of {size} bytes, over the {max}-byte bound")]
    Oversize { size: u64, max: u32 },
    /// The agent sent bytes that are not a message.
    #[error("the agent sent garbage ({0})")]
    Garbage(String),
    /// The answer breaks a rule: another request or device, ranges out of
    /// the device, overlapping, or more blocks than asked for.
    #[error("the agent's answer was wrong: {0}")]
    Invalid(RangeError),
    /// The agent said it could not serve the request.
    #[error("the agent reported an error: {0}")]
    AgentError(String),
    /// The agent answered with a message of another kind.
    #[error("the agent answered with {0} instead")]
    Unexpected(&'static str),
}

impl AgentFailure {
    /// A short stable name, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AgentFailure::Absent => "absent",
            AgentFailure::Timeout(_) => "timeout",
            AgentFailure::Disconnected(_) => "disconnected",
            AgentFailure::Oversize { .. } => "oversize",
            AgentFailure::Garbage(_) => "garbage",
            AgentFailure::Invalid(RangeError::WrongRequest { .. }) => "wrong_request",
            AgentFailure::Invalid(RangeError::OutOfDevice { .. }) => "out_of_range",
            AgentFailure::Invalid(RangeError::Overlap { .. }) => "duplicate",
            AgentFailure::Invalid(RangeError::TooMany { .. }) => "too_many",
            AgentFailure::Invalid(RangeError::Empty { .. } | RangeError::Overflow { .. }) => {
                "bad_range"
            }
            AgentFailure::AgentError(_) => "agent_error",
            AgentFailure::Unexpected(_) => "unexpected",
        }
    }

    /// The failure a broken frame stands for; the connection is dropped.
    pub(crate) fn from_protocol(err: &ProtocolError) -> AgentFailure {
        match err {
            ProtocolError::FrameTooLarge { size, max } => {
                AgentFailure::Oversize { size: *size, max: *max }
            }
            ProtocolError::Garbage(_)
            | ProtocolError::UnknownMessage { .. }
            | ProtocolError::TrailingBytes { .. } => AgentFailure::Garbage(err.to_string()),
            _ => AgentFailure::Disconnected(pmvisor_sentence(err)),
        }
    }
}

/// Every reason [`AgentFailure::reason`] can give, for metrics.
pub const FAILURE_REASONS: [&str; 12] = [
    "absent",
    "timeout",
    "disconnected",
    "oversize",
    "garbage",
    "wrong_request",
    "out_of_range",
    "duplicate",
    "too_many",
    "bad_range",
    "agent_error",
    "unexpected",
];

/// An error and its causes on one line.
fn pmvisor_sentence(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_sentences() {
        assert_eq!(
            AgentFailure::Timeout(Duration::from_millis(200)).to_string(),
            "the agent did not answer within 200 ms"
        );
        let oversize = AgentFailure::from_protocol(&ProtocolError::FrameTooLarge {
            size: 1 << 30,
            max: pmvisor_agent::MAX_FRAME,
        });
        assert_eq!(
            oversize.to_string(),
            "the agent sent a frame of 1073741824 bytes, over the 4194304-byte bound"
        );
        assert_eq!(oversize.reason(), "oversize");
        for failure in [AgentFailure::Absent, AgentFailure::Unexpected("Pong")] {
            assert!(FAILURE_REASONS.contains(&failure.reason()));
        }
    }
}
