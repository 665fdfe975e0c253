//! Where the agent reaches the host, and the byte stream to it.
//!
//! `serial:PATH` opens a virtio-serial port (the host end is a QEMU
//! chardev the daemon connects to); `vsock:CID:PORT`, `unix:PATH` and
//! `tcp:HOST:PORT` connect to a host that listens. Without `--connect` the
//! agent uses the virtio-serial port if the guest has it, else vsock to the
//! host (CID 2) on [`DEFAULT_VSOCK_PORT`], deciding again at every attempt.
//! The virtio-serial port's stream is in [`super::serial`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use super::serial::SerialPort;

use crate::protocol::{DEFAULT_VSOCK_PORT, VIRTIO_SERIAL_PORT_NAME};

/// The host's vsock CID.
const HOST_CID: u32 = 2;

/// Where to reach the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The virtio-serial port if present, else vsock to the host.
    Auto,
    /// A virtio-serial port (character device).
    Serial(PathBuf),
    /// A vsock address.
    Vsock {
        /// Context id (2 is the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix stream socket the host listens on.
    Unix(PathBuf),
    /// A TCP address the host listens on, `HOST:PORT`.
    Tcp(String),
}

/// The default virtio-serial port path in the guest.
pub fn default_serial_path() -> PathBuf {
    PathBuf::from("/dev/virtio-ports").join(VIRTIO_SERIAL_PORT_NAME)
}

/// An `--connect` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{input:?} is not an endpoint: {why} (use serial:PATH, vsock:CID:PORT, unix:PATH or \
     tcp:HOST:PORT)"
)]
pub struct EndpointSyntaxError {
    input: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointSyntaxError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |why| EndpointSyntaxError { input: input.to_owned(), why };
        let (scheme, rest) = input.split_once(':').ok_or_else(|| fail("no scheme"))?;
        match scheme {
            "serial" if !rest.is_empty() => Ok(Endpoint::Serial(rest.into())),
            "unix" if !rest.is_empty() => Ok(Endpoint::Unix(rest.into())),
            "serial" | "unix" => Err(fail("the path is empty")),
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(|| fail("expected CID:PORT"))?;
                let cid = cid.parse().map_err(|_| fail("the CID is not a number"))?;
                let port = port.parse().map_err(|_| fail("the port is not a number"))?;
                Ok(Endpoint::Vsock { cid, port })
            }
            "tcp" => match rest.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Endpoint::Tcp(rest.to_owned()))
                }
                _ => Err(fail("expected HOST:PORT")),
            },
            _ => Err(fail("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Auto => write!(f, "auto"),
            Endpoint::Serial(p) => write!(f, "serial:{}", p.display()),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A byte stream to the host.
pub trait HostLink: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> HostLink for T {}

impl Endpoint {
    /// The concrete endpoint: [`Endpoint::Auto`] picks the virtio-serial
    /// port when it exists, else vsock to the host.
    pub fn resolve(&self) -> Endpoint {
        match self {
            Endpoint::Auto => {
                let serial = default_serial_path();
                if serial.exists() {
                    Endpoint::Serial(serial)
                } else {
                    Endpoint::Vsock { cid: HOST_CID, port: DEFAULT_VSOCK_PORT }
                }
            }
            other => other.clone(),
        }
    }

    /// Opens a stream to the host. Call on a resolved endpoint.
    pub async fn connect(&self) -> io::Result<Box<dyn HostLink>> {
        Ok(match self.resolve() {
            Endpoint::Auto => unreachable!("resolve never returns Auto"),
            Endpoint::Serial(path) => Box::new(SerialPort::open(&path)?),
            Endpoint::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port)).await?,
            ),
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for text in
            ["serial:/dev/virtio-ports/x", "vsock:2:20557", "unix:/tmp/h.sock", "tcp:[::1]:9"]
        {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.to_string(), text);
        }
        assert_eq!("vsock:3:7".parse(), Ok(Endpoint::Vsock { cid: 3, port: 7 }));
    }

    #[test]
    fn bad_endpoints_say_what_is_expected() {
        let err = "vsock:2".parse::<Endpoint>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"vsock:2\" is not an endpoint: expected CID:PORT (use serial:PATH, vsock:CID:PORT, \
             unix:PATH or tcp:HOST:PORT)"
        );
        assert!("tcp:host".parse::<Endpoint>().is_err());
        assert!("ftp:x".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
        assert!("/dev/x".parse::<Endpoint>().is_err());
    }
}
