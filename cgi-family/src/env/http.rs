//! Building the env from an HTTP request head, the way nginx's stock params files do.

use std::borrow::Cow;
use std::net::SocketAddr;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

use super::Env;
use super::sink::{Collect, EnvSink, HeadSource, Piece, WriteError};

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
    pub(super) method: Bytes,
    pub(super) target: Bytes,
    pub(super) version: Bytes,
    pub(super) headers: Vec<(Bytes, Bytes)>,
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
    fn pieces(a: Option<&Self>) -> (Piece<'_>, Piece<'_>) {
        match a {
            Some(a) => (
                Piece::Shared(&a.addr, &a.addr),
                Piece::Shared(&a.port, &a.port),
            ),
            None => (Piece::Static(b""), Piece::Static(b"")),
        }
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

    /// Both addresses of the connection at once, already written out (see [`AddrText`];
    /// `None` leaves REMOTE_* or SERVER_ADDR/PORT empty).
    pub fn addresses(mut self, peer: Option<AddrText>, local: Option<AddrText>) -> Self {
        self.peer = peer;
        self.local = local;
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
        self.build_with(head, &[])
    }

    /// Builds the env for any [`HeadSource`], with `params` set after the builder's own
    /// (see [`EnvBuilder::param`]; a later param of a name replaces an earlier one).
    pub fn build_with<H: HeadSource + ?Sized>(
        &self,
        head: &H,
        params: &[(Bytes, Bytes)],
    ) -> Result<Env, PathError> {
        // The values made here (numbers, addresses, HTTP_ names, and whatever the head
        // cannot share) share one allocation.
        let temp = |p: Piece<'_>| match p {
            Piece::Temp(b) => b.len(),
            _ => 0,
        };
        let (headers, bytes) = head.headers().fold((0, 0), |(n, bytes), (name, v)| {
            (n + 1, bytes + 5 + name.len() + temp(v))
        });
        let bytes = bytes + 2 * temp(head.target()) + temp(head.method());
        let mut sink = Collect {
            env: Env::with_capacity(24 + self.params.len() + params.len() + headers),
            arena: BytesMut::with_capacity(160 + bytes),
        };
        match self.write(head, params, &mut sink) {
            Ok(()) => Ok(sink.env),
            Err(WriteError::Path(e)) => Err(e),
            Err(WriteError::Sink(never)) => match never {},
        }
    }

    /// Writes the env for `head` var by var into `sink` (a uwsgi packet being written,
    /// say), with `params` set after the builder's own: the same vars in the same order
    /// as [`EnvBuilder::build_with`], without making an [`Env`] first.
    ///
    /// ```
    /// use cgi_family::{EnvBuilder, Flavor, RequestHead};
    /// let head = RequestHead::new("GET", "/a?b=1", "HTTP/1.1").header("Host", "example.com");
    /// let mut packet = Vec::new();
    /// let mut p = uwsgi_proto::PacketBuilder::new(&mut packet);
    /// EnvBuilder::new(Flavor::Uwsgi).write(&head, &[], &mut p)?;
    /// let size = p.finish();
    /// let vars = uwsgi_proto::Vars::parse(&packet[4..size])?;
    /// assert_eq!(vars.get(b"QUERY_STRING"), Some(&b"b=1"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write<H: HeadSource + ?Sized, S: EnvSink>(
        &self,
        head: &H,
        params: &[(Bytes, Bytes)],
        sink: &mut S,
    ) -> Result<(), WriteError<S::Error>> {
        let target = head.target();
        let (raw_path, query) = split_target(target.as_bytes())?;
        let query = target.within(query);
        // An already normal path is a slice of the target (no copy).
        let normal = normalize_path(raw_path)?;
        let uri = match &normal {
            Cow::Borrowed(b) => target.within(b),
            Cow::Owned(v) => Piece::Temp(v),
        };
        let (script, path_info) = self.split_mount(uri);
        let mut scratch = [0u8; 20];
        let content_length = match self.content_length {
            Some(n) => Some(Piece::Temp(decimal(&mut scratch, n))),
            None => head.header("content-length"),
        };
        let content_type = head.header("content-type");
        let mut host_buf = Vec::new();
        let host = self.host(head, &mut host_buf);
        let empty = Piece::Static(b"");
        let (remote_addr, remote_port) = AddrText::pieces(self.peer.as_ref());
        let (server_addr, server_port) = AddrText::pieces(self.local.as_ref());
        let server_name = Piece::Shared(&self.server_name, &self.server_name);
        let document_root = Piece::Shared(&self.document_root, &self.document_root);
        let scheme = Piece::Static(if self.https { b"https" } else { b"http" });
        let https = self.https.then_some(Piece::Static(b"on"));
        let method = head.method();
        let version = head.version();
        let request_uri = target;
        let all = |i: usize| {
            self.params
                .get(i)
                .or_else(|| params.get(i - self.params.len()))
        };
        let n_params = self.params.len() + params.len();
        // The last param named `name`, if any.
        let param = |name: &[u8]| -> Option<&(Bytes, Bytes)> {
            (0..n_params)
                .rev()
                .map(all)
                .find_map(|p| p.filter(|p| p.0 == name))
        };
        // Which stock vars a param replaces, and whether any names a header.
        let mut replaced = 0u32;
        let mut http_params = false;
        for (k, _) in (0..n_params).filter_map(all) {
            if let Some(var) = stock_index(k) {
                replaced |= 1 << var as u32;
            }
            http_params |= k.starts_with(b"HTTP_");
        }
        let mut sent_stock = 0u32;
        let mut put = |var: Stock, value: Piece<'_>| -> Result<(), S::Error> {
            let name = STOCK[var as usize];
            sent_stock |= 1 << var as u32;
            if replaced & (1 << var as u32) == 0 {
                return sink.var(Piece::Static(name), value);
            }
            match param(name) {
                // An empty HTTP_* param sends nothing (nginx's httpoxy mitigation).
                Some((_, v)) if v.is_empty() && name.starts_with(b"HTTP_") => Ok(()),
                Some((_, v)) => sink.var(Piece::Static(name), Piece::Shared(v, v)),
                None => sink.var(Piece::Static(name), value),
            }
        };

        let sent: Result<(), S::Error> = (|| {
            match self.flavor {
                Flavor::Uwsgi => {
                    put(Stock::QUERY_STRING, query)?;
                    put(Stock::REQUEST_METHOD, method)?;
                    put(Stock::CONTENT_TYPE, content_type.unwrap_or(empty))?;
                    put(Stock::CONTENT_LENGTH, content_length.unwrap_or(empty))?;
                    put(Stock::REQUEST_URI, request_uri)?;
                    if let Some(script) = script {
                        put(Stock::SCRIPT_NAME, script)?;
                    }
                    put(Stock::PATH_INFO, path_info)?;
                    put(Stock::DOCUMENT_ROOT, document_root)?;
                    put(Stock::SERVER_PROTOCOL, version)?;
                    put(Stock::REQUEST_SCHEME, scheme)?;
                    if let Some(on) = https {
                        put(Stock::HTTPS, on)?;
                    }
                    put(Stock::REMOTE_ADDR, remote_addr)?;
                    put(Stock::REMOTE_PORT, remote_port)?;
                    put(Stock::SERVER_PORT, server_port)?;
                    put(Stock::SERVER_NAME, server_name)?;
                    put(Stock::HTTP_HOST, host)?;
                }
                Flavor::FastCgi => {
                    put(Stock::QUERY_STRING, query)?;
                    put(Stock::REQUEST_METHOD, method)?;
                    put(Stock::CONTENT_TYPE, content_type.unwrap_or(empty))?;
                    put(Stock::CONTENT_LENGTH, content_length.unwrap_or(empty))?;
                    match script {
                        Some(script) => {
                            put(Stock::SCRIPT_NAME, script)?;
                            put(Stock::PATH_INFO, path_info)?;
                        }
                        None => put(Stock::SCRIPT_NAME, uri)?,
                    }
                    put(Stock::REQUEST_URI, request_uri)?;
                    put(Stock::DOCUMENT_URI, uri)?;
                    put(Stock::DOCUMENT_ROOT, document_root)?;
                    put(Stock::SERVER_PROTOCOL, version)?;
                    put(Stock::REQUEST_SCHEME, scheme)?;
                    if let Some(on) = https {
                        put(Stock::HTTPS, on)?;
                    }
                    put(Stock::GATEWAY_INTERFACE, Piece::Static(b"CGI/1.1"))?;
                    put(
                        Stock::SERVER_SOFTWARE,
                        Piece::Shared(&self.server_software, &self.server_software),
                    )?;
                    put(Stock::REMOTE_ADDR, remote_addr)?;
                    put(Stock::REMOTE_PORT, remote_port)?;
                    let user = remote_user(head);
                    put(
                        Stock::REMOTE_USER,
                        user.as_deref().map_or(empty, Piece::Temp),
                    )?;
                    put(Stock::SERVER_ADDR, server_addr)?;
                    put(Stock::SERVER_PORT, server_port)?;
                    put(Stock::SERVER_NAME, server_name)?;
                    put(Stock::REDIRECT_STATUS, Piece::Static(b"200"))?;
                    put(Stock::HTTP_HOST, host)?;
                }
                Flavor::Scgi => {
                    put(
                        Stock::CONTENT_LENGTH,
                        content_length
                            .filter(|v| !v.as_bytes().is_empty())
                            .unwrap_or(Piece::Static(b"0")),
                    )?;
                    put(Stock::REQUEST_METHOD, method)?;
                    put(Stock::REQUEST_URI, request_uri)?;
                    put(Stock::QUERY_STRING, query)?;
                    put(Stock::CONTENT_TYPE, content_type.unwrap_or(empty))?;
                    put(Stock::DOCUMENT_URI, uri)?;
                    if let Some(script) = script {
                        put(Stock::SCRIPT_NAME, script)?;
                        put(Stock::PATH_INFO, path_info)?;
                    }
                    put(Stock::DOCUMENT_ROOT, document_root)?;
                    put(Stock::SCGI, Piece::Static(b"1"))?;
                    put(Stock::SERVER_PROTOCOL, version)?;
                    put(Stock::REQUEST_SCHEME, scheme)?;
                    if let Some(on) = https {
                        put(Stock::HTTPS, on)?;
                    }
                    put(Stock::REMOTE_ADDR, remote_addr)?;
                    put(Stock::REMOTE_PORT, remote_port)?;
                    put(Stock::SERVER_PORT, server_port)?;
                    put(Stock::SERVER_NAME, server_name)?;
                    put(Stock::HTTP_HOST, host)?;
                }
                Flavor::Cgi | Flavor::Wsgi => {
                    put(Stock::GATEWAY_INTERFACE, Piece::Static(b"CGI/1.1"))?;
                    put(
                        Stock::SERVER_SOFTWARE,
                        Piece::Shared(&self.server_software, &self.server_software),
                    )?;
                    put(Stock::REQUEST_METHOD, method)?;
                    put(Stock::SCRIPT_NAME, script.unwrap_or(empty))?;
                    put(Stock::PATH_INFO, path_info)?;
                    put(Stock::QUERY_STRING, query)?;
                    put(Stock::REQUEST_URI, request_uri)?;
                    if let Some(ct) = content_type {
                        put(Stock::CONTENT_TYPE, ct)?;
                    }
                    if let Some(cl) = content_length.filter(|v| !v.as_bytes().is_empty()) {
                        put(Stock::CONTENT_LENGTH, cl)?;
                    }
                    put(Stock::SERVER_NAME, server_name)?;
                    put(Stock::SERVER_PORT, server_port)?;
                    put(Stock::SERVER_ADDR, server_addr)?;
                    put(Stock::SERVER_PROTOCOL, version)?;
                    put(Stock::REQUEST_SCHEME, scheme)?;
                    if let Some(on) = https {
                        put(Stock::HTTPS, on)?;
                    }
                    put(Stock::REMOTE_ADDR, remote_addr)?;
                    put(Stock::REMOTE_PORT, remote_port)?;
                    if let Some(v) = head.header("authorization") {
                        let v = v.as_bytes();
                        let scheme_end = v.iter().position(|&b| b == b' ').unwrap_or(v.len());
                        put(Stock::AUTH_TYPE, Piece::Temp(&v[..scheme_end]))?;
                        if let Some(user) = remote_user(head) {
                            put(Stock::REMOTE_USER, Piece::Temp(&user))?;
                        }
                    }
                    put(Stock::DOCUMENT_ROOT, document_root)?;
                }
            }
            Ok(())
        })();
        sent.map_err(WriteError::Sink)?;
        // The params not already sent in a stock var's place, once each (the last value
        // of a name, at its first place), an empty HTTP_* one not at all.
        for i in 0..n_params {
            let Some((k, _)) = all(i) else { continue };
            if stock_index(k).is_some_and(|var| sent_stock & (1 << var as u32) != 0)
                || (0..i).filter_map(all).any(|(e, _)| e == k)
            {
                continue;
            }
            let Some((_, v)) = param(k) else { continue };
            if v.is_empty() && k.starts_with(b"HTTP_") {
                continue;
            }
            sink.var(Piece::Shared(k, k), Piece::Shared(v, v))
                .map_err(WriteError::Sink)?;
        }
        self.write_headers(head, &|n| http_params && param(n).is_some(), sink)
            .map_err(WriteError::Sink)
    }

    /// The client's headers as HTTP_* vars: repeated ones joined into one var at the
    /// first's place; those a param names, invalid names and CONTENT_* left out.
    fn write_headers<H: HeadSource + ?Sized, S: EnvSink>(
        &self,
        head: &H,
        is_param: &dyn Fn(&[u8]) -> bool,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let rfc = matches!(self.flavor, Flavor::Cgi | Flavor::Wsgi);
        let underscores = self.underscores_in_headers;
        // With distinct names (and no `_`), no two headers make the same var.
        let may_repeat = underscores || !head.names_distinct();
        // The var's name, on the stack unless the header's name is long.
        let mut short = [0u8; 64];
        let mut long = Vec::new();
        let mut joined = Vec::new();
        for (i, (name, value)) in head.headers().enumerate() {
            if !valid_header_name(name, underscores)
                || name.eq_ignore_ascii_case(b"content-type")
                || name.eq_ignore_ascii_case(b"content-length")
            {
                continue; // dropped (nginx's ignore_invalid_headers), or already CONTENT_*
            }
            if !rfc && name.eq_ignore_ascii_case(b"host") {
                continue; // the stock params send $host instead
            }
            let var: &[u8] = {
                let out: &mut [u8] = if name.len() + 5 <= short.len() {
                    &mut short[..name.len() + 5]
                } else {
                    long.resize(name.len() + 5, 0);
                    &mut long
                };
                out[..5].copy_from_slice(b"HTTP_");
                for (o, &b) in out[5..].iter_mut().zip(name) {
                    *o = if b == b'-' {
                        b'_'
                    } else {
                        b.to_ascii_uppercase()
                    };
                }
                out
            };
            if rfc
                && (var == b"HTTP_PROXY"
                    || (self.flavor == Flavor::Cgi && var == b"HTTP_AUTHORIZATION"))
            {
                continue;
            }
            if is_param(var) {
                continue;
            }
            let mut value = value;
            if may_repeat {
                let same = |n: &[u8]| valid_header_name(n, underscores) && same_var(n, name);
                // Already sent with the first of its name.
                if head.headers().take(i).any(|(n, _)| same(n)) {
                    continue;
                }
                let mut later = head
                    .headers()
                    .skip(i + 1)
                    .filter(|(n, _)| same(n))
                    .peekable();
                if later.peek().is_some() {
                    let sep: &[u8] = if var == b"HTTP_COOKIE" { b"; " } else { b", " };
                    joined.clear();
                    joined.extend_from_slice(value.as_bytes());
                    for (_, v) in later {
                        joined.extend_from_slice(sep);
                        joined.extend_from_slice(v.as_bytes());
                    }
                    value = Piece::Temp(&joined);
                }
            }
            sink.var(Piece::Temp(var), value)?;
        }
        Ok(())
    }

    fn split_mount<'a>(&'a self, uri: Piece<'a>) -> (Option<Piece<'a>>, Piece<'a>) {
        let m = &self.mount[..];
        let u = uri.as_bytes();
        if !m.is_empty() && u.starts_with(m) && (u.len() == m.len() || u[m.len()] == b'/') {
            return (
                Some(Piece::Shared(&self.mount, &self.mount)),
                uri.sub(m.len()..u.len()),
            );
        }
        let script = (!m.is_empty() || matches!(self.flavor, Flavor::Cgi | Flavor::Wsgi))
            .then_some(Piece::Static(b""));
        (script, uri)
    }

    /// nginx's `$host`: the Host header lower-cased without its port (or the server name).
    fn host<'a, H: HeadSource + ?Sized>(&'a self, head: &'a H, buf: &'a mut Vec<u8>) -> Piece<'a> {
        let Some(h) = head.header("host").filter(|h| !h.as_bytes().is_empty()) else {
            return Piece::Shared(&self.server_name, &self.server_name);
        };
        let b = h.as_bytes();
        let mut end = if b.first() == Some(&b'[') {
            b.iter().position(|&c| c == b']').map_or(b.len(), |i| i + 1)
        } else {
            b.iter().position(|&c| c == b':').unwrap_or(b.len())
        };
        if end > 0 && b[end - 1] == b'.' {
            end -= 1;
        }
        let host = &b[..end];
        if host.iter().any(u8::is_ascii_uppercase) {
            buf.extend(host.iter().map(u8::to_ascii_lowercase));
            Piece::Temp(buf)
        } else {
            h.sub(0..end)
        }
    }
}

/// The stock vars, named once: [`Stock`] indexes [`STOCK`], their names.
macro_rules! stock_vars {
    ($($name:ident),* $(,)?) => {
        /// A stock var (a param of its name replaces it in its place); its number is its
        /// place in [`STOCK`] and its bit in the masks of [`EnvBuilder::write`].
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Stock {
            $($name),*
        }

        /// The names of the stock vars, in [`Stock`]'s order.
        const STOCK: &[&[u8]] = &[$(stringify!($name).as_bytes()),*];
        // Each has a bit in a `u32`.
        const _: () = assert!(STOCK.len() <= 32);
    };
}

stock_vars!(
    QUERY_STRING,
    REQUEST_METHOD,
    CONTENT_TYPE,
    CONTENT_LENGTH,
    REQUEST_URI,
    SCRIPT_NAME,
    PATH_INFO,
    DOCUMENT_ROOT,
    SERVER_PROTOCOL,
    REQUEST_SCHEME,
    HTTPS,
    REMOTE_ADDR,
    REMOTE_PORT,
    SERVER_PORT,
    SERVER_NAME,
    HTTP_HOST,
    DOCUMENT_URI,
    GATEWAY_INTERFACE,
    SERVER_SOFTWARE,
    REMOTE_USER,
    SERVER_ADDR,
    REDIRECT_STATUS,
    SCGI,
    AUTH_TYPE,
);

/// The stock var named `name` (written out: quicker than a search of [`STOCK`]; a test
/// checks both agree).
fn stock_index(name: &[u8]) -> Option<Stock> {
    Some(match name {
        b"QUERY_STRING" => Stock::QUERY_STRING,
        b"REQUEST_METHOD" => Stock::REQUEST_METHOD,
        b"CONTENT_TYPE" => Stock::CONTENT_TYPE,
        b"CONTENT_LENGTH" => Stock::CONTENT_LENGTH,
        b"REQUEST_URI" => Stock::REQUEST_URI,
        b"SCRIPT_NAME" => Stock::SCRIPT_NAME,
        b"PATH_INFO" => Stock::PATH_INFO,
        b"DOCUMENT_ROOT" => Stock::DOCUMENT_ROOT,
        b"SERVER_PROTOCOL" => Stock::SERVER_PROTOCOL,
        b"REQUEST_SCHEME" => Stock::REQUEST_SCHEME,
        b"HTTPS" => Stock::HTTPS,
        b"REMOTE_ADDR" => Stock::REMOTE_ADDR,
        b"REMOTE_PORT" => Stock::REMOTE_PORT,
        b"SERVER_PORT" => Stock::SERVER_PORT,
        b"SERVER_NAME" => Stock::SERVER_NAME,
        b"HTTP_HOST" => Stock::HTTP_HOST,
        b"DOCUMENT_URI" => Stock::DOCUMENT_URI,
        b"GATEWAY_INTERFACE" => Stock::GATEWAY_INTERFACE,
        b"SERVER_SOFTWARE" => Stock::SERVER_SOFTWARE,
        b"REMOTE_USER" => Stock::REMOTE_USER,
        b"SERVER_ADDR" => Stock::SERVER_ADDR,
        b"REDIRECT_STATUS" => Stock::REDIRECT_STATUS,
        b"SCGI" => Stock::SCGI,
        b"AUTH_TYPE" => Stock::AUTH_TYPE,
        _ => return None,
    })
}

/// Whether header names `a` and `b` make the same HTTP_* var (case and `-`/`_` aside).
fn same_var(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'-' {
            b'_'
        } else {
            c.to_ascii_uppercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
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
fn put_decimal(dst: &mut BytesMut, n: u64) {
    dst.put_slice(decimal(&mut [0; 20], n));
}

/// nginx's `$remote_user`: the user of `Authorization: Basic`.
fn remote_user<H: HeadSource + ?Sized>(head: &H) -> Option<Vec<u8>> {
    let v = head.header("authorization")?.as_bytes();
    let rest = v
        .strip_prefix(b"Basic ")
        .or_else(|| v.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let user_end = decoded.iter().position(|&b| b == b':')?;
    let mut decoded = decoded;
    decoded.truncate(user_end);
    Some(decoded)
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
    fn stock_index_finds_every_stock_name_at_its_place() {
        for (i, name) in STOCK.iter().enumerate() {
            assert_eq!(stock_index(name).map(|v| v as usize), Some(i), "{name:?}");
        }
        assert_eq!(stock_index(b"HTTP_ACCEPT"), None);
        assert_eq!(stock_index(b"query_string"), None);
    }

    #[test]
    fn mount_matches_whole_segments() {
        let b = EnvBuilder::new(Flavor::Uwsgi).mount("/app/");
        let split = |uri: &'static [u8]| {
            let (script, info) = b.split_mount(Piece::Static(uri));
            (
                script.map(|s| s.as_bytes().to_vec()),
                info.as_bytes().to_vec(),
            )
        };
        assert_eq!(split(b"/app/x"), (Some(b"/app".to_vec()), b"/x".to_vec()));
        assert_eq!(split(b"/app"), (Some(b"/app".to_vec()), b"".to_vec()));
        assert_eq!(split(b"/apple"), (Some(b"".to_vec()), b"/apple".to_vec()));
    }
}
