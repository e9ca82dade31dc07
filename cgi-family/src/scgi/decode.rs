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
        let mut content_length = None;
        let mut has_scgi = false;
        let mut names: [u64; 64] = [0; 64];
        let mut spill: Vec<u64> = Vec::new();
        let mut it = block[..block.len() - 1].split(|&b| b == 0);
        while let Some(name) = it.next() {
            let value = it.next().ok_or(Error::BadPairs)?;
            if name.is_empty() {
                return Err(Error::EmptyName);
            }
            if count == 0 {
                if name != b"CONTENT_LENGTH" {
                    return Err(Error::ContentLengthNotFirst);
                }
                content_length = Some(parse_length(value)?);
            }
            has_scgi |= name == b"SCGI" && value == b"1";
            if limits.duplicates == Duplicates::Reject {
                let h = hash(name);
                let seen = if count < names.len() {
                    &names[..count]
                } else {
                    &spill[..]
                };
                if (seen.contains(&h) || (count >= names.len() && names.contains(&h)))
                    && repeated(block, name)
                {
                    return Err(Error::DuplicateName);
                }
                if count < names.len() {
                    names[count] = h;
                } else {
                    spill.push(h);
                }
            }
            count += 1;
        }
        if !has_scgi {
            return Err(Error::MissingScgi);
        }
        let content_length = content_length.ok_or(Error::ContentLengthNotFirst)?;
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
        let mut it = self.block[..self.block.len() - 1].split(|&b| b == 0);
        std::iter::from_fn(move || Some((it.next()?, it.next()?)))
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

fn repeated(block: &[u8], name: &[u8]) -> bool {
    let mut it = block[..block.len() - 1].split(|&b| b == 0);
    let mut n = 0;
    while let (Some(k), Some(_)) = (it.next(), it.next()) {
        n += usize::from(k == name);
    }
    n > 1
}

fn hash(name: &[u8]) -> u64 {
    // FNV-1a: cheap and good enough to skip the byte comparison for distinct names.
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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

/// Reads the netstring length prefix: `Ok(None)` while incomplete, else the length and
/// where the block starts.
fn netstring_len(buf: &[u8], limits: &ScgiLimits) -> Result<Option<(usize, usize)>, Error> {
    let max_digits = limits.max_header.to_string().len();
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
