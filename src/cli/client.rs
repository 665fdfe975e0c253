//! The CLI's client for the daemon's control API: HTTP/1.1 over the Unix
//! socket, one connection per request, on a small current-thread runtime.
//!
//! Error responses carry one sentence (`{"error": "..."}`); the client turns
//! it into an error with exactly that text, so the CLI prints what the daemon
//! said. [`DaemonClient::probe`] is how the CLI learns whether a daemon
//! answers at all; it never fails, it only says "no".

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

use crate::daemon::api::health::HealthView;
use crate::daemon::api::ErrorBody;

/// How long a probe waits for a daemon to answer before deciding there is
/// none.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of one daemon socket.
#[derive(Debug)]
pub struct DaemonClient {
    socket: PathBuf,
    runtime: Runtime,
}

/// A raw answer: status and body bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as sent.
    pub body: Bytes,
}

impl DaemonClient {
    /// A client for `socket`; nothing is connected until a request.
    pub fn new(socket: &Path) -> anyhow::Result<DaemonClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client runtime")?;
        Ok(DaemonClient { socket: socket.to_path_buf(), runtime })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ask the daemon for its health; `None` when nothing usable answers
    /// (no socket file, nobody listening, not a pmvisor daemon, too slow).
    pub fn probe(&self) -> Option<HealthView> {
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(
                PROBE_TIMEOUT,
                exchange(&self.socket, Method::GET, "/v1/health", None),
            )
            .await
        });
        match answer {
            Ok(Ok(response)) if response.status == StatusCode::OK => {
                match serde_json::from_slice(&response.body) {
                    Ok(health) => Some(health),
                    Err(err) => {
                        tracing::debug!(
                            "{} answered, but not as pmvisor: {err}",
                            self.socket.display()
                        );
                        None
                    }
                }
            }
            Ok(Ok(response)) => {
                tracing::debug!("{} answered {}", self.socket.display(), response.status);
                None
            }
            Ok(Err(err)) => {
                tracing::debug!("no daemon at {}: {err:#}", self.socket.display());
                None
            }
            Err(_) => {
                tracing::warn!(
                    "the daemon at {} did not answer within {PROBE_TIMEOUT:?}; opening the pool directly",
                    self.socket.display()
                );
                None
            }
        }
    }

    /// Send one request and return the raw answer.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<RawResponse> {
        self.runtime.block_on(exchange(&self.socket, method, path, body)).with_context(|| {
            format!(
                "lost the daemon at {} (check that `pmvisor serve` is still running)",
                self.socket.display()
            )
        })
    }

    /// `GET path`, decoding a JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        decode(self.send(Method::GET, path, None)?)
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("cannot encode the request")?;
        decode(self.send(Method::POST, path, Some(body))?)
    }

    /// `PUT path` with a JSON body, decoding a JSON answer.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("cannot encode the request")?;
        decode(self.send(Method::PUT, path, Some(body))?)
    }

    /// `DELETE path`, expecting no body.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        let response = self.send(Method::DELETE, path, None)?;
        check_status(&response)
    }
}

/// The API path of a region, its name percent-encoded.
pub fn region_path(name: &str, action: Option<&str>) -> String {
    let mut path = String::from("/v1/regions/");
    push_escaped(&mut path, name);
    if let Some(action) = action {
        path.push('/');
        path.push_str(action);
    }
    path
}

/// The API path of a region's export, its name percent-encoded.
pub fn export_path(name: &str) -> String {
    let mut path = String::from("/v1/exports/");
    push_escaped(&mut path, name);
    path
}

fn push_escaped(path: &mut String, name: &str) {
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
}

fn check_status(response: &RawResponse) -> anyhow::Result<()> {
    if response.status.is_success() {
        return Ok(());
    }
    match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => Err(anyhow!(body.error)),
        Err(_) => Err(anyhow!(
            "the daemon answered {} with an unreadable body; check that the daemon and the CLI \
             are the same pmvisor version",
            response.status
        )),
    }
}

fn decode<T: DeserializeOwned>(response: RawResponse) -> anyhow::Result<T> {
    check_status(&response)?;
    serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "cannot read the daemon's answer ({}); check that the daemon and the CLI are the \
             same pmvisor version",
            String::from_utf8_lossy(&response.body)
        )
    })
}

/// One request on a fresh connection.
async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<RawResponse> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header(HOST, "localhost");
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("cannot build the request")?;
    let response = sender.send_request(request).await.context("the request failed")?;
    let status = response.status();
    let body =
        response.into_body().collect().await.context("reading the answer failed")?.to_bytes();
    drop(sender);
    // The connection ends once the sender is gone; its result no longer matters.
    let _ = connection.await;
    Ok(RawResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_paths_escape_everything_but_unreserved_bytes() {
        assert_eq!(region_path("vm-1.disk_a~", None), "/v1/regions/vm-1.disk_a~");
        assert_eq!(region_path("a/b c", Some("rename")), "/v1/regions/a%2Fb%20c/rename");
        assert_eq!(region_path("é", None), "/v1/regions/%C3%A9");
        assert_eq!(export_path("vm:1+a"), "/v1/exports/vm%3A1%2Ba");
    }

    #[test]
    fn probing_a_missing_socket_says_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let client = DaemonClient::new(&dir.path().join("none.sock")).unwrap();
        assert!(client.probe().is_none());
    }
}
