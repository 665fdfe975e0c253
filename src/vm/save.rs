//! Saving a VM's device state on power loss and restoring it, over QMP.
//!
//! Save: `stop`, `migrate` to `file:STATE.tmp`, wait for QEMU's event that
//! the migration completed, fsync the file, rename it to `STATE` and fsync
//! the directory, so a state file is either whole or absent. The migration
//! capabilities (`x-ignore-shared`, and `events` for that event) are set
//! once, when pmvisor takes the QEMU on ([`prepare`]): a power outage pays
//! for two round trips to QEMU and its event, nothing more. The RAM is a
//! shared memory backend on the pool, so `x-ignore-shared` leaves it out:
//! the state is the vCPUs and devices (a few hundred KiB), written in
//! milliseconds.
//!
//! Restore: a QEMU started with the same arguments plus `-incoming defer`
//! gets the same capability, `migrate-incoming file:STATE`, and once the
//! migration completed and the VM is paused (the source was stopped when it
//! saved), `cont`.
//!
//! Every step is bounded by a deadline: a QEMU that hangs or whose QMP
//! socket is dead costs at most the deadline, and the caller's other VMs
//! are saved in parallel meanwhile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::qmp::{Qmp, QmpError};
use super::VmError;

/// What saving one VM did, for the POD report and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSaveReport {
    /// The VM.
    pub name: String,
    /// Where its device state is (when `saved`).
    pub state_file: PathBuf,
    /// Whether the state file is whole and durable.
    pub saved: bool,
    /// Why not, as one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes of device state.
    pub state_bytes: u64,
    /// `stop` took this long, in µs.
    pub stop_us: u64,
    /// The migration to the file, in µs.
    pub migrate_us: u64,
    /// Making the file durable, in µs.
    pub sync_us: u64,
    /// From the first command to the durable file, in µs.
    pub total_us: u64,
}

/// What resuming one VM did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResumeReport {
    /// The VM.
    pub name: String,
    /// Whether the guest runs again.
    pub resumed: bool,
    /// How: `cont` of a paused QEMU, or `restore` of a saved state into a
    /// new one.
    pub how: ResumeKind,
    /// Why not, as one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Loading the device state (restore only), in µs.
    pub restore_us: u64,
    /// From the first command (or QEMU's start) to running, in µs.
    pub total_us: u64,
}

/// How a VM was resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeKind {
    /// Its QEMU was paused and continues.
    Cont,
    /// A new QEMU loaded the saved state.
    Restore,
}

/// Timings of a save.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveTimings {
    pub stop: Duration,
    pub migrate: Duration,
    pub sync: Duration,
    pub state_bytes: u64,
}

/// Pause the VM behind `qmp` and save its device state to `state`.
pub async fn save(
    name: &str,
    qmp: &Qmp,
    state: &Path,
    deadline: Instant,
) -> Result<SaveTimings, VmError> {
    let start = Instant::now();
    let qmp_error = |source| qmp_failure(name, source, deadline, "saved");
    // Only this migration's events count from here.
    qmp.take_events().await;
    qmp.execute_by("stop", Value::Null, deadline).await.map_err(qmp_error)?;
    let stopped = Instant::now();
    let partial = partial_path(state);
    let uri = json!({ "uri": format!("file:{}", partial.display()) });
    match qmp.execute_by("migrate", uri.clone(), deadline).await {
        // Left paused by an earlier migration (a save that finished after
        // its deadline): it must run before it can migrate again.
        Err(QmpError::Refused { desc, .. }) if desc.contains("previous migration") => {
            qmp.execute_by("cont", Value::Null, deadline).await.map_err(qmp_error)?;
            qmp.execute_by("stop", Value::Null, deadline).await.map_err(qmp_error)?;
            qmp.execute_by("migrate", uri, deadline).await.map_err(qmp_error)?;
        }
        other => {
            other.map_err(qmp_error)?;
        }
    }
    let ended = qmp
        .wait_event(|e| e.event == "MIGRATION" && migration_ended(&e.data), "migrate", deadline)
        .await
        .map_err(qmp_error)?;
    if ended.data["status"] != "completed" {
        let detail = match qmp.execute_by("query-migrate", Value::Null, deadline).await {
            Ok(status) => status["error-desc"].as_str().unwrap_or("it failed").to_string(),
            Err(_) => format!("it ended {}", ended.data["status"]),
        };
        return Err(VmError::Migration { name: name.into(), what: "save", detail });
    }
    let migrated = Instant::now();
    let (owned, target) = (partial.clone(), state.to_path_buf());
    let synced = tokio::task::spawn_blocking(move || make_durable(&owned, &target))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())));
    let state_bytes = synced.map_err(|source| VmError::StateFile {
        name: name.into(),
        path: state.to_path_buf(),
        source,
    })?;
    Ok(SaveTimings {
        stop: stopped - start,
        migrate: migrated - stopped,
        sync: migrated.elapsed(),
        state_bytes,
    })
}

/// Load `state` into the QEMU behind `qmp` (started with `-incoming
/// defer`) and let the guest run; how long loading took.
pub async fn restore(
    name: &str,
    qmp: &Qmp,
    state: &Path,
    deadline: Instant,
) -> Result<Duration, VmError> {
    let start = Instant::now();
    let qmp_error = |source| qmp_failure(name, source, deadline, "restored");
    qmp.execute_by("migrate-set-capabilities", capabilities(), deadline)
        .await
        .map_err(qmp_error)?;
    let uri = format!("file:{}", state.display());
    qmp.execute_by("migrate-incoming", json!({ "uri": uri }), deadline).await.map_err(qmp_error)?;
    wait_for_migration(name, qmp, deadline, "restore").await?;
    // The source was stopped when it saved, so the loaded VM ends paused;
    // a `cont` before QEMU left `inmigrate` would be forgotten.
    loop {
        let status = qmp.execute_by("query-status", Value::Null, deadline).await;
        let status = status.map_err(qmp_error)?;
        match status["status"].as_str() {
            Some("inmigrate") => tokio::task::yield_now().await,
            _ => break,
        }
    }
    let restored = start.elapsed();
    cont(name, qmp, deadline).await?;
    Ok(restored)
}

/// Let a paused VM run. A save still migrating (one that outlived its
/// deadline) is cancelled first: a `cont` during it would be undone when
/// it completes, leaving the VM paused and unable to migrate again.
pub async fn cont(name: &str, qmp: &Qmp, deadline: Instant) -> Result<(), VmError> {
    let qmp_error = |source| qmp_failure(name, source, deadline, "resumed");
    loop {
        let migration =
            qmp.execute_by("query-migrate", Value::Null, deadline).await.map_err(qmp_error)?;
        let active = migration["status"]
            .as_str()
            .is_some_and(|s| !matches!(s, "none" | "completed" | "failed" | "cancelled"));
        if !active {
            break;
        }
        qmp.execute_by("migrate_cancel", Value::Null, deadline).await.map_err(qmp_error)?;
        if Instant::now() >= deadline {
            return Err(VmError::Deadline { name: name.into(), what: "resumed" });
        }
        tokio::task::yield_now().await;
    }
    qmp.execute_by("cont", Value::Null, deadline).await.map_err(qmp_error)?;
    let status = qmp.execute_by("query-status", Value::Null, deadline).await.map_err(qmp_error)?;
    match status["status"].as_str() {
        Some("running") => Ok(()),
        other => Err(VmError::Migration {
            name: name.into(),
            what: "resume",
            detail: format!("QEMU is {} after cont, not running", other.unwrap_or("in no state")),
        }),
    }
}

/// Set the migration capabilities every save and restore needs:
/// `x-ignore-shared` (the RAM stays in the pool) and `events` (QEMU says
/// when a migration ends). Once per QEMU, when pmvisor takes it on.
pub async fn prepare(name: &str, qmp: &Qmp, deadline: Instant) -> Result<(), VmError> {
    qmp.execute_by("migrate-set-capabilities", capabilities(), deadline)
        .await
        .map_err(|source| qmp_failure(name, source, deadline, "prepared for a save"))?;
    Ok(())
}

fn capabilities() -> Value {
    json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": true },
        { "capability": "events", "state": true },
    ] })
}

/// Whether a `MIGRATION` event's data says the migration is over.
fn migration_ended(data: &Value) -> bool {
    matches!(data["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}

/// Poll `query-migrate` until it completes or fails. No sleep: each query
/// is a round trip to QEMU, which paces the loop, and a save is a few ms.
async fn wait_for_migration(
    name: &str,
    qmp: &Qmp,
    deadline: Instant,
    what: &'static str,
) -> Result<(), VmError> {
    let done = if what == "save" { "saved" } else { "restored" };
    loop {
        let status = qmp
            .execute_by("query-migrate", Value::Null, deadline)
            .await
            .map_err(|source| qmp_failure(name, source, deadline, done))?;
        match status["status"].as_str() {
            Some("completed") => return Ok(()),
            Some(failed @ ("failed" | "cancelled")) => {
                let detail = status["error-desc"].as_str().unwrap_or(failed).to_string();
                return Err(VmError::Migration { name: name.into(), what, detail });
            }
            _ if Instant::now() >= deadline => {
                return Err(VmError::Deadline { name: name.into(), what: done })
            }
            _ => tokio::task::yield_now().await,
        }
    }
}

fn qmp_failure(name: &str, source: QmpError, deadline: Instant, what: &'static str) -> VmError {
    match source {
        QmpError::Timeout { .. } if Instant::now() >= deadline => {
            VmError::Deadline { name: name.into(), what }
        }
        source => VmError::Qmp { name: name.into(), source },
    }
}

/// `STATE.tmp`, where a save writes before the rename.
pub fn partial_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    state.with_file_name(name)
}

/// fsync `partial`, rename it to `state`, fsync the directory; its size.
fn make_durable(partial: &Path, state: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::open(partial)?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    std::fs::rename(partial, state)?;
    if let Some(dir) = state.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_writes_beside_its_state_file_first() {
        assert_eq!(
            partial_path(Path::new("/s/vms/web.vmstate")),
            Path::new("/s/vms/web.vmstate.tmp")
        );
    }

    #[test]
    fn a_durable_state_file_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a.vmstate");
        std::fs::write(&state, b"old").unwrap();
        std::fs::write(partial_path(&state), b"new state").unwrap();
        assert_eq!(make_durable(&partial_path(&state), &state).unwrap(), 9);
        assert_eq!(std::fs::read(&state).unwrap(), b"new state");
        assert!(!partial_path(&state).exists());
    }
}
