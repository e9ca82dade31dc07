//! A sans-IO, zero-copy codec for the binary **uwsgi** protocol: the wire format nginx's
//! `uwsgi_pass` and uWSGI's routers speak.
//!
//! ```text
//!  0          1                      3           4
//! +-----------+----------------------+-----------+---------------------------+--------
//! | modifier1 | datasize (u16, LE)   | modifier2 | vars block (datasize B)   | body...
//! +-----------+----------------------+-----------+---------------------------+--------
//!
//! vars block := ( u16 LE key_size | key | u16 LE value_size | value )*
//! ```
//!
//! `datasize` counts the vars block only; a request body of `CONTENT_LENGTH` bytes
//! follows on the same stream. The reply is not framed: an app server writes a raw
//! `HTTP/1.x` response and closes the connection.
//!
//! The crate has no I/O and no async in its core:
//! - [`PacketHeader`], [`Modifier1`], [`Modifier2`]: the 4-byte header; modifier values
//!   it has no name for are kept, never rejected.
//! - [`Vars`]: a validated, borrowing view of a vars block (iterate, look up by name),
//!   built without allocating; [`Array`] for RPC payloads.
//! - [`parse_packet`]: one packet from one buffer.
//! - [`RequestDecoder`]: the incremental decoder for a stream, fed any split of bytes.
//! - [`encode_packet`], [`PacketBuilder`], [`encode_array_packet`]: the client side.
//! - Feature `tokio`: [`io`] helpers to read a head from an `AsyncRead` and write a
//!   packet to an `AsyncWrite`.
//!
//! # Example: the server side and the client side
//!
//! ```
//! use uwsgi_proto::{encode_packet, parse_packet, Limits, Modifier1, Modifier2};
//!
//! // What nginx sends for `GET /hello?x=1` (abridged).
//! let vars = [
//!     ("QUERY_STRING", "x=1"),
//!     ("REQUEST_METHOD", "GET"),
//!     ("CONTENT_LENGTH", ""),
//!     ("PATH_INFO", "/hello"),
//!     ("HTTP_HOST", "example.com"),
//! ];
//! let mut wire = Vec::new();
//! encode_packet(Modifier1::WSGI, Modifier2::ZERO, &vars, 65535, &mut wire)?;
//!
//! // uWSGI's default --buffer-size is 4096; this codec defaults to the protocol's 65535.
//! let (packet, used) = parse_packet(&wire, &Limits::new())?.expect("complete");
//! assert_eq!(used, wire.len());
//! let parsed = packet.vars()?;
//! assert_eq!(parsed.get(b"PATH_INFO"), Some(&b"/hello"[..]));
//! assert_eq!(parsed.content_length()?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod decoder;
mod encode;
mod error;
mod header;
mod modifier;
mod packet;
mod vars;

pub mod fuzzing;
#[cfg(feature = "tokio")]
pub mod io;

pub use decoder::{RequestDecoder, RequestHead};
pub use encode::{PacketBuilder, encode_array_packet, encode_packet, pair_len, vars_len};
pub use error::{EncodeError, Error};
pub use header::PacketHeader;
pub use modifier::{Modifier1, Modifier2};
pub use packet::{Packet, parse_packet};
pub use vars::{
    Array, DEFAULT_MAX_VARS, Limits, MAX_BLOCK_SIZE, Vars, VarsIter, parse_content_length,
};
