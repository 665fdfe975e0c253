//! `pmvisor serve --resume-vms`: after a power outage, resume the VMs the
//! outage saved, as `pmvisor vm resume NAME` does for one.
//!
//! Only a pool that opened from its fence (see [`crate::pod::open_after_fence`])
//! qualifies: its RAM regions are exactly as the sequence left them. The
//! VMs resumed are those the fence record names as saved; when the record's
//! report cannot be read, every VM with a saved state. A VM the sequence
//! could not save, or one whose saved state the sequence did not write, is
//! logged and left alone (its RAM moved on since that state, or it never
//! stopped cleanly). The daemon calls [`resume_after_outage`] once exports
//! and mounts are back, since the VMs' disks are block regions over NBD or
//! image files on RvmFS mounts; the VMs resume in parallel, each outcome is
//! one log line, and a VM that fails stops neither the daemon nor the
//! others.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::daemon::api::{vms, SharedState};
use crate::pod::StartReport;
use crate::vm::{self, VmResumeReport};

/// What `--resume-vms` does with the VMs of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePlan {
    /// The POD whose saved states are resumed (its number, 0 if unknown).
    pub sequence: u64,
    /// VMs to resume, by name.
    pub resume: Vec<String>,
    /// VMs left alone, with the sentence the log gives.
    pub left: Vec<(String, String)>,
}

/// Which of `vms` (every VM of the pool: name, when its saved state was
/// written if it has one) to resume after the daemon found the pool as
/// `start` says.
pub fn plan(start: &StartReport, vms: &[(String, Option<SystemTime>)]) -> ResumePlan {
    let saved = |name: &str| vms.iter().any(|(vm, state)| vm == name && state.is_some());
    let mut plan = ResumePlan::default();
    if start.opened_from != "fence" {
        let why = match &start.note {
            Some(note) => format!("the pool did not open from a power-outage fence ({note})"),
            None => "the pool did not open from a power-outage fence".to_string(),
        };
        for (name, _) in vms.iter().filter(|(name, _)| saved(name)) {
            plan.left.push((
                name.clone(),
                format!(
                    "VM {name} has a saved state, but {why}, so it is not resumed: resume it \
                     with `pmvisor vm resume {name}` if its RAM is as it was saved, or discard \
                     the state with `pmvisor vm stop {name}`"
                ),
            ));
        }
        return plan;
    }
    let Some(report) = &start.fence else {
        // The record vouches for the pool but its report is unreadable:
        // the saved states on disk are what the sequence wrote.
        plan.resume =
            vms.iter().filter(|(_, state)| state.is_some()).map(|(name, _)| name.clone()).collect();
        return plan;
    };
    plan.sequence = report.sequence;
    let pod = report.sequence;
    let triggered = UNIX_EPOCH + Duration::from_nanos(report.triggered_unix_ns);
    for (name, state) in vms {
        let has_state = &state.is_some();
        let participant = report.participants.iter().find(|p| &p.name == name);
        // The record had no room for every participant: a state written
        // after the trigger is this outage's.
        let left_out_saved =
            report.participants_left_out > 0 && state.is_some_and(|written| written >= triggered);
        match participant {
            None if left_out_saved => plan.resume.push(name.clone()),
            Some(p) if p.saved_to.is_some() => plan.resume.push(name.clone()),
            Some(p) => {
                let why = p.error.as_deref().unwrap_or("no reason was recorded");
                // An older state would make `vm start` refuse.
                let first = if *has_state {
                    format!("`pmvisor vm stop {name}` (it discards an older state), then ")
                } else {
                    String::new()
                };
                plan.left.push((
                    name.clone(),
                    format!(
                        "VM {name} was not saved by POD #{pod} ({why}), so it cannot go on \
                         where it stopped; start it afresh with {first}`pmvisor vm start {name}`"
                    ),
                ));
            }
            None if *has_state => plan.left.push((
                name.clone(),
                format!(
                    "VM {name} has a saved state that POD #{pod} did not write, so it is not \
                     resumed: resume it with `pmvisor vm resume {name}` if its RAM is as it \
                     was saved, or discard the state with `pmvisor vm stop {name}`"
                ),
            )),
            None => {}
        }
    }
    plan
}

/// Resume the VMs the outage that fenced the pool saved (see [`plan`]),
/// in parallel; one log line per VM.
pub async fn resume_after_outage(state: &SharedState, start: &StartReport) {
    let started = Instant::now();
    let mut vms = Vec::new();
    for record in vm::spec::list(&state.pool) {
        match record {
            Ok(record) => {
                let saved = std::fs::metadata(state.vms.paths().state(&record.name))
                    .and_then(|meta| meta.modified())
                    .ok();
                vms.push((record.name, saved));
            }
            Err(err) => {
                tracing::warn!("--resume-vms skips a VM: {}", crate::daemon::api::sentence(&err))
            }
        }
    }
    let plan = plan(start, &vms);
    for (name, why) in &plan.left {
        tracing::warn!(vm = %name, "{why}");
    }
    if plan.resume.is_empty() {
        if start.opened_from == "fence" {
            tracing::info!("--resume-vms: the power outage saved no VM; nothing to resume");
        } else {
            tracing::info!(
                "--resume-vms: the pool was not fenced by a power outage; no VM to resume"
            );
        }
        return;
    }
    let pod = match plan.sequence {
        0 => "the power outage".to_string(),
        n => format!("POD #{n}"),
    };
    let count = plan.resume.len();
    let results = vms::resume_all(state, plan.resume).await;
    let mut resumed = 0;
    for (name, result) in results {
        match result {
            Ok(report) => {
                resumed += 1;
                log_resumed(&report, &pod);
            }
            Err(err) => tracing::error!(
                vm = %name,
                "cannot resume the VM saved by {pod}: {}; once that is fixed run `pmvisor vm \
                 resume {name}`",
                err.message.trim_end_matches('.')
            ),
        }
    }
    tracing::info!(
        "--resume-vms: {resumed} of {count} VMs saved by {pod} resumed in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

fn log_resumed(report: &VmResumeReport, pod: &str) {
    tracing::info!(
        vm = %report.name,
        "resumed the VM saved by {pod} in {:.1} ms (state loaded in {:.1} ms); it goes on where \
         it stopped",
        report.total_us as f64 / 1000.0,
        report.restore_us as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{ParticipantReport, PodReport};

    fn fenced(participants: Vec<ParticipantReport>) -> StartReport {
        StartReport {
            opened_from: "fence".into(),
            fence: Some(PodReport {
                sequence: 3,
                source: "SIGPWR".into(),
                triggered_unix_ns: 0,
                budget_us: 50_000,
                total_us: 0,
                fenced_us: 0,
                phases: Vec::new(),
                participants,
                participants_left_out: 0,
                flushed_bytes: 0,
                fenced: true,
                protected: true,
                overran: Vec::new(),
                problems: Vec::new(),
            }),
            note: None,
        }
    }

    fn participant(name: &str, saved: bool) -> ParticipantReport {
        ParticipantReport {
            name: name.into(),
            saved_to: saved.then(|| format!("/state/vms/{name}.vmstate")),
            error: (!saved).then(|| "QMP of VM dead: QEMU closed the QMP connection".into()),
            micros: 10,
            overran: false,
        }
    }

    /// VMs with a state saved after the trigger (at time 0) or none.
    fn vms(list: &[(&str, bool)]) -> Vec<(String, Option<SystemTime>)> {
        let saved = UNIX_EPOCH + Duration::from_secs(5);
        list.iter().map(|(name, has)| (name.to_string(), has.then_some(saved))).collect()
    }

    #[test]
    fn a_fenced_pool_resumes_the_vms_its_fence_names_as_saved() {
        let start = fenced(vec![participant("web", true), participant("dead", false)]);
        let plan = plan(&start, &vms(&[("web", true), ("dead", false), ("idle", false)]));
        assert_eq!(plan.sequence, 3);
        assert_eq!(plan.resume, ["web"]);
        assert_eq!(plan.left.len(), 1);
        assert_eq!(
            plan.left[0].1,
            "VM dead was not saved by POD #3 (QMP of VM dead: QEMU closed the QMP connection), \
             so it cannot go on where it stopped; start it afresh with `pmvisor vm start dead`"
        );
    }

    #[test]
    fn a_saved_state_the_fence_did_not_write_is_left_alone() {
        let start = fenced(vec![participant("web", true)]);
        let plan = plan(&start, &vms(&[("web", true), ("old", true)]));
        assert_eq!(plan.resume, ["web"]);
        assert_eq!(plan.left[0].0, "old");
        assert!(plan.left[0].1.starts_with("VM old has a saved state that POD #3 did not write"));
    }

    #[test]
    fn vms_the_fence_record_had_no_room_for_resume_if_saved_after_the_trigger() {
        let mut start = fenced(vec![participant("web", true)]);
        let report = start.fence.as_mut().unwrap();
        report.participants_left_out = 2;
        report.triggered_unix_ns = 4_000_000_000;
        let mut list = vms(&[("web", true), ("db", true), ("idle", false)]);
        list.push(("old".into(), Some(UNIX_EPOCH + Duration::from_secs(3))));
        let plan = plan(&start, &list);
        assert_eq!(plan.resume, ["web", "db"]);
        assert_eq!(plan.left.len(), 1);
        assert!(plan.left[0].1.starts_with("VM old has a saved state that POD #3 did not write"));
    }

    #[test]
    fn a_pool_that_did_not_open_from_a_fence_resumes_nothing() {
        let start = StartReport {
            opened_from: "recovery".into(),
            fence: None,
            note: Some("the pool changed after its fence record".into()),
        };
        let plan = plan(&start, &vms(&[("web", true), ("idle", false)]));
        assert!(plan.resume.is_empty());
        assert_eq!(
            plan.left,
            [(
                "web".to_string(),
                "VM web has a saved state, but the pool did not open from a power-outage fence \
                 (the pool changed after its fence record), so it is not resumed: resume it with \
                 `pmvisor vm resume web` if its RAM is as it was saved, or discard the state \
                 with `pmvisor vm stop web`"
                    .to_string()
            )]
        );
    }

    #[test]
    fn a_fence_whose_report_is_unreadable_resumes_every_saved_vm() {
        let start = StartReport { opened_from: "fence".into(), fence: None, note: None };
        let plan = plan(&start, &vms(&[("a", true), ("b", false), ("c", true)]));
        assert_eq!((plan.sequence, plan.resume), (0, vec!["a".to_string(), "c".to_string()]));
    }
}
