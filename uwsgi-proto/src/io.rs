//! Thin async helpers over tokio's `AsyncRead`/`AsyncWrite` (feature `tokio`), built on
//! [`RequestDecoder`] and the encoders.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{EncodeError, Error, Modifier1, Modifier2, RequestDecoder, RequestHead, encode_packet};

/// What can go wrong reading a packet from a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream failed.
    #[error("reading the uwsgi stream failed")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid packet.
    #[error("invalid uwsgi packet")]
    Protocol(#[from] Error),
    /// The peer closed the stream in the middle of a packet or body.
    #[error("the peer closed the connection after {received} bytes of an incomplete uwsgi {part}")]
    UnexpectedEof {
        /// What was incomplete: `"packet"` or `"body"`.
        part: &'static str,
        /// How many bytes of it had arrived.
        received: usize,
    },
}

/// What can go wrong writing a packet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The vars cannot be encoded.
    #[error("cannot encode the uwsgi packet")]
    Encode(#[from] EncodeError),
    /// The stream failed.
    #[error("writing the uwsgi stream failed")]
    Io(#[from] std::io::Error),
}

/// Reads from `reader` into `buf` until `decoder` yields a request head.
///
/// `Ok(None)` when the stream ends cleanly before the first byte of a packet (the peer
/// closed an idle connection). Body bytes that arrived with the head stay in `buf`, for
/// [`read_body_chunk`].
pub async fn read_request_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut RequestDecoder,
) -> Result<Option<RequestHead>, ReadError> {
    loop {
        if let Some(head) = decoder.decode_head(buf)? {
            return Ok(Some(head));
        }
        buf.reserve(4096);
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::UnexpectedEof {
                    part: "packet",
                    received: buf.len(),
                })
            };
        }
    }
}

/// The next piece of the request body: from `buf` if anything is buffered, else read
/// from `reader`. `Ok(None)` once the whole `CONTENT_LENGTH` has been handed out.
pub async fn read_body_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut RequestDecoder,
) -> Result<Option<Bytes>, ReadError> {
    loop {
        if decoder.body_remaining() == 0 {
            return Ok(None);
        }
        if let Some(chunk) = decoder.decode_body(buf) {
            return Ok(Some(chunk));
        }
        buf.reserve(16 * 1024);
        if reader.read_buf(buf).await? == 0 {
            return Err(ReadError::UnexpectedEof {
                part: "body",
                received: 0,
            });
        }
    }
}

/// Encodes a packet (header + vars) and writes it to `writer`, within `limit` (the
/// peer's `--buffer-size`). The caller writes the body after it.
pub async fn write_packet<'v, W, I, K, V>(
    writer: &mut W,
    modifier1: Modifier1,
    modifier2: Modifier2,
    vars: I,
    limit: usize,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    I: IntoIterator<Item = &'v (K, V)> + Clone,
    K: AsRef<[u8]> + 'v,
    V: AsRef<[u8]> + 'v,
{
    let mut out = Vec::with_capacity(1024);
    encode_packet(modifier1, modifier2, vars, limit, &mut out)?;
    writer.write_all(&out).await?;
    Ok(())
}
