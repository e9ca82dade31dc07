//! Building the `environ` dict: interned keys, latin-1 values, the `wsgi.*` keys.

use std::net::IpAddr;

use cgi_family::Env;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{IntoPyObjectExt, intern};

use crate::HostOptions;
use crate::input::WsgiInput;
use crate::respond::{ErrorStream, FileWrapper};

/// Objects every environ shares, made once per worker thread.
pub(crate) struct Statics {
    version: Py<PyTuple>,
    file_wrapper: Py<PyType>,
}

impl Statics {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self {
            version: PyTuple::new(py, [1, 0])?.unbind(),
            file_wrapper: py.get_type::<FileWrapper>().unbind(),
        })
    }
}

/// A native string holding `b` as latin-1 code points (PEP 3333 "bytes as unicode").
pub(crate) fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        Ok(s) if b.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = b.iter().map(|&c| char::from(c)).collect();
            PyString::new(py, &s)
        }
    }
}

macro_rules! interned_keys {
    ($py:ident, $key:ident, [$($name:literal),* $(,)?]) => {
        match $key {
            $( k if k == $name.as_bytes() => intern!($py, $name).clone(), )*
            other => latin1($py, other),
        }
    };
}

/// The key as a Python string, interned for the names every request carries.
fn key<'py>(py: Python<'py>, k: &[u8]) -> Bound<'py, PyString> {
    interned_keys!(
        py,
        k,
        [
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
        ]
    )
}

fn scheme(env: &Env, https: bool, opts: &HostOptions) -> &'static str {
    let peer_trusted = env
        .get("REMOTE_ADDR")
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|ip| opts.trusted_proxies.contains(&ip));
    if peer_trusted {
        match env.get("HTTP_X_FORWARDED_PROTO") {
            Some(b"https") => return "https",
            Some(b"http") => return "http",
            _ => {}
        }
    }
    if https || matches!(env.get("HTTPS"), Some(b"on" | b"1")) {
        "https"
    } else {
        "http"
    }
}

/// Builds the environ for one request.
pub(crate) fn build<'py>(
    py: Python<'py>,
    statics: &Statics,
    env: &Env,
    https: bool,
    opts: &HostOptions,
    input: Bound<'py, WsgiInput>,
    errors: Bound<'py, ErrorStream>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in env.iter() {
        // The duplicates nginx adds (wsgiref.validate forbids them).
        if k == b"HTTP_CONTENT_TYPE" || k == b"HTTP_CONTENT_LENGTH" {
            continue;
        }
        let before = d.len();
        let py_key = key(py, k);
        d.set_item(&py_key, latin1(py, v))?;
        if d.len() == before && k.starts_with(b"HTTP_") {
            // A repeated header (nginx 1.22 sends one var per line): join the values
            // instead of keeping only the last (uWSGI loses all cookies but one).
            let sep: &[u8] = if k == b"HTTP_COOKIE" { b"; " } else { b", " };
            let joined = env.get_all(k).collect::<Vec<_>>().join(sep);
            d.set_item(&py_key, latin1(py, &joined))?;
        }
    }
    let empty = intern!(py, "");
    match env.get("SCRIPT_NAME") {
        None | Some(b"/") => d.set_item(intern!(py, "SCRIPT_NAME"), empty)?,
        _ => {}
    }
    for k in [intern!(py, "PATH_INFO"), intern!(py, "QUERY_STRING")] {
        if !d.contains(k)? {
            d.set_item(k, empty)?;
        }
    }
    let scheme = scheme(env, https, opts);
    if env.get("SERVER_NAME").is_none_or(<[u8]>::is_empty) {
        let host = env.get("HTTP_HOST").unwrap_or(b"localhost");
        let name = host.split(|&b| b == b':').next().unwrap_or(b"localhost");
        d.set_item(intern!(py, "SERVER_NAME"), latin1(py, name))?;
    }
    if env.get("SERVER_PORT").is_none_or(<[u8]>::is_empty) {
        let port = if scheme == "https" { "443" } else { "80" };
        d.set_item(intern!(py, "SERVER_PORT"), port)?;
    }
    d.set_item(intern!(py, "wsgi.version"), statics.version.bind(py))?;
    d.set_item(intern!(py, "wsgi.url_scheme"), PyString::intern(py, scheme))?;
    d.set_item(intern!(py, "wsgi.input"), input)?;
    d.set_item(intern!(py, "wsgi.errors"), errors)?;
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
