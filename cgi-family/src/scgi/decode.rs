//! Decoding the SCGI request header, one-shot and incrementally.

use bytes::{Bytes, BytesMut};

use super::Error;
use crate::Env;

/// What to do with a repeated name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Duplicates {
    /// Refuse the request, as the spec says.
    #[default]
    Reject,
    /// Accept it (nginx 1.22 repeats `HTTP_COOKIE`): [`ScgiHeader::to_env`] joins the
    /// values (`"; "` for cookies, `", "` otherwise).
    Join,
}

/// Limits and policy for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScgiLimits {
    /// The largest header block (default 65535, nginx's largest).
    pub max_header: usize,
    /// The largest body (`None`: no limit).
    pub max_body: Option<u64>,
    /// The repeated-name policy.
    pub duplicates: Duplicates,
}

impl Default for ScgiLimits {
    fn default() -> Self {
        Self {
            max_header: 65535,
            max_body: None,
            duplicates: Duplicates::Reject,
        }
    }
}

/// A validated SCGI header block, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScgiHeader<'a> {
    block: &'a [u8],
    count: usize,
    content_length: u64,
}

impl<'a> ScgiHeader<'a> {
    /// Validates a header block (the netstring's content).
    pub fn parse(block: &'a [u8], limits: &ScgiLimits) -> Result<Self, Error> {
        if block.last() != Some(&0) {
            return Err(Error::BadPairs);
        }
        let mut count = 0;
        let mut content_length = 0;
        let mut has_scgi = false;
        let mut seen = NameSet::default();
        let reject = limits.duplicates == Duplicates::Reject;
        let mut start = 0;
        let mut name: &[u8] = &[];
        let mut in_value = false;
        for_each_nul(block, |at| {
            if !in_value {
                name = &block[start..at];
                if name.is_empty() {
                    return Err(Error::EmptyName);
                }
                in_value = true;
                start = at + 1;
                return Ok(());
            }
            let value = &block[start..at];
            if count == 0 {
                if name != b"CONTENT_LENGTH" {
                    return Err(Error::ContentLengthNotFirst);
                }
                content_length = parse_length(value)?;
            }
            has_scgi |= name == b"SCGI" && value == b"1";
            if reject && !seen.insert(name) && repeated(block, name) {
                return Err(Error::DuplicateName);
            }
            count += 1;
            in_value = false;
            start = at + 1;
            Ok(())
        })?;
        if in_value {
            return Err(Error::BadPairs); // a name without a value
        }
        if count == 0 {
            return Err(Error::ContentLengthNotFirst);
        }
        if !has_scgi {
            return Err(Error::MissingScgi);
        }
        if let Some(limit) = limits.max_body.filter(|&l| content_length > l) {
            return Err(Error::BodyTooLarge {
                length: content_length,
                limit,
            });
        }
        Ok(Self {
            block,
            count,
            content_length,
        })
    }

    /// The number of pairs.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no pair (never true for a valid header).
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The body length.
    pub const fn content_length(&self) -> u64 {
        self.content_length
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        Pairs::new(self.block).map_while(Result::ok)
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.iter().find_map(|(k, v)| (k == name).then_some(v))
    }

    /// The env, sharing `buf` (the buffer this header borrows from); repeated names (only
    /// possible with [`Duplicates::Join`]) are joined.
    pub fn to_env(&self, buf: &Bytes) -> Env {
        let mut env = Env::with_capacity(self.count);
        for (k, v) in self.iter() {
            if let Some(existing) = env.get(k) {
                let sep: &[u8] = if k == b"HTTP_COOKIE" { b"; " } else { b", " };
                let joined = [existing, sep, v].concat();
                env.set(buf.slice_ref(k), joined);
            } else {
                env.push(buf.slice_ref(k), buf.slice_ref(v));
            }
        }
        env
    }
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of each NUL byte of `word`, exactly (no carry crosses a byte).
#[inline(always)]
fn nul_mask(word: u64) -> u64 {
    !(((word & LOW7).wrapping_add(LOW7)) | word | LOW7)
}

/// Calls `f` with the position of every NUL byte of `block`, 8 bytes at a time, in a
/// loop the caller's closure is inlined into.
#[inline(always)]
pub(crate) fn for_each_nul(
    block: &[u8],
    mut f: impl FnMut(usize) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut chunks = block.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            continue;
        };
        let mut mask = nul_mask(u64::from_le_bytes(word));
        while mask != 0 {
            f(base + (mask.trailing_zeros() / 8) as usize)?;
            mask &= mask - 1;
        }
        base += 8;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if b == 0 {
            f(base + i)?;
        }
    }
    Ok(())
}

/// Positions of the NUL bytes of a block, 8 bytes at a time (SWAR): SCGI headers have a
/// NUL every dozen bytes, too dense for a `memchr` call per field to pay off.
struct Nuls<'a> {
    block: &'a [u8],
    next_word: usize,
    base: usize,
    mask: u64,
}

impl<'a> Nuls<'a> {
    fn new(block: &'a [u8]) -> Self {
        Self {
            block,
            next_word: 0,
            base: 0,
            mask: 0,
        }
    }
}

impl Iterator for Nuls<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            let start = self.next_word;
            let chunk = self.block.get(start..)?;
            if chunk.is_empty() {
                return None;
            }
            let word = match chunk.first_chunk::<8>() {
                Some(w) => u64::from_le_bytes(*w),
                None => {
                    let mut w = [0xff; 8]; // the tail, padded with non-NUL bytes
                    w[..chunk.len()].copy_from_slice(chunk);
                    u64::from_le_bytes(w)
                }
            };
            self.mask = nul_mask(word);
            self.base = start;
            self.next_word = start + 8;
        }
        let at = self.base + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// NUL-separated `name NUL value NUL` pairs.
struct Pairs<'a> {
    block: &'a [u8],
    nuls: Nuls<'a>,
    pos: usize,
}

impl<'a> Pairs<'a> {
    fn new(block: &'a [u8]) -> Self {
        Self {
            block,
            nuls: Nuls::new(block),
            pos: 0,
        }
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.block;
        if self.pos >= b.len() {
            return None;
        }
        let (Some(n), Some(v)) = (self.nuls.next(), self.nuls.next()) else {
            self.pos = b.len();
            return Some(Err(Error::BadPairs));
        };
        let start = self.pos;
        self.pos = v + 1;
        Some(Ok((&b[start..n], &b[n + 1..v])))
    }
}

/// Names seen so far, as cheap fingerprints (length and the first and last 8 bytes) in a
/// small open-addressing table; a matching fingerprint is confirmed by comparing bytes.
/// No allocation for up to 96 names.
pub(crate) struct NameSet {
    table: [u64; 128],
    len: usize,
    spill: Vec<u64>,
}

impl Default for NameSet {
    fn default() -> Self {
        Self {
            table: [0; 128],
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl NameSet {
    #[inline]
    fn fingerprint(name: &[u8]) -> u64 {
        let n = name.len();
        let (first, last) = match (name.first_chunk::<8>(), name.last_chunk::<8>()) {
            (Some(f), Some(l)) => (u64::from_le_bytes(*f), u64::from_le_bytes(*l)),
            _ => (name.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b)), 0),
        };
        let f = ((n as u64) ^ first ^ last.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        f | 1 // 0 marks an empty slot
    }

    /// Adds `name`; false if a name with the same fingerprint was seen (maybe the same).
    #[inline]
    pub(crate) fn insert(&mut self, name: &[u8]) -> bool {
        let f = Self::fingerprint(name);
        if self.len >= 96 {
            if self.table.contains(&f) || self.spill.contains(&f) {
                return false;
            }
            self.spill.push(f);
            return true;
        }
        let mut i = (f >> 57) as usize;
        loop {
            match self.table[i] {
                0 => {
                    self.table[i] = f;
                    self.len += 1;
                    return true;
                }
                g if g == f => return false,
                _ => i = (i + 1) & 127,
            }
        }
    }
}

/// Whether `name` appears more than once in `block` (confirms a fingerprint match).
fn repeated(block: &[u8], name: &[u8]) -> bool {
    Pairs::new(block)
        .map_while(Result::ok)
        .filter(|(k, _)| *k == name)
        .nth(1)
        .is_some()
}

fn parse_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() {
        return Err(Error::InvalidContentLength);
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(Error::InvalidContentLength);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Error::InvalidContentLength)
    })
}

/// How many decimal digits `n` has.
pub(crate) fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Reads the netstring length prefix: `Ok(None)` while incomplete, else the length and
/// where the block starts.
fn netstring_len(buf: &[u8], limits: &ScgiLimits) -> Result<Option<(usize, usize)>, Error> {
    let max_digits = decimal_digits(limits.max_header);
    let mut len = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i > 0 => return Ok(Some((len, i + 1))),
            b'0'..=b'9' if i < max_digits && !(i == 1 && buf[0] == b'0') => {
                len = len * 10 + usize::from(b - b'0');
            }
            b'0'..=b'9' if i >= max_digits => {
                return Err(Error::HeaderTooLarge {
                    size: len * 10 + usize::from(b - b'0'),
                    limit: limits.max_header,
                });
            }
            _ => return Err(Error::BadLength),
        }
        if len > limits.max_header {
            return Err(Error::HeaderTooLarge {
                size: len,
                limit: limits.max_header,
            });
        }
    }
    Ok(None)
}

/// Parses an SCGI request header from the start of `buf`: `Ok(None)` while incomplete,
/// else the header and the bytes it used (the body follows).
///
/// ```
/// use cgi_family::scgi::{parse_header, ScgiLimits};
/// let wire = b"70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00\
///              REQUEST_URI\x00/deepthought\x00,What is the answer to life?";
/// let (h, used) = parse_header(wire, &ScgiLimits::default())?.unwrap();
/// assert_eq!(h.content_length(), 27);
/// assert_eq!(h.get(b"REQUEST_URI"), Some(&b"/deepthought"[..]));
/// assert_eq!(&wire[used..], b"What is the answer to life?");
/// # Ok::<(), cgi_family::scgi::Error>(())
/// ```
pub fn parse_header<'a>(
    buf: &'a [u8],
    limits: &ScgiLimits,
) -> Result<Option<(ScgiHeader<'a>, usize)>, Error> {
    let Some((len, start)) = netstring_len(buf, limits)? else {
        return Ok(None);
    };
    let Some(&end_byte) = buf.get(start + len) else {
        return Ok(None);
    };
    if end_byte != b',' {
        return Err(Error::MissingComma);
    }
    let header = ScgiHeader::parse(&buf[start..start + len], limits)?;
    Ok(Some((header, start + len + 1)))
}

/// A complete SCGI request head cut out of the stream without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScgiHead {
    raw: Bytes,
    env: Env,
    content_length: u64,
}

impl ScgiHead {
    /// The env (sharing the connection buffer).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Takes the env.
    pub fn into_env(self) -> Env {
        self.env
    }

    /// The body length.
    pub const fn content_length(&self) -> u64 {
        self.content_length
    }

    /// The head's wire bytes (the netstring).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// Decodes one SCGI request from bytes fed as they arrive, in any split; the length
/// prefix is read once and the block validated once, when all of it is in.
#[derive(Debug, Clone)]
pub struct ScgiDecoder {
    limits: ScgiLimits,
    prefix: Option<(usize, usize)>,
    head_done: bool,
    remaining: u64,
}

impl ScgiDecoder {
    /// A decoder with `limits`.
    pub const fn new(limits: ScgiLimits) -> Self {
        Self {
            limits,
            prefix: None,
            head_done: false,
            remaining: 0,
        }
    }

    /// Returns the head once complete, removing its bytes from `src`.
    pub fn decode_head(&mut self, src: &mut BytesMut) -> Result<Option<ScgiHead>, Error> {
        if self.head_done {
            return Ok(None);
        }
        let (len, start) = match self.prefix {
            Some(p) => p,
            None => match netstring_len(src, &self.limits)? {
                Some(p) => {
                    self.prefix = Some(p);
                    p
                }
                None => return Ok(None),
            },
        };
        let Some(&end_byte) = src.get(start + len) else {
            return Ok(None);
        };
        if end_byte != b',' {
            return Err(Error::MissingComma);
        }
        let raw = src.split_to(start + len + 1).freeze();
        let header = ScgiHeader::parse(&raw[start..start + len], &self.limits)?;
        let env = header.to_env(&raw);
        self.head_done = true;
        self.remaining = header.content_length();
        Ok(Some(ScgiHead {
            content_length: header.content_length(),
            env,
            raw,
        }))
    }

    /// Body bytes still to come.
    pub const fn body_remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the head and the whole body have been handed out.
    pub const fn is_done(&self) -> bool {
        self.head_done && self.remaining == 0
    }

    /// Hands out buffered body bytes, never past `CONTENT_LENGTH`.
    pub fn decode_body(&mut self, src: &mut BytesMut) -> Option<Bytes> {
        if !self.head_done || self.remaining == 0 || src.is_empty() {
            return None;
        }
        let n = usize::try_from(self.remaining).map_or(src.len(), |r| r.min(src.len()));
        self.remaining -= n as u64;
        Some(src.split_to(n).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(block: &[u8]) -> Result<ScgiHeader<'_>, Error> {
        ScgiHeader::parse(block, &ScgiLimits::default())
    }

    #[test]
    fn each_rule_has_its_error() {
        assert_eq!(
            h(b"SCGI\x001\x00CONTENT_LENGTH\x000\x00").unwrap_err(),
            Error::ContentLengthNotFirst
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x00\x00SCGI\x001\x00").unwrap_err(),
            Error::InvalidContentLength
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x00x1\x00SCGI\x001\x00").unwrap_err(),
            Error::InvalidContentLength
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x000\x00").unwrap_err(),
            Error::MissingScgi
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x000\x00SCGI\x001").unwrap_err(),
            Error::BadPairs
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x000\x00SCGI\x00").unwrap_err(),
            Error::BadPairs
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x000\x00\x001\x00").unwrap_err(),
            Error::EmptyName
        );
        assert_eq!(
            h(b"CONTENT_LENGTH\x000\x00SCGI\x001\x00A\x00x\x00A\x00y\x00").unwrap_err(),
            Error::DuplicateName
        );
        let join = ScgiLimits {
            duplicates: Duplicates::Join,
            ..ScgiLimits::default()
        };
        let block =
            b"CONTENT_LENGTH\x000\x00SCGI\x001\x00HTTP_COOKIE\x00a=1\x00HTTP_COOKIE\x00b=2\x00";
        let hdr = ScgiHeader::parse(block, &join).unwrap();
        let env = hdr.to_env(&Bytes::from_static(block));
        assert_eq!(env.get("HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
    }

    #[test]
    fn nul_positions_match_a_plain_scan() {
        for len in 0..40 {
            let block: Vec<u8> = (0..len)
                .map(|i| {
                    if i % 3 == 0 || i % 7 == 0 {
                        0
                    } else {
                        0x80 | i as u8
                    }
                })
                .collect();
            let want: Vec<usize> = block
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == 0)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(Nuls::new(&block).collect::<Vec<_>>(), want, "len {len}");
        }
    }

    #[test]
    fn many_distinct_names_are_not_duplicates() {
        let mut block = b"CONTENT_LENGTH\x000\x00SCGI\x001\x00".to_vec();
        for i in 0..200 {
            block.extend_from_slice(format!("N{i}\x00v\x00").as_bytes());
        }
        assert_eq!(h(&block).unwrap().len(), 202);
        block.extend_from_slice(b"N150\x00again\x00");
        assert_eq!(h(&block).unwrap_err(), Error::DuplicateName);
    }

    #[test]
    fn netstring_prefix_rules() {
        let l = ScgiLimits::default();
        assert_eq!(netstring_len(b"12", &l), Ok(None));
        assert_eq!(netstring_len(b":", &l), Err(Error::BadLength));
        assert_eq!(netstring_len(b"01:", &l), Err(Error::BadLength));
        assert_eq!(netstring_len(b"1x", &l), Err(Error::BadLength));
        assert_eq!(
            netstring_len(b"70000:", &l),
            Err(Error::HeaderTooLarge {
                size: 70000,
                limit: 65535
            })
        );
        assert_eq!(
            netstring_len(b"9999999999999999999999", &l),
            Err(Error::HeaderTooLarge {
                size: 99_999,
                limit: 65535
            })
        );
        assert_eq!(netstring_len(b"70:", &l), Ok(Some((70, 3))));
    }
}
