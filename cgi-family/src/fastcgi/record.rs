//! The record layer (spec section 3.3).

use std::fmt;

use bytes::BufMut;

use super::Error;

/// `FCGI_VERSION_1`.
pub const VERSION_1: u8 = 1;
/// `FCGI_HEADER_LEN`.
pub const HEADER_LEN: usize = 8;
/// The most content one record can carry.
pub const MAX_CONTENT: usize = u16::MAX as usize;

/// A record type (spec section 8); unknown values are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordType(pub u8);

impl RecordType {
    /// 1: starts a request.
    pub const BEGIN_REQUEST: Self = Self(1);
    /// 2: the web server aborts a request.
    pub const ABORT_REQUEST: Self = Self(2);
    /// 3: the application ends a request.
    pub const END_REQUEST: Self = Self(3);
    /// 4: the CGI params stream.
    pub const PARAMS: Self = Self(4);
    /// 5: the request body stream.
    pub const STDIN: Self = Self(5);
    /// 6: the response stream.
    pub const STDOUT: Self = Self(6);
    /// 7: the error stream.
    pub const STDERR: Self = Self(7);
    /// 8: the Filter role's file data stream.
    pub const DATA: Self = Self(8);
    /// 9: a management query.
    pub const GET_VALUES: Self = Self(9);
    /// 10: the answer to GET_VALUES.
    pub const GET_VALUES_RESULT: Self = Self(10);
    /// 11: the answer to a management record of unknown type.
    pub const UNKNOWN_TYPE: Self = Self(11);

    /// The spec's name, or `None` for an unknown type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "BEGIN_REQUEST",
            2 => "ABORT_REQUEST",
            3 => "END_REQUEST",
            4 => "PARAMS",
            5 => "STDIN",
            6 => "STDOUT",
            7 => "STDERR",
            8 => "DATA",
            9 => "GET_VALUES",
            10 => "GET_VALUES_RESULT",
            11 => "UNKNOWN_TYPE",
            _ => return None,
        })
    }
}

impl fmt::Debug for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "RecordType({})", self.0),
        }
    }
}

/// A role (BEGIN_REQUEST body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Role(pub u16);

impl Role {
    /// 1: the CGI/1.1 equivalent.
    pub const RESPONDER: Self = Self(1);
    /// 2: access control.
    pub const AUTHORIZER: Self = Self(2);
    /// 3: responder plus a data file.
    pub const FILTER: Self = Self(3);
}

/// The protocol status of END_REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolStatus(pub u8);

impl ProtocolStatus {
    /// 0: normal end.
    pub const REQUEST_COMPLETE: Self = Self(0);
    /// 1: a concurrent request on a connection that does not multiplex.
    pub const CANT_MPX_CONN: Self = Self(1);
    /// 2: out of resources.
    pub const OVERLOADED: Self = Self(2);
    /// 3: a role the application does not play.
    pub const UNKNOWN_ROLE: Self = Self(3);
}

/// The 8-byte record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Always 1 on a valid stream.
    pub version: u8,
    /// The record type.
    pub record_type: RecordType,
    /// 0 for management records.
    pub request_id: u16,
    /// Content bytes that follow.
    pub content_length: u16,
    /// Padding bytes after the content.
    pub padding_length: u8,
}

impl RecordHeader {
    /// A version-1 header with the padding that aligns the record to 8 bytes.
    pub const fn new(record_type: RecordType, request_id: u16, content_length: u16) -> Self {
        Self {
            version: VERSION_1,
            record_type,
            request_id,
            content_length,
            padding_length: (content_length.wrapping_neg() & 7) as u8,
        }
    }

    /// Reads the first 8 bytes of `buf`, or `None` if it is shorter.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b: &[u8; 8] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            version: b[0],
            record_type: RecordType(b[1]),
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_length: u16::from_be_bytes([b[4], b[5]]),
            padding_length: b[6],
        })
    }

    /// The 8 wire bytes.
    pub const fn to_bytes(self) -> [u8; 8] {
        let [i1, i0] = self.request_id.to_be_bytes();
        let [c1, c0] = self.content_length.to_be_bytes();
        [
            self.version,
            self.record_type.0,
            i1,
            i0,
            c1,
            c0,
            self.padding_length,
            0,
        ]
    }

    /// The whole record's size on the wire.
    pub const fn record_len(self) -> usize {
        HEADER_LEN + self.content_length as usize + self.padding_length as usize
    }
}

/// A record borrowed from the caller's buffer (padding skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The header.
    pub header: RecordHeader,
    /// The content.
    pub content: &'a [u8],
}

/// Parses one record from the start of `buf`: `Ok(None)` until the whole record
/// (padding included) is there; any padding length is accepted.
///
/// ```
/// use cgi_family::fastcgi::{parse_record, RecordType};
/// let wire = [1, 6, 0, 1, 0, 2, 6, 0, b'h', b'i', 0, 0, 0, 0, 0, 0];
/// let (rec, used) = parse_record(&wire)?.unwrap();
/// assert_eq!((rec.header.record_type, rec.content, used), (RecordType::STDOUT, &b"hi"[..], 16));
/// assert_eq!(parse_record(&wire[..15])?, None);
/// # Ok::<(), cgi_family::fastcgi::Error>(())
/// ```
pub fn parse_record(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, Error> {
    let Some(header) = RecordHeader::parse(buf) else {
        return Ok(None);
    };
    if header.version != VERSION_1 {
        return Err(Error::UnsupportedVersion {
            version: header.version,
        });
    }
    let end = header.record_len();
    if buf.len() < end {
        return Ok(None);
    }
    let content = &buf[HEADER_LEN..HEADER_LEN + usize::from(header.content_length)];
    Ok(Some((Record { header, content }, end)))
}

/// Writes one record with `content`, padded to a multiple of 8 bytes.
pub fn encode_record<B: BufMut>(
    record_type: RecordType,
    request_id: u16,
    content: &[u8],
    dst: &mut B,
) -> Result<(), Error> {
    let len =
        u16::try_from(content.len()).map_err(|_| Error::ContentTooLong { len: content.len() })?;
    let header = RecordHeader::new(record_type, request_id, len);
    dst.put_slice(&header.to_bytes());
    dst.put_slice(content);
    dst.put_bytes(0, usize::from(header.padding_length));
    Ok(())
}

/// The BEGIN_REQUEST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    /// The role.
    pub role: Role,
    /// Flags: [`KEEP_CONN`](super::KEEP_CONN).
    pub flags: u8,
}

impl BeginRequest {
    /// Parses the 8-byte body.
    pub fn parse(content: &[u8]) -> Result<Self, Error> {
        match content {
            [r1, r0, flags, _, _, _, _, _] => Ok(Self {
                role: Role(u16::from_be_bytes([*r1, *r0])),
                flags: *flags,
            }),
            _ => Err(Error::BadBodyLength {
                record_type: RecordType::BEGIN_REQUEST,
                len: content.len(),
            }),
        }
    }

    /// The 8-byte body.
    pub const fn to_bytes(self) -> [u8; 8] {
        let [r1, r0] = self.role.0.to_be_bytes();
        [r1, r0, self.flags, 0, 0, 0, 0, 0]
    }

    /// Whether the web server keeps the connection open after this request.
    pub const fn keep_conn(self) -> bool {
        self.flags & super::KEEP_CONN != 0
    }
}

/// The END_REQUEST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    /// The application's exit status.
    pub app_status: u32,
    /// How the request ended at the protocol level.
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    /// Parses the 8-byte body.
    pub fn parse(content: &[u8]) -> Result<Self, Error> {
        match content {
            [a3, a2, a1, a0, ps, _, _, _] => Ok(Self {
                app_status: u32::from_be_bytes([*a3, *a2, *a1, *a0]),
                protocol_status: ProtocolStatus(*ps),
            }),
            _ => Err(Error::BadBodyLength {
                record_type: RecordType::END_REQUEST,
                len: content.len(),
            }),
        }
    }
}

/// Writes an END_REQUEST record.
pub fn encode_end_request<B: BufMut>(
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
    dst: &mut B,
) {
    let [a3, a2, a1, a0] = app_status.to_be_bytes();
    let body = [a3, a2, a1, a0, protocol_status.0, 0, 0, 0];
    dst.put_slice(&RecordHeader::new(RecordType::END_REQUEST, request_id, 8).to_bytes());
    dst.put_slice(&body);
}

/// Writes an UNKNOWN_TYPE record naming `unknown`.
pub fn encode_unknown_type<B: BufMut>(unknown: RecordType, dst: &mut B) {
    dst.put_slice(&RecordHeader::new(RecordType::UNKNOWN_TYPE, 0, 8).to_bytes());
    dst.put_slice(&[unknown.0, 0, 0, 0, 0, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_aligns_to_8() {
        for len in 0..40u16 {
            let h = RecordHeader::new(RecordType::STDOUT, 1, len);
            assert_eq!(h.record_len() % 8, 0, "len {len}");
            assert!(h.padding_length < 8);
        }
        assert_eq!(
            RecordHeader::new(RecordType::STDOUT, 1, 65535).padding_length,
            1
        );
    }

    #[test]
    fn spec_examples() {
        let mut out = Vec::new();
        encode_end_request(1, 0, ProtocolStatus::REQUEST_COMPLETE, &mut out);
        assert_eq!(out, [1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.clear();
        encode_unknown_type(RecordType(42), &mut out);
        assert_eq!(out, [1, 0x0b, 0, 0, 0, 8, 0, 0, 0x2a, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_version_and_long_content() {
        assert_eq!(
            parse_record(&[2, 1, 0, 1, 0, 0, 0, 0]),
            Err(Error::UnsupportedVersion { version: 2 })
        );
        let big = vec![0u8; 65536];
        assert_eq!(
            encode_record(RecordType::STDOUT, 1, &big, &mut Vec::new()),
            Err(Error::ContentTooLong { len: 65536 })
        );
    }

    #[test]
    fn any_padding_is_accepted() {
        let mut wire = vec![1, 6, 0, 1, 0, 1, 200, 0, b'x'];
        wire.extend(std::iter::repeat_n(0xaa, 200));
        let (rec, used) = parse_record(&wire).unwrap().unwrap();
        assert_eq!((rec.content, used), (&b"x"[..], 209));
    }
}
