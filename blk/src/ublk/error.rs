//! Errors of the ublk target, one variant per failing step.
//!
//! libublk reports failures as `libublk::UblkError`, whose messages do not
//! name the errno ("other failure"). Every driver failure is converted to an
//! `io::Error` carrying the errno, so that the source chain says what the
//! kernel answered ("Device or resource busy (os error 16)").

use std::io;
use std::time::Duration;

use super::control::DeviceState;

/// The device node whose absence means the ublk driver is not loaded.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Why a ublk device could not be served, recovered, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    /// `/dev/ublk-control` does not exist.
    #[error(
        "the ublk driver is not loaded ({CONTROL_PATH} is missing): load it with \
         `modprobe ublk_drv`; it needs Linux 6.0 or newer built with CONFIG_BLK_DEV_UBLK"
    )]
    DriverMissing,
    /// The options or the backing device cannot make a ublk device.
    #[error("invalid ublk device options: {0}")]
    InvalidOptions(String),
    /// The driver refused to add a new device.
    #[error("could not add a ublk device")]
    Add(#[source] io::Error),
    /// The driver could not be asked about an existing device.
    #[error("could not query ublk device {id}")]
    Query {
        /// Device id.
        id: u32,
        /// What the driver answered.
        #[source]
        source: io::Error,
    },
    /// Recovery was asked for a device that is not waiting for a new server.
    #[error("ublk device {id} cannot be recovered: it is {state}{owner}")]
    NotRecoverable {
        /// Device id.
        id: u32,
        /// Its current state.
        state: DeviceState,
        /// ", served by process N" when a live process still serves it.
        owner: String,
    },
    /// The existing device's size differs from the backing device's.
    #[error(
        "ublk device {id} has {device_bytes} bytes but the backing device has {backing_bytes}; \
         refusing to recover it over different storage"
    )]
    SizeMismatch {
        /// Device id.
        id: u32,
        /// Size the kernel device has.
        device_bytes: u64,
        /// Size of the `BlockDevice` offered to serve it.
        backing_bytes: u64,
    },
    /// `START_USER_RECOVERY` failed.
    #[error("could not start recovery of ublk device {id}")]
    StartRecovery {
        /// Device id.
        id: u32,
        /// What the driver answered.
        #[source]
        source: io::Error,
    },
    /// Setting up the queues or `START_DEV`/`END_USER_RECOVERY` failed.
    #[error("ublk device {id} failed to start")]
    Start {
        /// Device id.
        id: u32,
        /// What the driver answered.
        #[source]
        source: io::Error,
    },
    /// The device did not go live in time.
    #[error("ublk device {} did not go live within {timeout:?}", id_or_new(*.id))]
    StartTimeout {
        /// Device id, when the driver had allocated one.
        id: Option<u32>,
        /// The configured start timeout.
        timeout: Duration,
    },
    /// `STOP_DEV` failed.
    #[error("could not stop ublk device {id}")]
    Stop {
        /// Device id.
        id: u32,
        /// What the driver answered.
        #[source]
        source: io::Error,
    },
    /// `DEL_DEV` failed.
    #[error("could not delete ublk device {id}")]
    Delete {
        /// Device id.
        id: u32,
        /// What the driver answered.
        #[source]
        source: io::Error,
    },
    /// The thread that runs the device could not be created.
    #[error("could not spawn the ublk device thread")]
    Spawn(#[source] io::Error),
    /// The thread that runs the device panicked.
    #[error("the ublk device thread panicked")]
    ThreadPanicked,
}

fn id_or_new(id: Option<u32>) -> String {
    id.map_or_else(|| "(new)".to_string(), |id| id.to_string())
}

/// Turn libublk's error into an `io::Error` that names the errno.
pub(crate) fn os_error(err: libublk::UblkError) -> io::Error {
    match err {
        libublk::UblkError::OtherError(e) | libublk::UblkError::UringIOError(e) if e < 0 => {
            io::Error::from_raw_os_error(-e)
        }
        libublk::UblkError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_driver_message_says_what_to_load_and_which_kernel() {
        let msg = UblkError::DriverMissing.to_string();
        assert_eq!(
            msg,
            "the ublk driver is not loaded (/dev/ublk-control is missing): load it with \
             `modprobe ublk_drv`; it needs Linux 6.0 or newer built with CONFIG_BLK_DEV_UBLK"
        );
    }

    #[test]
    fn driver_errnos_become_os_errors() {
        let err = os_error(libublk::UblkError::OtherError(-16));
        assert_eq!(err.raw_os_error(), Some(16));
        let err = os_error(libublk::UblkError::QueueIsDown);
        assert_eq!(err.raw_os_error(), None);
    }

    #[test]
    fn timeout_message_names_the_device_and_the_timeout() {
        let err = UblkError::StartTimeout { id: Some(3), timeout: Duration::from_secs(5) };
        assert_eq!(err.to_string(), "ublk device 3 did not go live within 5s");
        let err = UblkError::StartTimeout { id: None, timeout: Duration::from_secs(5) };
        assert_eq!(err.to_string(), "ublk device (new) did not go live within 5s");
    }

    #[test]
    fn not_recoverable_names_state_and_owner() {
        let err = UblkError::NotRecoverable {
            id: 1,
            state: DeviceState::Live,
            owner: ", served by process 42".into(),
        };
        assert_eq!(
            err.to_string(),
            "ublk device 1 cannot be recovered: it is LIVE, served by process 42"
        );
    }
}
