//! Control commands on existing ublk devices: list, stop, delete, and the
//! checks recovery needs.
//!
//! libublk keeps its control io_uring in a thread-local that only a
//! `UblkCtrl` constructor initialises, so every function here opens its own
//! `UblkCtrl` for the device in the calling thread rather than sharing the
//! one that runs the device.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use super::error::{os_error, UblkError, CONTROL_PATH};
use super::ring::ControlThread;

/// Directory where libublk keeps each device's JSON description.
const RUN_DIR: &str = "/run/ublksrvd";

/// A ublk device's state as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Added but not started, or stopped.
    Dead,
    /// Started and served.
    Live,
    /// Its server died; I/O waits for a new server to recover it.
    Quiesced,
    /// Its server died; I/O fails until a new server recovers it.
    FailIo,
    /// A state this crate does not know.
    Unknown(u16),
}

impl DeviceState {
    fn from_raw(state: u16) -> Self {
        match u32::from(state) {
            sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            sys::UBLK_S_DEV_LIVE => DeviceState::Live,
            sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Unknown(state),
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceState::Dead => f.write_str("DEAD"),
            DeviceState::Live => f.write_str("LIVE"),
            DeviceState::Quiesced => f.write_str("QUIESCED"),
            DeviceState::FailIo => f.write_str("FAIL_IO"),
            DeviceState::Unknown(n) => write!(f, "in unknown state {n}"),
        }
    }
}

/// What the driver (and libublk's JSON file) says about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkDeviceInfo {
    /// Device id: the N of `/dev/ublkbN`.
    pub id: u32,
    /// Current state.
    pub state: DeviceState,
    /// Number of hardware queues.
    pub queues: u16,
    /// Depth of each queue.
    pub depth: u16,
    /// Size in bytes (zero until parameters were set).
    pub size: u64,
    /// Process that serves (or last served) the device.
    pub owner_pid: i32,
    /// Whether the device was created with `UBLK_F_USER_RECOVERY`.
    pub recoverable: bool,
    /// Whether requests a dead server had taken go to its successor
    /// (`UBLK_F_USER_RECOVERY_REISSUE`) instead of failing.
    pub reissue: bool,
    /// The label a pmvisor server gave the device, when it was one.
    pub label: Option<String>,
}

impl UblkDeviceInfo {
    /// The block device node, `/dev/ublkbN`.
    pub fn path(&self) -> std::path::PathBuf {
        block_path(self.id)
    }

    /// Whether the owning process still exists.
    pub fn owner_alive(&self) -> bool {
        self.owner_pid > 0 && Path::new(&format!("/proc/{}", self.owner_pid)).exists()
    }
}

/// `/dev/ublkbN` for device `id`.
pub(crate) fn block_path(id: u32) -> std::path::PathBuf {
    format!("/dev/ublkb{id}").into()
}

/// Fail with the actionable message when the driver is not loaded.
pub fn check_driver() -> Result<(), UblkError> {
    if Path::new(CONTROL_PATH).exists() {
        Ok(())
    } else {
        Err(UblkError::DriverMissing)
    }
}

/// Open a control handle on an existing device from this thread, which
/// must hold a [`ControlThread`] while it uses the handle.
fn open(id: u32) -> Result<UblkCtrl, UblkError> {
    check_driver()?;
    let signed = i32::try_from(id)
        .map_err(|_| UblkError::InvalidOptions(format!("device id {id} is out of range")))?;
    UblkCtrl::new_simple(signed).map_err(|e| UblkError::Query { id, source: os_error(e) })
}

/// Every ublk device the driver knows, in id order.
pub fn list_devices() -> Result<Vec<UblkDeviceInfo>, UblkError> {
    check_driver()?;
    let mut ids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/class/ublk-char") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_prefix("ublkc")) {
                if let Ok(id) = id.parse::<u32>() {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.into_iter().map(device_info).collect()
}

/// What the driver says about device `id`.
pub fn device_info(id: u32) -> Result<UblkDeviceInfo, UblkError> {
    let _control = ControlThread::enter();
    let ctrl = open(id)?;
    let info = ctrl.dev_info();
    let mut params = sys::ublk_params::default();
    // A device that never got parameters has none to report.
    let size = match ctrl.get_params(&mut params) {
        Ok(_) if params.types & sys::UBLK_PARAM_TYPE_BASIC != 0 => params.basic.dev_sectors << 9,
        _ => 0,
    };
    let label = label_from_json(id);
    Ok(UblkDeviceInfo {
        id,
        state: DeviceState::from_raw(info.state),
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        size,
        owner_pid: info.ublksrv_pid,
        recoverable: info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) != 0,
        reissue: info.flags & u64::from(sys::UBLK_F_USER_RECOVERY_REISSUE) != 0,
        label,
    })
}

/// The label pmvisor stored in libublk's JSON file for the device.
fn label_from_json(id: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("{RUN_DIR}/{id:04}.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["target_data"]["label"].as_str().map(str::to_owned)
}

/// Stop device `id`: its queues end and its block device goes away.
pub fn stop_device(id: u32) -> Result<(), UblkError> {
    let _control = ControlThread::enter();
    let ctrl = open(id)?;
    ctrl.kill_dev().map(drop).map_err(|e| UblkError::Stop { id, source: os_error(e) })
}

/// Stop and delete device `id` (for example one left QUIESCED by a server
/// that is not coming back). A device still served must be stopped by its
/// server ([`super::UblkHandle::stop`]); deleting it here waits for that.
pub fn delete_device(id: u32) -> Result<(), UblkError> {
    let _control = ControlThread::enter();
    let ctrl = open(id)?;
    // A QUIESCED or DEAD device may refuse STOP; DEL_DEV is what matters.
    let _ = ctrl.kill_dev();
    ctrl.del_dev().map(drop).map_err(|e| UblkError::Delete { id, source: os_error(e) })
}

/// Wait until device `id` is QUIESCED and may be recovered.
///
/// After its server dies, a 6.x driver notices from a periodic check and
/// quiesces the device within about five seconds; until then it still says
/// LIVE. A LIVE device whose owner is still alive is being served: that is an
/// error, not something to wait for.
pub(crate) fn wait_until_recoverable(
    id: u32,
    deadline: Instant,
) -> Result<UblkDeviceInfo, UblkError> {
    loop {
        let info = device_info(id)?;
        if !info.recoverable {
            return Err(UblkError::NotRecoverable {
                id,
                state: info.state,
                owner: " and was created without user recovery".into(),
            });
        }
        match info.state {
            DeviceState::Quiesced | DeviceState::FailIo => return Ok(info),
            DeviceState::Live if !info.owner_alive() && Instant::now() < deadline => {}
            state => {
                let owner = if info.owner_alive() {
                    format!(", served by process {}", info.owner_pid)
                } else {
                    String::new()
                };
                return Err(UblkError::NotRecoverable { id, state, owner });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_print_as_the_driver_names_them() {
        assert_eq!(DeviceState::from_raw(2).to_string(), "QUIESCED");
        assert_eq!(DeviceState::from_raw(1), DeviceState::Live);
        assert_eq!(DeviceState::from_raw(9).to_string(), "in unknown state 9");
    }

    #[test]
    fn block_paths_follow_the_driver_naming() {
        assert_eq!(block_path(7), std::path::PathBuf::from("/dev/ublkb7"));
    }

    #[test]
    fn control_calls_fail_clearly_without_the_driver() {
        if Path::new(CONTROL_PATH).exists() {
            return; // this host has the driver; the guest test covers the real path
        }
        assert!(matches!(list_devices(), Err(UblkError::DriverMissing)));
        assert!(matches!(delete_device(0), Err(UblkError::DriverMissing)));
    }
}
