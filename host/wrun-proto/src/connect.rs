//! Connections: bounded reader options, connecting with retries, and the
//! RPC system of one connection.

use std::time::{Duration, Instant};

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use futures::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::{MAX_MESSAGE_WORDS, PROTOCOL_VERSION};

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
