//! Building the `environ` dict: interned keys, latin-1 values, the `wsgi.*` keys.

use std::net::IpAddr;

use cgi_family::Env;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{IntoPyObjectExt, intern};

use crate::HostOptions;
use crate::respond::{ErrorStream, FileWrapper};

/// Objects every environ shares, made once per worker thread.
pub(crate) struct Statics {
    version: Py<PyTuple>,
    file_wrapper: Py<PyType>,
    /// The common names by length, then in order: a length switch and a compare or two.
    keys: Vec<Vec<(&'static [u8], Py<PyString>)>>,
    /// The environ every request copies (made on first use, with the host's options).
    template: pyo3::sync::PyOnceLock<Py<PyDict>>,
    /// `wsgi.errors`, one per thread (it only carries the current request id).
    errors: pyo3::sync::PyOnceLock<Py<ErrorStream>>,
    /// Short values seen before (methods, protocols, host names, user agents, ...).
    values: std::sync::Mutex<rustc_hash::FxHashMap<bytes::Bytes, Py<PyString>>>,
}

type ValueCache<'a> =
    Option<std::sync::MutexGuard<'a, rustc_hash::FxHashMap<bytes::Bytes, Py<PyString>>>>;

/// The value as a Python string, reused when the same short value was seen before.
fn cached<'py>(py: Python<'py>, v: &[u8], cache: &mut ValueCache<'_>) -> Bound<'py, PyString> {
    let Some(cache) = cache.as_mut().filter(|_| v.len() <= VALUE_CACHE_LEN) else {
        return latin1(py, v);
    };
    if let Some(s) = cache.get(v) {
        return s.bind(py).clone();
    }
    let s = latin1(py, v);
    if cache.len() >= VALUE_CACHE_SIZE {
        cache.clear();
    }
    cache.insert(bytes::Bytes::copy_from_slice(v), s.clone().unbind());
    s
}

/// Values up to this length are cached; the cache is emptied when it holds this many.
const VALUE_CACHE_LEN: usize = 64;
const VALUE_CACHE_SIZE: usize = 2048;

impl Statics {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self {
            version: PyTuple::new(py, [1, 0])?.unbind(),
            file_wrapper: py.get_type::<FileWrapper>().unbind(),
            keys: {
                let mut by_len: Vec<Vec<(&'static [u8], Py<PyString>)>> = Vec::new();
                for k in COMMON_KEYS {
                    if by_len.len() <= k.len() {
                        by_len.resize_with(k.len() + 1, Vec::new);
                    }
                    by_len[k.len()].push((k.as_bytes(), PyString::intern(py, k).unbind()));
                }
                by_len
            },
            values: std::sync::Mutex::default(),
            template: pyo3::sync::PyOnceLock::new(),
            errors: pyo3::sync::PyOnceLock::new(),
        })
    }

    /// The template environ (see [`template`]).
    pub(crate) fn template<'py>(
        &self,
        py: Python<'py>,
        opts: &HostOptions,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.template
            .get_or_try_init(py, || template(py, self, opts).map(Bound::unbind))
            .map(|t| t.bind(py).clone())
    }

    /// `wsgi.errors`, set to log with `request_id`.
    pub(crate) fn errors<'py>(
        &self,
        py: Python<'py>,
        request_id: u64,
    ) -> PyResult<Bound<'py, ErrorStream>> {
        let errors = self.errors.get_or_try_init(py, || {
            Py::new(
                py,
                ErrorStream {
                    request_id: std::sync::atomic::AtomicU64::new(0),
                    pending: std::sync::Mutex::default(),
                },
            )
        })?;
        // The previous request flushed it at its end.
        let errors = errors.bind(py).clone();
        errors
            .get()
            .request_id
            .store(request_id, std::sync::atomic::Ordering::Relaxed);
        Ok(errors)
    }

    /// Locks the short-value cache, once per environ.
    fn values(&self) -> ValueCache<'_> {
        self.values.lock().ok()
    }

    /// The key as a Python string: interned for the common names, else cached.
    fn key<'py>(
        &self,
        py: Python<'py>,
        k: &[u8],
        cache: &mut ValueCache<'_>,
    ) -> Bound<'py, PyString> {
        let common = self
            .keys
            .get(k.len())
            .and_then(|same_len| same_len.iter().find(|(name, _)| *name == k));
        match common {
            Some((_, s)) => s.bind(py).clone(),
            // Other names (custom headers) are cached like short values: a reused string
            // also keeps its hash, so the dict does not hash it again.
            None => cached(py, k, cache),
        }
    }
}

/// A native string holding `b` as latin-1 code points (PEP 3333 "bytes as unicode").
pub(crate) fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    if b.is_ascii() {
        // ASCII is valid UTF-8: no second validation pass.
        if let Ok(s) = std::str::from_utf8(b) {
            return PyString::new(py, s);
        }
    }
    let s: String = b.iter().map(|&c| char::from(c)).collect();
    PyString::new(py, &s)
}

/// The names nearly every request carries: their Python strings are interned once per
/// thread and found by length and bytes instead of being built per request.
const COMMON_KEYS: [&str; 49] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_URI",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_ADDR",
    "SERVER_SOFTWARE",
    "GATEWAY_INTERFACE",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "AUTH_TYPE",
    "REQUEST_SCHEME",
    "HTTPS",
    "DOCUMENT_ROOT",
    "DOCUMENT_URI",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_CONNECTION",
    "HTTP_COOKIE",
    "HTTP_REFERER",
    "HTTP_ORIGIN",
    "HTTP_CACHE_CONTROL",
    "HTTP_PRAGMA",
    "HTTP_AUTHORIZATION",
    "HTTP_UPGRADE_INSECURE_REQUESTS",
    "HTTP_SEC_FETCH_DEST",
    "HTTP_SEC_FETCH_MODE",
    "HTTP_SEC_FETCH_SITE",
    "HTTP_SEC_FETCH_USER",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_REAL_IP",
    "HTTP_X_REQUESTED_WITH",
    "HTTP_X_CSRFTOKEN",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_EXPECT",
    "HTTP_DNT",
];

/// CGI variables every gateway flavor sends; the template environ has them (empty), so a
/// request's environ is a copy of an already-sized dict whose common keys only get new
/// values (CGI: an empty value is the same as an absent variable).
const TEMPLATE_CGI: [&str; 14] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_URI",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REQUEST_SCHEME",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "DOCUMENT_ROOT",
];

/// The environ every request starts from (copied, never handed out).
pub(crate) fn template<'py>(
    py: Python<'py>,
    statics: &Statics,
    opts: &HostOptions,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let empty = intern!(py, "");
    let mut cache = statics.values();
    for k in TEMPLATE_CGI {
        d.set_item(statics.key(py, k.as_bytes(), &mut cache), empty)?;
    }
    drop(cache);
    d.set_item(intern!(py, "wsgi.version"), statics.version.bind(py))?;
    d.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "http"))?;
    d.set_item(intern!(py, "wsgi.input"), py.None())?;
    d.set_item(intern!(py, "wsgi.errors"), py.None())?;
    d.set_item(
        intern!(py, "wsgi.multithread"),
        (opts.threads > 1).into_bound_py_any(py)?,
    )?;
    d.set_item(
        intern!(py, "wsgi.multiprocess"),
        opts.multiprocess.into_bound_py_any(py)?,
    )?;
    d.set_item(intern!(py, "wsgi.run_once"), false.into_bound_py_any(py)?)?;
    d.set_item(
        intern!(py, "wsgi.input_terminated"),
        true.into_bound_py_any(py)?,
    )?;
    d.set_item(
        intern!(py, "wsgi.file_wrapper"),
        statics.file_wrapper.bind(py),
    )?;
    Ok(d)
}

/// Builds the environ for one request from `template` (see [`template`]), all but
/// `wsgi.input`; returns it with the body length CONTENT_LENGTH announces.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<'py>(
    py: Python<'py>,
    statics: &Statics,
    template: &Bound<'py, PyDict>,
    env: &Env,
    https: bool,
    opts: &HostOptions,
    errors: Bound<'py, ErrorStream>,
) -> PyResult<(Bound<'py, PyDict>, Option<u64>)> {
    let d = template.copy()?;
    let mut cache = statics.values();
    let mut content_length = None;
    let (mut server_name, mut server_port, mut host): (&[u8], &[u8], &[u8]) =
        (b"", b"", b"localhost");
    let (mut https_var, mut remote_addr, mut forwarded_proto): (&[u8], &[u8], &[u8]) =
        (b"", b"", b"");
    for (k, v) in env.pairs() {
        let k = &k[..];
        match k {
            // The duplicates nginx adds (wsgiref.validate forbids them).
            b"HTTP_CONTENT_TYPE" | b"HTTP_CONTENT_LENGTH" => continue,
            b"SERVER_NAME" => server_name = v,
            b"SERVER_PORT" => server_port = v,
            b"HTTP_HOST" => host = v,
            b"HTTPS" => https_var = v,
            b"REMOTE_ADDR" => remote_addr = v,
            b"HTTP_X_FORWARDED_PROTO" => forwarded_proto = v,
            b"SCRIPT_NAME" if &v[..] == b"/" => continue, // WSGI: "" at the root
            b"CONTENT_LENGTH" => {
                content_length = std::str::from_utf8(v)
                    .ok()
                    .and_then(|n| n.parse::<u64>().ok());
            }
            _ => {}
        }
        let before = d.len();
        let py_key = statics.key(py, k, &mut cache);
        d.set_item(&py_key, cached(py, v, &mut cache))?;
        if d.len() == before && k.starts_with(b"HTTP_") {
            // A repeated header (nginx 1.22 sends one var per line): join the values
            // instead of keeping only the last (uWSGI loses all cookies but one).
            let sep: &[u8] = if k == b"HTTP_COOKIE" { b"; " } else { b", " };
            let joined = env.get_all(k).collect::<Vec<_>>().join(sep);
            d.set_item(&py_key, latin1(py, &joined))?;
        }
    }
    drop(cache);
    let trusted = !opts.trusted_proxies.is_empty()
        && std::str::from_utf8(remote_addr)
            .ok()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|ip| opts.trusted_proxies.contains(&ip));
    let scheme = match forwarded_proto {
        b"https" if trusted => "https",
        b"http" if trusted => "http",
        _ if https || matches!(https_var, b"on" | b"1") => "https",
        _ => "http",
    };
    if server_name.is_empty() {
        let name = host.split(|&b| b == b':').next().unwrap_or(b"localhost");
        d.set_item(intern!(py, "SERVER_NAME"), latin1(py, name))?;
    }
    if server_port.is_empty() {
        let port = if scheme == "https" { "443" } else { "80" };
        d.set_item(intern!(py, "SERVER_PORT"), port)?;
    }
    if scheme == "https" {
        d.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
    }
    d.set_item(intern!(py, "wsgi.errors"), errors)?;
    Ok((d, content_length))
}
