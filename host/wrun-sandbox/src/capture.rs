//! Bounded capture of a task's stdout and stderr.
//!
//! wasmtime's `MemoryOutputPipe` fails the guest's write once it is full,
//! which would turn a chatty task into a failed one. This pipe instead keeps
//! the first `limit` bytes, counts the rest, and always accepts the write, so
//! host memory stays bounded whatever the guest prints.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What a task printed on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept, then, if any were dropped, a line saying how many.
    pub bytes: Vec<u8>,
    /// How many bytes past the limit were dropped.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Buffer {
    fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        let kept = data.len().min(room);
        self.bytes.extend_from_slice(&data[..kept]);
        self.dropped += (data.len() - kept) as u64;
    }
}

/// A stdout/stderr sink for one task; clones share the buffer.
#[derive(Debug, Clone)]
pub(crate) struct CapturePipe {
    name: &'static str,
    buffer: Arc<Mutex<Buffer>>,
}

impl CapturePipe {
    pub(crate) fn new(name: &'static str, limit: u64) -> CapturePipe {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        CapturePipe {
            name,
            buffer: Arc::new(Mutex::new(Buffer {
                limit,
                ..Buffer::default()
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(data);
    }

    /// Takes what was captured, with the truncation marker appended.
    pub(crate) fn take(&self) -> Captured {
        let mut buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut bytes = std::mem::take(&mut buffer.bytes);
        let dropped = buffer.dropped;
        if dropped > 0 {
            if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(
                format!(
                    "[wrun: {dropped} more bytes of {} dropped (limit {} bytes)]\n",
                    self.name, buffer.limit
                )
                .as_bytes(),
            );
        }
        Captured { bytes, dropped }
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: what does not fit is dropped and counted, not refused.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let pipe = CapturePipe::new("stdout", 10);
        pipe.push(b"0123456");
        pipe.push(b"789abcdef");
        let captured = pipe.take();
        assert_eq!(captured.dropped, 6);
        let text = String::from_utf8(captured.bytes).unwrap();
        assert!(
            text.starts_with("0123456789\n[wrun: 6 more bytes of stdout dropped"),
            "{text}"
        );
    }
}
