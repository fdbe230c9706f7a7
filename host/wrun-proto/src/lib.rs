//! # wrun-proto: the wire of wrun
//!
//! The Cap'n Proto schema (`schema/wrun.capnp`, compiled by build.rs with
//! the `capnp` compiler that scripts/setup.sh installs), plus what every
//! process needs to use it: bounded reader options for every connection,
//! connection set-up with retries, the scheduler file, and chunked reads of
//! large values.
//!
//! Capabilities are `!Send`: everything here runs on a current-thread tokio
//! runtime inside a `LocalSet`. This crate must not depend on wasmtime.

#![deny(missing_docs)]

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
/// Code generated from `schema/wrun.capnp`.
pub mod wrun_capnp {
    include!(concat!(env!("OUT_DIR"), "/wrun_capnp.rs"));
}

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use futures::AsyncReadExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt;

pub use capnp;
pub use capnp_rpc;

/// The protocol version in the scheduler file and `Cluster.info`.
pub const PROTOCOL_VERSION: u32 = wrun_capnp::PROTOCOL_VERSION;
/// Values and modules travel in chunks of at most this many bytes.
pub const CHUNK_BYTES: usize = wrun_capnp::CHUNK_BYTES as usize;
/// Largest message any peer may send us, in 8-byte words (16 MiB): a few
/// chunks, or a batch of small tasks. capnp-futures refuses a larger frame
/// from its segment table before reading the body.
pub const MAX_MESSAGE_WORDS: usize = 2 << 20;
/// Largest whole value assembled from chunks (a task result or module).
pub const MAX_VALUE_BYTES: u64 = 4 << 30;

/// Reader options for every connection: bounded size and nesting.
pub fn reader_options() -> ReaderOptions {
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(MAX_MESSAGE_WORDS))
        .nesting_limit(32);
    options
}

/// Errors of connection set-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The scheduler file did not appear (or stayed unreadable) in time.
    #[error("no usable scheduler file at {path} after {waited:?}: {reason}")]
    NoSchedulerFile {
        /// Its path.
        path: String,
        /// How long we waited.
        waited: Duration,
        /// The last problem seen.
        reason: String,
    },
    /// Nothing accepted the connection in time.
    #[error("cannot connect to the scheduler at {address} after {waited:?}: {reason}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// How long we tried.
        waited: Duration,
        /// The last error.
        reason: String,
    },
    /// The scheduler speaks another protocol version.
    #[error("the scheduler speaks protocol {theirs}, this wrun speaks {PROTOCOL_VERSION}")]
    Version {
        /// The scheduler's version.
        theirs: u32,
    },
}

/// What a scheduler writes once it listens, for workers and clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerFile {
    /// `host:port` of the scheduler.
    pub address: String,
    /// The cluster secret workers must present (never a tenant token).
    pub secret: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The scheduler's process id.
    pub pid: u32,
}

impl SchedulerFile {
    /// Writes the file atomically (a temporary file, then a rename), readable by the owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(
                serde_json::to_string_pretty(self)
                    .expect("serializable")
                    .as_bytes(),
            )?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Waits for a readable scheduler file, polling with a bounded back-off.
    pub async fn wait_for(path: &Path, timeout: Duration) -> Result<SchedulerFile, ConnectError> {
        let started = Instant::now();
        // Short first waits: a scheduler started a moment ago writes its
        // file within milliseconds (this was 10 ms doubling, which made a
        // local start-up 13-80 ms depending on when the first look fell).
        let mut delay = Duration::from_millis(2);
        loop {
            let reason = match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<SchedulerFile>(&bytes) {
                    Ok(file) if file.protocol != PROTOCOL_VERSION => {
                        return Err(ConnectError::Version {
                            theirs: file.protocol,
                        });
                    }
                    Ok(file) => return Ok(file),
                    Err(error) => format!("unreadable: {error}"),
                },
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(ConnectError::NoSchedulerFile {
                    path: path.display().to_string(),
                    waited: started.elapsed(),
                    reason,
                });
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// A new random cluster secret (64 hex characters).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `address`, retrying with a bounded back-off until `timeout`.
pub async fn connect_with_retry(
    address: &str,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) if started.elapsed() >= timeout => {
                return Err(ConnectError::Unreachable {
                    address: address.to_owned(),
                    waited: started.elapsed(),
                    reason: error.to_string(),
                });
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Makes the RPC system of one connection. The server side passes its
/// bootstrap capability; the client side passes `None` and calls
/// `bootstrap(Side::Server)` on the result.
pub fn rpc_system(
    stream: TcpStream,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcSystem<Side> {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.compat().split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        side,
        reader_options(),
    );
    RpcSystem::new(Box::new(network), bootstrap)
}

/// Chunk requests kept in flight while reading a large value.
const CHUNKS_IN_FLIGHT: usize = 8;

/// A response that carries one chunk of a value: the answers of every
/// chunked `fetch` in the schema.
pub trait ChunkResponse {
    /// The chunk's bytes and the whole value's size.
    fn chunk(&self) -> Result<(&[u8], u64), capnp::Error>;
}

macro_rules! chunk_response {
    ($($results:path => $getter:ident),* $(,)?) => {$(
        impl ChunkResponse for capnp::capability::Response<$results> {
            fn chunk(&self) -> Result<(&[u8], u64), capnp::Error> {
                let chunk = self.get()?.$getter()?;
                Ok((chunk.get_data()?, chunk.get_total()))
            }
        }
    )*};
}

chunk_response!(
    wrun_capnp::peer::fetch_results::Owned => get_chunk,
    wrun_capnp::worker_control::fetch_results::Owned => get_chunk,
    wrun_capnp::client_session::fetch_results::Owned => get_chunk,
    wrun_capnp::worker_session::fetch_module_results::Owned => get_chunk,
);

/// Reads a whole value through a chunked `fetch(offset)` call, with several
/// chunks in flight, copying each chunk once from its message into the
/// value; refuses values over [`MAX_VALUE_BYTES`] or inconsistent chunks.
pub async fn fetch_chunked<F, Fut, R>(mut fetch: F) -> Result<Vec<u8>, capnp::Error>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<R, capnp::Error>>,
    R: ChunkResponse,
{
    use futures::StreamExt;
    let first = fetch(0).await?;
    let (data, total) = first.chunk()?;
    if total > MAX_VALUE_BYTES {
        return Err(capnp::Error::failed(format!(
            "value of {total} bytes is over the limit"
        )));
    }
    if data.is_empty() && total > 0 {
        return Err(capnp::Error::failed(
            "an empty first chunk of a non-empty value".to_owned(),
        ));
    }
    let step = data.len() as u64;
    let mut value = Vec::with_capacity(total as usize);
    value.extend_from_slice(data);
    drop(first);
    let offsets: Vec<u64> = (1..)
        .map(|i| i * step.max(1))
        .take_while(|o| *o < total)
        .collect();
    let mut chunks =
        futures::stream::iter(offsets.into_iter().map(&mut fetch)).buffered(CHUNKS_IN_FLIGHT);
    while let Some(response) = chunks.next().await {
        let response = response?;
        let (data, again) = response.chunk()?;
        if again != total || data.is_empty() || value.len() + data.len() > total as usize {
            return Err(capnp::Error::failed(
                "the value changed or stopped while being read".to_owned(),
            ));
        }
        value.extend_from_slice(data);
    }
    if value.len() as u64 != total {
        return Err(capnp::Error::failed(format!(
            "read {} bytes of a {total}-byte value",
            value.len()
        )));
    }
    Ok(value)
}

/// The chunk of `value` at `offset`, for answering a chunked fetch.
pub fn chunk_at(value: &[u8], offset: u64) -> Result<&[u8], capnp::Error> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    if start > value.len() {
        return Err(capnp::Error::failed(format!(
            "offset {offset} is past the end ({} bytes)",
            value.len()
        )));
    }
    Ok(&value[start..(start + CHUNK_BYTES).min(value.len())])
}

/// Turns any displayable error into a capnp error for the caller.
pub fn failed(error: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(error.to_string())
}
