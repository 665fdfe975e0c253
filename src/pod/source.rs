//! Where a power-outage signal comes from.
//!
//! Besides SIGPWR (the daemon's signal handler) and the API, `pmvisor serve
//! --pod-source` watches:
//!
//! - `sysfs:PATH`: a power-supply attribute such as
//!   `/sys/class/power_supply/AC/online`; it fires when the value turns to
//!   `0` (and again only after it was non-zero);
//! - `file:PATH`: the same on any file, for tests and for UPS tools that
//!   write one; when PATH is a FIFO, each line `0` fires.
//!
//! The watcher sleeps in `poll(2)` and reads the attribute again when
//! something says it may have changed: the attribute itself (sysfs
//! attributes whose driver calls `sysfs_notify` report `POLLPRI`), a kernel
//! uevent (power supplies announce every change as one; needs root), or a
//! write to the file (inotify). A read every [`POLL_INTERVAL`] is the
//! safety net for an attribute that says nothing.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags};

/// How often a watched attribute is read when nothing says it changed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One firing: what fired and when.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// `SIGPWR`, `api`, `sysfs:PATH`, `file:PATH`.
    pub source: String,
    /// When it fired (the budget counts from here).
    pub at: Instant,
    pub wall: SystemTime,
}

impl Trigger {
    /// A trigger from `source`, now.
    pub fn now(source: impl Into<String>) -> Trigger {
        Trigger { source: source.into(), at: Instant::now(), wall: SystemTime::now() }
    }
}

/// A watched POD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSource {
    Sysfs(PathBuf),
    File(PathBuf),
}

/// A `--pod-source` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown POD source {0:?}; use sysfs:PATH (e.g. sysfs:/sys/class/power_supply/AC/online) or \
     file:PATH"
)]
pub struct BadSource(String);

impl FromStr for PodSource {
    type Err = BadSource;

    fn from_str(text: &str) -> Result<PodSource, BadSource> {
        match text.split_once(':') {
            Some(("sysfs", path)) if !path.is_empty() => Ok(PodSource::Sysfs(path.into())),
            Some(("file", path)) if !path.is_empty() => Ok(PodSource::File(path.into())),
            _ => Err(BadSource(text.to_string())),
        }
    }
}

impl fmt::Display for PodSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodSource::Sysfs(p) => write!(f, "sysfs:{}", p.display()),
            PodSource::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl PodSource {
    fn path(&self) -> &Path {
        match self {
            PodSource::Sysfs(p) | PodSource::File(p) => p,
        }
    }

    /// Watch on a thread of its own; `fire` runs on that thread for each
    /// power-good drop.
    pub fn watch(&self, fire: impl Fn(Trigger) + Send + 'static) -> std::io::Result<()> {
        let source = self.clone();
        let is_fifo = std::fs::metadata(self.path()).is_ok_and(|m| m.file_type().is_fifo());
        std::thread::Builder::new().name("pmvisor-pod-watch".into()).spawn(move || {
            if is_fifo {
                read_fifo(&source, &fire);
            } else {
                poll_attribute(&source, &fire);
            }
        })?;
        Ok(())
    }
}

/// Whether an attribute's text means "no power".
pub fn reads_power_lost(text: &str) -> bool {
    text.trim() == "0"
}

fn poll_attribute(source: &PodSource, fire: &dyn Fn(Trigger)) {
    let wake = Wakeups::new(source);
    // Armed once the attribute was seen with power, so that a daemon started
    // on battery does not fence at once.
    let mut armed = false;
    let mut warned = false;
    let mut file: Option<File> = None;
    loop {
        if file.is_none() {
            file = File::open(source.path()).ok();
        }
        let read = match &file {
            Some(f) => read_from_start(f),
            None => std::fs::read_to_string(source.path()),
        };
        match read {
            Ok(text) if reads_power_lost(&text) => {
                if armed {
                    armed = false;
                    fire(Trigger::now(source.to_string()));
                }
            }
            Ok(_) => armed = true,
            Err(e) => {
                // Replaced or removed: open it again next time.
                file = None;
                if !warned {
                    warned = true;
                    tracing::warn!("cannot read POD source {source}: {e}; still watching");
                }
            }
        }
        wake.wait(file.as_ref(), POLL_INTERVAL);
    }
}

/// The attribute's text, read from its start (sysfs regenerates it).
fn read_from_start(file: &File) -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// What wakes the watcher besides its interval.
struct Wakeups {
    /// Kernel uevents (power supplies send one on every change).
    uevents: Option<OwnedFd>,
    /// Writes to a watched file.
    inotify: Option<OwnedFd>,
}

impl Wakeups {
    fn new(source: &PodSource) -> Wakeups {
        let uevents = match source {
            PodSource::Sysfs(_) => uevent_socket()
                .inspect_err(|e| {
                    tracing::debug!(
                        "no kernel uevents for {source} ({e}); reading it every {POLL_INTERVAL:?}"
                    )
                })
                .ok(),
            PodSource::File(_) => None,
        };
        let inotify = match source {
            PodSource::File(path) => inotify_on(path).ok(),
            PodSource::Sysfs(_) => None,
        };
        Wakeups { uevents, inotify }
    }

    /// Sleep until something may have changed the attribute, or
    /// `interval` passes; whatever woke it is consumed.
    fn wait(&self, attribute: Option<&File>, interval: Duration) {
        let mut fds = Vec::with_capacity(3);
        if let Some(f) = attribute {
            fds.push(PollFd::new(f, PollFlags::PRI));
        }
        for fd in [&self.uevents, &self.inotify].into_iter().flatten() {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let interval = rustix::time::Timespec {
            tv_sec: interval.as_secs() as i64,
            tv_nsec: i64::from(interval.subsec_nanos()),
        };
        if rustix::event::poll(&mut fds, Some(&interval)).unwrap_or(0) == 0 {
            return;
        }
        for fd in [&self.uevents, &self.inotify].into_iter().flatten() {
            drain(fd.as_fd());
        }
    }
}

/// A socket that receives the kernel's uevents (multicast group 1).
fn uevent_socket() -> std::io::Result<OwnedFd> {
    use rustix::net::{netlink, AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(netlink::KOBJECT_UEVENT),
    )?;
    rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
    Ok(fd)
}

/// An inotify descriptor told about writes to `path`.
fn inotify_on(path: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    let events = inotify::WatchFlags::MODIFY
        | inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::ATTRIB
        | inotify::WatchFlags::MOVE_SELF
        | inotify::WatchFlags::DELETE_SELF;
    inotify::add_watch(&fd, path, events)?;
    Ok(fd)
}

/// Read and drop whatever a non-blocking descriptor has.
fn drain(fd: std::os::fd::BorrowedFd<'_>) {
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

fn read_fifo(source: &PodSource, fire: &dyn Fn(Trigger)) {
    // Opened read-write so that writers coming and going never give EOF.
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(source.path()) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("cannot open POD source {source}: {e}; not watching it");
            return;
        }
    };
    for line in BufReader::new(file).lines() {
        match line {
            Ok(line) if reads_power_lost(&line) => fire(Trigger::now(source.to_string())),
            Ok(_) => {}
            Err(e) => {
                tracing::error!("reading POD source {source} failed: {e}; not watching it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn sources_parse_and_print_back() {
        let s: PodSource = "sysfs:/sys/class/power_supply/AC/online".parse().unwrap();
        assert_eq!(s, PodSource::Sysfs("/sys/class/power_supply/AC/online".into()));
        assert_eq!(s.to_string(), "sysfs:/sys/class/power_supply/AC/online");
        assert_eq!("file:/tmp/x".parse::<PodSource>().unwrap().to_string(), "file:/tmp/x");
    }

    #[test]
    fn a_bad_source_says_what_is_accepted() {
        let err = "gpio:7".parse::<PodSource>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown POD source \"gpio:7\"; use sysfs:PATH (e.g. \
             sysfs:/sys/class/power_supply/AC/online) or file:PATH"
        );
        assert!("file:".parse::<PodSource>().is_err());
    }

    #[test]
    fn a_watched_file_fires_once_per_drop_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        PodSource::File(path.clone()).watch(move |t| tx.send(t.source).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "0\n").unwrap();
        let fired = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(fired, format!("file:{}", path.display()));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "fires once per drop");
        std::fs::write(&path, "1\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "0\n").unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_write_to_a_watched_file_wakes_the_watcher_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "1\n").unwrap();
        let wake = Wakeups::new(&PodSource::File(path.clone()));
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(path, "0\n").unwrap();
            })
        };
        let started = Instant::now();
        wake.wait(None, Duration::from_secs(20));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the write, not the interval"
        );
        writer.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n");
    }

    #[test]
    fn a_kernel_uevent_wakes_a_sysfs_watcher_at_once() {
        // Any device can be told to announce itself again; the watcher
        // cannot tell that from a power supply's change, and re-reads.
        let trigger = Path::new("/sys/class/mem/null/uevent");
        let wake = Wakeups::new(&PodSource::Sysfs("/sys/class/power_supply/AC/online".into()));
        if wake.uevents.is_none() || std::fs::OpenOptions::new().write(true).open(trigger).is_err()
        {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "uevents need root under CI");
            eprintln!("SKIPPED: kernel uevents need root");
            return;
        }
        let announcer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(trigger, "change").unwrap();
        });
        let started = Instant::now();
        wake.wait(None, Duration::from_secs(20));
        assert!(started.elapsed() < Duration::from_secs(10), "woken by the uevent");
        announcer.join().unwrap();
    }

    #[test]
    fn a_source_that_reads_zero_from_the_start_does_not_fire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0").unwrap();
        let (tx, rx) = mpsc::channel();
        PodSource::Sysfs(path).watch(move |t| tx.send(t.source).unwrap()).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }
}
