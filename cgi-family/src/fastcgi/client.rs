//! The web-server side: what nginx's `fastcgi_pass` sends, and decoding the answer.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    BeginRequest, EndRequest, Error, HEADER_LEN, KEEP_CONN, MAX_CONTENT, RecordType, Role,
    encode_params, encode_record, parse_record,
};
use crate::Env;

/// Writes `data` as records of `record_type` (split at 65535 bytes; nothing for empty
/// data). The terminating empty record is not written: see [`encode_record`] with `&[]`.
pub fn encode_stream<B: BufMut>(
    record_type: RecordType,
    request_id: u16,
    data: &[u8],
    dst: &mut B,
) -> Result<(), Error> {
    for chunk in data.chunks(MAX_CONTENT) {
        encode_record(record_type, request_id, chunk, dst)?;
    }
    Ok(())
}

/// Writes BEGIN_REQUEST for the Responder role.
pub fn encode_begin_request<B: BufMut>(request_id: u16, role: Role, keep_conn: bool, dst: &mut B) {
    let body = BeginRequest {
        role,
        flags: if keep_conn { KEEP_CONN } else { 0 },
    };
    let _ = encode_record(RecordType::BEGIN_REQUEST, request_id, &body.to_bytes(), dst);
}

/// Writes `env` as a PARAMS stream (split over records as needed; a pair may straddle two
/// records, which the spec allows) and its terminating empty record.
pub fn encode_params_stream<B: BufMut>(
    request_id: u16,
    env: &Env,
    dst: &mut B,
) -> Result<(), Error> {
    let mut stream = Vec::with_capacity(1024);
    encode_params(env, &mut stream)?;
    encode_stream(RecordType::PARAMS, request_id, &stream, dst)?;
    encode_record(RecordType::PARAMS, request_id, &[], dst)
}

/// Writes a whole Responder request: BEGIN_REQUEST, PARAMS, the body as STDIN and the
/// terminating empty STDIN record (always sent, even with no body).
pub fn encode_request<B: BufMut>(
    request_id: u16,
    keep_conn: bool,
    env: &Env,
    body: &[u8],
    dst: &mut B,
) -> Result<(), Error> {
    encode_begin_request(request_id, Role::RESPONDER, keep_conn, dst);
    encode_params_stream(request_id, env, dst)?;
    encode_stream(RecordType::STDIN, request_id, body, dst)?;
    encode_record(RecordType::STDIN, request_id, &[], dst)
}

/// What the application answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseEvent {
    /// Response bytes (a CGI response: head, then body).
    Stdout(Bytes),
    /// The STDOUT stream is complete.
    StdoutEnd,
    /// Error text from the application (log it).
    Stderr(Bytes),
    /// The STDERR stream is complete.
    StderrEnd,
    /// The request is over.
    End(EndRequest),
}

/// Decodes the application's records for one request, sans-IO.
///
/// ```
/// use bytes::BytesMut;
/// use cgi_family::fastcgi::{ResponseDecoder, ResponseEvent, ServerConnection, ServerConfig};
/// let mut wire = BytesMut::new();
/// let mut app = ServerConnection::new(ServerConfig::default());
/// app.write_stdout(1, b"Content-Type: text/plain\r\n\r\nok", &mut wire)?;
/// app.end_request(1, 0, &mut wire);
/// let mut dec = ResponseDecoder::new(1);
/// assert!(matches!(dec.decode(&mut wire)?, Some(ResponseEvent::Stdout(_))));
/// assert_eq!(dec.decode(&mut wire)?, Some(ResponseEvent::StdoutEnd));
/// assert!(matches!(dec.decode(&mut wire)?, Some(ResponseEvent::End(_))));
/// # Ok::<(), cgi_family::fastcgi::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResponseDecoder {
    request_id: u16,
}

impl ResponseDecoder {
    /// A decoder for the answer to request `request_id`.
    pub const fn new(request_id: u16) -> Self {
        Self { request_id }
    }

    /// The next event from the records in `src`, consuming them; `Ok(None)` when more
    /// bytes are needed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ResponseEvent>, Error> {
        let Some((record, used)) = parse_record(src)? else {
            return Ok(None);
        };
        let h = record.header;
        if h.request_id != self.request_id {
            return Err(Error::WrongRequestId {
                expected: self.request_id,
                got: h.request_id,
            });
        }
        let len = usize::from(h.content_length);
        let event = match h.record_type {
            RecordType::END_REQUEST => ResponseEvent::End(EndRequest::parse(record.content)?),
            RecordType::STDOUT | RecordType::STDERR => {
                let raw = src.split_to(used).freeze();
                let data = raw.slice(HEADER_LEN..HEADER_LEN + len);
                return Ok(Some(match (h.record_type, data.is_empty()) {
                    (RecordType::STDOUT, false) => ResponseEvent::Stdout(data),
                    (RecordType::STDOUT, true) => ResponseEvent::StdoutEnd,
                    (_, false) => ResponseEvent::Stderr(data),
                    (_, true) => ResponseEvent::StderrEnd,
                }));
            }
            t => {
                return Err(Error::UnexpectedRecord {
                    record_type: t,
                    request_id: h.request_id,
                });
            }
        };
        let _ = src.split_to(used);
        Ok(Some(event))
    }
}
