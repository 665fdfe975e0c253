//! The agents the daemon talks to, one per block region that has one, and
//! the record of them in the pool that lets a restarted daemon reach them
//! again.
//!
//! Persistence: attaching an agent writes the region attributes
//! `agent.address` (`serial:PATH`, `unix:PATH`, `vsock:CID:PORT`),
//! `agent.serial` (the disk serial the agent must list) and, when given,
//! `agent.deadline-ms`; detaching removes them. At start the daemon starts
//! a link for every region that carries them.
//!
//! Besides the links this keeps, per region, what resizes did since the
//! daemon started (who chose how many blocks, what was rejected), for
//! `region stats` and the metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::{region_serial, AgentAddr, AgentLink, LinkError, LinkOptions, DEFAULT_DEADLINE};
use crate::block::{Rejected, ResizeReport};
use crate::pool::PAGE_SIZE;

/// Region attribute: where the region's agent is reached.
pub const ATTR_AGENT: &str = "agent.address";
/// Region attribute: the disk serial the agent must list.
pub const ATTR_AGENT_SERIAL: &str = "agent.serial";
/// Region attribute: how long a resize waits for the agent, in ms.
pub const ATTR_AGENT_DEADLINE: &str = "agent.deadline-ms";

/// A region's agent as recorded in its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub addr: AgentAddr,
    pub serial: String,
    pub deadline: Duration,
}

impl AgentRecord {
    /// The record in `attrs`, if any; `Err` names a damaged attribute.
    pub fn from_attrs(
        name: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Option<Result<AgentRecord, String>> {
        let addr = attrs.get(ATTR_AGENT)?;
        let addr = match addr.parse() {
            Ok(addr) => addr,
            Err(err) => return Some(Err(format!("{ATTR_AGENT}: {err}"))),
        };
        let serial = attrs.get(ATTR_AGENT_SERIAL).cloned().unwrap_or_else(|| region_serial(name));
        let deadline = match attrs.get(ATTR_AGENT_DEADLINE).map(|v| v.parse::<u64>()) {
            None => DEFAULT_DEADLINE,
            Some(Ok(ms)) => Duration::from_millis(ms),
            Some(Err(_)) => return Some(Err(format!("{ATTR_AGENT_DEADLINE} is not a number"))),
        };
        Some(Ok(AgentRecord { addr, serial, deadline }))
    }

    /// The attributes that record this agent: (key, value).
    pub fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            (ATTR_AGENT, self.addr.to_string()),
            (ATTR_AGENT_SERIAL, self.serial.clone()),
            (ATTR_AGENT_DEADLINE, self.deadline.as_millis().to_string()),
        ]
    }
}

/// What resizes of one region did since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResizeTotals {
    /// Resizes done.
    pub resizes: u64,
    /// Blocks the guest chose, sent to swap.
    pub guest_kept: u64,
    /// Blocks the guest chose, unmapped.
    pub guest_dropped: u64,
    /// Blocks the host chose during resizes.
    pub host_chosen: u64,
    /// Blocks of guest answers not used, by reason.
    pub rejected: Rejected,
}

/// One region's agent link and its settings.
#[derive(Debug, Clone)]
pub struct RegionAgent {
    pub link: AgentLink,
    pub deadline: Duration,
}

/// The daemon's agent links and resize totals, by region name.
#[derive(Debug, Default)]
pub struct Agents {
    links: Mutex<BTreeMap<String, RegionAgent>>,
    totals: Mutex<BTreeMap<String, ResizeTotals>>,
}

impl Agents {
    /// No links.
    pub fn new() -> Agents {
        Agents::default()
    }

    /// Start a link for region `name` of `size` bytes. Replaces (and
    /// stops) the region's previous link; refuses an address another
    /// region's link uses.
    pub async fn start(
        &self,
        name: &str,
        size: u64,
        record: &AgentRecord,
    ) -> Result<RegionAgent, AttachError> {
        let old = {
            let mut links = self.lock();
            if let Some((other, _)) =
                links.iter().find(|(n, a)| n.as_str() != name && a.link.addr() == &record.addr)
            {
                return Err(AttachError::AddressTaken {
                    addr: record.addr.clone(),
                    region: other.clone(),
                });
            }
            links.remove(name)
        };
        // The old link lets go of its address before the new one binds it.
        drop(old);
        let options = LinkOptions {
            region: name.to_string(),
            serial: record.serial.clone(),
            device_blocks: size / PAGE_SIZE,
            addr: record.addr.clone(),
        };
        let link = AgentLink::start(options)
            .await
            .map_err(|source| AttachError::Link { name: name.to_string(), source })?;
        let agent = RegionAgent { link, deadline: record.deadline };
        self.lock().insert(name.to_string(), agent.clone());
        Ok(agent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RegionAgent>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop region `name`'s link; `false` when it had none.
    pub fn stop(&self, name: &str) -> bool {
        let old = self.lock().remove(name);
        old.is_some()
    }

    /// Stop every link (shutdown).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }

    /// Region `name`'s link, if it has one.
    pub fn get(&self, name: &str) -> Option<RegionAgent> {
        self.lock().get(name).cloned()
    }

    /// Every link, by region name.
    pub fn all(&self) -> BTreeMap<String, RegionAgent> {
        self.lock().clone()
    }

    /// Add a resize of region `name` to its totals.
    pub fn record_resize(&self, name: &str, report: &ResizeReport) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let t = totals.entry(name.to_string()).or_default();
        t.resizes += 1;
        t.guest_kept += report.guest_kept;
        t.guest_dropped += report.guest_dropped;
        t.host_chosen += report.host_chosen;
        let r = &report.rejected;
        t.rejected.out_of_range = t.rejected.out_of_range.saturating_add(r.out_of_range);
        t.rejected.duplicate += r.duplicate;
        t.rejected.not_resident += r.not_resident;
        t.rejected.surplus = t.rejected.surplus.saturating_add(r.surplus);
        t.rejected.no_swap += r.no_swap;
    }

    /// Region `name`'s resize totals.
    pub fn totals(&self, name: &str) -> ResizeTotals {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.get(name).cloned().unwrap_or_default()
    }

    /// Forget region `name`'s totals (it was deleted).
    pub fn forget(&self, name: &str) {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

/// Why an agent could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Another region's agent uses the address.
    #[error("{addr} is already the agent address of region {region:?}; give each region its own")]
    AddressTaken { addr: AgentAddr, region: String },
    /// The link could not start.
    #[error("cannot attach an agent to region {name:?}")]
    Link {
        name: String,
        #[source]
        source: LinkError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_record_round_trips_through_attributes() {
        let record = AgentRecord {
            addr: "serial:/run/pmvisor/agents/vm1.sock".parse().unwrap(),
            serial: "pmv-vm1".into(),
            deadline: Duration::from_millis(350),
        };
        let attrs: BTreeMap<String, String> =
            record.attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(AgentRecord::from_attrs("vm1", &attrs).unwrap().unwrap(), record);
        assert!(AgentRecord::from_attrs("vm1", &BTreeMap::new()).is_none());
        let only_addr = BTreeMap::from([(ATTR_AGENT.to_string(), "unix:/a".to_string())]);
        let defaulted = AgentRecord::from_attrs("vm1", &only_addr).unwrap().unwrap();
        assert_eq!((defaulted.serial.as_str(), defaulted.deadline), ("pmv-vm1", DEFAULT_DEADLINE));
        let bad = BTreeMap::from([(ATTR_AGENT.to_string(), "nope".to_string())]);
        assert!(AgentRecord::from_attrs("vm1", &bad).unwrap().is_err());
    }
}
