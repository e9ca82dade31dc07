//! One-shot parsing of a whole packet held in one buffer.

use crate::{Array, Error, Limits, PacketHeader, Vars};

/// A packet borrowed from the caller's buffer: the header and its `datasize` bytes of
/// payload. What the payload is depends on `modifier1`: a vars block for requests
/// ([`Packet::vars`]), a uwsgi array for RPC ([`Packet::array`]), raw bytes otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The 4-byte header.
    pub header: PacketHeader,
    /// The `datasize` bytes after the header.
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The payload as a vars block, validated with the default limits.
    pub fn vars(&self) -> Result<Vars<'a>, Error> {
        Vars::parse(self.payload)
    }

    /// The payload as a vars block, validated with `limits`.
    pub fn vars_with(&self, limits: &Limits) -> Result<Vars<'a>, Error> {
        Vars::parse_with(self.payload, limits)
    }

    /// The payload as a uwsgi array (RPC).
    pub fn array(&self) -> Result<Array<'a>, Error> {
        Array::parse(self.payload)
    }

    /// The packet's size on the wire (header + payload).
    pub const fn wire_len(&self) -> usize {
        PacketHeader::SIZE + self.payload.len()
    }
}

/// Parses one packet from the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds less than the whole packet, and
/// `Ok(Some((packet, consumed)))` once it does; bytes after `consumed` (a request body,
/// the next packet) are the caller's. A `datasize` over `limits.block_size()` is an error
/// as soon as the header is in, before waiting for the payload.
///
/// ```
/// use uwsgi_proto::{parse_packet, Limits, Modifier1};
/// let wire = b"\x00\x0b\x00\x00\x04\x00HOST\x03\x00a.b" as &[u8];
/// assert_eq!(parse_packet(&wire[..10], &Limits::new())?, None); // not all there yet
/// let (packet, used) = parse_packet(wire, &Limits::new())?.unwrap();
/// assert_eq!(used, 15);
/// assert_eq!(packet.header.modifier1, Modifier1::WSGI);
/// assert_eq!(packet.vars()?.get(b"HOST"), Some(&b"a.b"[..]));
/// # Ok::<(), uwsgi_proto::Error>(())
/// ```
pub fn parse_packet<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Packet<'a>, usize)>, Error> {
    let Some(header) = PacketHeader::parse(buf) else {
        return Ok(None);
    };
    let size = usize::from(header.datasize);
    if size > limits.block_size() {
        return Err(Error::BlockTooLarge {
            size,
            limit: limits.block_size(),
        });
    }
    let end = PacketHeader::SIZE + size;
    Ok(buf
        .get(PacketHeader::SIZE..end)
        .map(|payload| (Packet { header, payload }, end)))
}
