//! The vars block: `u16 LE key_size | key | u16 LE val_size | val`, repeated.
//!
//! No count, no terminator, no padding: the block ends exactly at the header's `datasize`.

use std::fmt;
use std::iter::FusedIterator;

use crate::Error;

/// The largest vars block the protocol can carry (the u16 `datasize`).
pub const MAX_BLOCK_SIZE: usize = u16::MAX as usize;

/// The default cap on the number of vars in one packet (gunicorn's cap; uWSGI's default
/// `--max-vars 64` accepts 128). nginx sends about 15 params plus one var per header.
pub const DEFAULT_MAX_VARS: usize = 1000;

/// Limits applied while decoding.
///
/// ```
/// use uwsgi_proto::Limits;
/// // uWSGI's defaults: --buffer-size 4096, no --limit-post.
/// let uwsgi_like = Limits::new().max_block_size(4096);
/// assert_eq!(uwsgi_like.block_size(), 4096);
/// assert_eq!(Limits::default().block_size(), 65535);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_block_size: usize,
    max_vars: usize,
    max_body: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    /// The defaults: blocks up to 65535 bytes (the protocol maximum, not uWSGI's 4096),
    /// [`DEFAULT_MAX_VARS`] vars, no body limit.
    pub const fn new() -> Self {
        Self {
            max_block_size: MAX_BLOCK_SIZE,
            max_vars: DEFAULT_MAX_VARS,
            max_body: None,
        }
    }

    /// Sets the largest accepted vars block (uWSGI's `--buffer-size`); values over 65535
    /// are clamped to 65535.
    pub const fn max_block_size(mut self, bytes: usize) -> Self {
        self.max_block_size = if bytes > MAX_BLOCK_SIZE {
            MAX_BLOCK_SIZE
        } else {
            bytes
        };
        self
    }

    /// Sets the largest accepted number of vars in one packet.
    pub const fn max_vars(mut self, count: usize) -> Self {
        self.max_vars = count;
        self
    }

    /// Sets the largest accepted `CONTENT_LENGTH` (uWSGI's `--limit-post`); `None` for none.
    pub const fn max_body(mut self, bytes: Option<u64>) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest accepted vars block.
    pub const fn block_size(&self) -> usize {
        self.max_block_size
    }

    /// The largest accepted number of vars.
    pub const fn vars(&self) -> usize {
        self.max_vars
    }

    /// The largest accepted body, if limited.
    pub const fn body(&self) -> Option<u64> {
        self.max_body
    }

    /// Checks a body length against [`Limits::body`].
    pub const fn check_body(&self, length: u64) -> Result<u64, Error> {
        match self.max_body {
            Some(limit) if length > limit => Err(Error::BodyTooLarge { length, limit }),
            _ => Ok(length),
        }
    }
}

#[inline]
fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Validates one pair starting at `pos`; returns the end of the pair.
#[inline]
pub(crate) fn check_pair(block: &[u8], pos: usize) -> Result<usize, Error> {
    let len = block.len();
    if len - pos < 2 {
        return Err(Error::TruncatedKeySize { offset: pos });
    }
    let klen = le16(block, pos);
    if klen == 0 {
        return Err(Error::EmptyKey { offset: pos });
    }
    let vpos = pos + 2 + klen;
    if vpos > len {
        return Err(Error::KeyPastEnd {
            offset: pos,
            len: klen,
        });
    }
    if len - vpos < 2 {
        return Err(Error::TruncatedValueSize { offset: vpos });
    }
    let vlen = le16(block, vpos);
    let end = vpos + 2 + vlen;
    if end > len {
        return Err(Error::ValuePastEnd {
            offset: vpos,
            len: vlen,
        });
    }
    Ok(end)
}

/// A validated vars block, borrowed from the caller's buffer.
///
/// Parsing checks every length once and counts the pairs; it never allocates or copies.
/// Iteration and lookup then hand out sub-slices of the same buffer.
/// Duplicate keys are kept as sent: [`Vars::get`] returns the first, [`Vars::get_all`]
/// every one, in order.
///
/// ```
/// use uwsgi_proto::Vars;
/// let block = b"\x0e\x00REQUEST_METHOD\x03\x00GET\x09\x00PATH_INFO\x01\x00/";
/// let vars = Vars::parse(block)?;
/// assert_eq!(vars.len(), 2);
/// assert_eq!(vars.get(b"PATH_INFO"), Some(&b"/"[..]));
/// for (key, value) in vars {
///     println!("{} = {}", String::from_utf8_lossy(key), String::from_utf8_lossy(value));
/// }
/// # Ok::<(), uwsgi_proto::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Vars<'a> {
    block: &'a [u8],
    count: usize,
}

impl<'a> Vars<'a> {
    /// Validates `block` with the default [`Limits`].
    pub fn parse(block: &'a [u8]) -> Result<Self, Error> {
        Self::parse_with(block, &Limits::new())
    }

    /// Validates `block`: every length inside the block, no empty key, nothing after the
    /// last pair, the block and var count within `limits`.
    pub fn parse_with(block: &'a [u8], limits: &Limits) -> Result<Self, Error> {
        if block.len() > limits.max_block_size {
            return Err(Error::BlockTooLarge {
                size: block.len(),
                limit: limits.max_block_size,
            });
        }
        let mut pos = 0;
        let mut count = 0;
        while pos < block.len() {
            pos = check_pair(block, pos)?;
            count += 1;
            if count > limits.max_vars {
                return Err(Error::TooManyVars {
                    limit: limits.max_vars,
                });
            }
        }
        Ok(Self { block, count })
    }

    /// A block already validated (by the incremental decoder) with `count` pairs.
    pub(crate) const fn validated(block: &'a [u8], count: usize) -> Self {
        Self { block, count }
    }

    /// The number of pairs.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether the block holds no pair.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The raw block, as it was on the wire.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.block
    }

    /// The pairs, in wire order.
    pub const fn iter(&self) -> VarsIter<'a> {
        VarsIter {
            block: self.block,
            pos: 0,
            left: self.count,
        }
    }

    /// The value of the first var named `key`.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.iter().find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The values of every var named `key`, in wire order.
    pub fn get_all<'k>(&self, key: &'k [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a, 'k> {
        self.iter()
            .filter_map(move |(k, v)| (k == key).then_some(v))
    }

    /// The body length announced by `CONTENT_LENGTH`: 0 when absent or empty (nginx sends
    /// an empty value for a request without a body), an error when not a decimal number.
    pub fn content_length(&self) -> Result<u64, Error> {
        self.get(b"CONTENT_LENGTH")
            .map_or(Ok(0), parse_content_length)
    }
}

/// Parses a `CONTENT_LENGTH` value: empty means 0; otherwise ASCII digits only, fitting
/// in a `u64`. (uWSGI reads leading digits and ignores the rest; a strict codec refuses
/// `12abc` instead of guessing.)
///
/// ```
/// use uwsgi_proto::{parse_content_length, Error};
/// assert_eq!(parse_content_length(b""), Ok(0));
/// assert_eq!(parse_content_length(b"1024"), Ok(1024));
/// assert_eq!(parse_content_length(b"12abc"), Err(Error::InvalidContentLength));
/// ```
pub fn parse_content_length(value: &[u8]) -> Result<u64, Error> {
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(Error::InvalidContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Error::InvalidContentLength)?;
    }
    Ok(n)
}

impl fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (Lossy(k), Lossy(v))))
            .finish()
    }
}

struct Lossy<'a>(&'a [u8]);
impl fmt::Debug for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.0), f)
    }
}

impl<'a> IntoIterator for Vars<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = VarsIter<'a>;
    fn into_iter(self) -> VarsIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Vars<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = VarsIter<'a>;
    fn into_iter(self) -> VarsIter<'a> {
        self.iter()
    }
}

/// Iterator over the `(key, value)` pairs of a [`Vars`] block, borrowing the buffer.
#[derive(Debug, Clone)]
pub struct VarsIter<'a> {
    block: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for VarsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The block was validated, so the `get`s below cannot fail; they keep the
        // iterator panic-free even so.
        let b = self.block;
        let pos = self.pos;
        let klen = usize::from(u16::from_le_bytes([*b.get(pos)?, *b.get(pos + 1)?]));
        let key = b.get(pos + 2..pos + 2 + klen)?;
        let vpos = pos + 2 + klen;
        let vlen = usize::from(u16::from_le_bytes([*b.get(vpos)?, *b.get(vpos + 1)?]));
        let value = b.get(vpos + 2..vpos + 2 + vlen)?;
        self.pos = vpos + 2 + vlen;
        self.left -= 1;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for VarsIter<'_> {}
impl FusedIterator for VarsIter<'_> {}

/// A validated uwsgi *array* (u16 LE size + bytes, repeated, no keys), the payload of
/// RPC packets ([`Modifier1::RPC`](crate::Modifier1::RPC)): function name, then arguments.
///
/// ```
/// use uwsgi_proto::Array;
/// let payload = b"\x05\x00hello\x05\x00world";
/// let items: Vec<&[u8]> = Array::parse(payload)?.iter().collect();
/// assert_eq!(items, [&b"hello"[..], &b"world"[..]]);
/// # Ok::<(), uwsgi_proto::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Array<'a> {
    payload: &'a [u8],
    count: usize,
}

impl<'a> Array<'a> {
    /// Validates every item length of `payload`.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut pos = 0;
        let mut count = 0;
        while pos < payload.len() {
            if payload.len() - pos < 2 {
                return Err(Error::TruncatedItemSize { offset: pos });
            }
            let len = le16(payload, pos);
            if payload.len() - pos - 2 < len {
                return Err(Error::ItemPastEnd { offset: pos, len });
            }
            pos += 2 + len;
            count += 1;
        }
        Ok(Self { payload, count })
    }

    /// The number of items.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no item.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items, in order (empty items included; uWSGI's RPC skips them).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + use<'a> {
        let payload = self.payload;
        let mut pos = 0;
        (0..self.count).map(move |_| {
            let len = le16(payload, pos);
            let item = &payload[pos + 2..pos + 2 + len];
            pos += 2 + len;
            item
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &[u8], v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
        out
    }

    #[test]
    fn empty_block_is_valid() {
        let v = Vars::parse(b"").unwrap();
        assert!(v.is_empty());
        assert_eq!(v.iter().count(), 0);
        assert_eq!(v.content_length(), Ok(0));
    }

    #[test]
    fn empty_value_last() {
        let b = [pair(b"A", b"1"), pair(b"CONTENT_TYPE", b"")].concat();
        let v = Vars::parse(&b).unwrap();
        assert_eq!(v.get(b"CONTENT_TYPE"), Some(&b""[..]));
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn each_truncation_has_its_error() {
        let good = pair(b"KEY", b"value");
        // 1 stray byte after a good pair.
        let b = [good.clone(), vec![3]].concat();
        assert_eq!(
            Vars::parse(&b),
            Err(Error::TruncatedKeySize { offset: good.len() })
        );
        // key length past the end
        assert_eq!(
            Vars::parse(b"\x09\x00KEY"),
            Err(Error::KeyPastEnd { offset: 0, len: 9 })
        );
        // key, then nothing
        assert_eq!(
            Vars::parse(b"\x03\x00KEY"),
            Err(Error::TruncatedValueSize { offset: 5 })
        );
        // key, then half a value length
        assert_eq!(
            Vars::parse(b"\x03\x00KEY\x01"),
            Err(Error::TruncatedValueSize { offset: 5 })
        );
        // value past the end
        assert_eq!(
            Vars::parse(b"\x03\x00KEY\x05\x00abc"),
            Err(Error::ValuePastEnd { offset: 5, len: 5 })
        );
        // empty key
        assert_eq!(
            Vars::parse(b"\x00\x00\x01\x00a"),
            Err(Error::EmptyKey { offset: 0 })
        );
    }

    #[test]
    fn limits_apply() {
        let b = [pair(b"A", b"1"), pair(b"B", b"2"), pair(b"C", b"3")].concat();
        assert_eq!(
            Vars::parse_with(&b, &Limits::new().max_vars(2)),
            Err(Error::TooManyVars { limit: 2 })
        );
        assert!(Vars::parse_with(&b, &Limits::new().max_vars(3)).is_ok());
        assert_eq!(
            Vars::parse_with(&b, &Limits::new().max_block_size(b.len() - 1)),
            Err(Error::BlockTooLarge {
                size: b.len(),
                limit: b.len() - 1
            })
        );
        assert_eq!(Limits::new().max_block_size(1 << 20).block_size(), 65535);
    }

    #[test]
    fn duplicates_are_kept_in_order() {
        let b = [pair(b"HTTP_COOKIE", b"a=1"), pair(b"HTTP_COOKIE", b"b=2")].concat();
        let v = Vars::parse(&b).unwrap();
        assert_eq!(v.get(b"HTTP_COOKIE"), Some(&b"a=1"[..]));
        assert_eq!(
            v.get_all(b"HTTP_COOKIE").collect::<Vec<_>>(),
            [&b"a=1"[..], &b"b=2"[..]]
        );
    }

    #[test]
    fn content_length_rules() {
        let ok = pair(b"CONTENT_LENGTH", b"17");
        assert_eq!(Vars::parse(&ok).unwrap().content_length(), Ok(17));
        let empty = pair(b"CONTENT_LENGTH", b"");
        assert_eq!(Vars::parse(&empty).unwrap().content_length(), Ok(0));
        let bad = pair(b"CONTENT_LENGTH", b"-1");
        assert_eq!(
            Vars::parse(&bad).unwrap().content_length(),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"99999999999999999999999"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            Limits::new().max_body(Some(10)).check_body(11),
            Err(Error::BodyTooLarge {
                length: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn array_errors() {
        assert_eq!(
            Array::parse(b"\x01"),
            Err(Error::TruncatedItemSize { offset: 0 })
        );
        assert_eq!(
            Array::parse(b"\x02\x00a"),
            Err(Error::ItemPastEnd { offset: 0, len: 2 })
        );
        let a = Array::parse(b"\x00\x00\x01\x00x").unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), [&b""[..], &b"x"[..]]);
    }
}
