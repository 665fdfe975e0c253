//! Where a power-outage signal comes from.
//!
//! Besides SIGPWR (the daemon's signal handler) and the API, `pmvisor serve
//! --pod-source` watches:
//!
//! - `sysfs:PATH`: a power-supply attribute such as
//!   `/sys/class/power_supply/AC/online`, read every poll interval; it fires
//!   when the value turns to `0` (and again only after it was non-zero);
//! - `file:PATH`: the same on any file, for tests and for UPS tools that
//!   write one; when PATH is a FIFO, each line `0` fires.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

/// How often a watched attribute is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);

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
    // Armed once the attribute was seen with power, so that a daemon started
    // on battery does not fence at once.
    let mut armed = false;
    let mut warned = false;
    loop {
        match std::fs::read_to_string(source.path()) {
            Ok(text) if reads_power_lost(&text) => {
                if armed {
                    armed = false;
                    fire(Trigger::now(source.to_string()));
                }
            }
            Ok(_) => armed = true,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!("cannot read POD source {source}: {e}; still watching");
            }
            Err(_) => {}
        }
        std::thread::sleep(POLL_INTERVAL);
    }
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
    fn a_source_that_reads_zero_from_the_start_does_not_fire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0").unwrap();
        let (tx, rx) = mpsc::channel();
        PodSource::Sysfs(path).watch(move |t| tx.send(t.source).unwrap()).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }
}
