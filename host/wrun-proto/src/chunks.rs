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
    // Room for what has come, not for what the peer says will come: a
    // lying `total` must not size an allocation.
    let mut value = Vec::with_capacity(data.len());
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
