//! Connections: bounded reader options, connecting with retries, and the
//! RPC system of one connection.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
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
    /// The TLS handshake failed (or the server's certificate is not the
    /// one expected).
    #[error("TLS with the scheduler failed: {0}")]
    Tls(String),
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
    stream: impl crate::tls::Stream + 'static,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcSystem<Side> {
    rpc_system_metered(stream, side, bootstrap, Rc::new(WriteMeter::default()))
}

/// [`rpc_system`], counting in `meter` the bytes the connection writes to
/// its peer: a server uses it to stop producing answers for a peer that
/// does not read them.
pub fn rpc_system_metered(
    stream: impl crate::tls::Stream + 'static,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
    meter: Rc<WriteMeter>,
) -> RpcSystem<Side> {
    let (reader, writer) = stream.compat().split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(Metered {
            inner: writer,
            meter,
        }),
        side,
        reader_options(),
    );
    RpcSystem::new(Box::new(network), bootstrap)
}

/// Bytes a connection has written, and answers produced for it that must
/// be written before more are made.
#[derive(Default)]
pub struct WriteMeter {
    written: Cell<u64>,
    produced: Cell<u64>,
    progress: tokio::sync::Notify,
}

impl WriteMeter {
    /// Bytes written to the peer so far.
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// Waits until fewer than `unsent` bytes of the answers produced so
    /// far are still unwritten; `false` if that did not happen within
    /// `patience` (the peer is not reading).
    pub async fn wait_for_room(&self, unsent: u64, patience: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let progressed = self.progress.notified();
            if self.produced.get().saturating_sub(self.written.get()) < unsent {
                return true;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return false;
            }
        }
    }

    /// Waits for room as [`WriteMeter::wait_for_room`] does, then counts
    /// `bytes` as produced at once, before the answer is made: calls that
    /// wait on a third party (a worker holding the value) are bounded by
    /// what they will produce, not only by what earlier ones did. Settle
    /// the reservation with the answer's real size.
    pub async fn reserve(
        self: &Rc<Self>,
        unsent: u64,
        bytes: u64,
        patience: std::time::Duration,
    ) -> Option<Reservation> {
        if !self.wait_for_room(unsent, patience).await {
            return None;
        }
        self.produced.set(self.produced.get() + bytes);
        Some(Reservation {
            meter: self.clone(),
            bytes,
        })
    }
}

/// Bytes counted as produced before the answer was made; dropping it
/// without [`Reservation::settle`] gives them back (the call failed).
pub struct Reservation {
    meter: Rc<WriteMeter>,
    bytes: u64,
}

impl Reservation {
    /// The answer came out at `bytes`: that many stay counted.
    pub fn settle(mut self, bytes: u64) {
        let meter = &self.meter;
        meter
            .produced
            .set(meter.produced.get() - self.bytes + bytes);
        self.bytes = 0;
        meter.progress.notify_waiters();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let meter = &self.meter;
            meter.produced.set(meter.produced.get() - self.bytes);
            meter.progress.notify_waiters();
        }
    }
}

/// A writer that counts what it writes into a [`WriteMeter`].
struct Metered<W> {
    inner: W,
    meter: Rc<WriteMeter>,
}

impl<W: futures::AsyncWrite + Unpin> futures::AsyncWrite for Metered<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            let meter = &self.meter;
            meter.written.set(meter.written.get() + *n as u64);
            meter.progress.notify_waiters();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_count_before_the_answer_and_give_back_what_was_not_used() {
        let meter = Rc::new(WriteMeter::default());
        let patience = Duration::from_millis(20);
        // Two reservations of 8 fill a room of 16; a third waits, then gives up.
        let first = meter.reserve(16, 8, patience).await.unwrap();
        let second = meter.reserve(16, 8, patience).await.unwrap();
        assert!(meter.reserve(16, 8, patience).await.is_none());
        // A failed call gives its bytes back; a settled one keeps its real size.
        drop(second);
        first.settle(3);
        assert_eq!(meter.produced.get(), 3);
        let third = meter.reserve(16, 8, patience).await.unwrap();
        assert_eq!(meter.produced.get(), 11);
        // What is written makes room again.
        meter.written.set(11);
        third.settle(8);
        assert!(meter.reserve(16, 16, patience).await.is_some());
    }
}
