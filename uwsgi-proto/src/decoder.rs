//! The incremental, sans-IO decoder for a uwsgi stream.

use bytes::{Bytes, BytesMut};

use crate::{Error, Limits, Modifier1, PacketHeader, Vars, parse_content_length};

/// A complete request head (header + payload) cut out of the stream without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    header: PacketHeader,
    raw: Bytes,
    vars_count: Option<usize>,
    content_length: u64,
}

impl RequestHead {
    /// The packet header.
    pub const fn header(&self) -> PacketHeader {
        self.header
    }

    /// The payload (the vars block for requests).
    pub fn payload(&self) -> &[u8] {
        &self.raw[PacketHeader::SIZE..]
    }

    /// The validated vars, for packets whose `modifier1` carries a vars block
    /// ([`Modifier1::carries_vars`]); `None` for other packets (their payload is opaque:
    /// see [`RequestHead::payload`]).
    pub fn vars(&self) -> Option<Vars<'_>> {
        self.vars_count
            .map(|count| Vars::validated(self.payload(), count))
    }

    /// The body length that follows (`CONTENT_LENGTH`), 0 for packets without a body.
    pub const fn content_length(&self) -> u64 {
        self.content_length
    }

    /// The packet's wire bytes (header + payload), e.g. to forward it unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Takes the packet's wire bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    KeyLen,
    Key {
        len: usize,
    },
    ValLen {
        content_length_key: bool,
    },
    Val {
        len: usize,
        content_length_key: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    header: PacketHeader,
    /// Offset in the payload of the first byte not yet looked at.
    pos: usize,
    phase: Phase,
    count: usize,
    /// Offset and length of the first CONTENT_LENGTH value.
    content_length: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload(Scan),
    Body { remaining: u64 },
    Done,
}

/// Decodes one uwsgi request from bytes fed as they arrive, in any split.
///
/// Call [`decode_head`](Self::decode_head) with the connection's read buffer after each
/// read until it yields the [`RequestHead`]; then [`decode_body`](Self::decode_body) hands
/// out the `CONTENT_LENGTH` bytes of body that follow (never more: bytes past the body are
/// left in the buffer). Each byte of the vars block is looked at once: the decoder keeps
/// its place between calls instead of re-scanning what it has seen.
///
/// ```
/// use bytes::BytesMut;
/// use uwsgi_proto::{encode_packet, Limits, Modifier1, Modifier2, RequestDecoder};
///
/// let mut wire = Vec::new();
/// let vars = [("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "5")];
/// encode_packet(Modifier1::WSGI, Modifier2::ZERO, &vars, 65535, &mut wire)?;
/// wire.extend_from_slice(b"hello");
///
/// let mut dec = RequestDecoder::new(Limits::new());
/// let mut buf = BytesMut::new();
/// let mut head = None;
/// for byte in &wire {                 // one byte per "read"
///     buf.extend_from_slice(&[*byte]);
///     if head.is_none() {
///         head = dec.decode_head(&mut buf)?;
///     }
/// }
/// let head = head.unwrap();
/// assert_eq!(head.content_length(), 5);
/// assert_eq!(head.vars().unwrap().get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
/// assert_eq!(dec.decode_body(&mut buf).as_deref(), Some(&b"hello"[..]));
/// assert!(dec.is_done());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new(Limits::new())
    }
}

const CONTENT_LENGTH: &[u8] = b"CONTENT_LENGTH";

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub const fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Header,
        }
    }

    /// The limits in force.
    pub const fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Forgets the current request and waits for a new packet (persistent connections).
    pub fn reset(&mut self) {
        self.state = State::Header;
    }

    /// Whether the head and the whole body have been handed out.
    pub const fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Body bytes still to come (0 before the head is complete).
    pub const fn body_remaining(&self) -> u64 {
        match self.state {
            State::Body { remaining } => remaining,
            _ => 0,
        }
    }

    /// Feeds the buffered bytes; returns the head once complete, removing its bytes from
    /// `src` (what follows, the body, stays). `Ok(None)`: more bytes needed (or the head
    /// was already returned). After an error the stream is unusable: close it.
    pub fn decode_head(&mut self, src: &mut BytesMut) -> Result<Option<RequestHead>, Error> {
        if let State::Header = self.state {
            let Some(header) = PacketHeader::parse(src) else {
                return Ok(None);
            };
            let size = usize::from(header.datasize);
            if size > self.limits.block_size() {
                return Err(Error::BlockTooLarge {
                    size,
                    limit: self.limits.block_size(),
                });
            }
            self.state = State::Payload(Scan {
                header,
                pos: 0,
                phase: Phase::KeyLen,
                count: 0,
                content_length: None,
            });
        }
        let State::Payload(mut scan) = self.state else {
            return Ok(None);
        };
        let size = usize::from(scan.header.datasize);
        let payload = &src[PacketHeader::SIZE..src.len().min(PacketHeader::SIZE + size)];
        let carries_vars = scan.header.modifier1.carries_vars();
        if carries_vars {
            let complete = self.scan(&mut scan, payload, size);
            self.state = State::Payload(scan);
            if !complete? {
                return Ok(None);
            }
        } else if payload.len() < size {
            return Ok(None);
        }
        let content_length = match scan.content_length {
            Some((at, len)) if scan.header.modifier1.is_request() => self
                .limits
                .check_body(parse_content_length(&payload[at..at + len])?)?,
            _ => 0,
        };
        let raw = src.split_to(PacketHeader::SIZE + size).freeze();
        self.state = if content_length > 0 {
            State::Body {
                remaining: content_length,
            }
        } else {
            State::Done
        };
        Ok(Some(RequestHead {
            header: scan.header,
            raw,
            vars_count: carries_vars.then_some(scan.count),
            content_length,
        }))
    }

    /// Advances the vars scan over the bytes that arrived; `Ok(true)` when the whole
    /// block is in and valid. Errors carry the same offsets as [`Vars::parse`].
    fn scan(&self, s: &mut Scan, payload: &[u8], size: usize) -> Result<bool, Error> {
        let avail = payload.len();
        loop {
            match s.phase {
                Phase::KeyLen => {
                    if s.pos == size {
                        return Ok(true);
                    }
                    if size - s.pos < 2 {
                        return Err(Error::TruncatedKeySize { offset: s.pos });
                    }
                    if avail - s.pos < 2 {
                        return Ok(false);
                    }
                    let len = usize::from(u16::from_le_bytes([payload[s.pos], payload[s.pos + 1]]));
                    if len == 0 {
                        return Err(Error::EmptyKey { offset: s.pos });
                    }
                    if size - s.pos - 2 < len {
                        return Err(Error::KeyPastEnd { offset: s.pos, len });
                    }
                    s.pos += 2;
                    s.phase = Phase::Key { len };
                }
                Phase::Key { len } => {
                    if avail - s.pos < len {
                        return Ok(false);
                    }
                    let content_length_key = s.content_length.is_none()
                        && &payload[s.pos..s.pos + len] == CONTENT_LENGTH;
                    s.pos += len;
                    s.phase = Phase::ValLen { content_length_key };
                }
                Phase::ValLen { content_length_key } => {
                    if size - s.pos < 2 {
                        return Err(Error::TruncatedValueSize { offset: s.pos });
                    }
                    if avail - s.pos < 2 {
                        return Ok(false);
                    }
                    let len = usize::from(u16::from_le_bytes([payload[s.pos], payload[s.pos + 1]]));
                    if size - s.pos - 2 < len {
                        return Err(Error::ValuePastEnd { offset: s.pos, len });
                    }
                    s.pos += 2;
                    s.phase = Phase::Val {
                        len,
                        content_length_key,
                    };
                }
                Phase::Val {
                    len,
                    content_length_key,
                } => {
                    if avail - s.pos < len {
                        return Ok(false);
                    }
                    if content_length_key {
                        s.content_length = Some((s.pos, len));
                    }
                    s.pos += len;
                    s.count += 1;
                    if s.count > self.limits.vars() {
                        return Err(Error::TooManyVars {
                            limit: self.limits.vars(),
                        });
                    }
                    s.phase = Phase::KeyLen;
                }
            }
        }
    }

    /// Hands out the body bytes buffered in `src`, at most what remains of
    /// `CONTENT_LENGTH`, without copying. `None` when nothing is buffered or the body is
    /// complete (see [`is_done`](Self::is_done)).
    pub fn decode_body(&mut self, src: &mut BytesMut) -> Option<Bytes> {
        let State::Body { remaining } = self.state else {
            return None;
        };
        let n = usize::try_from(remaining).map_or(src.len(), |r| r.min(src.len()));
        if n == 0 {
            return None;
        }
        let left = remaining - n as u64;
        self.state = if left == 0 {
            State::Done
        } else {
            State::Body { remaining: left }
        };
        Some(src.split_to(n).freeze())
    }
}

impl Modifier1 {
    /// Whether this packet type's payload is a vars block: the application requests
    /// ([`is_request`](Self::is_request)), spooler jobs and management requests.
    pub const fn carries_vars(self) -> bool {
        self.is_request() || matches!(self.0, 10 | 17)
    }
}
