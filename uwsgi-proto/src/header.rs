//! The 4-byte packet header.

use bytes::BufMut;

use crate::{Modifier1, Modifier2};

/// The 4-byte header in front of every uwsgi packet.
///
/// ```text
/// offset  size  field
/// 0       1     modifier1   u8
/// 1       2     datasize    u16, little-endian
/// 3       1     modifier2   u8
/// ```
///
/// `datasize` counts the payload after the header only: for a request, the vars block,
/// not the HTTP body that follows it.
///
/// ```
/// use uwsgi_proto::{Modifier1, Modifier2, PacketHeader};
/// let h = PacketHeader::parse(&[0x00, 0x23, 0x00, 0x00]).unwrap();
/// assert_eq!(h, PacketHeader::new(Modifier1::WSGI, 35, Modifier2::ZERO));
/// assert_eq!(h.to_bytes(), [0x00, 0x23, 0x00, 0x00]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PacketHeader {
    /// The packet type.
    pub modifier1: Modifier1,
    /// The payload length in bytes.
    pub datasize: u16,
    /// The sub-code.
    pub modifier2: Modifier2,
}

impl PacketHeader {
    /// The header's size on the wire.
    pub const SIZE: usize = 4;

    /// The reply to a ping: `{100, 0, 1}` (what uWSGI's ping plugin answers).
    pub const PONG: Self = Self::new(Modifier1::PING, 0, Modifier2::PONG);

    /// A header from its three fields.
    pub const fn new(modifier1: Modifier1, datasize: u16, modifier2: Modifier2) -> Self {
        Self {
            modifier1,
            datasize,
            modifier2,
        }
    }

    /// Reads a header from the first 4 bytes of `buf`, or `None` if it is shorter.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let bytes: [u8; 4] = buf.get(..Self::SIZE)?.try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// A header from its 4 wire bytes.
    pub const fn from_bytes(b: [u8; 4]) -> Self {
        Self {
            modifier1: Modifier1(b[0]),
            datasize: u16::from_le_bytes([b[1], b[2]]),
            modifier2: Modifier2(b[3]),
        }
    }

    /// The 4 wire bytes of this header.
    pub const fn to_bytes(self) -> [u8; 4] {
        let [lo, hi] = self.datasize.to_le_bytes();
        [self.modifier1.0, lo, hi, self.modifier2.0]
    }

    /// Writes the 4 wire bytes into `dst`.
    pub fn encode<B: BufMut>(self, dst: &mut B) {
        dst.put_slice(&self.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasize_is_little_endian() {
        let h = PacketHeader::from_bytes([7, 0x34, 0x12, 9]);
        assert_eq!(h.datasize, 0x1234);
        assert_eq!(h.modifier1, Modifier1::RACK);
        assert_eq!(h.modifier2, Modifier2(9));
    }

    #[test]
    fn short_input_is_none() {
        assert_eq!(PacketHeader::parse(&[0, 1, 2]), None);
        assert!(PacketHeader::parse(&[0, 1, 2, 3, 4]).is_some());
    }

    #[test]
    fn pong_bytes() {
        assert_eq!(PacketHeader::PONG.to_bytes(), [0x64, 0, 0, 1]);
    }
}
