//! The pool balancer in the daemon: watches the pool's free pages and,
//! under the low watermark, shrinks block regions by weight (the plan is
//! `block::balance`), each through its own guest agent exactly as
//! `region resize` does, one change at a time and inside the gate.
//!
//! Watermarks live in `<state dir>/balance.json`, per pool path, so that
//! a restarted daemon keeps them; weights are region attributes
//! (`block.weight`), so they travel with the pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::api::{enter_gate, ApiError, SharedState};
use super::regions::Regions;
use crate::agent::{resize_with_agent, DEFAULT_DEADLINE};
use crate::block::balance::{
    pages_to_free, parse_weight, plan, Candidate, Watermarks, ATTR_WEIGHT, DEFAULT_WEIGHT,
};
use crate::block::{BlockRegion, ATTR_SWAP};
use crate::pool::{RegionKind, PAGE_SIZE};

/// How often the balancer looks at the pool.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// One shrink the balancer made (or tried).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShrinkDone {
    pub region: String,
    /// Frames held before, and the quota asked for.
    pub from_frames: u64,
    pub to_frames: u64,
    /// Blocks the guest chose and the host chose.
    pub guest_chosen: u64,
    pub host_chosen: u64,
    /// Why the shrink failed, if it did.
    pub error: Option<String>,
}

/// What one balancing pass did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceRun {
    /// When it ran, seconds since the Unix epoch.
    pub at_unix: u64,
    /// Free pages before and after, and how many it set out to free.
    pub free_before: u64,
    pub free_after: u64,
    pub wanted: u64,
    pub shrinks: Vec<ShrinkDone>,
}

/// The balancer's settings and its last pass.
#[derive(Debug)]
pub struct Balancer {
    marks: Mutex<Watermarks>,
    file: PathBuf,
    pool: PathBuf,
    last: Mutex<Option<BalanceRun>>,
    /// One pass at a time (the timer and `pool balance --now`).
    running: tokio::sync::Mutex<()>,
}

impl Balancer {
    /// The balancer of the pool at `pool`, with the watermarks saved for it
    /// in `file` (defaults when there are none).
    pub fn load(file: PathBuf, pool: &Path) -> Balancer {
        let saved = read_saved(&file).remove(pool);
        Balancer {
            marks: Mutex::new(saved.unwrap_or_default()),
            file,
            pool: pool.to_path_buf(),
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The watermarks now.
    pub fn watermarks(&self) -> Watermarks {
        *self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set and save the watermarks.
    pub fn set_watermarks(&self, marks: Watermarks) -> Result<(), ApiError> {
        let mut saved = read_saved(&self.file);
        saved.insert(self.pool.clone(), marks);
        let text = serde_json::to_string_pretty(&saved).expect("watermarks serialize");
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| cannot_save(&self.file, e))?;
        }
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .map_err(|e| cannot_save(&self.file, e))?;
        *self.marks.lock().unwrap_or_else(|p| p.into_inner()) = marks;
        Ok(())
    }

    /// The last pass that did something, if any.
    pub fn last_run(&self) -> Option<BalanceRun> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Look at the pool once; shrink regions if it is short. `None` when
    /// nothing was needed.
    pub async fn pass(&self, state: &SharedState) -> Result<Option<BalanceRun>, ApiError> {
        let _one_pass = self.running.lock().await;
        let info = state.pool.info();
        let wanted = pages_to_free(info.data_pages, info.free_pages, self.watermarks());
        if wanted == 0 {
            return Ok(None);
        }
        let candidates = candidates(&state.regions)?;
        let shrinks = plan(wanted, &candidates);
        let mut done = Vec::with_capacity(shrinks.len());
        for shrink in shrinks {
            let _one_change = state.changes.lock().await;
            let _guard = enter_gate(state)?;
            let Some(region) = state.regions.blocks()?.get(&shrink.name) else { continue };
            let agent = state.agents.get(&shrink.name);
            let deadline = agent.as_ref().map_or(DEFAULT_DEADLINE, |a| a.deadline);
            let link = agent.as_ref().map(|a| &a.link);
            let resized =
                resize_with_agent(region, link, shrink.frames * PAGE_SIZE, deadline).await;
            let mut outcome = ShrinkDone {
                region: shrink.name.clone(),
                from_frames: shrink.from,
                to_frames: shrink.frames,
                guest_chosen: 0,
                host_chosen: 0,
                error: None,
            };
            match resized {
                Ok(resized) => {
                    let report = &resized.report;
                    state.agents.record_resize(&shrink.name, report);
                    outcome.guest_chosen = report.guest_kept + report.guest_dropped;
                    outcome.host_chosen = report.host_chosen;
                    tracing::info!(
                        region = %shrink.name,
                        "balancer: the pool was short of free pages; shrank the resident quota \
                         from {} to {} frames (guest chose {}, host chose {}) in {} us",
                        shrink.from,
                        shrink.frames,
                        outcome.guest_chosen,
                        outcome.host_chosen,
                        report.elapsed.as_micros()
                    );
                }
                Err(err) => {
                    let sentence = super::api::sentence(&err);
                    tracing::warn!(region = %shrink.name, "balancer: cannot shrink: {sentence}");
                    outcome.error = Some(sentence);
                }
            }
            done.push(outcome);
        }
        let run = BalanceRun {
            at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            free_before: info.free_pages,
            free_after: state.pool.info().free_pages,
            wanted,
            shrinks: done,
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.clone());
        Ok(Some(run))
    }

    /// Run passes every [`INTERVAL`] until the daemon stops.
    pub async fn run(state: SharedState) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !state.gate.is_open() {
                continue;
            }
            if let Err(err) = state.balancer.pass(&state).await {
                tracing::debug!("balancer pass skipped: {}", err.message);
            }
        }
    }
}

/// The block regions as the balancer sees them.
pub fn candidates(regions: &Regions) -> Result<Vec<Candidate>, ApiError> {
    let blocks = regions.blocks()?;
    let mut out = Vec::new();
    for info in regions.pool().regions() {
        if info.kind != RegionKind::Block {
            continue;
        }
        let Some(region) = blocks.get(&info.name) else { continue };
        out.push(candidate(&info.name, &region, &info.attrs));
    }
    Ok(out)
}

fn candidate(name: &str, region: &BlockRegion, attrs: &BTreeMap<String, String>) -> Candidate {
    let stats = region.stats();
    let weight = attrs.get(ATTR_WEIGHT).and_then(|w| parse_weight(w).ok());
    Candidate {
        name: name.to_string(),
        weight: weight.unwrap_or(DEFAULT_WEIGHT),
        frames: stats.allocated / PAGE_SIZE,
        resident: stats.resident_blocks,
        swap: attrs.get(ATTR_SWAP).is_some_and(|v| v == "true"),
    }
}

fn read_saved(file: &Path) -> BTreeMap<PathBuf, Watermarks> {
    match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|err| {
            tracing::warn!(
                "ignoring {}: {err}; the balancer uses its default watermarks",
                file.display()
            );
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

fn cannot_save(file: &Path, err: std::io::Error) -> ApiError {
    ApiError::internal(format!(
        "cannot save the watermarks in {} ({err}); check the state directory",
        file.display()
    ))
}

/// Where the watermarks are saved.
pub fn settings_file() -> PathBuf {
    crate::paths::state_dir().join("balance.json")
}

/// Set block region `name`'s balancing weight (a region attribute).
pub fn set_weight(regions: &Regions, name: &str, weight: u64) -> Result<(), ApiError> {
    let info = regions.pool().region(name)?;
    if info.kind != RegionKind::Block {
        return Err(ApiError::bad_request(format!(
            "region {name:?} is a {} region; only block regions have a balancing weight",
            info.kind.name()
        )));
    }
    regions.pool().set_region_attr(name, ATTR_WEIGHT, Some(&weight.to_string()))?;
    Ok(())
}
