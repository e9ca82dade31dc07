//! FastCGI 1.0: the record layer, name-value pairs, the application side (what answers
//! nginx's `fastcgi_pass`) and the web-server side (what `fastcgi_pass` does).
//!
//! ```text
//! record := version(1) type(1) requestId(u16 BE) contentLength(u16 BE)
//!           paddingLength(1) reserved(1) content[contentLength] padding[paddingLength]
//! ```

mod client;
mod params;
mod record;
mod server;

pub use client::{
    ResponseDecoder, ResponseEvent, encode_begin_request, encode_params_stream, encode_request,
    encode_stream,
};
pub use params::{Params, ParamsIter, decode_params, encode_pair, encode_params, pair_len};
pub use record::{
    BeginRequest, EndRequest, HEADER_LEN, MAX_CONTENT, ProtocolStatus, Record, RecordHeader,
    RecordType, Role, VERSION_1, encode_end_request, encode_record, encode_unknown_type,
    parse_record,
};
pub use server::{Event, ServerConfig, ServerConnection};

/// Keep the connection open after this request (the BEGIN_REQUEST flags bit).
pub const KEEP_CONN: u8 = 1;

/// A malformed FastCGI stream or a value that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A record's version byte is not 1.
    #[error("unsupported FastCGI protocol version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// A fixed-size record body (BEGIN_REQUEST, END_REQUEST, UNKNOWN_TYPE) of the wrong size.
    #[error("FastCGI {record_type:?} record with a {len}-byte body (8 expected)")]
    BadBodyLength {
        /// The record's type.
        record_type: RecordType,
        /// Its content length.
        len: usize,
    },
    /// The stream ends inside a name or value length.
    #[error("FastCGI name-value pair truncated inside a length at offset {offset}")]
    TruncatedLength {
        /// Offset of the length in the params stream.
        offset: usize,
    },
    /// A name or value runs past the end of the params stream.
    #[error("FastCGI name-value pair at offset {offset} runs past the end of the params")]
    PairPastEnd {
        /// Offset of the pair in the params stream.
        offset: usize,
    },
    /// The PARAMS stream is over the configured limit.
    #[error("FastCGI params of more than {limit} bytes")]
    ParamsTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A record the application side never receives (STDOUT, END_REQUEST, ...), or a
    /// record out of order (STDIN before the PARAMS stream ended, a second BEGIN_REQUEST
    /// for an active id, a management record with a nonzero id).
    #[error("unexpected FastCGI {record_type:?} record for request {request_id}")]
    UnexpectedRecord {
        /// The record's type.
        record_type: RecordType,
        /// Its request id.
        request_id: u16,
    },
    /// Content over 65535 bytes for one record.
    #[error("FastCGI record content of {len} bytes is over 65535")]
    ContentTooLong {
        /// The content length.
        len: usize,
    },
    /// A name or value over 2^31 - 1 bytes.
    #[error("FastCGI name or value of {len} bytes is over 2^31-1")]
    PairTooLong {
        /// The length.
        len: usize,
    },
    /// A response record for another request id than the one sent.
    #[error("FastCGI response record for request {got}, expected {expected}")]
    WrongRequestId {
        /// The id sent.
        expected: u16,
        /// The id received.
        got: u16,
    },
}
