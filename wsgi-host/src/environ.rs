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
    /// The common names: their interned strings and what the environ does with them,
    /// found with one hash lookup.
    keys: KeyTable,
    /// The environ every request copies (made on first use, with the host's options).
    template: pyo3::sync::PyOnceLock<std::sync::Mutex<Template>>,
    /// `wsgi.errors`, one per thread (it only carries the current request id).
    errors: pyo3::sync::PyOnceLock<Py<ErrorStream>>,
    /// Short values seen before (methods, protocols, host names, user agents, ...).
    values: std::sync::Mutex<rustc_hash::FxHashMap<bytes::Bytes, Py<PyString>>>,
}

/// Common name -> its interned string, its role, its template slot.
type KeyTable = std::collections::HashMap<
    &'static [u8],
    (Py<PyString>, Role, Option<u8>),
    std::hash::BuildHasherDefault<NameHasher>,
>;

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
            keys: COMMON_KEYS
                .iter()
                .map(|&k| {
                    let role = match k {
                        "HTTP_CONTENT_TYPE" | "HTTP_CONTENT_LENGTH" => Role::Skip,
                        "SERVER_NAME" => Role::ServerName,
                        "SERVER_PORT" => Role::ServerPort,
                        "HTTP_HOST" => Role::Host,
                        "HTTPS" => Role::Https,
                        "REMOTE_ADDR" => Role::RemoteAddr,
                        "HTTP_X_FORWARDED_PROTO" => Role::ForwardedProto,
                        "SCRIPT_NAME" => Role::ScriptName,
                        "CONTENT_LENGTH" => Role::ContentLength,
                        _ => Role::Plain,
                    };
                    let slot = TEMPLATE_CGI.iter().position(|&t| t == k);
                    let slot = slot.and_then(|i| u8::try_from(i).ok());
                    (k.as_bytes(), (PyString::intern(py, k).unbind(), role, slot))
                })
                .collect(),
            values: std::sync::Mutex::default(),
            template: pyo3::sync::PyOnceLock::new(),
            errors: pyo3::sync::PyOnceLock::new(),
        })
    }

    /// The template environ (see [`Template`]), locked for one request.
    fn template(
        &self,
        py: Python<'_>,
        opts: &HostOptions,
    ) -> PyResult<std::sync::MutexGuard<'_, Template>> {
        let t = self.template.get_or_try_init(py, || {
            Ok::<_, PyErr>(std::sync::Mutex::new(Template {
                dict: template(py, self, opts)?.unbind(),
                last: Default::default(),
            }))
        })?;
        Ok(t.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
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

    /// The key as a Python string (interned for the common names, else cached) and its
    /// role in the environ.
    fn key<'py>(
        &self,
        py: Python<'py>,
        k: &[u8],
        cache: &mut ValueCache<'_>,
    ) -> (Bound<'py, PyString>, Role, Option<u8>) {
        match self.keys.get(k) {
            Some((s, role, slot)) => (s.bind(py).clone(), *role, *slot),
            // Other names (custom headers) are cached like short values: a reused string
            // also keeps its hash, so the dict does not hash it again.
            None => (cached(py, k, cache), Role::Plain, None),
        }
    }
}

/// What building the environ does with a variable besides storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Stored as it is.
    Plain,
    /// Left out: the duplicates nginx adds of CONTENT_TYPE and CONTENT_LENGTH
    /// (wsgiref.validate forbids them).
    Skip,
    ServerName,
    ServerPort,
    Host,
    Https,
    RemoteAddr,
    ForwardedProto,
    /// Left out when it is "/" (WSGI: "" at the root).
    ScriptName,
    /// Also gives the body's length.
    ContentLength,
}

/// The hash of [`Statics::keys`]: a variable name's length and its first and last eight
/// bytes (which tell every common name apart), mixed by one multiplication. A general
/// hash of the whole name cost about a hundred instructions per lookup, the lookup about
/// a tenth of the bridge's time.
#[derive(Default)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, b: &[u8]) {
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        let n = b.len();
        let (head, tail) = if n >= 8 {
            (word(&b[..8]), word(&b[n - 8..]))
        } else {
            (word(b), 0)
        };
        self.0 = (self.0 ^ head).rotate_left(23) ^ tail;
    }

    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        let m = u128::from(self.0) * 0x9E37_79B9_7F4A_7C15;
        (m as u64) ^ ((m >> 64) as u64)
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
const COMMON_KEYS: [&str; 51] = [
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
    "HTTP_CONTENT_TYPE",
    "HTTP_CONTENT_LENGTH",
];

/// The environ every request copies: the `wsgi.*` keys, and the CGI variables every
/// gateway flavor sends (CGI: an empty value is the same as an absent variable) holding
/// the values the previous request on this thread gave them. Consecutive requests mostly
/// share those (method, protocol, server name and port, scheme, the proxy's address,
/// empty content type and length), so a request only stores the ones that differ, into
/// the template, before copying it; a variable the request lacks is emptied again. The
/// dict itself is never handed out.
pub(crate) struct Template {
    dict: Py<PyDict>,
    /// The bytes each slot of [`TEMPLATE_CGI`] holds now (kept here, not as slices of
    /// an old request's buffer).
    last: [Vec<u8>; TEMPLATE_CGI.len()],
}

/// CGI variables every gateway flavor sends: the slots of [`Template`].
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
        d.set_item(statics.key(py, k.as_bytes(), &mut cache).0, empty)?;
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
    env: &Env,
    https: bool,
    opts: &HostOptions,
    errors: Bound<'py, ErrorStream>,
) -> PyResult<(Bound<'py, PyDict>, Option<u64>)> {
    let mut template = statics.template(py, opts)?;
    let Template { dict, last } = &mut *template;
    let t = dict.bind(py);
    let mut cache = statics.values();
    // Template slots this request set, and the variables that go into the copy.
    let mut seen = 0u32;
    let mut rest: Vec<(Bound<'py, PyString>, &[u8], &[u8])> = Vec::new();
    let mut content_length = None;
    let (mut server_name, mut server_port, mut host): (&[u8], &[u8], &[u8]) =
        (b"", b"", b"localhost");
    let (mut https_var, mut remote_addr, mut forwarded_proto): (&[u8], &[u8], &[u8]) =
        (b"", b"", b"");
    for (k, v) in env.pairs() {
        let k = &k[..];
        let (py_key, role, slot) = statics.key(py, k, &mut cache);
        match role {
            Role::Plain => {}
            Role::Skip => continue,
            Role::ServerName => server_name = v,
            Role::ServerPort => server_port = v,
            Role::Host => host = v,
            Role::Https => https_var = v,
            Role::RemoteAddr => remote_addr = v,
            Role::ForwardedProto => forwarded_proto = v,
            Role::ScriptName if &v[..] == b"/" => continue,
            Role::ScriptName => {}
            Role::ContentLength => {
                content_length = std::str::from_utf8(v)
                    .ok()
                    .and_then(|n| n.parse::<u64>().ok());
            }
        }
        match slot.map(|i| (usize::from(i), 1u32 << i)) {
            // A template variable, the first time in this request.
            Some((i, bit)) if seen & bit == 0 => {
                seen |= bit;
                if last[i] != v[..] {
                    t.set_item(&py_key, cached(py, v, &mut cache))?;
                    last[i].clear();
                    last[i].extend_from_slice(v);
                }
            }
            _ => rest.push((py_key, k, v)),
        }
    }
    // The template variables this request lacks are empty again.
    for (i, held) in last.iter_mut().enumerate() {
        if seen & (1 << i) == 0 && !held.is_empty() {
            let (key, _, _) = statics.key(py, TEMPLATE_CGI[i].as_bytes(), &mut cache);
            t.set_item(key, intern!(py, ""))?;
            held.clear();
        }
    }
    let d = t.copy()?;
    drop(template);
    for (py_key, k, v) in rest {
        let before = d.len();
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
