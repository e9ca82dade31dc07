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
    /// The common names: their interned strings and what the environ does with them,
    /// found with one hash lookup.
    keys: KeyTable,
    /// The environ every request copies (made on first use, with the host's options).
    template: pyo3::sync::PyOnceLock<std::sync::Mutex<Template>>,
    /// `wsgi.errors`, one per thread (it only carries the current request id).
    errors: pyo3::sync::PyOnceLock<Py<ErrorStream>>,
    /// `wsgi.input` of every request without a body, one per thread: an input at its
    /// end has no state left to share.
    empty_input: pyo3::sync::PyOnceLock<Py<WsgiInput>>,
    /// Short values seen before (methods, protocols, host names, user agents, ...).
    values: std::sync::Mutex<ShortValues>,
}

type ValueCache<'a> = Option<std::sync::MutexGuard<'a, ShortValues>>;

/// Short values seen before and their Python strings, one per slot, found by the hash of
/// [`KeyTable`] (a new value takes its slot from the old one): a reused string also keeps
/// its hash, so the dict does not hash it again.
pub(crate) struct ShortValues {
    slots: Vec<Option<ShortValue>>,
}

struct ShortValue {
    bytes: Box<[u8]>,
    words: (u64, u64),
    py: Py<PyString>,
}

impl Default for ShortValues {
    fn default() -> Self {
        Self {
            slots: std::iter::repeat_with(|| None)
                .take(VALUE_CACHE_SLOTS)
                .collect(),
        }
    }
}

/// The value as a Python string, reused when the same short value was seen before.
fn cached<'py>(py: Python<'py>, v: &[u8], cache: &mut ValueCache<'_>) -> Bound<'py, PyString> {
    let Some(cache) = cache.as_mut().filter(|_| v.len() <= VALUE_CACHE_LEN) else {
        return latin1(py, v);
    };
    let words = name_words(v);
    let i = KeyTable::index(0, v.len(), words) % VALUE_CACHE_SLOTS;
    if let Some(held) = &cache.slots[i] {
        if same_name((&held.bytes, held.words), (v, words)) {
            return held.py.bind(py).clone();
        }
    }
    let s = latin1(py, v);
    cache.slots[i] = Some(ShortValue {
        bytes: v.into(),
        words,
        py: s.clone().unbind(),
    });
    s
}

/// Values up to this length are cached, in this many slots.
const VALUE_CACHE_LEN: usize = 64;
const VALUE_CACHE_SLOTS: usize = 1024;

impl Statics {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self {
            version: PyTuple::new(py, [1, 0])?.unbind(),
            file_wrapper: py.get_type::<FileWrapper>().unbind(),
            keys: KeyTable::new(COMMON_KEYS.iter().map(|&k| {
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
                (k, PyString::intern(py, k).unbind(), role, slot)
            })),
            values: std::sync::Mutex::default(),
            template: pyo3::sync::PyOnceLock::new(),
            errors: pyo3::sync::PyOnceLock::new(),
            empty_input: pyo3::sync::PyOnceLock::new(),
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
                    written: std::sync::atomic::AtomicBool::new(false),
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

    /// `wsgi.input` for a request without a body.
    pub(crate) fn empty_input<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, WsgiInput>> {
        let input = self.empty_input.get_or_try_init(py, || {
            Py::new(py, WsgiInput::new(crate::RequestBody::Empty, None))
        })?;
        Ok(input.bind(py).clone())
    }

    /// Locks the short-value cache, once per environ.
    fn values(&self) -> ValueCache<'_> {
        self.values.lock().ok()
    }

    /// The key as a Python string (interned for the common names, else cached) and its
    /// role in the environ.
    #[inline]
    fn key<'py>(
        &self,
        py: Python<'py>,
        k: &[u8],
        cache: &mut ValueCache<'_>,
    ) -> (Bound<'py, PyString>, Role, Option<u8>) {
        match self.keys.get(k) {
            Some(e) => (e.py.bind(py).clone(), e.role, e.slot),
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

/// Common name -> its interned string, its role, its template slot: an open-addressing
/// table whose hash is a name's length and first and last eight bytes (which tell every
/// common name apart), with a seed chosen so that the common names do not collide; a
/// name of up to 16 bytes is then compared as those two words. `HashMap` with a general
/// hash cost about a hundred instructions per lookup (a tenth of the bridge's time), this
/// about twenty.
struct KeyTable {
    /// Index + 1 into `entries`, 0 for an empty slot.
    slots: Box<[u8; KEY_SLOTS]>,
    entries: Vec<KeyEntry>,
    seed: u64,
}

/// One common name of [`KeyTable`].
struct KeyEntry {
    name: &'static [u8],
    words: (u64, u64),
    py: Py<PyString>,
    role: Role,
    slot: Option<u8>,
}

/// The slots of [`KeyTable`] (a power of two, for about a twentieth of them used).
const KEY_SLOTS: usize = 1024;

/// A name's first and last eight bytes as words (the first zero-padded, the last 0, for
/// a name shorter than eight bytes).
fn name_words(b: &[u8]) -> (u64, u64) {
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(w)
    };
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => (word(b), 0),
    }
}

/// Whether two byte strings, each with its [`name_words`], are equal: the words and the
/// length tell strings of up to 16 bytes apart; longer ones compare their middles too.
fn same_name((a, a_words): (&[u8], (u64, u64)), (b, b_words): (&[u8], (u64, u64))) -> bool {
    a_words == b_words
        && a.len() == b.len()
        && (b.len() <= 16 || a[8..b.len() - 8] == b[8..b.len() - 8])
}

impl KeyTable {
    /// The table of `names`; if no seed of the few tried spreads them without a
    /// collision, colliding names take the next free slots (still found, one probe
    /// later).
    fn new(names: impl Iterator<Item = (&'static str, Py<PyString>, Role, Option<u8>)>) -> Self {
        let entries: Vec<KeyEntry> = names
            .take(usize::from(u8::MAX))
            .map(|(name, py, role, slot)| KeyEntry {
                name: name.as_bytes(),
                words: name_words(name.as_bytes()),
                py,
                role,
                slot,
            })
            .collect();
        let spread = |seed: u64| {
            let mut used = vec![false; KEY_SLOTS];
            entries.iter().all(|e| {
                let i = Self::index(seed, e.name.len(), e.words);
                !std::mem::replace(&mut used[i], true)
            })
        };
        let seed = (0..4096u64).find(|&s| spread(s)).unwrap_or(0);
        let mut slots = Box::new([0u8; KEY_SLOTS]);
        for (n, e) in entries.iter().enumerate() {
            let mut i = Self::index(seed, e.name.len(), e.words);
            while slots[i] != 0 {
                i = (i + 1) % KEY_SLOTS;
            }
            // At most 255 entries (taken above): n + 1 fits.
            slots[i] = u8::try_from(n + 1).unwrap_or(u8::MAX);
        }
        Self {
            slots,
            entries,
            seed,
        }
    }

    fn index(seed: u64, len: usize, (head, tail): (u64, u64)) -> usize {
        let x = (head ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (tail ^ len as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (x >> (64 - KEY_SLOTS.trailing_zeros())) as usize
    }

    fn get(&self, k: &[u8]) -> Option<&KeyEntry> {
        let words = name_words(k);
        let mut i = Self::index(self.seed, k.len(), words);
        loop {
            let e = self
                .entries
                .get(usize::from(self.slots[i]).checked_sub(1)?)?;
            if same_name((e.name, e.words), (k, words)) {
                return Some(e);
            }
            i = (i + 1) % KEY_SLOTS;
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

/// The variables that go into the copy of the template: key, name, value.
type Rest<'py, 'e> = smallvec::SmallVec<[(Bound<'py, PyString>, &'e [u8], &'e [u8]); 32]>;

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
    let mut rest: Rest<'py, '_> = smallvec::SmallVec::new();
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
    // By reference: moving the inline array out would copy it whole.
    for (py_key, k, v) in &rest {
        let (k, v) = (*k, *v);
        let before = d.len();
        d.set_item(py_key, cached(py, v, &mut cache))?;
        if d.len() == before && k.starts_with(b"HTTP_") {
            // A repeated header (nginx 1.22 sends one var per line): join the values
            // instead of keeping only the last (uWSGI loses all cookies but one).
            let sep: &[u8] = if k == b"HTTP_COOKIE" { b"; " } else { b", " };
            let joined = env.get_all(k).collect::<Vec<_>>().join(sep);
            d.set_item(py_key, latin1(py, &joined))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_table_finds_every_common_name_and_nothing_else() {
        crate::interpreter::ensure_initialized();
        Python::attach(|py| {
            let statics = Statics::new(py).expect("statics");
            let table = &statics.keys;
            // The seed spreads the common names without a collision: one probe each.
            let mut used = std::collections::HashSet::new();
            for e in &table.entries {
                assert!(used.insert(KeyTable::index(table.seed, e.name.len(), e.words)));
            }
            for name in COMMON_KEYS {
                let e = table.get(name.as_bytes()).expect(name);
                assert_eq!(e.name, name.as_bytes());
                assert_eq!(e.py.bind(py).to_str().expect("str"), name);
            }
            // Same length, first and last eight bytes, another middle; prefixes; others.
            for other in [
                "HTTP_ACCEPTXLANGUAGE",
                "HTTP_UPGRADE_INSECURE_REQUESTX",
                "HTTP_UPGRADE_XNSECURE_REQUESTS",
                "HTTPS2",
                "HTTP",
                "",
                "REQUEST_METHOD\0",
                "HTTP_X_BENCH_HEADER_0",
                "http_host",
            ] {
                assert!(table.get(other.as_bytes()).is_none(), "{other}");
            }
            assert_eq!(
                table.get(b"CONTENT_LENGTH").map(|e| e.role),
                Some(Role::ContentLength)
            );
        });
    }

    #[test]
    fn short_values_are_reused_and_never_confused() {
        crate::interpreter::ensure_initialized();
        Python::attach(|py| {
            let statics = Statics::new(py).expect("statics");
            let mut cache = statics.values();
            let a = cached(py, b"Mozilla/5.0 (X11; Linux x86_64) Firefox/1", &mut cache);
            let again = cached(py, b"Mozilla/5.0 (X11; Linux x86_64) Firefox/1", &mut cache);
            assert!(a.is(&again), "a value seen before is the same string");
            // Same length and first and last eight bytes: another string.
            let b = cached(py, b"Mozilla/5.0 (X11; Linux i686) Firefox/1", &mut cache);
            let c = cached(py, b"Mozilla/5.0 (X11; Linux i686)_Firefox/1", &mut cache);
            assert_eq!(
                b.to_str().expect("str"),
                "Mozilla/5.0 (X11; Linux i686) Firefox/1"
            );
            assert_eq!(
                c.to_str().expect("str"),
                "Mozilla/5.0 (X11; Linux i686)_Firefox/1"
            );
            // Many values through few slots: each comes back as itself.
            for n in 0..5000 {
                let v = format!("v{n}");
                assert_eq!(
                    cached(py, v.as_bytes(), &mut cache).to_str().expect("str"),
                    v
                );
            }
            // Latin-1, and a value too long to keep.
            assert_eq!(
                cached(py, b"caf\xe9", &mut cache).to_str().expect("str"),
                "caf\u{e9}"
            );
            let long = vec![b'x'; VALUE_CACHE_LEN + 1];
            assert_eq!(
                cached(py, &long, &mut cache).len().expect("len"),
                long.len()
            );
        });
    }
}
