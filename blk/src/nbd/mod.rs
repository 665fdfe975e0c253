//! An NBD server (fixed newstyle) that exports [`BlockDevice`]s by name.
//!
//! It speaks what qemu, libnbd (`nbdinfo`, `nbdcopy`, fio's nbd engine) and
//! the kernel client use: `NBD_OPT_GO`/`INFO`/`LIST`/`ABORT`, the legacy
//! `NBD_OPT_EXPORT_NAME`, structured replies (sparse reads as hole chunks,
//! errors with messages), `base:allocation` block status, FUA, flush, trim,
//! write-zeroes, multi-conn and pipelined, out-of-order requests.
//!
//! Layout: [`proto`] is the wire format; `handshake` haggles options;
//! `transmission` runs the command loop on the connection's own thread,
//! `idle` is how that thread waits for the next request, `workers` runs
//! its slow requests, `reply` and `in_place` lay out its answers and `link`
//! writes them;
//! `socket`, `budget` and `buffers` are the blocking socket, the in-flight
//! bounds and the reused payload buffers of one connection; `connection` ties one client's phases together; `export`
//! holds the export table; `server` owns listeners and the public API.
//!
//! Every length a client sends is bounded before anything is allocated:
//! option payloads ([`proto::MAX_OPTION_LEN`]), names and queries (4096
//! bytes), query counts, request payloads ([`proto::MAX_PAYLOAD`]), the
//! number and size of requests in flight per connection, and the number of
//! connections per listener.
//!
//! [`BlockDevice`]: crate::BlockDevice

mod budget;
mod buffers;
mod connection;
mod export;
mod handshake;
mod idle;
mod in_place;
mod link;
pub mod proto;
mod reply;
mod server;
mod socket;
mod transmission;
mod workers;

pub use connection::HANDSHAKE_TIMEOUT;
pub use handshake::MAX_OPTIONS;
pub use idle::DEFAULT_SPIN;
pub use server::{ListenAddr, NbdError, NbdListener, NbdServer, MAX_CONNECTIONS};
pub use transmission::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};
