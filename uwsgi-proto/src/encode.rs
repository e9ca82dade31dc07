//! Writing packets: the client side (what nginx's `uwsgi_pass` sends) and replies.

use bytes::BufMut;

use crate::{EncodeError, MAX_BLOCK_SIZE, Modifier1, Modifier2, PacketHeader};

/// The encoded size of one pair, after checking it can be encoded.
#[inline]
pub fn pair_len(key: &[u8], value: &[u8]) -> Result<usize, EncodeError> {
    if key.is_empty() {
        return Err(EncodeError::EmptyKey);
    }
    if key.len() > MAX_BLOCK_SIZE {
        return Err(EncodeError::KeyTooLong { len: key.len() });
    }
    if value.len() > MAX_BLOCK_SIZE {
        return Err(EncodeError::ValueTooLong { len: value.len() });
    }
    Ok(4 + key.len() + value.len())
}

/// Where a pair's pieces go: the packet encoder's [`Gather`] block, or a builder's `Vec`.
trait Pieces {
    fn put(&mut self, piece: &[u8]);
}

impl Pieces for Vec<u8> {
    #[inline]
    fn put(&mut self, piece: &[u8]) {
        self.extend_from_slice(piece);
    }
}

/// One var as the block carries it: key length (u16 LE), key, value length, value.
#[inline]
fn put_pair(dst: &mut impl Pieces, key: &[u8], value: &[u8]) {
    // Lengths were checked by `pair_len`, so the casts cannot truncate.
    dst.put(&(key.len() as u16).to_le_bytes());
    dst.put(key);
    dst.put(&(value.len() as u16).to_le_bytes());
    dst.put(value);
}

/// Small pieces gathered on the stack and handed to the `BufMut` a block at a time: a
/// `BufMut` checks its room on every `put`, which for the sixty-odd small pieces of a
/// typical packet cost more than copying them.
struct Gather<'d, B: BufMut> {
    dst: &'d mut B,
    block: [u8; GATHER],
    len: usize,
}

const GATHER: usize = 1024;

impl<'d, B: BufMut> Gather<'d, B> {
    fn new(dst: &'d mut B) -> Self {
        Self {
            dst,
            block: [0; GATHER],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.dst.put_slice(&self.block[..self.len]);
        self.len = 0;
    }
}

impl<B: BufMut> Pieces for Gather<'_, B> {
    #[inline]
    fn put(&mut self, piece: &[u8]) {
        if self.len + piece.len() > GATHER {
            self.flush();
            if piece.len() > GATHER {
                self.dst.put_slice(piece);
                return;
            }
        }
        self.block[self.len..self.len + piece.len()].copy_from_slice(piece);
        self.len += piece.len();
    }
}

fn check_block(size: usize, limit: usize) -> Result<(), EncodeError> {
    let limit = limit.min(MAX_BLOCK_SIZE);
    if size > limit {
        return Err(EncodeError::BlockTooLarge { size, limit });
    }
    Ok(())
}

/// The size of the vars block `vars` would encode to, after checking every pair and
/// the total against `limit` (clamped to 65535).
pub fn vars_len<'v, I, K, V>(vars: I, limit: usize) -> Result<usize, EncodeError>
where
    I: IntoIterator<Item = &'v (K, V)>,
    K: AsRef<[u8]> + 'v,
    V: AsRef<[u8]> + 'v,
{
    let mut size = 0usize;
    for (k, v) in vars {
        size += pair_len(k.as_ref(), v.as_ref())?;
        check_block(size, limit)?;
    }
    Ok(size)
}

/// Writes a whole packet (header + vars block) into `dst` and returns the bytes written.
///
/// `limit` is the largest block the peer accepts (its `--buffer-size`; 65535 at most).
/// Nothing is written when an error is returned. The request body, if any, is the
/// caller's to write after the packet.
///
/// ```
/// use uwsgi_proto::{encode_packet, Modifier1, Modifier2, Vars, parse_packet, Limits};
/// let vars = [("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")];
/// let mut buf = Vec::new();
/// let n = encode_packet(Modifier1::WSGI, Modifier2::ZERO, &vars, 65535, &mut buf)?;
/// assert_eq!(n, 39);
/// assert_eq!(&buf[..4], [0x00, 0x23, 0x00, 0x00]);
/// # Ok::<(), uwsgi_proto::EncodeError>(())
/// ```
pub fn encode_packet<'v, I, K, V, B>(
    modifier1: Modifier1,
    modifier2: Modifier2,
    vars: I,
    limit: usize,
    dst: &mut B,
) -> Result<usize, EncodeError>
where
    I: IntoIterator<Item = &'v (K, V)> + Clone,
    K: AsRef<[u8]> + 'v,
    V: AsRef<[u8]> + 'v,
    B: BufMut,
{
    let size = vars_len(vars.clone(), limit)?;
    // `check_block` bounded `size` by 65535.
    PacketHeader::new(modifier1, size as u16, modifier2).encode(dst);
    let mut out = Gather::new(dst);
    for (k, v) in vars {
        put_pair(&mut out, k.as_ref(), v.as_ref());
    }
    out.flush();
    Ok(PacketHeader::SIZE + size)
}

/// Writes a uwsgi array packet (e.g. an RPC call: function name, then arguments).
pub fn encode_array_packet<'v, I, T, B>(
    modifier1: Modifier1,
    modifier2: Modifier2,
    items: I,
    dst: &mut B,
) -> Result<usize, EncodeError>
where
    I: IntoIterator<Item = &'v T> + Clone,
    T: AsRef<[u8]> + ?Sized + 'v,
    B: BufMut,
{
    let mut size = 0usize;
    for item in items.clone() {
        let len = item.as_ref().len();
        if len > MAX_BLOCK_SIZE {
            return Err(EncodeError::ValueTooLong { len });
        }
        size += 2 + len;
        check_block(size, MAX_BLOCK_SIZE)?;
    }
    PacketHeader::new(modifier1, size as u16, modifier2).encode(dst);
    for item in items {
        let item = item.as_ref();
        dst.put_u16_le(item.len() as u16);
        dst.put_slice(item);
    }
    Ok(PacketHeader::SIZE + size)
}

/// Builds a packet in place at the end of a `Vec<u8>`, one var at a time, then writes
/// the header's `datasize` on [`finish`](PacketBuilder::finish). Useful when the vars are
/// computed on the fly (no second pass over them).
///
/// ```
/// use uwsgi_proto::{PacketBuilder, Vars, PacketHeader};
/// let mut buf = Vec::new();
/// let mut p = PacketBuilder::new(&mut buf);
/// p.var(b"REQUEST_METHOD", b"POST")?.var(b"CONTENT_LENGTH", b"5")?;
/// let n = p.finish();
/// buf.extend_from_slice(b"hello"); // the body follows the packet
/// let vars = Vars::parse(&buf[4..n])?;
/// assert_eq!(vars.content_length()?, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PacketBuilder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    limit: usize,
    header: PacketHeader,
}

impl<'b> PacketBuilder<'b> {
    /// Starts a WSGI request packet (modifier1 0, modifier2 0) at the end of `buf`.
    pub fn new(buf: &'b mut Vec<u8>) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0; PacketHeader::SIZE]);
        Self {
            buf,
            start,
            limit: MAX_BLOCK_SIZE,
            header: PacketHeader::default(),
        }
    }

    /// Sets the modifiers.
    pub fn modifiers(&mut self, modifier1: Modifier1, modifier2: Modifier2) -> &mut Self {
        self.header.modifier1 = modifier1;
        self.header.modifier2 = modifier2;
        self
    }

    /// Sets the largest block the peer accepts (its `--buffer-size`; clamped to 65535).
    pub fn limit(&mut self, limit: usize) -> &mut Self {
        self.limit = limit.min(MAX_BLOCK_SIZE);
        self
    }

    /// The vars block size so far.
    pub fn block_len(&self) -> usize {
        self.buf.len() - self.start - PacketHeader::SIZE
    }

    /// Appends one var. On error nothing is appended and the packet stays valid.
    pub fn var(&mut self, key: &[u8], value: &[u8]) -> Result<&mut Self, EncodeError> {
        let pair = pair_len(key, value)?;
        check_block(self.block_len() + pair, self.limit)?;
        // One var: straight into the Vec, its room made once.
        self.buf.reserve(pair);
        put_pair(self.buf, key, value);
        Ok(self)
    }

    /// Writes the header and returns the packet's total size (header + block).
    pub fn finish(self) -> usize {
        let mut header = self.header;
        let size = self.block_len();
        // `var` kept the block within 65535 bytes.
        header.datasize = size as u16;
        self.buf[self.start..self.start + PacketHeader::SIZE].copy_from_slice(&header.to_bytes());
        PacketHeader::SIZE + size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vars;

    #[test]
    fn refuses_what_cannot_be_encoded() {
        let mut buf = Vec::new();
        let empty: [(&[u8], &[u8]); 1] = [(b"", b"x")];
        assert_eq!(
            encode_packet(Modifier1::WSGI, Modifier2::ZERO, &empty, 65535, &mut buf),
            Err(EncodeError::EmptyKey)
        );
        let big = vec![b'x'; 70_000];
        let long_value = [(&b"K"[..], &big[..])];
        assert_eq!(
            encode_packet(
                Modifier1::WSGI,
                Modifier2::ZERO,
                &long_value,
                65535,
                &mut buf
            ),
            Err(EncodeError::ValueTooLong { len: 70_000 })
        );
        assert!(buf.is_empty(), "nothing written on error");
    }

    #[test]
    fn the_65535_edge() {
        // One pair of exactly 65535 bytes: 4 + 1 + 65530.
        let v = vec![b'v'; 65530];
        let vars = [(&b"K"[..], &v[..])];
        let mut buf = Vec::new();
        let n = encode_packet(Modifier1::WSGI, Modifier2::ZERO, &vars, 65535, &mut buf).unwrap();
        assert_eq!(n, 65539);
        assert_eq!(&buf[..4], [0, 0xff, 0xff, 0]);
        assert_eq!(
            Vars::parse(&buf[4..]).unwrap().get(b"K").unwrap().len(),
            65530
        );
        // One byte more is refused.
        let v = vec![b'v'; 65531];
        let vars = [(&b"K"[..], &v[..])];
        assert_eq!(
            encode_packet(
                Modifier1::WSGI,
                Modifier2::ZERO,
                &vars,
                65535,
                &mut Vec::new()
            ),
            Err(EncodeError::BlockTooLarge {
                size: 65536,
                limit: 65535
            })
        );
    }

    #[test]
    fn configured_limit() {
        let vars = [("HTTP_COOKIE", "x".repeat(5000))];
        assert_eq!(
            encode_packet(
                Modifier1::WSGI,
                Modifier2::ZERO,
                &vars,
                4096,
                &mut Vec::new()
            ),
            Err(EncodeError::BlockTooLarge {
                size: 5015,
                limit: 4096
            })
        );
        let mut buf = Vec::new();
        let mut b = PacketBuilder::new(&mut buf);
        b.limit(4096);
        assert!(b.var(b"HTTP_COOKIE", "x".repeat(5000).as_bytes()).is_err());
        b.var(b"A", b"B").unwrap();
        let n = b.finish();
        assert_eq!(n, 4 + 6);
        assert_eq!(Vars::parse(&buf[4..]).unwrap().len(), 1);
    }

    #[test]
    fn builder_appends_after_existing_bytes() {
        let mut buf = b"prefix".to_vec();
        let mut b = PacketBuilder::new(&mut buf);
        b.modifiers(Modifier1::SPOOLER, Modifier2(7));
        b.var(b"k", b"v").unwrap();
        assert_eq!(b.finish(), 10);
        assert_eq!(&buf[..6], b"prefix");
        let h = PacketHeader::parse(&buf[6..]).unwrap();
        assert_eq!(h, PacketHeader::new(Modifier1::SPOOLER, 6, Modifier2(7)));
    }

    #[test]
    fn array_packet() {
        let mut buf = Vec::new();
        let items: [&[u8]; 2] = [b"hello", b"world"];
        let n = encode_array_packet(Modifier1::RPC, Modifier2::ZERO, &items, &mut buf).unwrap();
        assert_eq!(n, 18);
        let a = crate::Array::parse(&buf[4..]).unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), items);
    }
}
