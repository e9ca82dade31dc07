//! Name-value pairs (spec section 3.4): 1-byte lengths up to 127, else 4 bytes with the
//! high bit set.

use bytes::{BufMut, Bytes};

use super::Error;
use crate::Env;

const MAX_PAIR_LEN: usize = 0x7fff_ffff;

/// Reads one length at `pos`: `(length, bytes used)`.
#[inline]
fn read_len(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    let first = *b.get(pos)?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), 1));
    }
    let q = b.get(pos..pos + 4)?;
    let len = u32::from_be_bytes([q[0] & 0x7f, q[1], q[2], q[3]]);
    Some((len as usize, 4))
}

/// Validates the pair at `pos`; returns where it ends.
#[inline]
fn check_pair(b: &[u8], pos: usize) -> Result<usize, Error> {
    let (nlen, n1) = read_len(b, pos).ok_or(Error::TruncatedLength { offset: pos })?;
    let (vlen, n2) = read_len(b, pos + n1).ok_or(Error::TruncatedLength { offset: pos })?;
    let end = (pos + n1 + n2)
        .checked_add(nlen)
        .and_then(|e| e.checked_add(vlen))
        .filter(|&e| e <= b.len())
        .ok_or(Error::PairPastEnd { offset: pos })?;
    Ok(end)
}

/// A validated name-value stream (the content of a whole PARAMS or GET_VALUES stream),
/// borrowed: parsing checks every length once and never allocates.
///
/// ```
/// use cgi_family::fastcgi::Params;
/// let stream = b"\x0e\x03REQUEST_METHODGET\x0b\x00SERVER_NAME";
/// let p = Params::parse(stream)?;
/// assert_eq!(p.get(b"REQUEST_METHOD"), Some(&b"GET"[..]));
/// assert_eq!(p.len(), 2);
/// # Ok::<(), cgi_family::fastcgi::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a> {
    stream: &'a [u8],
    count: usize,
}

impl<'a> Params<'a> {
    /// Validates `stream`: every length inside it, nothing left over.
    pub fn parse(stream: &'a [u8]) -> Result<Self, Error> {
        let mut pos = 0;
        let mut count = 0;
        while pos < stream.len() {
            pos = check_pair(stream, pos)?;
            count += 1;
        }
        Ok(Self { stream, count })
    }

    /// The number of pairs.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no pair.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The pairs in order.
    pub const fn iter(&self) -> ParamsIter<'a> {
        ParamsIter {
            stream: self.stream,
            pos: 0,
            left: self.count,
        }
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.iter().find_map(|(k, v)| (k == name).then_some(v))
    }
}

impl<'a> IntoIterator for Params<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = ParamsIter<'a>;
    fn into_iter(self) -> ParamsIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Params`] stream.
#[derive(Debug, Clone)]
pub struct ParamsIter<'a> {
    stream: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for ParamsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.stream;
        let (nlen, n1) = read_len(b, self.pos)?;
        let (vlen, n2) = read_len(b, self.pos + n1)?;
        let start = self.pos + n1 + n2;
        let name = b.get(start..start + nlen)?;
        let value = b.get(start + nlen..start + nlen + vlen)?;
        self.pos = start + nlen + vlen;
        self.left -= 1;
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ParamsIter<'_> {}

/// Decodes a whole params stream into an [`Env`] sharing `stream`'s buffer.
pub fn decode_params(stream: &Bytes) -> Result<Env, Error> {
    let p = Params::parse(stream)?;
    let mut env = Env::with_capacity(p.len());
    for (k, v) in p {
        env.push(stream.slice_ref(k), stream.slice_ref(v));
    }
    Ok(env)
}

/// The encoded size of one pair.
pub fn pair_len(name: &[u8], value: &[u8]) -> Result<usize, Error> {
    let one = |l: usize| -> Result<usize, Error> {
        match l {
            0..=127 => Ok(1),
            128..=MAX_PAIR_LEN => Ok(4),
            _ => Err(Error::PairTooLong { len: l }),
        }
    };
    Ok(one(name.len())? + one(value.len())? + name.len() + value.len())
}

fn put_len<B: BufMut>(dst: &mut B, len: usize) {
    if len <= 127 {
        dst.put_u8(len as u8);
    } else {
        dst.put_u32(len as u32 | 0x8000_0000);
    }
}

/// Writes one pair (1-byte lengths up to 127, else 4, as nginx and flup do).
pub fn encode_pair<B: BufMut>(name: &[u8], value: &[u8], dst: &mut B) -> Result<(), Error> {
    pair_len(name, value)?;
    put_len(dst, name.len());
    put_len(dst, value.len());
    dst.put_slice(name);
    dst.put_slice(value);
    Ok(())
}

/// Writes the pairs of `env` as one name-value stream (no record framing).
pub fn encode_params<B: BufMut>(env: &Env, dst: &mut B) -> Result<usize, Error> {
    let mut n = 0;
    for (k, v) in env.iter() {
        n += pair_len(k, v)?;
    }
    for (k, v) in env.iter() {
        encode_pair(k, v, dst)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_byte_lengths() {
        let v = vec![b'x'; 200];
        let mut out = Vec::new();
        encode_pair(b"X", &v, &mut out).unwrap();
        assert_eq!(&out[..5], &[1, 0x80, 0, 0, 200]);
        let p = Params::parse(&out).unwrap();
        assert_eq!(p.get(b"X").unwrap().len(), 200);
        // A decoder accepts the 4-byte form for short lengths too.
        let odd = [0x80, 0, 0, 1, 0x80, 0, 0, 2, b'A', b'h', b'i'];
        assert_eq!(Params::parse(&odd).unwrap().get(b"A"), Some(&b"hi"[..]));
    }

    #[test]
    fn truncations() {
        assert_eq!(
            Params::parse(&[0x80, 0]),
            Err(Error::TruncatedLength { offset: 0 })
        );
        assert_eq!(
            Params::parse(&[1]),
            Err(Error::TruncatedLength { offset: 0 })
        );
        assert_eq!(
            Params::parse(&[1, 1, b'a']),
            Err(Error::PairPastEnd { offset: 0 })
        );
        assert_eq!(
            Params::parse(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(Error::PairPastEnd { offset: 0 })
        );
    }
}
