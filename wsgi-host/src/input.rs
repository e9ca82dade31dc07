//! `wsgi.input`: the request body as a Python file-like object implemented in Rust.

use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use smallvec::SmallVec;
use tokio::sync::mpsc;

use crate::{BodyError, RequestBody};

enum Source {
    Done,
    /// The body held whole: the pieces still to read, the next one last (a body in one
    /// piece needs no allocation).
    Held(SmallVec<[Bytes; 1]>),
    Stream(mpsc::Receiver<Result<Bytes, BodyError>>),
    /// Another thread is waiting on the stream.
    Busy,
}

struct State {
    buf: BytesMut,
    source: Source,
    /// Bytes still allowed to reach the app (CONTENT_LENGTH minus what was buffered).
    allowed: Option<u64>,
    /// How far `buf` was searched for a newline.
    scanned: usize,
}

/// The request body as `wsgi.input`: `read()`, `read(n)`, `readline()`, `readline(n)`,
/// `readlines()`, iteration. Streams the body as it arrives (waiting with the GIL
/// released), never past `CONTENT_LENGTH`, `read(0)` is `b''`, and no byte is lost
/// between `readline()` and `read()`.
#[pyclass(frozen, module = "wsgi_host", name = "Input")]
pub struct WsgiInput {
    state: Mutex<State>,
    /// Set when the body could not be read (malformed chunking, the client went away).
    failed: std::sync::atomic::AtomicBool,
}

impl WsgiInput {
    pub(crate) fn new(body: RequestBody, content_length: Option<u64>) -> Self {
        let source = match body {
            RequestBody::Empty => Source::Done,
            RequestBody::Full(b) => Source::Held(smallvec::smallvec![b]),
            RequestBody::Pieces(mut v) => {
                v.reverse();
                Source::Held(SmallVec::from_vec(v))
            }
            RequestBody::Stream(rx) => Source::Stream(rx),
        };
        Self {
            failed: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                buf: BytesMut::new(),
                source,
                allowed: content_length,
                scanned: 0,
            }),
        }
    }

    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| PyRuntimeError::new_err("wsgi.input is broken"))
    }

    /// Adds one more piece to the buffer; false at the end of the body.
    fn fill(&self, py: Python<'_>) -> PyResult<bool> {
        let mut st = self.lock()?;
        let piece = match std::mem::replace(&mut st.source, Source::Busy) {
            Source::Done => {
                st.source = Source::Done;
                return Ok(false);
            }
            Source::Busy => {
                return Err(PyRuntimeError::new_err(
                    "wsgi.input read from two threads at once",
                ));
            }
            Source::Held(mut pieces) => {
                let piece = pieces.pop();
                if !pieces.is_empty() {
                    st.source = Source::Held(pieces);
                } else {
                    st.source = Source::Done;
                }
                piece.map(Ok)
            }
            Source::Stream(mut rx) => {
                drop(st);
                // Wait for the network with the GIL released and the lock not held.
                let got = py.detach(|| rx.blocking_recv());
                st = self.lock()?;
                st.source = if got.is_some() {
                    Source::Stream(rx)
                } else {
                    Source::Done
                };
                got
            }
        };
        match piece {
            None => Ok(false),
            Some(Err(e)) => {
                st.source = Source::Done;
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(PyOSError::new_err(e.to_string()))
            }
            Some(Ok(mut bytes)) => {
                if let Some(allowed) = st.allowed {
                    // Never hand out more than CONTENT_LENGTH.
                    if bytes.len() as u64 > allowed {
                        bytes.truncate(allowed as usize);
                    }
                    st.allowed = Some(allowed - bytes.len() as u64);
                    if st.allowed == Some(0) {
                        st.source = Source::Done;
                    }
                }
                if st.buf.is_empty() {
                    // Taken over without a copy when nothing else holds it (a body
                    // buffered whole is handed over this way).
                    st.buf = BytesMut::from(bytes);
                } else {
                    st.buf.extend_from_slice(&bytes);
                }
                Ok(true)
            }
        }
    }

    /// Whether reading the body failed on the client's side.
    pub(crate) fn body_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> PyResult<Bytes> {
        let mut st = self.lock()?;
        let n = n.min(st.buf.len());
        st.scanned = st.scanned.saturating_sub(n);
        Ok(st.buf.split_to(n).freeze())
    }

    fn read_impl(&self, py: Python<'_>, size: Option<usize>) -> PyResult<Bytes> {
        loop {
            let have = self.lock()?.buf.len();
            if size.is_some_and(|n| have >= n) {
                return self.take(size.unwrap_or(have));
            }
            if !self.fill(py)? {
                return self.take(size.unwrap_or(usize::MAX));
            }
        }
    }

    /// `read(size)` from a body held whole, when the answer takes bytes from its pieces:
    /// they are copied once, straight into the Python object (the ordinary way would
    /// first join them in the buffer). `None` when the body is streamed, or when the
    /// buffer alone holds the answer.
    fn read_held<'py>(
        &self,
        py: Python<'py>,
        size: Option<usize>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut st = self.lock()?;
        let State {
            buf,
            source,
            allowed,
            scanned,
        } = &mut *st;
        let Source::Held(pieces) = source else {
            return Ok(None);
        };
        let held = pieces.iter().map(Bytes::len).sum::<usize>();
        // Never more than CONTENT_LENGTH (what is in `buf` was counted already).
        let held = allowed.map_or(held, |a| usize::try_from(a).map_or(held, |a| a.min(held)));
        let n = size.unwrap_or(usize::MAX).min(buf.len() + held);
        if n <= buf.len() {
            return Ok(None);
        }
        let from_pieces = n - buf.len();
        // The writer's buffer starts uninitialised (`new_with` would zero all `n` bytes
        // first: a pass over the body as long as the copy itself).
        let out = PyBytes::new_with_writer(py, n, |dst| {
            dst.write_bytes(buf)?;
            let mut rest = from_pieces;
            while rest > 0 {
                let Some(mut piece) = pieces.pop() else {
                    break; // not reached: `held` counted these bytes
                };
                let k = rest.min(piece.len());
                dst.write_bytes(&piece[..k])?;
                rest -= k;
                piece.advance(k);
                if !piece.is_empty() {
                    pieces.push(piece);
                }
            }
            Ok(())
        })?;
        buf.clear();
        *scanned = 0;
        if let Some(a) = allowed {
            *a -= from_pieces as u64;
        }
        if pieces.is_empty() || *allowed == Some(0) {
            *source = Source::Done;
        }
        Ok(Some(out))
    }

    fn readline_impl(&self, py: Python<'_>, size: Option<usize>) -> PyResult<Bytes> {
        loop {
            {
                let mut st = self.lock()?;
                let from = st.scanned;
                if let Some(i) = st.buf[from..].iter().position(|&b| b == b'\n') {
                    let end = from + i + 1;
                    let n = size.map_or(end, |s| s.min(end));
                    drop(st);
                    return self.take(n);
                }
                st.scanned = st.buf.len();
                if size.is_some_and(|s| st.buf.len() >= s) {
                    drop(st);
                    return self.take(size.unwrap_or(0));
                }
            }
            if !self.fill(py)? {
                return self.take(usize::MAX);
            }
        }
    }
}

fn size_arg(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match size {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) => {
            let n: i64 = s
                .extract()
                .map_err(|_| PyTypeError::new_err("size must be an integer or None"))?;
            Ok(usize::try_from(n).ok())
        }
    }
}

#[pymethods]
impl WsgiInput {
    /// `read(size=-1)`: up to `size` bytes, or the rest of the body; `b''` at the end.
    #[pyo3(signature = (size=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let size = size_arg(size)?;
        if let Some(out) = self.read_held(py, size)? {
            return Ok(out);
        }
        let data = self.read_impl(py, size)?;
        Ok(PyBytes::new(py, &data))
    }

    /// `readline(size=-1)`: up to and including the next `\n`, at most `size` bytes.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.readline_impl(py, size_arg(size)?)?;
        Ok(PyBytes::new(py, &line))
    }

    /// `readlines(hint=-1)`: the remaining lines (stopping once `hint` bytes were read).
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &self,
        py: Python<'py>,
        hint: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let hint = size_arg(hint)?.filter(|&h| h > 0);
        let mut lines = Vec::new();
        let mut total = 0;
        loop {
            let line = self.readline_impl(py, None)?;
            if line.is_empty() {
                return Ok(lines);
            }
            total += line.len();
            lines.push(PyBytes::new(py, &line));
            if hint.is_some_and(|h| total >= h) {
                return Ok(lines);
            }
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline_impl(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}
