//! SCGI: a netstring header of NUL-separated pairs, then `CONTENT_LENGTH` bytes of body.
//!
//! ```text
//! request := <len> ":" ( name NUL value NUL )* "," body
//! ```
//! The spec's rules: `CONTENT_LENGTH` first (non-empty digits), `SCGI` = `1` present, no
//! duplicate names. nginx 1.22 breaks the last one (one `HTTP_COOKIE` per Cookie line):
//! [`Duplicates::Join`] accepts such a header and joins the values.

mod decode;

use bytes::BufMut;

use decode::NameSet;
pub use decode::{Duplicates, ScgiDecoder, ScgiHead, ScgiHeader, ScgiLimits, parse_header};

use crate::Env;

/// A malformed SCGI request or an env that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netstring length is empty, not decimal, has a leading zero or too many digits.
    #[error("invalid SCGI netstring length")]
    BadLength,
    /// The header is over the configured limit.
    #[error("SCGI header of {size} bytes is over the limit of {limit} bytes")]
    HeaderTooLarge {
        /// The announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The netstring does not end with `,`.
    #[error("SCGI netstring does not end with ','")]
    MissingComma,
    /// The header block does not end with NUL, or has a name without a value.
    #[error("SCGI header is not a sequence of NUL-terminated name/value pairs")]
    BadPairs,
    /// A pair with an empty name.
    #[error("SCGI header has an empty name")]
    EmptyName,
    /// The first pair is not `CONTENT_LENGTH`.
    #[error("SCGI header does not start with CONTENT_LENGTH")]
    ContentLengthNotFirst,
    /// `CONTENT_LENGTH` is not a non-empty decimal number.
    #[error("SCGI CONTENT_LENGTH is not a decimal number")]
    InvalidContentLength,
    /// No `SCGI` = `1` pair.
    #[error("SCGI header has no SCGI=1")]
    MissingScgi,
    /// A name appears twice.
    #[error("SCGI header repeats a name")]
    DuplicateName,
    /// A name or value holds a NUL byte (encoding only).
    #[error("SCGI names and values cannot hold NUL bytes")]
    Nul,
    /// The body is over the configured limit.
    #[error("SCGI body of {length} bytes is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: u64,
    },
}

/// Writes `env` as an SCGI request header (the netstring; the body follows it).
///
/// The env must already follow the spec: `CONTENT_LENGTH` first with a decimal value,
/// `SCGI` = `1` somewhere, no repeated or empty name, no NUL byte
/// ([`EnvBuilder`](crate::EnvBuilder) with [`Flavor::Scgi`](crate::Flavor::Scgi) builds
/// one). Nothing is written on error.
///
/// ```
/// use cgi_family::{Env, scgi};
/// let env: Env = [("CONTENT_LENGTH", "27"), ("SCGI", "1"), ("REQUEST_METHOD", "POST"),
///                 ("REQUEST_URI", "/deepthought")].into_iter().collect();
/// let mut out = Vec::new();
/// scgi::encode_request(&env, &mut out)?;
/// assert!(out.starts_with(b"70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00"));
/// assert!(out.ends_with(b"/deepthought\x00,"));
/// # Ok::<(), scgi::Error>(())
/// ```
pub fn encode_request<B: BufMut>(env: &Env, dst: &mut B) -> Result<usize, Error> {
    let mut pairs = env.iter();
    match pairs.next() {
        Some((b"CONTENT_LENGTH", v)) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => {}
        Some((b"CONTENT_LENGTH", _)) => return Err(Error::InvalidContentLength),
        _ => return Err(Error::ContentLengthNotFirst),
    }
    if !env.iter().any(|(k, v)| k == b"SCGI" && v == b"1") {
        return Err(Error::MissingScgi);
    }
    let mut size = 0;
    let mut pairs = 0;
    let mut seen = NameSet::default();
    for (k, v) in env.iter() {
        if k.is_empty() {
            return Err(Error::EmptyName);
        }
        if !seen.insert(k) && env.get_all(k).nth(1).is_some() {
            return Err(Error::DuplicateName);
        }
        size += k.len() + v.len() + 2;
        pairs += 1;
    }
    let digits = decode::decimal_digits(size);
    let mut prefix = [0u8; 20];
    let mut n = size;
    for d in prefix[..digits].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut out = Vec::with_capacity(digits + size + 2);
    out.extend_from_slice(&prefix[..digits]);
    out.push(b':');
    for (k, v) in env.iter() {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(b',');
    // Exactly two NULs per pair, the terminators: any other is inside a name or value.
    let mut nuls = 0;
    let _ = decode::for_each_nul(&out, |_| {
        nuls += 1;
        Ok(())
    });
    if nuls != 2 * pairs {
        return Err(Error::Nul);
    }
    dst.put_slice(&out);
    Ok(digits + size + 2)
}
