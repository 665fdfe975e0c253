//! A resize that asks the region's agent first: the agent's part (its
//! answer time) and the host's part ([`ResizeReport::elapsed`]) are timed
//! apart, so that a slow agent never hides in the resize figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use pmvisor_agent::protocol::{BlockRange, MAX_RANGES};

use super::{AgentFailure, AgentLink};
use crate::block::{BlockError, BlockRegion, GuestVictims, ResizeReport};
use crate::pool::PAGE_SIZE;

/// How long a resize waits for the agent unless told otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(200);

/// What the agent contributed to one resize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentExchange {
    /// `evict` (shrink) or `grow`.
    pub request: &'static str,
    /// Blocks asked for (shrink) or by which the quota grew (grow).
    pub asked: u64,
    /// Blocks the agent named in a usable answer (0 when it failed).
    pub offered: u64,
    /// Why no usable answer came, as a metric reason (`timeout`,
    /// `garbage`, ...); `None` when the answer was used.
    pub failure: Option<&'static str>,
    /// The failure as a sentence.
    pub detail: Option<String>,
    /// How long the host waited for the agent, in microseconds.
    pub answer_micros: u64,
}

/// A resize and what the agent did for it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResize {
    pub report: ResizeReport,
    /// `None` when no agent is attached or nothing was asked (no blocks
    /// to free, quota unchanged).
    pub agent: Option<AgentExchange>,
}

/// Set `region`'s resident quota to `resident` bytes, asking `link`'s agent
/// (if any) for the victims of a shrink or the hot ranges of a grow, at
/// most `deadline`; whatever the agent does not provide the host chooses.
pub async fn resize_with_agent(
    region: Arc<BlockRegion>,
    link: Option<&AgentLink>,
    resident: u64,
    deadline: Duration,
) -> Result<AgentResize, BlockError> {
    let (used, frames) = region.resident_frames();
    let new_frames = resident.div_ceil(PAGE_SIZE);
    let mut victims: Vec<GuestVictims> = Vec::new();
    let mut hot: Vec<(u64, u64)> = Vec::new();
    let mut agent = None;
    if let Some(link) = link {
        let started = Instant::now();
        let (request, asked, outcome) = if new_frames < frames {
            let need = used.saturating_sub(new_frames);
            let outcome = if need == 0 {
                None
            } else {
                let scanned = Arc::clone(&region);
                let runs = tokio::task::spawn_blocking(move || scanned.resident_runs(MAX_RANGES))
                    .await
                    .ok()
                    .flatten();
                let resident = runs.map(|runs| {
                    runs.into_iter().map(|(start, count)| BlockRange { start, count }).collect()
                });
                Some(link.evict(need, deadline, resident).await)
            };
            let outcome = outcome.map(|o| {
                o.map(|v| {
                    let offered = v.iter().map(|v| v.count).sum();
                    victims = v;
                    offered
                })
            });
            ("evict", need, outcome)
        } else if new_frames > frames {
            let grew = new_frames - frames;
            let outcome = link.grow(grew, deadline).await.map(|h| {
                let offered = h.iter().map(|r| r.1).sum();
                hot = h;
                offered
            });
            ("grow", grew, Some(outcome))
        } else {
            ("grow", 0, None)
        };
        agent = outcome.map(|outcome: Result<u64, AgentFailure>| AgentExchange {
            request,
            asked,
            offered: *outcome.as_ref().unwrap_or(&0),
            failure: outcome.as_ref().err().map(AgentFailure::reason),
            detail: outcome.as_ref().err().map(ToString::to_string),
            answer_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
    }
    let report =
        tokio::task::spawn_blocking(move || region.resize_resident(resident, &victims, &hot))
            .await
            .map_err(|err| BlockError::Invalid(format!("the resize task failed: {err}")))??;
    Ok(AgentResize { report, agent })
}
