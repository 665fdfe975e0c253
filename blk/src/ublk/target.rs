//! Serving one [`BlockDevice`] as `/dev/ublkbN`: the device thread, its
//! queue threads, and the handle that stops them.
//!
//! One device thread owns the `UblkCtrl` (libublk's control handle is bound
//! to the thread that made it) and runs `UblkCtrl::run_target`, which
//! spawns one thread per queue and blocks until the queues end. Each queue
//! thread serves its tags synchronously: decode the descriptor, call the
//! device, commit the result and fetch the next request in one io_uring
//! command. `serve` waits for the device to go live, or for the start
//! timeout, and hands back a [`UblkHandle`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, BufDescList, UblkFlags, UblkIORes};

use super::control::{self, block_path};
use super::error::{os_error, UblkError};
use super::params::{device_params, MAX_IO_BYTES};
use super::request::Request;
use super::ring::ControlThread;
use crate::device::BlockDevice;

/// How a device is created or recovered.
#[derive(Debug, Clone)]
pub struct UblkOptions {
    /// Device id (`/dev/ublkbN`); `None` lets the driver choose. Required
    /// when recovering.
    pub id: Option<u32>,
    /// Number of hardware queues, each served by its own thread.
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Reattach to an existing device whose server died, instead of adding
    /// one. Queues and depth are then the existing device's.
    pub recover: bool,
    /// How long the device may take to go live before `serve` gives up. A
    /// new device that misses it is stopped and deleted; a recovery that
    /// misses it is left to finish, since stopping the device would fail
    /// the I/O its users have waiting.
    pub start_timeout: Duration,
    /// Stored with the device so that [`super::list_devices`] can tell whose
    /// it is (for example the region name).
    pub label: String,
}

impl Default for UblkOptions {
    fn default() -> Self {
        UblkOptions {
            id: None,
            queues: 2,
            depth: 64,
            recover: false,
            start_timeout: Duration::from_secs(30),
            label: String::new(),
        }
    }
}

/// The ublk target: serves any `BlockDevice` as a ublk block device.
#[derive(Debug)]
pub struct UblkTarget;

/// What the device thread tells `serve`.
enum Event {
    /// The driver allocated this id (the device is not live yet).
    Added(u32),
    /// The device is live.
    Live(u32),
    /// Setting up failed.
    Failed(UblkError),
}

impl UblkTarget {
    /// Serve `dev` as a new ublk device, or recover the existing one named
    /// by `opts.id` when `opts.recover` is set. Returns once the device is
    /// live; the I/O runs on background threads until [`UblkHandle::stop`].
    pub fn serve(
        dev: Arc<dyn BlockDevice>,
        mut opts: UblkOptions,
    ) -> Result<UblkHandle, UblkError> {
        control::check_driver()?;
        validate(dev.size(), &opts)?;
        let deadline = Instant::now() + opts.start_timeout;
        if opts.recover {
            // validate() guarantees an id for recovery.
            let id = opts.id.unwrap_or_default();
            let info = control::wait_until_recoverable(id, deadline)?;
            if info.size != dev.size() {
                return Err(UblkError::SizeMismatch {
                    id,
                    device_bytes: info.size,
                    backing_bytes: dev.size(),
                });
            }
            // libublk sizes its per-queue tables from these, not from the
            // driver's answer.
            opts.queues = info.queues;
            opts.depth = info.depth;
        }

        let (tx, rx) = mpsc::sync_channel(4);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let opts = opts.clone();
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("ublk-device".into())
                .spawn(move || run_device(dev, &opts, &tx, stopping))
                .map_err(UblkError::Spawn)?
        };

        let mut added = opts.id;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Event::Added(id)) => added = Some(id),
                Ok(Event::Live(id)) => {
                    tracing::info!(id, path = %block_path(id).display(), "ublk device is live");
                    return Ok(UblkHandle { id, stopping, thread: Some(thread) });
                }
                Ok(Event::Failed(err)) => {
                    let _ = thread.join();
                    return Err(err);
                }
                Err(RecvTimeoutError::Timeout) => {
                    stopping.store(true, Ordering::SeqCst);
                    while let Ok(Event::Added(id) | Event::Live(id)) = rx.try_recv() {
                        added = Some(id);
                    }
                    if !opts.recover {
                        // The device thread deletes the device once its
                        // queues end; stopping is what ends them. A device
                        // not yet added, or live only later, is stopped by
                        // the thread itself once it sees `stopping`.
                        if let Some(id) = added {
                            if let Err(err) = control::stop_device(id) {
                                tracing::warn!(id, error = %err, "could not stop a ublk device that timed out");
                            }
                        }
                        wait_for_exit(&thread, STOP_GRACE);
                    }
                    return Err(UblkError::StartTimeout { id: added, timeout: opts.start_timeout });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(match thread.join() {
                        Ok(Err(err)) => err,
                        _ => UblkError::ThreadPanicked,
                    });
                }
            }
        }
    }
}

/// How long a timed-out `serve` waits for its new device to be deleted, so
/// that a caller exiting right after the error leaves no device behind.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn wait_for_exit<T>(thread: &JoinHandle<T>, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn validate(size: u64, opts: &UblkOptions) -> Result<(), UblkError> {
    let invalid = |msg: String| Err(UblkError::InvalidOptions(msg));
    if size == 0 || size & 511 != 0 {
        return invalid(format!("the device size {size} is not a positive multiple of 512"));
    }
    if opts.recover && opts.id.is_none() {
        return invalid("recovering a device needs its id".into());
    }
    if opts.id.is_some_and(|id| i32::try_from(id).is_err()) {
        return invalid("the device id does not fit the driver's range".into());
    }
    if !opts.recover && !(1..=sys::UBLK_MAX_NR_QUEUES).contains(&u32::from(opts.queues)) {
        return invalid(format!("queues must be 1..={}", sys::UBLK_MAX_NR_QUEUES));
    }
    if !opts.recover && !(1..=sys::UBLK_MAX_QUEUE_DEPTH).contains(&u32::from(opts.depth)) {
        return invalid(format!("depth must be 1..={}", sys::UBLK_MAX_QUEUE_DEPTH));
    }
    Ok(())
}

/// Body of the device thread: create or recover, run, and delete the device
/// when its queues end.
///
/// When `serve` has given up (`stopping` is set before the device goes
/// live), a new device is stopped as soon as it starts. A recovered one is
/// served on: stopping it would fail the I/O its users have waiting.
fn run_device(
    dev: Arc<dyn BlockDevice>,
    opts: &UblkOptions,
    tx: &SyncSender<Event>,
    stopping: Arc<AtomicBool>,
) -> Result<(), UblkError> {
    // For the thread's whole life: its queue threads inherit the mask.
    let _control = ControlThread::enter();
    let ctrl = match build_ctrl(opts) {
        Ok(ctrl) => ctrl,
        Err(err) => {
            let _ = tx.send(Event::Failed(err));
            return Ok(());
        }
    };
    let id = ctrl.dev_info().dev_id;
    let _ = tx.send(Event::Added(id));
    if stopping.load(Ordering::SeqCst) && !opts.recover {
        return Ok(()); // `serve` gave up; dropping the control deletes the device
    }

    if opts.recover {
        if let Err(e) = ctrl.start_user_recover() {
            let _ = tx.send(Event::Failed(UblkError::StartRecovery { id, source: os_error(e) }));
            return Ok(());
        }
    }

    let size = dev.size();
    let label = opts.label.clone();
    let target_init = move |udev: &mut UblkDev| {
        udev.tgt.dev_size = size;
        udev.tgt.params = device_params(size);
        udev.set_target_json(serde_json::json!({ "label": label, "size": size }));
        Ok(())
    };
    let queue_dev = Arc::clone(&dev);
    let serve_queue = move |qid: u16, udev: &UblkDev| serve_queue(qid, udev, &*queue_dev);
    let live_tx = tx.clone();
    let (late, recover) = (Arc::clone(&stopping), opts.recover);
    let on_live = move |ctrl: &UblkCtrl| {
        let id = ctrl.dev_info().dev_id;
        if !late.load(Ordering::SeqCst) {
            let _ = live_tx.send(Event::Live(id));
        } else if recover {
            tracing::warn!(id, "ublk device recovered after its start timeout; serving it anyway");
        } else if let Err(e) = ctrl.kill_dev() {
            tracing::warn!(id, error = %os_error(e), "could not stop a ublk device that went live too late");
        }
    };

    let run = ctrl.run_target(target_init, serve_queue, on_live);
    if !stopping.load(Ordering::SeqCst) {
        tracing::warn!(id, "ublk device queues ended without stop()");
    }
    if let Err(e) = run {
        // Before going live this reaches `serve`; afterwards nobody waits.
        let _ = tx.send(Event::Failed(UblkError::Start { id, source: os_error(e) }));
    }
    // The queues are gone: the device is stopped (by `stop`, a timeout, or
    // an administrator). Remove it, whether we added or recovered it.
    if let Err(e) = ctrl.del_dev() {
        let source = os_error(e);
        if source.raw_os_error() != Some(2) {
            return Err(UblkError::Delete { id, source });
        }
    }
    Ok(())
}

fn build_ctrl(opts: &UblkOptions) -> Result<UblkCtrl, UblkError> {
    let id = opts.id.map_or(-1, |id| i32::try_from(id).unwrap_or(-1));
    let builder =
        UblkCtrlBuilder::default().name("pmvisor").id(id).nr_queues(opts.queues).depth(opts.depth);
    let builder = if opts.recover {
        builder.dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
    } else {
        builder
            .io_buf_bytes(MAX_IO_BYTES)
            .ctrl_flags(recovery_flags(UblkCtrl::get_features()))
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
    };
    builder.build().map_err(|e| {
        let source = os_error(e);
        match opts.id {
            Some(id) if opts.recover => UblkError::Query { id, source },
            _ => UblkError::Add(source),
        }
    })
}

/// `UBLK_F_USER_RECOVERY`, plus `_REISSUE` when the driver has it: requests
/// the dead server had taken are then issued again to its successor
/// instead of failing. Reissue may write a block twice, which a block
/// device tolerates.
fn recovery_flags(driver_features: Option<u64>) -> u64 {
    let reissue = u64::from(sys::UBLK_F_USER_RECOVERY_REISSUE);
    let mut flags = u64::from(sys::UBLK_F_USER_RECOVERY);
    if driver_features.is_some_and(|f| f & reissue != 0) {
        flags |= reissue;
    }
    flags
}

/// Body of one queue thread.
fn serve_queue(qid: u16, udev: &UblkDev, dev: &dyn BlockDevice) {
    let mut bufs = udev.alloc_queue_io_bufs();
    let queue = match UblkQueue::new(qid, udev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(queue) => queue,
        Err(e) => {
            tracing::error!(qid, error = %os_error(e), "ublk queue setup failed");
            return;
        }
    };
    queue.wait_and_handle_io(move |q, tag, _ctx| {
        let iod = q.get_iod(tag);
        let buf = bufs[usize::from(tag)].as_mut_slice();
        let result = match Request::decode(iod.op_flags, iod.start_sector, iod.nr_sectors) {
            Ok(req) => req.execute(dev, buf),
            Err(errno) => errno,
        };
        if result < 0 {
            let (op_flags, sector, sectors) = (iod.op_flags, iod.start_sector, iod.nr_sectors);
            tracing::warn!(
                qid,
                tag,
                op_flags,
                sector,
                sectors,
                errno = -result,
                "ublk request failed"
            );
        }
        let desc = BufDesc::Slice(bufs[usize::from(tag)].as_slice());
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(result))) {
            tracing::error!(qid, tag, error = %os_error(e), "ublk commit failed");
        }
    });
}

/// A served ublk device. Dropping it stops and deletes the device, like
/// [`UblkHandle::stop`] but without reporting errors. If the process dies
/// instead, the device stays (QUIESCED) for a successor to recover.
#[derive(Debug)]
pub struct UblkHandle {
    id: u32,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), UblkError>>>,
}

impl UblkHandle {
    /// The device id: the N of `/dev/ublkbN`.
    pub fn dev_id(&self) -> u32 {
        self.id
    }

    /// The block device node, `/dev/ublkbN`.
    pub fn path(&self) -> PathBuf {
        block_path(self.id)
    }

    /// Whether the device still runs (an administrator may stop it).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stop the device and delete it, waiting for its queues to end.
    pub fn stop(mut self) -> Result<(), UblkError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), UblkError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stopping.store(true, Ordering::SeqCst);
        if !thread.is_finished() {
            control::stop_device(self.id)?;
        }
        thread.join().map_err(|_| UblkError::ThreadPanicked)?
    }
}

impl Drop for UblkHandle {
    fn drop(&mut self) {
        if let Err(err) = self.shut_down() {
            tracing::warn!(id = self.id, error = %err, "ublk device did not stop cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_two_queues_of_64() {
        let o = UblkOptions::default();
        assert_eq!((o.queues, o.depth, o.recover, o.id), (2, 64, false, None));
    }

    #[test]
    fn invalid_options_are_refused_before_touching_the_driver() {
        let ok = UblkOptions::default();
        assert!(validate(1 << 20, &ok).is_ok());
        assert!(validate(1000, &ok).is_err());
        assert!(validate(0, &ok).is_err());
        let recover_without_id = UblkOptions { recover: true, ..UblkOptions::default() };
        let err = validate(1 << 20, &recover_without_id).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid ublk device options: recovering a device needs its id"
        );
        assert!(validate(1 << 20, &UblkOptions { queues: 0, ..UblkOptions::default() }).is_err());
        assert!(validate(1 << 20, &UblkOptions { depth: 0, ..UblkOptions::default() }).is_err());
    }

    #[test]
    fn reissue_is_asked_only_when_the_driver_has_it() {
        let recovery = u64::from(sys::UBLK_F_USER_RECOVERY);
        let reissue = u64::from(sys::UBLK_F_USER_RECOVERY_REISSUE);
        assert_eq!(recovery_flags(None), recovery);
        assert_eq!(recovery_flags(Some(recovery)), recovery);
        assert_eq!(recovery_flags(Some(recovery | reissue)), recovery | reissue);
    }

    #[test]
    fn serving_without_the_driver_says_how_to_load_it() {
        if std::path::Path::new(super::super::error::CONTROL_PATH).exists() {
            return; // the VM test covers hosts with the driver
        }
        let dev: Arc<dyn BlockDevice> = Arc::new(crate::MemDevice::new(1 << 20));
        let err = UblkTarget::serve(dev, UblkOptions::default()).unwrap_err();
        assert!(matches!(err, UblkError::DriverMissing));
        assert!(err.to_string().contains("modprobe ublk_drv"));
    }
}
