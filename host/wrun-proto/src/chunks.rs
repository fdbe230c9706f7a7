//! Large values and modules travel in chunks of [`CHUNK_BYTES`]: every
//! chunked `fetch(offset) -> Chunk(data, total)` of the schema is read by
//! [`fetch_chunked`] and answered with [`chunk_at`].

use std::future::Future;

use crate::{CHUNK_BYTES, MAX_VALUE_BYTES, wrun_capnp};

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
    wrun_capnp::worker_session::fetch_value_results::Owned => get_chunk,
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
    let mut value = Vec::with_capacity(initial_room(step, total));
    value.extend_from_slice(data);
    drop(first);
    // Offsets are made as chunks are asked for, not listed up front: a
    // 1-byte first chunk of a "4 GiB" value would list 4 billion of them.
    let offsets = (1..)
        .map(|i: u64| i.saturating_mul(step.max(1)))
        .take_while(|o| *o < total);
    let mut chunks = futures::stream::iter(offsets.map(&mut fetch)).buffered(CHUNKS_IN_FLIGHT);
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

/// Bytes to allocate for a value of `total` bytes whose first chunk had
/// `step`: room for that chunk and the ones asked for at once behind it,
/// never more than `total`. A lying `total` cannot size the allocation
/// (it is at most `CHUNKS_IN_FLIGHT + 1` times what the peer has sent),
/// yet a value of up to that many chunks is copied in once, without the
/// copies of a growing vector.
fn initial_room(step: u64, total: u64) -> usize {
    let room = step.saturating_mul(CHUNKS_IN_FLIGHT as u64 + 1).min(total);
    usize::try_from(room).unwrap_or(usize::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk as a peer sent it: bytes and the total it claims.
    struct Sent(Vec<u8>, u64);

    impl ChunkResponse for Sent {
        fn chunk(&self) -> Result<(&[u8], u64), capnp::Error> {
            Ok((&self.0, self.1))
        }
    }

    /// Reads through a peer that answers `offset` with `answer(offset)`.
    fn read(answer: impl Fn(u64) -> Sent) -> Result<Vec<u8>, String> {
        futures::executor::block_on(fetch_chunked(|offset| {
            let sent = answer(offset);
            async move { Ok::<_, capnp::Error>(sent) }
        }))
        .map_err(|e| e.extra)
    }

    #[test]
    fn a_value_of_many_chunks_is_read_in_order() {
        let value: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let got = read(|offset| {
            let start = offset as usize;
            Sent(value[start..(start + 4).min(25)].to_vec(), 25)
        });
        assert_eq!(got.unwrap(), value);
    }

    #[test]
    fn a_lying_total_is_refused_and_does_not_size_the_allocation() {
        // Claims 4 GiB, sends 10 bytes and then nothing more.
        let got = read(|offset| Sent(if offset == 0 { vec![1; 10] } else { vec![] }, 4 << 30));
        assert_eq!(
            got.unwrap_err(),
            "the value changed or stopped while being read"
        );
        assert_eq!(initial_room(10, 4 << 30), 10 * (CHUNKS_IN_FLIGHT + 1));
        // Over the limit is refused before anything is allocated.
        let got = read(|_| Sent(vec![1], MAX_VALUE_BYTES + 1));
        assert!(got.unwrap_err().contains("over the limit"));
        // A value of a few chunks gets exactly its size.
        assert_eq!(
            initial_room(CHUNK_BYTES as u64, 3 * CHUNK_BYTES as u64),
            3 * CHUNK_BYTES
        );
    }

    #[test]
    fn a_value_that_changes_size_while_read_is_refused() {
        let got = read(|offset| Sent(vec![7; 4], if offset == 0 { 12 } else { 16 }));
        assert_eq!(
            got.unwrap_err(),
            "the value changed or stopped while being read"
        );
    }
}
