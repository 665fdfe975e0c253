//! Where a region's guest agent is reached, and the disk serial it knows
//! the region by.
//!
//! | address | who listens | for |
//! |---|---|---|
//! | `serial:PATH` | QEMU: `-chardev socket,path=PATH,server=on,wait=off` behind a `virtserialport name=org.pmvisor.agent.0`; the daemon connects (and reconnects) | a VM (the default) |
//! | `unix:PATH` | the daemon, at PATH; the agent connects | agents on the host, containers, tests |
//! | `vsock:CID:PORT` | the daemon, on vsock PORT; only CID may connect | a VM with `vhost-vsock-pci,guest-cid=CID` |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest serial a virtio-blk device carries (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL: usize = 20;

/// How the daemon reaches a region's agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentAddr {
    /// The daemon listens on this Unix socket; the agent connects.
    Unix(PathBuf),
    /// The daemon listens on vsock `port` and accepts only guest `cid`.
    Vsock { cid: u32, port: u32 },
    /// QEMU listens on this chardev socket; the daemon connects.
    Serial(PathBuf),
}

/// An agent address that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not an agent address ({reason}); use serial:PATH (a QEMU chardev socket), \
     unix:PATH or vsock:CID:PORT"
)]
pub struct AddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for AgentAddr {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<AgentAddr, AddrError> {
        let fail = |reason| AddrError { input: input.to_string(), reason };
        let path = |rest: &str| {
            if rest.is_empty() {
                Err(fail("the path is empty"))
            } else if !rest.starts_with('/') {
                Err(fail("the path must be absolute"))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        let (scheme, rest) = input.split_once(':').ok_or_else(|| fail("no scheme"))?;
        match scheme {
            "unix" => path(rest).map(AgentAddr::Unix),
            "serial" => path(rest).map(AgentAddr::Serial),
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(|| fail("no port"))?;
                let cid: u32 = cid.parse().map_err(|_| fail("the CID is not a number"))?;
                let port: u32 = port.parse().map_err(|_| fail("the port is not a number"))?;
                if cid < 3 {
                    return Err(fail("guest CIDs start at 3"));
                }
                Ok(AgentAddr::Vsock { cid, port })
            }
            _ => Err(fail("unknown scheme")),
        }
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            AgentAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            AgentAddr::Serial(path) => write!(f, "serial:{}", path.display()),
        }
    }
}

/// The serial the host gives region `name`'s virtio-blk disk, by which the
/// agent finds it (`/sys/block/*/serial`): `pmv-NAME` when that fits in
/// [`MAX_SERIAL`] bytes of `[A-Za-z0-9._-]`, else `pmv-` and the first 7
/// such characters of the name, `-`, and the name's crc32c in hex.
pub fn region_serial(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.len() + 4 <= MAX_SERIAL && name.chars().all(plain) {
        return format!("pmv-{name}");
    }
    let head: String = name.chars().map(|c| if plain(c) { c } else { '_' }).take(7).collect();
    format!("pmv-{head}-{:08x}", crc32c::crc32c(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_text() {
        for text in ["unix:/run/a.sock", "serial:/run/pmvisor/agents/vm1.sock", "vsock:3:20557"] {
            assert_eq!(text.parse::<AgentAddr>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_addresses_say_what_an_address_looks_like() {
        let err = "tcp:1.2.3.4:5".parse::<AgentAddr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"tcp:1.2.3.4:5\" is not an agent address (unknown scheme); use serial:PATH (a QEMU \
             chardev socket), unix:PATH or vsock:CID:PORT"
        );
        assert!("unix:relative".parse::<AgentAddr>().unwrap_err().to_string().contains("absolute"));
        assert!("vsock:2:5".parse::<AgentAddr>().unwrap_err().to_string().contains("start at 3"));
        assert!("vsock:3".parse::<AgentAddr>().unwrap_err().to_string().contains("no port"));
    }

    #[test]
    fn serials_fit_a_virtio_blk_disk_and_stay_readable() {
        assert_eq!(region_serial("vm1-disk"), "pmv-vm1-disk");
        let long = region_serial("a-rather-long-region-name");
        assert_eq!(long.len(), MAX_SERIAL);
        assert!(long.starts_with("pmv-a-rathe-"), "{long}");
        let odd = region_serial("vm@1");
        assert!(odd.starts_with("pmv-vm_1-") && odd.len() <= MAX_SERIAL, "{odd}");
        assert_ne!(region_serial("vm@1"), region_serial("vm+1"));
    }
}
