//! One response body type for everything the HTTP listener answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// The block size files are read in.
const BLOCK: usize = 256 * 1024;

/// A response body: the WSGI app's, a file's, or a fixed one.
#[derive(Debug)]
pub enum Body {
    /// A WSGI response.
    Wsgi(wsgi_host::ResponseBody),
    /// A region of a file, read block by block as the client takes them.
    File {
        /// The file.
        file: std::fs::File,
        /// Where the next block starts.
        at: u64,
        /// Bytes still to come.
        left: u64,
    },
    /// All of it at once (or nothing).
    Full(Option<Bytes>),
    /// A backend's response (a pass handler).
    Pass(crate::pass::PassBody),
    /// Another body, counted as it goes out; its access-log line is written when it is
    /// dropped (sent or abandoned).
    Logged(Box<Self>, Box<crate::access::Pending>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    /// `len` bytes of `file` from `offset`.
    ///
    /// The blocks are read when the client is ready for them, on the connection's own
    /// thread, as nginx reads files without `aio`: a read from the page cache costs less
    /// than handing it to another thread and back. Each block is read into fresh memory
    /// that is not zeroed first.
    pub fn file(file: std::fs::File, offset: u64, len: u64) -> Self {
        Self::File {
            file,
            at: offset,
            left: len,
        }
    }
}

/// The next block (up to 256 KiB) of a file region (`left > 0`), read on the calling
/// thread into memory that is not zeroed first; a file shorter than announced is an error.
pub(crate) fn read_block(
    file: &std::fs::File,
    at: &mut u64,
    left: &mut u64,
) -> std::io::Result<Bytes> {
    let want = usize::try_from(*left).map_or(BLOCK, |n| n.min(BLOCK));
    let mut buf = Vec::with_capacity(want);
    let n = loop {
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), *at) {
            Err(rustix::io::Errno::INTR) => {}
            r => break r?,
        }
    };
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shrank",
        ));
    }
    *at += n as u64;
    *left -= n as u64;
    Ok(Bytes::from(buf))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Wsgi(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::File { file, at, left } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(match read_block(file, at, left) {
                    Ok(b) => Ok(Frame::data(b)),
                    Err(e) => {
                        *left = 0; // ends the body: the client sees it cut short
                        Err(e.into())
                    }
                }))
            }
            Self::Pass(p) => Pin::new(p).poll_frame(cx).map_err(Into::into),
            Self::Logged(b, pending) => {
                let r = Pin::new(b.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    if let Some(d) = f.data_ref() {
                        pending.record.sent += d.len() as u64;
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wsgi(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
            Self::File { left, .. } => *left == 0,
            Self::Pass(p) => http_body::Body::is_end_stream(p),
            Self::Logged(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Wsgi(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::File { left, .. } => SizeHint::with_exact(*left),
            Self::Pass(p) => p
                .length
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            Self::Logged(b, _) => b.size_hint(),
        }
    }
}
