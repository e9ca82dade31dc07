//! The pool of Python threads and the life of one request inside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::sync::oneshot;

use crate::environ::{self, Statics};
use crate::input::WsgiInput;
use crate::interpreter::{self, traceback};
use crate::respond::{FileWrapper, HeadTx, Responder, Shared, StartResponse, lock, send_chunk};
use crate::{AppSpec, BodyChunk, HostError, HostOptions, LoadError, WsgiRequest, WsgiResponse};

struct Job {
    request: WsgiRequest,
    id: u64,
    reply: HeadTx,
}

/// A WSGI application running on a pool of Python threads.
///
/// Cloning is cheap (a handle); the threads stop when the last handle is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiRequest};
/// use cgi_family::Env;
/// let host = WsgiHost::start(&AppSpec::wsgi_file("app.py"), HostOptions { threads: 4, ..Default::default() })?;
/// let env: Env = [("REQUEST_METHOD", "GET"), ("PATH_INFO", "/"), ("SERVER_NAME", "localhost"),
///                 ("SERVER_PORT", "80"), ("SERVER_PROTOCOL", "HTTP/1.1")].into_iter().collect();
/// let mut response = host.call(WsgiRequest::new(env)).await?;
/// println!("{}", response.head.status);
/// while let Some(chunk) = response.body.recv().await {
///     let _ = chunk?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WsgiHost {
    inner: Arc<Inner>,
}

struct Inner {
    app: Arc<Py<PyAny>>,
    opts: Arc<HostOptions>,
    statics: pyo3::sync::PyOnceLock<Statics>,
    tx: crossbeam_channel::Sender<Job>,
    next_id: AtomicU64,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsgiHost")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl WsgiHost {
    /// Starts the interpreter (once per process), loads the application as `spec` says
    /// (a failing import is an error here, with its traceback, not on the first request),
    /// and starts `opts.threads` Python threads.
    pub fn start(spec: &AppSpec, opts: HostOptions) -> Result<Self, LoadError> {
        interpreter::ensure_initialized();
        let app = Python::attach(|py| interpreter::load(py, spec))?;
        Ok(Self::from_callable(app, opts))
    }

    /// Serves an application object the caller already has (the interpreter must be
    /// initialized).
    pub fn from_callable(app: Py<PyAny>, opts: HostOptions) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(opts.queue.max(1));
        let opts = Arc::new(opts);
        let app = Arc::new(app);
        let threads = (0..opts.threads.max(1))
            .map(|n| {
                let (rx, opts, app) = (rx.clone(), opts.clone(), app.clone());
                std::thread::Builder::new()
                    .name(format!("wsgi-{n}"))
                    .spawn(move || worker(&app, &rx, &opts))
                    .expect("spawn a WSGI thread")
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                app,
                opts,
                statics: pyo3::sync::PyOnceLock::new(),
                tx,
                next_id: AtomicU64::new(1),
                threads: Mutex::new(threads),
            }),
        }
    }

    /// Hands a request to the application; resolves when the status and headers are
    /// known (the body then streams through [`WsgiResponse::body`]).
    pub async fn call(&self, request: WsgiRequest) -> Result<WsgiResponse, HostError> {
        let (reply, rx) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .tx
            .try_send(Job { request, id, reply })
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => HostError::Overloaded,
                crossbeam_channel::TrySendError::Disconnected(_) => HostError::Closed,
            })?;
        let (head, body) = rx.await.map_err(|_| HostError::Closed)?;
        Ok(WsgiResponse { head, body })
    }

    /// Runs one request on the calling thread (attaching it to the interpreter) and
    /// returns the whole response: for embedding in a thread you own, for tests and for
    /// measuring the bridge without the thread hand-off. Never call it from an async task.
    pub fn call_blocking(
        &self,
        request: WsgiRequest,
    ) -> Result<(crate::ResponseHead, Vec<BodyChunk>), HostError> {
        let (reply, mut rx) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Python::attach(|py| {
            let app = self.inner.app.bind(py);
            let statics = self.inner.statics.get_or_try_init(py, || Statics::new(py));
            match statics {
                Ok(statics) => handle(
                    py,
                    app,
                    statics,
                    &self.inner.opts,
                    Job { request, id, reply },
                    1 << 20,
                ),
                Err(e) => tracing::error!("{}", traceback(py, &e)),
            }
        });
        let (head, mut body) = rx.try_recv().map_err(|_| HostError::Closed)?;
        let mut chunks = Vec::new();
        while let Ok(Some(item)) = body.try_recv() {
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(_) => return Err(HostError::Closed),
            }
        }
        Ok((head, chunks))
    }

    /// The number of Python threads.
    pub fn threads(&self) -> usize {
        self.inner.threads.lock().map_or(0, |t| t.len())
    }
}

fn worker(app: &Py<PyAny>, rx: &crossbeam_channel::Receiver<Job>, opts: &HostOptions) {
    Python::attach(|py| {
        let statics = match Statics::new(py) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("WSGI thread cannot start: {}", traceback(py, &e));
                return;
            }
        };
        let app = app.bind(py);
        // Wait for work with the GIL released.
        while let Ok(job) = py.detach(|| rx.recv()) {
            handle(py, app, &statics, opts, job, 4);
        }
    });
}

/// Logs an application error and answers 500, or cuts the response if the headers went out.
fn fail(py: Python<'_>, shared: &Shared, id: u64, what: &str, err: &PyErr) {
    tracing::error!(request_id = id, "{what}:\n{}", traceback(py, err));
    let mut r = lock(shared);
    if r.sent() {
        r.finish(Some(format!("{what}: {err}")));
    } else {
        r.send_error(500, "Internal Server Error");
    }
}

fn call_close(py: Python<'_>, iterable: &Bound<'_, PyAny>, shared: &Shared, id: u64) {
    // Lists and tuples have no close(); asking would raise (and build) an AttributeError.
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
        return;
    }
    match iterable.hasattr(intern!(py, "close")) {
        Ok(true) => {
            if let Err(e) = iterable.call_method0(intern!(py, "close")) {
                // The body (if any went out) is complete: log, and answer 500 only if
                // nothing was sent yet.
                tracing::error!(
                    request_id = id,
                    "the iterable's close() raised:\n{}",
                    traceback(py, &e)
                );
                let mut r = lock(shared);
                if !r.sent() {
                    r.send_error(500, "Internal Server Error");
                }
            }
        }
        Ok(false) => {}
        Err(e) => fail(py, shared, id, "looking up close()", &e),
    }
}

fn handle(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    statics: &Statics,
    opts: &HostOptions,
    job: Job,
    capacity: usize,
) {
    let Job { request, id, reply } = job;
    let shared = Responder::new(reply, capacity);
    let objects = (|| -> PyResult<_> {
        let errors = statics.errors(py, id)?;
        let template = statics.template(py, opts)?;
        let (environ, content_length) = environ::build(
            py,
            statics,
            &template,
            &request.env,
            request.https,
            opts,
            errors.clone(),
        )?;
        let input = Bound::new(py, WsgiInput::new(request.body, content_length))?;
        environ.set_item(intern!(py, "wsgi.input"), &input)?;
        let start_response = Bound::new(
            py,
            StartResponse {
                shared: shared.clone(),
            },
        )?;
        Ok((environ, start_response, errors, input))
    })();
    let (environ, start_response, errors, input) = match objects {
        Ok(o) => o,
        Err(e) => return fail(py, &shared, id, "building the environ", &e),
    };
    let result = app.call1((environ, start_response));
    let iterable = match result {
        Ok(it) if it.is_none() => {
            let err = pyo3::exceptions::PyTypeError::new_err("the application returned None");
            return fail(py, &shared, id, "the application returned None", &err);
        }
        Ok(it) => it,
        Err(e) if input.get().body_failed() => {
            // The app failed because the client's body was broken: the client's fault.
            tracing::warn!(request_id = id, "the request body could not be read: {e}");
            lock(&shared).send_error(400, "Bad Request");
            return;
        }
        Err(e) => return fail(py, &shared, id, "the application raised", &e),
    };
    stream(py, &iterable, &shared, id);
    call_close(py, &iterable, &shared, id);
    errors.get().flush();
    let mut r = lock(&shared);
    if !r.sent() {
        // Nothing went out (an empty body, or an error already answered).
        match r.send_whole(None, 0) {
            Ok(()) => {}
            Err(why) => {
                tracing::error!(request_id = id, "{why}");
                r.send_error(500, "Internal Server Error");
            }
        }
    }
    r.finish(None);
}

/// Sends the iterable's blocks, headers with the first non-empty one.
fn stream(py: Python<'_>, iterable: &Bound<'_, PyAny>, shared: &Shared, id: u64) {
    if let Ok(fw) = iterable.cast::<FileWrapper>() {
        if send_file(py, fw.get(), shared) {
            return;
        }
    }
    // One block (a list or tuple of one bytes): the host knows the Content-Length.
    let single = if let Ok(l) = iterable.cast::<PyList>() {
        (l.len() == 1).then(|| l.get_item(0).ok()).flatten()
    } else if let Ok(t) = iterable.cast::<PyTuple>() {
        (t.len() == 1).then(|| t.get_item(0).ok()).flatten()
    } else {
        None
    };
    if let Some(block) = single {
        if let Ok(b) = block.cast::<PyBytes>() {
            let data = b.as_bytes();
            let chunk =
                (!data.is_empty()).then(|| BodyChunk::Data(bytes::Bytes::copy_from_slice(data)));
            let sent = lock(shared).send_whole(chunk, data.len() as u64);
            if let Err(why) = sent {
                let err = pyo3::exceptions::PyRuntimeError::new_err(why);
                fail(py, shared, id, why, &err);
            }
            return;
        }
    }
    let iter = match iterable.try_iter() {
        Ok(i) => i,
        Err(e) => {
            return fail(
                py,
                shared,
                id,
                "the application's result is not iterable",
                &e,
            );
        }
    };
    for item in iter {
        let item = match item {
            Ok(i) => i,
            Err(e) => return fail(py, shared, id, "the application's iterable raised", &e),
        };
        let Ok(block) = item.cast::<PyBytes>() else {
            let err = pyo3::exceptions::PyTypeError::new_err(format!(
                "the application yielded {} instead of bytes",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ));
            return fail(
                py,
                shared,
                id,
                "the application yielded a non-bytes block",
                &err,
            );
        };
        let data = block.as_bytes();
        if data.is_empty() {
            continue;
        }
        let tx = lock(shared).send_head(None);
        let tx = match tx {
            Ok(Some(tx)) => tx,
            Ok(None) => return,
            Err(why) => {
                let err = pyo3::exceptions::PyRuntimeError::new_err(why);
                return fail(py, shared, id, why, &err);
            }
        };
        if !send_chunk(
            py,
            &tx,
            BodyChunk::Data(bytes::Bytes::copy_from_slice(data)),
        ) {
            return; // the client went away: stop iterating (close() still runs)
        }
    }
}

/// Hands a real file to the server whole; false to fall back to iterating.
fn send_file(py: Python<'_>, fw: &FileWrapper, shared: &Shared) -> bool {
    let f = fw.filelike.bind(py);
    let fd: Option<i32> = f.call_method0("fileno").ok().and_then(|v| v.extract().ok());
    let offset: u64 = f
        .call_method0("tell")
        .ok()
        .and_then(|v| v.extract().ok())
        .unwrap_or(0);
    let Some(fd) = fd else {
        return false;
    };
    // A new open file description for the same file: independent offset, no unsafe fd
    // juggling, and the Python object keeps its own.
    let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut len = meta.len().saturating_sub(offset);
    let declared = lock(shared).content_length;
    if let Some(cl) = declared {
        len = len.min(cl); // never more than the app's Content-Length
    }
    let tx = lock(shared).send_head(Some(len));
    match tx {
        Ok(Some(tx)) => {
            // A client that went away needs nothing more; close() still runs.
            let _ = len > 0 && send_chunk(py, &tx, BodyChunk::File { file, offset, len });
            true
        }
        Ok(None) => true,
        Err(_) => false,
    }
}
