//! CGI response heads (RFC 3875 section 6), shared by FastCGI, SCGI, uwsgi and CGI
//! scripts.

use bytes::{Bytes, BytesMut};

/// What kind of response the head describes (RFC 3875 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// A document (Content-Type, optional Status).
    Document,
    /// `Location: /path` with nothing else: the server should serve that path instead.
    /// (nginx does not; it sends a 302 with the relative Location.)
    LocalRedirect,
    /// `Location: scheme://...` without a body: 302 Found.
    ClientRedirect,
    /// `Location: scheme://...` with Status and Content-Type: sent as given.
    ClientRedirectWithDocument,
}

/// How to treat a first line that is an HTTP status line (`HTTP/1.1 200 OK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusLine {
    /// Use its status (what nginx does for uwsgi and SCGI; NPH-style apps send one).
    #[default]
    Accept,
    /// Skip it (what nginx does for FastCGI).
    Ignore,
    /// Refuse the head.
    Reject,
}

/// A malformed CGI response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The head is over the limit without an end.
    #[error("CGI response head is over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A line that is not `Name: value` (no colon, space before the colon, a bad name
    /// byte, or a continuation line).
    #[error("malformed CGI response header line {line}")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// `Status` is not three digits optionally followed by a space and a reason.
    #[error("invalid CGI Status header")]
    BadStatus,
    /// Status, Content-Type or Location given twice.
    #[error("CGI field given twice on line {line}")]
    Repeated {
        /// 1-based line number.
        line: usize,
    },
    /// No header field at all (RFC 3875: at least one CGI field is required).
    #[error("CGI response has no header field")]
    Empty,
    /// An HTTP status line where [`StatusLine::Reject`] was asked for.
    #[error("CGI response starts with an HTTP status line")]
    StatusLine,
    /// A value holding a control character other than tab.
    #[error("control character in CGI header value on line {line}")]
    BadValue {
        /// 1-based line number.
        line: usize,
    },
}

/// A parsed CGI response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The reason phrase (empty when none was given).
    pub reason: Bytes,
    /// What kind of response this is.
    pub kind: ResponseKind,
    /// Every header except `Status`, in order (empty values dropped, RFC 3875 6.3).
    pub headers: Vec<(Bytes, Bytes)>,
}

impl CgiResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &v[..])
    }
}

/// Parsing options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadOptions {
    /// The largest head accepted (default 64 KiB, uWSGI's response-headers limit).
    pub max_size: usize,
    /// What to do with an HTTP status line.
    pub status_line: StatusLine,
}

impl Default for HeadOptions {
    fn default() -> Self {
        Self {
            max_size: 64 * 1024,
            status_line: StatusLine::Accept,
        }
    }
}

/// Finds the end of the head: the index just past the empty line, scanning from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    for nl in memchr::memchr_iter(b'\n', buf.get(from..)?).map(|p| from + p) {
        // The line that starts after this LF is empty if it is LF or CRLF.
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
    }
    None
}

/// Parses the head at the start of `buf`. `Ok(None)`: the empty line that ends the head
/// has not arrived yet. Else the response and the head's length (the body follows).
///
/// ```
/// use cgi_family::{parse_response_head, HeadOptions, ResponseKind};
/// let out = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope";
/// let (r, used) = parse_response_head(out, &HeadOptions::default())?.unwrap();
/// assert_eq!((r.status, &r.reason[..], r.kind), (404, &b"Not Found"[..], ResponseKind::Document));
/// assert_eq!(&out[used..], b"nope");
/// # Ok::<(), cgi_family::ResponseError>(())
/// ```
pub fn parse_response_head(
    buf: &[u8],
    opts: &HeadOptions,
) -> Result<Option<(CgiResponse, usize)>, ResponseError> {
    let mut decoder = ResponseHeadDecoder::new(*opts);
    decoder.decode(buf)
}

/// Incremental head parser: remembers how far it searched for the end of the head, so
/// bytes are not scanned again as more arrive.
#[derive(Debug, Clone)]
pub struct ResponseHeadDecoder {
    opts: HeadOptions,
    searched: usize,
}

impl ResponseHeadDecoder {
    /// A decoder with `opts`.
    pub const fn new(opts: HeadOptions) -> Self {
        Self { opts, searched: 0 }
    }

    /// Parses the head once `buf` (everything received so far) holds all of it.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(CgiResponse, usize)>, ResponseError> {
        let Some(end) = self.find_end(buf)? else {
            return Ok(None);
        };
        parse_lines(&buf[..end], &self.opts, Bytes::copy_from_slice).map(|r| Some((r, end)))
    }

    /// As [`ResponseHeadDecoder::decode`], taking the head out of `buf` once it is whole:
    /// its bytes are split off (what follows, the start of the body, stays in `buf`) and
    /// the response's names and values are slices of them, not copies.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use cgi_family::{HeadOptions, ResponseHeadDecoder};
    /// let mut buf = BytesMut::from(&b"Content-Type: text/plain\r\n\r\nhello"[..]);
    /// let mut d = ResponseHeadDecoder::new(HeadOptions::default());
    /// let head = d.decode_split(&mut buf)?.unwrap();
    /// assert_eq!(head.header("content-type"), Some(&b"text/plain"[..]));
    /// assert_eq!(&buf[..], b"hello");
    /// # Ok::<(), cgi_family::ResponseError>(())
    /// ```
    pub fn decode_split(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<CgiResponse>, ResponseError> {
        let Some(end) = self.find_end(buf)? else {
            return Ok(None);
        };
        let head = buf.split_to(end).freeze();
        parse_lines(&head, &self.opts, |part| head.slice_ref(part)).map(Some)
    }

    /// Where the head ends in `buf`, once it is there (checked against the size limit).
    fn find_end(&mut self, buf: &[u8]) -> Result<Option<usize>, ResponseError> {
        let limit = self.opts.max_size;
        // A head that is just "\n" or "\r\n" has no field.
        if buf.starts_with(b"\n") || buf.starts_with(b"\r\n") {
            return Err(ResponseError::Empty);
        }
        let Some(end) = head_end(buf, self.searched.saturating_sub(2)) else {
            if buf.len() > limit {
                return Err(ResponseError::TooLarge { limit });
            }
            self.searched = buf.len();
            return Ok(None);
        };
        if end > limit {
            return Err(ResponseError::TooLarge { limit });
        }
        Ok(Some(end))
    }
}

/// RFC 9110's `tchar`s, by byte.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

fn parse_status(v: &[u8], keep: &impl Fn(&[u8]) -> Bytes) -> Result<(u16, Bytes), ResponseError> {
    let (code, rest) = v.split_at_checked(3).ok_or(ResponseError::BadStatus)?;
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
        return Err(ResponseError::BadStatus);
    }
    let reason = match rest {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => return Err(ResponseError::BadStatus),
    };
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    Ok((status, keep(reason.trim_ascii())))
}

/// Parses the lines of `head`; `keep` makes the names and values kept (copies, or slices
/// of a shared buffer).
fn parse_lines(
    head: &[u8],
    opts: &HeadOptions,
    keep: impl Fn(&[u8]) -> Bytes,
) -> Result<CgiResponse, ResponseError> {
    let mut status: Option<(u16, Bytes)> = None;
    let mut headers = Vec::new();
    let (mut seen_ct, mut seen_loc, mut fields) = (false, false, 0);
    let mut start = 0;
    let lines = memchr::memchr_iter(b'\n', head)
        .chain(std::iter::once(head.len()))
        .map(|end| {
            let line = &head[start..end];
            start = end + 1;
            line
        });
    for (i, raw) in lines.enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if i == 0 && line.starts_with(b"HTTP/") {
            match opts.status_line {
                StatusLine::Reject => return Err(ResponseError::StatusLine),
                StatusLine::Ignore => continue,
                StatusLine::Accept => {
                    let after = line
                        .iter()
                        .position(|&b| b == b' ')
                        .map(|p| &line[p + 1..])
                        .ok_or(ResponseError::BadStatus)?;
                    status = Some(parse_status(after, &keep)?);
                    continue;
                }
            }
        }
        let colon = memchr::memchr(b':', line).ok_or(ResponseError::BadLine { line: line_no })?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(ResponseError::BadLine { line: line_no });
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ResponseError::BadValue { line: line_no });
        }
        fields += 1;
        if value.is_empty() {
            continue; // RFC 3875 6.3: an empty field is a field not sent
        }
        let repeated = Err(ResponseError::Repeated { line: line_no });
        if name.eq_ignore_ascii_case(b"status") {
            if status.is_some() {
                return repeated;
            }
            status = Some(parse_status(value, &keep)?);
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            if seen_ct {
                return repeated;
            }
            seen_ct = true;
        }
        if name.eq_ignore_ascii_case(b"location") {
            if seen_loc {
                return repeated;
            }
            seen_loc = true;
        }
        headers.push((keep(name), keep(value)));
    }
    if fields == 0 && status.is_none() {
        return Err(ResponseError::Empty);
    }
    let location = headers
        .iter()
        .filter(|_| seen_loc)
        .find(|(k, _)| k.eq_ignore_ascii_case(b"location"))
        .map(|(_, v)| v.clone());
    let kind = match &location {
        None => ResponseKind::Document,
        Some(l) if l.starts_with(b"/") => ResponseKind::LocalRedirect,
        Some(_) if status.is_some() && seen_ct => ResponseKind::ClientRedirectWithDocument,
        Some(_) => ResponseKind::ClientRedirect,
    };
    let (status, reason) = match (status, kind) {
        (Some(s), _) => s,
        (None, ResponseKind::Document) => (200, Bytes::from_static(b"OK")),
        (None, _) => (302, Bytes::from_static(b"Found")),
    };
    Ok(CgiResponse {
        status,
        reason,
        kind,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Result<Option<(CgiResponse, usize)>, ResponseError> {
        parse_response_head(s, &HeadOptions::default())
    }

    #[test]
    fn kinds_and_defaults() {
        let (r, _) = p(b"Content-Type: text/html\n\n").unwrap().unwrap();
        assert_eq!((r.status, r.kind), (200, ResponseKind::Document));
        let (r, _) = p(b"Location: /other\n\n").unwrap().unwrap();
        assert_eq!((r.status, r.kind), (302, ResponseKind::LocalRedirect));
        let (r, _) = p(b"Location: http://x/\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.status, r.kind), (302, ResponseKind::ClientRedirect));
        let (r, _) =
            p(b"Location: http://x/\r\nStatus: 301 Moved\r\nContent-Type: text/html\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            (r.status, r.kind),
            (301, ResponseKind::ClientRedirectWithDocument)
        );
    }

    #[test]
    fn status_lines() {
        let (r, _) = p(b"HTTP/1.1 201 Created\r\nX: y\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.status, &r.reason[..]), (201, &b"Created"[..]));
        let ignore = HeadOptions {
            status_line: StatusLine::Ignore,
            ..HeadOptions::default()
        };
        let (r, _) = parse_response_head(b"HTTP/1.1 404 Not Found\r\nX: y\r\n\r\n", &ignore)
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200, "FastCGI: nginx ignores the line");
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(p(b"Status: abc\n\n").unwrap_err(), ResponseError::BadStatus);
        assert_eq!(p(b"Status: 20\n\n").unwrap_err(), ResponseError::BadStatus);
        assert_eq!(
            p(b"no colon\n\n").unwrap_err(),
            ResponseError::BadLine { line: 1 }
        );
        assert_eq!(
            p(b"X : y\n\n").unwrap_err(),
            ResponseError::BadLine { line: 1 }
        );
        assert_eq!(
            p(b"A: b\n folded\n\n").unwrap_err(),
            ResponseError::BadLine { line: 2 }
        );
        assert_eq!(
            p(b"Status: 200\nStatus: 200\n\n").unwrap_err(),
            ResponseError::Repeated { line: 2 }
        );
        assert_eq!(p(b"\r\n").unwrap_err(), ResponseError::Empty);
        assert_eq!(
            p(b"A: b\x01c\n\n").unwrap_err(),
            ResponseError::BadValue { line: 1 }
        );
        assert_eq!(p(b"Content-Type: text/plain\r\n").unwrap(), None);
        let small = HeadOptions {
            max_size: 8,
            ..HeadOptions::default()
        };
        assert_eq!(
            parse_response_head(b"Content-Type: x", &small).unwrap_err(),
            ResponseError::TooLarge { limit: 8 }
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let full = b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nbody";
        let want = p(full).unwrap();
        for cut in 1..full.len() {
            let mut d = ResponseHeadDecoder::new(HeadOptions::default());
            let first = d.decode(&full[..cut]).unwrap();
            if first.is_some() {
                assert_eq!(first, want);
                continue;
            }
            assert_eq!(d.decode(full).unwrap(), want, "cut {cut}");
        }
    }
}
