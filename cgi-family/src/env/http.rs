//! Building the env from an HTTP request head, the way nginx's stock params files do.

use std::borrow::Cow;
use std::net::SocketAddr;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

use super::Env;

/// Which stock params file to reproduce.
///
/// The first three give, var for var and in the same order, what Debian's nginx sends with
/// `include uwsgi_params;` / `fastcgi_params;` / `scgi_params;`, with two deliberate
/// differences: repeated headers are combined into one var (`", "`, `Cookie` with `"; "`,
/// as nginx >= 1.23 does; nginx 1.22 sends duplicates and uWSGI then keeps only the last
/// cookie), and `Content-Type`/`Content-Length` are sent only as `CONTENT_TYPE` and
/// `CONTENT_LENGTH`, never again as `HTTP_CONTENT_*` (which `wsgiref.validate` forbids).
/// [`Flavor::Cgi`] gives the full RFC 3875 set for CGI scripts and WSGI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// `uwsgi_params`: PATH_INFO is the whole decoded path, no SCRIPT_NAME.
    Uwsgi,
    /// `fastcgi_params`: SCRIPT_NAME is the whole decoded path, no PATH_INFO.
    FastCgi,
    /// `scgi_params`: CONTENT_LENGTH first (always a number), `SCGI=1`, DOCUMENT_URI.
    Scgi,
    /// RFC 3875: GATEWAY_INTERFACE, SCRIPT_NAME (`""` at the root) and PATH_INFO always,
    /// CONTENT_* only when present; `Proxy` (httpoxy) and `Authorization` are not passed.
    Cgi,
    /// The RFC 3875 set for a WSGI environ (PEP 3333): as [`Flavor::Cgi`], but
    /// `Authorization` is passed as `HTTP_AUTHORIZATION` (token-auth apps read it); `Proxy`
    /// is still dropped, in case an app copies its environ into the process environment.
    Wsgi,
}

/// Why a request target cannot become PATH_INFO (nginx answers these with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The target is neither origin-form (`/path`) nor absolute-form (`http://h/path`).
    #[error("the request target is not a path")]
    NotAPath,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the request path")]
    BadPercent,
    /// The decoded path holds a NUL byte.
    #[error("NUL byte in the request path")]
    Nul,
    /// `..` segments climb above the root.
    #[error("the request path climbs above the root")]
    AboveRoot,
}

/// The parts of an HTTP request head the env is built from.
///
/// ```
/// use cgi_family::{EnvBuilder, Flavor, RequestHead};
/// let head = RequestHead::new("GET", "/app/caf%C3%A9?x=1", "HTTP/1.1")
///     .header("Host", "Example.com:8080")
///     .header("Cookie", "a=1")
///     .header("Cookie", "b=2")
///     .header("X-Forwarded_For", "6.6.6.6"); // underscore: dropped, as nginx does
/// let env = EnvBuilder::new(Flavor::Uwsgi)
///     .peer("127.0.0.1:50000".parse().unwrap())
///     .local("127.0.0.1:80".parse().unwrap())
///     .server_name("example.com")
///     .mount("/app")
///     .build(&head)?;
/// assert_eq!(env.get("SCRIPT_NAME"), Some(&b"/app"[..]));
/// assert_eq!(env.get("PATH_INFO"), Some("/café".as_bytes()));
/// assert_eq!(env.get("HTTP_HOST"), Some(&b"example.com"[..]));
/// assert_eq!(env.get("HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
/// assert!(!env.contains("HTTP_X_FORWARDED_FOR"));
/// # Ok::<(), cgi_family::PathError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    method: Bytes,
    target: Bytes,
    version: Bytes,
    headers: Vec<(Bytes, Bytes)>,
}

impl RequestHead {
    /// A head from its request line.
    pub fn new(
        method: impl Into<Bytes>,
        target: impl Into<Bytes>,
        version: impl Into<Bytes>,
    ) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            version: version.into(),
            headers: Vec::new(),
        }
    }

    /// The head of an `http` crate request: its method, target (path and query), version
    /// and headers, copied into one allocation (the `http` types do not hand out their
    /// bytes). A request without a `Host` header (HTTP/2) gets its URI's authority as
    /// the host, as nginx reads `:authority`.
    ///
    /// ```
    /// let req = http::Request::get("http://example.com/a?b=1").body(()).unwrap();
    /// let (parts, ()) = req.into_parts();
    /// let head = cgi_family::RequestHead::from_http(&parts);
    /// assert_eq!(head.target(), b"/a?b=1");
    /// assert_eq!(head.header_value("host"), Some(&b"example.com"[..]));
    /// ```
    #[cfg(feature = "http")]
    pub fn from_http(parts: &http::request::Parts) -> Self {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = match parts.headers.contains_key(http::header::HOST) {
            true => None,
            false => parts.uri.authority().map(http::uri::Authority::as_str),
        };
        let size = target.len()
            + authority.map_or(0, |a| 4 + a.len())
            + parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>();
        let mut arena = BytesMut::with_capacity(size);
        let mut take = |b: &[u8]| made(&mut arena, |a| a.put_slice(b));
        let method = match parts.method {
            http::Method::GET => Bytes::from_static(b"GET"),
            http::Method::POST => Bytes::from_static(b"POST"),
            http::Method::HEAD => Bytes::from_static(b"HEAD"),
            ref m => Bytes::copy_from_slice(m.as_str().as_bytes()),
        };
        let version: &'static [u8] = match parts.version {
            http::Version::HTTP_09 => b"HTTP/0.9",
            http::Version::HTTP_10 => b"HTTP/1.0",
            http::Version::HTTP_2 => b"HTTP/2.0",
            http::Version::HTTP_3 => b"HTTP/3.0",
            _ => b"HTTP/1.1",
        };
        let mut head = Self::new(method, take(target.as_bytes()), Bytes::from_static(version));
        head.headers.reserve(parts.headers.len() + 1);
        for (name, value) in &parts.headers {
            let name = take(name.as_str().as_bytes());
            head.headers.push((name, take(value.as_bytes())));
        }
        if let Some(a) = authority {
            let name = take(b"host");
            head.headers.push((name, take(a.as_bytes())));
        }
        head
    }

    /// Adds a header line (in arrival order; repeated names allowed).
    pub fn header(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a header line in place.
    pub fn push_header(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.headers.push((name.into(), value.into()));
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.header_bytes(name).map(|v| &v[..])
    }

    /// The first value of header `name`, shared (no copy).
    fn header_bytes(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The raw request target.
    pub fn target(&self) -> &[u8] {
        &self.target
    }
}

/// A socket address written out the way the env carries it (REMOTE_ADDR and REMOTE_PORT,
/// or SERVER_ADDR and SERVER_PORT): made once per connection and handed to
/// [`EnvBuilder::peer_text`] for each of its requests, instead of being written again.
///
/// ```
/// let peer = cgi_family::AddrText::new("10.0.0.7:51234".parse().unwrap());
/// assert_eq!((peer.addr(), peer.port()), (&b"10.0.0.7"[..], &b"51234"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrText {
    addr: Bytes,
    port: Bytes,
}

impl AddrText {
    /// Writes `a` out (an IPv6 address without brackets, as nginx's `$remote_addr`).
    pub fn new(a: SocketAddr) -> Self {
        let mut arena = BytesMut::with_capacity(48);
        let addr = made(&mut arena, |dst| match a.ip() {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        dst.put_u8(b'.');
                    }
                    put_decimal(dst, u64::from(octet));
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write;
                let _ = write!(dst, "{v6}");
            }
        });
        let port = made(&mut arena, |dst| put_decimal(dst, u64::from(a.port())));
        Self { addr, port }
    }

    /// The address and the port of `a`, empty when there is none (for the env).
    fn parts(a: Option<&Self>) -> (Bytes, Bytes) {
        a.map(|a| (a.addr.clone(), a.port.clone()))
            .unwrap_or_default()
    }

    /// The address.
    pub fn addr(&self) -> &[u8] {
        &self.addr
    }

    /// The port.
    pub fn port(&self) -> &[u8] {
        &self.port
    }
}

impl From<SocketAddr> for AddrText {
    fn from(a: SocketAddr) -> Self {
        Self::new(a)
    }
}

/// Builds an [`Env`] from a [`RequestHead`] and the connection's facts.
#[derive(Debug, Clone)]
pub struct EnvBuilder {
    flavor: Flavor,
    peer: Option<AddrText>,
    local: Option<AddrText>,
    https: bool,
    server_name: Bytes,
    document_root: Bytes,
    server_software: Bytes,
    mount: Bytes,
    content_length: Option<u64>,
    underscores_in_headers: bool,
    params: Vec<(Bytes, Bytes)>,
}

impl EnvBuilder {
    /// A builder for `flavor`, with nothing known about the connection yet.
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            peer: None,
            local: None,
            https: false,
            server_name: Bytes::new(),
            document_root: Bytes::new(),
            server_software: Bytes::from_static(
                concat!("gateway/", env!("CARGO_PKG_VERSION")).as_bytes(),
            ),
            mount: Bytes::new(),
            content_length: None,
            underscores_in_headers: false,
            params: Vec::new(),
        }
    }

    /// The client's address (REMOTE_ADDR, REMOTE_PORT).
    pub fn peer(mut self, addr: SocketAddr) -> Self {
        self.peer = Some(AddrText::new(addr));
        self
    }

    /// The client's address already written out (see [`AddrText`]).
    pub fn peer_text(mut self, addr: AddrText) -> Self {
        self.peer = Some(addr);
        self
    }

    /// The address the request arrived on (SERVER_ADDR, SERVER_PORT).
    pub fn local(mut self, addr: SocketAddr) -> Self {
        self.local = Some(AddrText::new(addr));
        self
    }

    /// The address the request arrived on, already written out (see [`AddrText`]).
    pub fn local_text(mut self, addr: AddrText) -> Self {
        self.local = Some(addr);
        self
    }

    /// Whether the connection is TLS (REQUEST_SCHEME `https`, HTTPS `on`).
    pub fn https(mut self, on: bool) -> Self {
        self.https = on;
        self
    }

    /// The configured server name (SERVER_NAME, and HTTP_HOST when the client sent none).
    pub fn server_name(mut self, name: impl Into<Bytes>) -> Self {
        self.server_name = name.into();
        self
    }

    /// The configured root (DOCUMENT_ROOT).
    pub fn document_root(mut self, root: impl Into<Bytes>) -> Self {
        self.document_root = root.into();
        self
    }

    /// SERVER_SOFTWARE (default `gateway/VERSION`).
    pub fn server_software(mut self, software: impl Into<Bytes>) -> Self {
        self.server_software = software.into();
        self
    }

    /// The mount point: a decoded path prefix that becomes SCRIPT_NAME, the rest of the
    /// path PATH_INFO (uWSGI's `--mount`/`--manage-script-name`). It matches `/app` and
    /// `/app/x`, not `/apple`; a trailing `/` is ignored.
    pub fn mount(mut self, prefix: impl Into<Bytes>) -> Self {
        let mut m: Bytes = prefix.into();
        while m.last() == Some(&b'/') {
            m.truncate(m.len() - 1);
        }
        self.mount = m;
        self
    }

    /// The body length after de-chunking, when the server buffered a chunked body
    /// (overrides the `Content-Length` header).
    pub fn content_length(mut self, length: Option<u64>) -> Self {
        self.content_length = length;
        self
    }

    /// nginx's `underscores_in_headers`: off (the default) drops header names holding `_`.
    pub fn underscores_in_headers(mut self, on: bool) -> Self {
        self.underscores_in_headers = on;
        self
    }

    /// An extra param (nginx's `uwsgi_param`/`fastcgi_param`/`scgi_param`): replaces a
    /// stock var of the same name or is appended after them; a param named `HTTP_X`
    /// suppresses the client's `X` header, and an empty one sends nothing for it.
    pub fn param(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Builds the env for `head`.
    pub fn build(&self, head: &RequestHead) -> Result<Env, PathError> {
        let (raw_path, query) = split_target(&head.target)?;
        // An already normal path is a slice of the target (no copy).
        let uri = match normalize_path(raw_path)? {
            Cow::Borrowed(b) => head.target.slice_ref(b),
            Cow::Owned(v) => Bytes::from(v),
        };
        let (script, path_info) = self.split_mount(&uri);
        let flavor = self.flavor;
        let mut env = Env::with_capacity(24 + head.headers.len());
        // The values made here (numbers, addresses, HTTP_ names) share one allocation.
        let names: usize = head.headers.iter().map(|(n, _)| 5 + n.len()).sum();
        let mut arena = BytesMut::with_capacity(160 + names);

        let content_type = head.header_bytes("content-type").cloned();
        let content_length: Option<Bytes> = match self.content_length {
            Some(n) => Some(made(&mut arena, |a| put_decimal(a, n))),
            None => head.header_bytes("content-length").cloned(),
        };
        let (remote_addr, remote_port) = AddrText::parts(self.peer.as_ref());
        let (server_addr, server_port) = AddrText::parts(self.local.as_ref());
        let scheme = Bytes::from_static(if self.https { b"https" } else { b"http" });
        let host = self.host(head, &mut arena);
        let mut put = |k: &'static str, v: Bytes| env.push(Bytes::from_static(k.as_bytes()), v);
        let query = head.target.slice_ref(query);
        let request_uri = head.target.clone();
        let https = self.https.then(|| Bytes::from_static(b"on"));

        match flavor {
            Flavor::Uwsgi => {
                put("QUERY_STRING", query);
                put("REQUEST_METHOD", head.method.clone());
                put("CONTENT_TYPE", content_type.unwrap_or_default());
                put("CONTENT_LENGTH", content_length.unwrap_or_default());
                put("REQUEST_URI", request_uri);
                if let Some(script) = script {
                    put("SCRIPT_NAME", script);
                }
                put("PATH_INFO", path_info);
                put("DOCUMENT_ROOT", self.document_root.clone());
                put("SERVER_PROTOCOL", head.version.clone());
                put("REQUEST_SCHEME", scheme);
                if let Some(on) = https {
                    put("HTTPS", on);
                }
                put("REMOTE_ADDR", remote_addr);
                put("REMOTE_PORT", remote_port);
                put("SERVER_PORT", server_port);
                put("SERVER_NAME", self.server_name.clone());
                put("HTTP_HOST", host);
            }
            Flavor::FastCgi => {
                put("QUERY_STRING", query);
                put("REQUEST_METHOD", head.method.clone());
                put("CONTENT_TYPE", content_type.unwrap_or_default());
                put("CONTENT_LENGTH", content_length.unwrap_or_default());
                match script {
                    Some(script) => {
                        put("SCRIPT_NAME", script);
                        put("PATH_INFO", path_info);
                    }
                    None => put("SCRIPT_NAME", uri.clone()),
                }
                put("REQUEST_URI", request_uri);
                put("DOCUMENT_URI", uri);
                put("DOCUMENT_ROOT", self.document_root.clone());
                put("SERVER_PROTOCOL", head.version.clone());
                put("REQUEST_SCHEME", scheme);
                if let Some(on) = https {
                    put("HTTPS", on);
                }
                put("GATEWAY_INTERFACE", Bytes::from_static(b"CGI/1.1"));
                put("SERVER_SOFTWARE", self.server_software.clone());
                put("REMOTE_ADDR", remote_addr);
                put("REMOTE_PORT", remote_port);
                put("REMOTE_USER", remote_user(head).unwrap_or_default());
                put("SERVER_ADDR", server_addr);
                put("SERVER_PORT", server_port);
                put("SERVER_NAME", self.server_name.clone());
                put("REDIRECT_STATUS", Bytes::from_static(b"200"));
                put("HTTP_HOST", host);
            }
            Flavor::Scgi => {
                put(
                    "CONTENT_LENGTH",
                    content_length
                        .filter(|v| !v.is_empty())
                        .unwrap_or(Bytes::from_static(b"0")),
                );
                put("REQUEST_METHOD", head.method.clone());
                put("REQUEST_URI", request_uri);
                put("QUERY_STRING", query);
                put("CONTENT_TYPE", content_type.unwrap_or_default());
                put("DOCUMENT_URI", uri);
                if let Some(script) = script {
                    put("SCRIPT_NAME", script);
                    put("PATH_INFO", path_info);
                }
                put("DOCUMENT_ROOT", self.document_root.clone());
                put("SCGI", Bytes::from_static(b"1"));
                put("SERVER_PROTOCOL", head.version.clone());
                put("REQUEST_SCHEME", scheme);
                if let Some(on) = https {
                    put("HTTPS", on);
                }
                put("REMOTE_ADDR", remote_addr);
                put("REMOTE_PORT", remote_port);
                put("SERVER_PORT", server_port);
                put("SERVER_NAME", self.server_name.clone());
                put("HTTP_HOST", host);
            }
            Flavor::Cgi | Flavor::Wsgi => {
                put("GATEWAY_INTERFACE", Bytes::from_static(b"CGI/1.1"));
                put("SERVER_SOFTWARE", self.server_software.clone());
                put("REQUEST_METHOD", head.method.clone());
                put("SCRIPT_NAME", script.unwrap_or_default());
                put("PATH_INFO", path_info);
                put("QUERY_STRING", query);
                put("REQUEST_URI", request_uri);
                if let Some(ct) = content_type {
                    put("CONTENT_TYPE", ct);
                }
                if let Some(cl) = content_length.filter(|v| !v.is_empty()) {
                    put("CONTENT_LENGTH", cl);
                }
                put("SERVER_NAME", self.server_name.clone());
                put("SERVER_PORT", server_port);
                put("SERVER_ADDR", server_addr);
                put("SERVER_PROTOCOL", head.version.clone());
                put("REQUEST_SCHEME", scheme);
                if let Some(on) = https {
                    put("HTTPS", on);
                }
                put("REMOTE_ADDR", remote_addr);
                put("REMOTE_PORT", remote_port);
                if let Some((auth_type, user)) = auth(head) {
                    put("AUTH_TYPE", auth_type);
                    if let Some(user) = user {
                        put("REMOTE_USER", user);
                    }
                }
                put("DOCUMENT_ROOT", self.document_root.clone());
            }
        }
        for (k, v) in &self.params {
            env.set(k.clone(), v.clone());
        }
        // An empty HTTP_* param suppresses the header and sends nothing (httpoxy fix).
        if !self.params.is_empty() {
            env.pairs
                .retain(|(k, v)| !(k.starts_with(b"HTTP_") && v.is_empty() && self.is_param(k)));
        }
        self.push_headers(&mut env, head, &mut arena);
        Ok(env)
    }

    fn is_param(&self, name: &[u8]) -> bool {
        self.params.iter().any(|(k, _)| &k[..] == name)
    }

    fn split_mount(&self, uri: &Bytes) -> (Option<Bytes>, Bytes) {
        let m = &self.mount[..];
        if !m.is_empty() && uri.starts_with(m) && (uri.len() == m.len() || uri[m.len()] == b'/') {
            return (Some(self.mount.clone()), uri.slice(m.len()..));
        }
        let script =
            (!m.is_empty() || matches!(self.flavor, Flavor::Cgi | Flavor::Wsgi)).then(Bytes::new);
        (script, uri.clone())
    }

    /// nginx's `$host`: the Host header lower-cased without its port (or the server name).
    fn host(&self, head: &RequestHead, arena: &mut BytesMut) -> Bytes {
        let Some(h) = head.header_bytes("host").filter(|h| !h.is_empty()) else {
            return self.server_name.clone();
        };
        let mut end = if h.first() == Some(&b'[') {
            h.iter().position(|&b| b == b']').map_or(h.len(), |i| i + 1)
        } else {
            h.iter().position(|&b| b == b':').unwrap_or(h.len())
        };
        if end > 0 && h[end - 1] == b'.' {
            end -= 1;
        }
        let host = &h[..end];
        if host.iter().any(u8::is_ascii_uppercase) {
            made(arena, |a| a.extend(host.iter().map(u8::to_ascii_lowercase)))
        } else {
            h.slice(..end)
        }
    }

    fn push_headers(&self, env: &mut Env, head: &RequestHead, arena: &mut BytesMut) {
        let start = env.len();
        for (name, value) in &head.headers {
            if !valid_header_name(name, self.underscores_in_headers) {
                continue; // nginx's ignore_invalid_headers: dropped, so no smuggling
            }
            if name.eq_ignore_ascii_case(b"content-type")
                || name.eq_ignore_ascii_case(b"content-length")
            {
                continue; // already CONTENT_TYPE / CONTENT_LENGTH
            }
            let var = made(arena, |a| {
                a.put_slice(b"HTTP_");
                a.extend(name.iter().map(|&b| match b {
                    b'-' => b'_',
                    b => b.to_ascii_uppercase(),
                }));
            });
            let rfc = matches!(self.flavor, Flavor::Cgi | Flavor::Wsgi);
            if rfc
                && (&var[..] == b"HTTP_PROXY"
                    || (self.flavor == Flavor::Cgi && &var[..] == b"HTTP_AUTHORIZATION"))
            {
                continue;
            }
            if !rfc && &var[..] == b"HTTP_HOST" {
                continue; // the stock params send $host instead
            }
            if self.is_param(&var) {
                continue;
            }
            // Repeated headers: one var at the first occurrence, values joined.
            if let Some(pos) = env.pairs[start..]
                .iter()
                .position(|(k, _)| k[..] == var[..])
            {
                let (_, joined) = &mut env.pairs[start + pos];
                let sep: &[u8] = if &var[..] == b"HTTP_COOKIE" {
                    b"; "
                } else {
                    b", "
                };
                let mut v = BytesMut::with_capacity(joined.len() + sep.len() + value.len());
                v.put_slice(joined);
                v.put_slice(sep);
                v.put_slice(value);
                *joined = v.freeze();
                continue;
            }
            env.push(var, value.clone());
        }
    }
}

/// nginx's header-name rule: `A-Z a-z 0-9 -` only (and `_` when
/// `underscores_in_headers on`); anything else is dropped.
fn valid_header_name(name: &[u8], underscores: bool) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || (underscores && b == b'_'))
}

/// Bytes written by `f` at the end of `arena`, split off as their own value (sharing the
/// arena's allocation while it has room).
fn made(arena: &mut BytesMut, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    f(arena);
    arena.split().freeze()
}

/// `n` in decimal (without the formatting machinery: this runs for every request).
fn put_decimal(dst: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

fn auth(head: &RequestHead) -> Option<(Bytes, Option<Bytes>)> {
    let v = head.header_value("authorization")?;
    let scheme_end = v.iter().position(|&b| b == b' ').unwrap_or(v.len());
    let scheme = Bytes::copy_from_slice(&v[..scheme_end]);
    Some((scheme, remote_user(head)))
}

/// nginx's `$remote_user`: the user of `Authorization: Basic`.
fn remote_user(head: &RequestHead) -> Option<Bytes> {
    let v = head.header_value("authorization")?;
    let rest = v
        .strip_prefix(b"Basic ")
        .or_else(|| v.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let user_end = decoded.iter().position(|&b| b == b':')?;
    Some(Bytes::copy_from_slice(&decoded[..user_end]))
}

/// Splits a request target into its raw path and query (`""` when none).
fn split_target(target: &[u8]) -> Result<(&[u8], &[u8]), PathError> {
    let mut t = target;
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .map_or(&b"/"[..], |i| &rest[i..]);
            if t.first() == Some(&b'?') {
                return Ok((b"/", &t[1..]));
            }
        }
    }
    if t.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    Ok(match t.iter().position(|&b| b == b'?') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, &b""[..]),
    })
}

/// nginx's `$uri`: the path percent-decoded, `//` merged, `.` and `..` resolved; a bad
/// escape, a NUL byte or a `..` above the root is an error (nginx answers 400).
///
/// ```
/// use cgi_family::{normalize_path, PathError};
/// assert_eq!(&*normalize_path(b"/static/a%20b//c/../d").unwrap(), b"/static/a b/d");
/// assert_eq!(normalize_path(b"/static/%2e%2e/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
/// // A path that is already normal is borrowed, not copied.
/// assert!(matches!(normalize_path(b"/static/app.css"), Ok(std::borrow::Cow::Borrowed(_))));
/// ```
pub fn normalize_path(raw: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if already_normal(raw) {
        Ok(Cow::Borrowed(raw))
    } else {
        rebuild_path(raw).map(Cow::Owned)
    }
}

/// Whether `raw` is its own normal form: rooted, no escape, no NUL, no empty, `.` or `..`
/// segment (but a trailing slash).
fn already_normal(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"/") else {
        return false;
    };
    if rest.iter().any(|&b| b == b'%' || b == 0) {
        return false;
    }
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(s) = segments.next() {
        match s {
            b"." | b".." => return false,
            b"" if segments.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

/// [`normalize_path`]'s general case: decode, then resolve segment by segment.
fn rebuild_path(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercent);
            };
            decoded.push((h * 16 + l) as u8);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let trailing_slash =
        decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_like_nginx() {
        let n = |p: &str| {
            normalize_path(p.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        assert_eq!(n("/caf%C3%A9/a%20b//c").unwrap(), "/café/a b/c");
        assert_eq!(n("/u/a%2Fb//c/e").unwrap(), "/u/a/b/c/e");
        assert_eq!(n("/a/./b/../c/").unwrap(), "/a/c/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/%2e%2e/etc").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a%00").unwrap_err(), PathError::Nul);
        assert_eq!(n("/a%zz").unwrap_err(), PathError::BadPercent);
        assert_eq!(n("/").unwrap(), "/");
    }

    proptest::proptest! {
        /// The borrowing fast path agrees with the general case on every input, and
        /// borrows exactly when the path is already normal.
        #[test]
        fn fast_path_agrees(parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(&b"/"[..]), proptest::strategy::Just(&b"."[..]),
                proptest::strategy::Just(&b".."[..]), proptest::strategy::Just(&b"a"[..]),
                proptest::strategy::Just(&b"%2e"[..]), proptest::strategy::Just(&b"\0"[..]),
                proptest::strategy::Just(&b"b.c"[..]), proptest::strategy::Just(&b"%"[..]),
            ], 0..10)) {
            let raw: Vec<u8> = parts.concat();
            let fast = normalize_path(&raw);
            let slow = rebuild_path(&raw);
            proptest::prop_assert_eq!(fast.as_deref().ok(), slow.as_deref().ok());
            proptest::prop_assert_eq!(fast.as_ref().err(), slow.as_ref().err());
            if let Ok(Cow::Borrowed(b)) = fast {
                proptest::prop_assert_eq!(b, &raw[..]);
            }
        }
    }

    #[test]
    fn targets_split() {
        assert_eq!(
            split_target(b"/a?b=1?c").unwrap(),
            (&b"/a"[..], &b"b=1?c"[..])
        );
        assert_eq!(
            split_target(b"http://h:1/x?q").unwrap(),
            (&b"/x"[..], &b"q"[..])
        );
        assert_eq!(split_target(b"http://h").unwrap(), (&b"/"[..], &b""[..]));
        assert_eq!(split_target(b"*").unwrap_err(), PathError::NotAPath);
    }

    #[test]
    fn mount_matches_whole_segments() {
        let b = EnvBuilder::new(Flavor::Uwsgi).mount("/app/");
        assert_eq!(
            b.split_mount(&Bytes::from_static(b"/app/x")),
            (Some(Bytes::from("/app")), Bytes::from("/x"))
        );
        assert_eq!(
            b.split_mount(&Bytes::from_static(b"/app")),
            (Some(Bytes::from("/app")), Bytes::new())
        );
        assert_eq!(
            b.split_mount(&Bytes::from_static(b"/apple")),
            (Some(Bytes::new()), Bytes::from("/apple"))
        );
    }
}
