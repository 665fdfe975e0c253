//! Where pmvisor looks for things when nobody says: the state directory that
//! holds the embedded default pool, the daemon's control socket and the
//! system config file.
//!
//! Root gets the system locations (`/var/lib/pmvisor`, `/run/pmvisor`); any
//! other user gets the XDG locations in their home, so that a first run needs
//! no flags and no privileges. `PMVISOR_STATE_DIR` overrides the state
//! directory (tests and packagers use it).

use std::env;
use std::path::{Path, PathBuf};

/// The system config file, read only when it exists.
pub const SYSTEM_CONFIG: &str = "/etc/pmvisor/pmvisor.toml";

/// The control socket of a daemon run by root.
pub const SYSTEM_SOCKET: &str = "/run/pmvisor/pmvisor.sock";

/// File name of the embedded default pool inside the state directory.
pub const DEFAULT_POOL_FILE: &str = "default.pool";

/// Size of the embedded default pool when the config does not name one.
pub const DEFAULT_POOL_SIZE: u64 = 4 << 30;

/// The directory that holds the default pool.
///
/// `$PMVISOR_STATE_DIR`, else `/var/lib/pmvisor` for root, else
/// `$XDG_DATA_HOME/pmvisor`, else `~/.local/share/pmvisor`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("PMVISOR_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/lib/pmvisor");
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return Path::new(&dir).join("pmvisor");
    }
    home_dir().join(".local/share/pmvisor")
}

/// The embedded default pool: `<state dir>/default.pool`.
pub fn default_pool() -> PathBuf {
    state_dir().join(DEFAULT_POOL_FILE)
}

/// The control socket used when neither a flag, the environment nor the
/// config names one: `/run/pmvisor/pmvisor.sock` for root, and for other
/// users `$XDG_RUNTIME_DIR/pmvisor/pmvisor.sock` when that is set (an
/// ordinary user cannot create `/run/pmvisor`).
pub fn default_socket() -> PathBuf {
    if !is_root() {
        if let Some(dir) = non_empty_env("XDG_RUNTIME_DIR") {
            return Path::new(&dir).join("pmvisor/pmvisor.sock");
        }
    }
    PathBuf::from(SYSTEM_SOCKET)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn home_dir() -> PathBuf {
    non_empty_env("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    env::var_os(name).filter(|v| !v.is_empty())
}
