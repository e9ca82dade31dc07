//! `start_response`, `write()`, `wsgi.errors`, `wsgi.file_wrapper`, and the shared state
//! that turns what the application says into a [`WsgiResponse`](crate::WsgiResponse).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::{AbortError, BodyChunk, BodyStream, ResponseHead};

/// Hop-by-hop headers an application must not send (PEP 3333, RFC 2616 13.5.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

pub(crate) type BodyTx = mpsc::Sender<Result<BodyChunk, AbortError>>;
/// Where the head (and the body) goes once known.
pub(crate) type HeadTx = oneshot::Sender<(ResponseHead, BodyStream)>;
type Headers = Vec<(Bytes, Bytes)>;

/// What the application has said so far, and where the response goes.
pub(crate) struct Responder {
    pub(crate) status: Option<(u16, Bytes)>,
    pub(crate) headers: Headers,
    pub(crate) content_length: Option<u64>,
    head_tx: Option<HeadTx>,
    body_tx: Option<BodyTx>,
    capacity: usize,
}

pub(crate) type Shared = Arc<Mutex<Responder>>;

pub(crate) fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Responder> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Responder {
    pub(crate) fn new(head_tx: HeadTx, capacity: usize) -> Shared {
        Arc::new(Mutex::new(Self {
            capacity,
            status: None,
            headers: Vec::new(),
            content_length: None,
            head_tx: Some(head_tx),
            body_tx: None,
        }))
    }

    /// Whether the headers went out.
    pub(crate) fn sent(&self) -> bool {
        self.head_tx.is_none()
    }

    /// The head as the application set it, or why it cannot be sent.
    fn head(&mut self, length: Option<u64>) -> Result<ResponseHead, &'static str> {
        let Some((status, reason)) = self.status.as_mut() else {
            return Err("the application did not call start_response");
        };
        // Taken, not copied: once sent, the stored head is only checked for presence.
        Ok(ResponseHead {
            status: *status,
            reason: std::mem::take(reason),
            headers: std::mem::take(&mut self.headers),
            content_length: self.content_length.or(length),
        })
    }

    /// Sends the head (once); `length` is the body length when the host knows it.
    /// Returns the body sender, or `None` if the client is gone or the app never
    /// called start_response.
    pub(crate) fn send_head(
        &mut self,
        length: Option<u64>,
    ) -> Result<Option<BodyTx>, &'static str> {
        if self.head_tx.is_some() {
            let head = self.head(length)?;
            let Some(tx) = self.head_tx.take() else {
                return Ok(None);
            };
            let (btx, brx) = mpsc::channel(self.capacity);
            let body = BodyStream {
                first: None,
                rx: Some(brx),
            };
            if tx.send((head, body)).is_err() {
                return Ok(None); // the client went away
            }
            self.body_tx = Some(btx);
        }
        Ok(self.body_tx.clone())
    }

    /// Sends the head with the whole body (one block or none), without a channel.
    pub(crate) fn send_whole(
        &mut self,
        block: Option<BodyChunk>,
        length: u64,
    ) -> Result<(), &'static str> {
        let head = self.head(Some(length))?;
        if let Some(tx) = self.head_tx.take() {
            let body = BodyStream {
                first: block.map(Ok),
                rx: None,
            };
            // An error here means the client went away: nothing more to do.
            let _ = tx.send((head, body));
        }
        Ok(())
    }

    /// Sends an error status with a short text body (before any header went out).
    pub(crate) fn send_error(&mut self, status: u16, reason: &str) {
        if let Some(tx) = self.head_tx.take() {
            let body = Bytes::from(format!("{status} {reason}\n"));
            let head = ResponseHead {
                status,
                reason: Bytes::copy_from_slice(reason.as_bytes()),
                headers: vec![(
                    Bytes::from_static(b"Content-Type"),
                    Bytes::from_static(b"text/plain; charset=utf-8"),
                )],
                content_length: Some(body.len() as u64),
            };
            let body = BodyStream {
                first: Some(Ok(BodyChunk::Data(body))),
                rx: None,
            };
            let _ = tx.send((head, body));
        }
    }

    /// Ends the body (dropping the sender), or cuts it short with `abort`.
    pub(crate) fn finish(&mut self, abort: Option<String>) {
        if let (Some(tx), Some(reason)) = (self.body_tx.take(), abort) {
            let _ = tx.try_send(Err(AbortError(reason)));
        }
    }
}

/// Blocks from this size up reach the server without a copy: the `Bytes` keeps the
/// Python object alive (immutable while referenced) and releases it through pyo3's
/// deferred reference pool, emptied when a Python thread next takes the GIL. Smaller
/// blocks are copied, which costs less than the hand-back.
const SHARE_FROM: usize = 8 * 1024;

/// A response block as `Bytes`: shared with Python when large, copied when small.
pub(crate) fn block_bytes(block: &Bound<'_, PyBytes>) -> Bytes {
    let data = block.as_bytes();
    if data.len() < SHARE_FROM {
        return Bytes::copy_from_slice(data);
    }
    Bytes::from_owner(pyo3::pybacked::PyBackedBytes::from(block.clone()))
}

/// Sends one body piece, waiting for room with the GIL released; false if the client
/// went away.
pub(crate) fn send_chunk(py: Python<'_>, tx: &BodyTx, chunk: BodyChunk) -> bool {
    match tx.try_send(Ok(chunk)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(item)) => py.detach(|| tx.blocking_send(item).is_ok()),
    }
}

fn latin1_bytes(s: &Bound<'_, PyString>, what: &str) -> PyResult<Bytes> {
    let text = s.to_str()?;
    if text.is_ascii() {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    }
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| ()))
        .collect::<Result<Vec<u8>, ()>>()
        .map(Bytes::from)
        .map_err(|()| {
            PyValueError::new_err(format!("{what} must be encodable in latin-1: {text:?}"))
        })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks and converts a status string: `NNN reason`, no control characters.
fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<(u16, Bytes)> {
    let s = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str"))?;
    let raw = seen(s, Seen::Status, |raw| {
        let bad = || {
            PyValueError::new_err(format!(
                "malformed status {:?}",
                String::from_utf8_lossy(raw)
            ))
        };
        if raw.len() < 3 || !raw[..3].iter().all(u8::is_ascii_digit) || raw[0] == b'0' {
            return Err(bad());
        }
        if raw.len() > 3 && raw[3] != b' ' {
            return Err(bad());
        }
        if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(bad());
        }
        Ok(())
    })?;
    let code = raw[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok((code, raw.slice(raw.len().min(4)..)))
}

/// Checks and converts the header list.
fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<(Headers, Option<u64>)> {
    let Ok(list) = headers.cast_exact::<PyList>() else {
        return Err(PyTypeError::new_err("response_headers must be a list"));
    };
    let mut out = Vec::with_capacity(list.len());
    let mut length = None;
    for item in list.iter() {
        let pair = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("each header must be a (name, value) tuple"))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(
                "each header must be a (name, value) tuple",
            ));
        }
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "header names and values must be str, got {:?}",
                pair.repr()?.to_str()?
            )));
        };
        let name = seen(name, Seen::Name, |name| {
            if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            if HOP_BY_HOP
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            {
                return Err(PyAssertionError::new_err(format!(
                    "hop-by-hop header {:?} is not allowed in a WSGI response",
                    String::from_utf8_lossy(name)
                )));
            }
            Ok(())
        })?;
        let value = seen(value, Seen::Value, |value| {
            if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(PyValueError::new_err(format!(
                    "control character (CR/LF?) in the value of header {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            Ok(())
        })?;
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        out.push((name, value));
    }
    Ok((out, length))
}

/// What a string handed to `start_response` is checked as (each kind has its own
/// [`SeenStrings`] slots: a string that passed as a value has not passed as a name).
#[derive(Clone, Copy)]
enum Seen {
    Status,
    Name,
    Value,
}

/// Strings an application handed to `start_response` before on this thread, checked and
/// converted, found again by identity: most apps pass the same constant objects on every
/// request (`'200 OK'`, `('Content-Type', 'text/plain')`), and a hit skips the latin-1
/// conversion, the checks and an allocation. A slot holds a reference to its string, so
/// the address cannot be reused by another string while the slot holds it; a string is
/// only kept once it was seen twice in a row at its slot, so that fresh strings (Django
/// builds its Content-Length per response) do not churn the slots.
struct SeenStrings {
    slots: [[SeenSlot; SEEN_SLOTS]; 3],
}

#[derive(Default)]
struct SeenSlot {
    held: Option<(Py<PyString>, Bytes)>,
    /// The address of the last string that missed here (only compared, never followed).
    candidate: usize,
}

const SEEN_SLOTS: usize = 32;

thread_local! {
    static SEEN: std::cell::RefCell<SeenStrings> = std::cell::RefCell::new(SeenStrings {
        slots: std::array::from_fn(|_| std::array::from_fn(|_| SeenSlot::default())),
    });
}

/// `s` as latin-1 bytes that passed `check`, from the thread's [`SeenStrings`] when it
/// was seen before.
fn seen(
    s: &Bound<'_, PyString>,
    kind: Seen,
    check: impl FnOnce(&[u8]) -> PyResult<()>,
) -> PyResult<Bytes> {
    let addr = s.as_ptr() as usize;
    let i = (addr >> 4) % SEEN_SLOTS;
    let hit = SEEN.with_borrow(|seen| {
        let slot = &seen.slots[kind as usize][i];
        match &slot.held {
            Some((held, bytes)) if held.as_ptr() as usize == addr => Some(bytes.clone()),
            _ => None,
        }
    });
    if let Some(bytes) = hit {
        return Ok(bytes);
    }
    let what = match kind {
        Seen::Status => "status",
        Seen::Name => "header name",
        Seen::Value => "header value",
    };
    let bytes = latin1_bytes(s, what)?;
    check(&bytes)?;
    SEEN.with_borrow_mut(|seen| {
        let slot = &mut seen.slots[kind as usize][i];
        if std::mem::replace(&mut slot.candidate, addr) == addr {
            // The clone makes the bytes shared now, so later clones are a count.
            slot.held = Some((s.clone().unbind(), bytes.clone()));
        }
    });
    Ok(bytes)
}

/// The `start_response` callable (also the `write()` callable it returns).
#[pyclass(frozen, module = "wsgi_host")]
pub struct StartResponse {
    pub(crate) shared: Shared,
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, response_headers, exc_info=None)`, and, called with one
    /// `bytes` argument, the `write(data)` callable it returns (the same object: no second
    /// Python object per request).
    #[pyo3(signature = (status, response_headers=None, exc_info=None))]
    fn __call__(
        slf: &Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        response_headers: Option<&Bound<'_, PyAny>>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let Some(response_headers) = response_headers else {
            if status.is_instance_of::<PyString>() {
                return Err(PyTypeError::new_err(
                    "start_response() needs response_headers",
                ));
            }
            me.write(py, status)?;
            return Ok(py.None());
        };
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let r = lock(&me.shared);
            match exc_info {
                Some(info) if r.sent() => {
                    // Headers already went out: re-raise the app's exception (PEP 3333).
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                None if r.status.is_some() => {
                    return Err(PyAssertionError::new_err(
                        "start_response called a second time without exc_info",
                    ));
                }
                _ => {}
            }
        }
        let status = parse_status(status)?;
        let (headers, length) = parse_headers(response_headers)?;
        let mut r = lock(&me.shared);
        r.status = Some(status);
        r.headers = headers;
        r.content_length = length;
        drop(r);
        Ok(slf.clone().into_any().unbind())
    }
}

impl StartResponse {
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        let tx = lock(&self.shared)
            .send_head(None)
            .map_err(PyRuntimeError::new_err)?;
        let Some(tx) = tx else {
            return Err(PyRuntimeError::new_err("the client went away"));
        };
        if data.as_bytes().is_empty() {
            return Ok(());
        }
        if !send_chunk(py, &tx, BodyChunk::Data(block_bytes(data))) {
            return Err(PyRuntimeError::new_err("the client went away"));
        }
        Ok(())
    }
}

/// `wsgi.errors`: text written here goes to the log, a line at a time, with the request id.
#[pyclass(frozen, module = "wsgi_host", name = "Errors")]
pub struct ErrorStream {
    pub(crate) request_id: std::sync::atomic::AtomicU64,
    pub(crate) pending: Mutex<String>,
    /// Set by `write()`: the host's flush at the end of a request has something to do.
    pub(crate) written: std::sync::atomic::AtomicBool,
}

impl ErrorStream {
    /// The host's flush at the end of a request: only when something was written.
    pub(crate) fn end_request(&self) {
        if self
            .written
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.emit(true);
        }
    }

    fn emit(&self, flush_all: bool) {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(i) = p.find('\n') {
            let line: String = p.drain(..=i).collect();
            tracing::error!(target: "wsgi.errors", request_id = self.request_id.load(std::sync::atomic::Ordering::Relaxed), "{}", line.trim_end());
        }
        if flush_all && !p.is_empty() {
            tracing::error!(target: "wsgi.errors", request_id = self.request_id.load(std::sync::atomic::Ordering::Relaxed), "{}", p.as_str());
            p.clear();
        }
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        let s = s
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("wsgi.errors.write() takes a str"))?;
        let text = s.to_string_lossy();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_str(&text);
        self.written
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.emit(false);
        Ok(text.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    /// Writes out a partial last line.
    pub fn flush(&self) {
        self.written
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.emit(true);
    }
}

/// `wsgi.file_wrapper(filelike, block_size=8192)`: iterates the file in blocks; when the
/// application returns it, a real file is handed to the server whole (no copy through
/// Python).
#[pyclass(frozen, module = "wsgi_host")]
pub struct FileWrapper {
    pub(crate) filelike: Py<PyAny>,
    pub(crate) block_size: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size=8192))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> Self {
        Self {
            filelike,
            block_size: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        Ok((block.len().unwrap_or(0) > 0).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    )*};
}
opaque_debug!(
    StartResponse,
    ErrorStream,
    FileWrapper,
    crate::input::WsgiInput
);
