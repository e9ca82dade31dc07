//! Pass handlers: nginx's `uwsgi_pass` and `scgi_pass` (and uWSGI's `--http-to`), the
//! front's side of the gateway protocols, over an [`Upstream`] pool.
//!
//! A request's body is read whole first (in memory up to a threshold, then in a temporary
//! file), as nginx's request buffering does, so a slow upload never holds a backend
//! worker; the CGI env is built as the stock `*_params` files build it, with overrides;
//! connection failures (and, for methods safe to repeat, failures before the response
//! head) are retried on the next server; the response streams to the client through a
//! bounded buffer, so the backend is released once the response fits in it.
//!
//! ```no_run
//! # async fn demo(req: http::Request<hyper::body::Incoming>) {
//! use std::sync::Arc;
//! use gateway::pass::{Pass, Protocol};
//! use gateway::upstream::{Policy, ServerSpec, Upstream};
//! let pool = Upstream::new("django", vec![ServerSpec::parse("unix:/run/app.sock").unwrap()], Policy::RoundRobin);
//! let pass = Pass::new(Arc::new(pool), Protocol::Uwsgi);
//! let response = pass.handle(req, &Default::default()).await;
//! # let _ = response;
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cgi_family::{EnvBuilder, Flavor, HeadOptions, ResponseHeadDecoder, WriteError};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::handler::Body;
use crate::listen::ListenAddr;
use crate::upstream::{PickContext, Upstream};

/// The protocol spoken to the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// `uwsgi_pass`: one request per connection, a raw HTTP response.
    Uwsgi,
    /// `scgi_pass`: one request per connection, a CGI response.
    Scgi,
    /// `fastcgi_pass`: one request per connection (nginx's default, `fastcgi_keep_conn
    /// off`; see [`Pass::keep_conn`]), the body in STDIN records, a CGI response in
    /// STDOUT records.
    FastCgi,
}

/// The connection a request came on: made once per connection, with its addresses
/// written out once for the envs of all its requests.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    https: bool,
    peer_text: Option<cgi_family::AddrText>,
    local_text: Option<cgi_family::AddrText>,
}

impl ConnInfo {
    /// The connection from `peer` to `local`, TLS or not.
    pub fn new(peer: Option<SocketAddr>, local: Option<SocketAddr>, https: bool) -> Self {
        Self {
            peer,
            local,
            https,
            peer_text: peer.map(cgi_family::AddrText::new),
            local_text: local.map(cgi_family::AddrText::new),
        }
    }

    /// The client.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Our side.
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Whether it is TLS.
    pub fn https(&self) -> bool {
        self.https
    }

    /// The client, written out (REMOTE_ADDR, REMOTE_PORT).
    pub fn peer_text(&self) -> Option<&cgi_family::AddrText> {
        self.peer_text.as_ref()
    }
}

/// Timeouts, as nginx's `*_connect_timeout`, `*_send_timeout`, `*_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection (default 60 s; a failure is retried on the next server).
    pub connect: Duration,
    /// Between two successful writes to the backend (default 60 s).
    pub send: Duration,
    /// Between two successful reads from the backend (default 60 s; 504 before the head).
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            connect: minute,
            send: minute,
            read: minute,
        }
    }
}

/// A pass handler.
#[derive(Debug)]
pub struct Pass {
    upstream: Arc<Upstream>,
    protocol: Protocol,
    params: Vec<(Bytes, Bytes)>,
    timeouts: Timeouts,
    body_in_memory: usize,
    buffering: crate::spool::Buffering,
    buffer_size: usize,
    /// `fastcgi_keep_conn on` with the upstream's `keepalive N`: idle connections.
    idle: Option<Arc<Idle>>,
}

/// A connection to a backend.
type BackendConn = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;

/// Connects to a backend and sends what it can of `first` (the request) at once: the
/// connection, and how many bytes of `first` went.
///
/// The socket is written before tokio has it. tokio's connect waits for the event loop to
/// report a new socket writable and then asks it for its error, and its first write on a
/// new socket waits for the loop again: three more system calls and two turns of the loop
/// per request. A unix socket's connect on Linux is done (or has failed) when it returns;
/// a TCP connect to loopback is most often established by then as well, and otherwise
/// the send finds it still connecting (`EAGAIN`) and the connection is awaited as tokio
/// does, or finds it failed, which is a failure to connect. On a connected socket a send
/// that fails sends nothing here: the write that follows meets the error as it would
/// have. A full unix backlog (`EAGAIN` from connect) is a failure to connect, as for
/// nginx and tokio.
async fn connect_sending(addr: &ListenAddr, first: &[u8]) -> std::io::Result<(BackendConn, usize)> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use tokio_util::either::Either;
    let (domain, to, protocol) = match addr {
        ListenAddr::Tcp(a) => (
            Domain::for_address(*a),
            SockAddr::from(*a),
            Some(socket2::Protocol::TCP),
        ),
        ListenAddr::Unix(p) => (Domain::UNIX, SockAddr::unix(p)?, None),
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), protocol)?;
    if protocol.is_some() {
        let _ = socket.set_tcp_nodelay(true);
    }
    let connected = match socket.connect(&to) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => false,
        Err(e) => return Err(e),
    };
    let sent = match socket.send_with_flags(first, nix::libc::MSG_NOSIGNAL) {
        Ok(n) => Some(n),
        Err(e) if connected || e.kind() == std::io::ErrorKind::WouldBlock => None,
        // The connect failed (the send took its error): none of the request went.
        Err(e) => return Err(e),
    };
    let fd = std::os::fd::OwnedFd::from(socket);
    let conn: BackendConn = match addr {
        ListenAddr::Tcp(_) => Either::Left(tokio::net::TcpStream::from_std(fd.into())?),
        ListenAddr::Unix(_) => Either::Right(tokio::net::UnixStream::from_std(fd.into())?),
    };
    if let Some(n) = sent {
        return Ok((conn, n)); // a send went through: connected
    }
    if !connected {
        let error = match &conn {
            Either::Left(t) => t.writable().await.and_then(|()| t.take_error()),
            Either::Right(u) => u.writable().await.and_then(|()| u.take_error()),
        }?;
        if let Some(e) = error {
            return Err(e);
        }
    }
    Ok((conn, 0))
}

/// Whether the backend was seen to close its end of `s` (EPOLLRDHUP reported): it then
/// sends nothing beyond what the socket already holds. (The FastCGI reader: never.)
fn seen_closed<F>(s: &tokio_util::either::Either<BackendConn, F>) -> bool {
    use futures_util::FutureExt;
    use tokio::io::Interest;
    use tokio_util::either::Either;
    let ready = match s {
        Either::Left(Either::Left(t)) => t.ready(Interest::READABLE).now_or_never(),
        Either::Left(Either::Right(u)) => u.ready(Interest::READABLE).now_or_never(),
        Either::Right(_) => None,
    };
    matches!(ready, Some(Ok(r)) if r.is_read_closed())
}

/// Reads what `s` has into `buf`: how many bytes, and whether they were the last ones.
/// They were when the backend had closed its end before the read and the read did not
/// fill the room it had (a read takes everything the socket holds, up to its room): an
/// answer ended by the close then needs no further read to meet the end (nginx knows it
/// the same way, from EPOLLRDHUP).
fn read_noting_end<'a, F: AsyncRead + Unpin>(
    s: &'a mut tokio_util::either::Either<BackendConn, F>,
    buf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<(usize, bool)>> + 'a {
    std::future::poll_fn(move |cx| {
        // Looked at before the read, in the same poll: a close seen later could have
        // come after more data.
        let closed = seen_closed(s);
        let room = buf.capacity() - buf.len();
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *s), cx, buf)
            .map_ok(|n| (n, closed && n < room))
    })
}

/// Whether an idle connection can take a request: not closed by the backend, nothing
/// unexpected waiting to be read.
fn usable(c: &BackendConn) -> bool {
    use tokio_util::either::Either;
    let mut probe = [0u8; 1];
    let r = match c {
        Either::Left(s) => s.try_read(&mut probe),
        Either::Right(s) => s.try_read(&mut probe),
    };
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Idle keep-alive connections, newest last, as nginx's `keepalive` cache.
#[derive(Debug)]
struct Idle {
    max: usize,
    conns: std::sync::Mutex<Vec<(String, BackendConn, Instant)>>,
}

/// How long an idle connection is kept (nginx's `keepalive_timeout` in an upstream).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, BackendConn, Instant)>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A usable idle connection to `addr`.
    fn take(&self, addr: &str) -> Option<BackendConn> {
        let mut conns = self.lock();
        conns.retain(|(_, _, since)| since.elapsed() < IDLE_TIMEOUT);
        while let Some(i) = conns.iter().rposition(|(a, _, _)| a == addr) {
            let (_, c, _) = conns.remove(i);
            if usable(&c) {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `conn` for the next request (the oldest goes when full).
    fn put(&self, addr: String, conn: BackendConn) {
        let mut conns = self.lock();
        if conns.len() >= self.max {
            conns.remove(0);
        }
        conns.push((addr, conn, Instant::now()));
    }
}

/// Why a try on one server failed.
#[derive(Debug, thiserror::Error)]
enum TryError {
    /// Nothing was sent: any request may go to the next server.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request was sent, no response head came back (or a bad one).
    #[error("{0}")]
    Upstream(String),
    /// The backend did not answer in time.
    #[error("no response head in time")]
    Timeout,
    /// A kept-alive connection failed before one byte of answer (the backend closed it
    /// while idle): the request goes again on a new connection to the same server.
    #[error("{0}")]
    Stale(String),
}

/// One tokio sleep for a whole exchange with a backend, each step (connect, send, read)
/// with its own limit, as nginx's `*_connect_timeout`, `*_send_timeout` and
/// `*_read_timeout` (each between two successive operations). A step that finishes
/// without waiting touches no timer; the first step that waits makes the sleep, later
/// ones move it (a later deadline is only recorded, a step that moves it earlier
/// re-registers it). A `tokio::time::timeout` per step cost a timer entry each, four or
/// five per request.
struct StepClock {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// A step of a [`StepClock`] waited longer than its limit.
#[derive(Debug)]
struct StepTimedOut;

impl StepClock {
    fn new() -> Self {
        Self { sleep: None }
    }

    /// Runs `fut`, giving up when it has waited `limit` (counted from its first wait).
    async fn step<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, StepTimedOut> {
        use std::task::Poll;
        let mut fut = std::pin::pin!(fut);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if !armed {
                armed = true;
                let deadline = tokio::time::Instant::now() + limit;
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            match self.sleep.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(StepTimedOut)),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// [`StepClock::step`] for a write to the backend: a step past its limit is an I/O
    /// error, "send timed out".
    async fn send<F>(&mut self, limit: Duration, fut: F) -> std::io::Result<()>
    where
        F: Future<Output = std::io::Result<()>>,
    {
        self.step(limit, fut).await.unwrap_or_else(|StepTimedOut| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timed out",
            ))
        })
    }
}

pub(crate) fn plain(status: http::StatusCode, text: &'static str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// The answer when no server answered: 504 when the last one tried timed out, else 502
/// (as nginx).
pub(crate) fn gave_up(timed_out: bool) -> http::Response<Body> {
    if timed_out {
        plain(http::StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n")
    } else {
        plain(http::StatusCode::BAD_GATEWAY, "Bad Gateway\n")
    }
}

/// Logs a server's failure on a request, and whether the next server is tried.
pub(crate) fn log_failure(
    upstream: &Upstream,
    addr: &dyn std::fmt::Display,
    parts: &http::request::Parts,
    why: &dyn std::fmt::Display,
    again: bool,
) {
    tracing::error!(
        "upstream {} ({addr}) for {} {}: {why}{}",
        upstream.name(),
        parts.method,
        parts.uri,
        if again {
            "; trying the next server"
        } else {
            ""
        }
    );
}

/// Hop-by-hop headers a backend's response must not pass on.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a request brings to its pool's policy: the `hash` key expanded with the request's
/// variables, and the sticky cookie's value.
pub(crate) fn request_key(
    upstream: &Upstream,
    parts: &http::request::Parts,
    conn: &ConnInfo,
) -> (Option<Vec<u8>>, Option<String>) {
    match upstream.policy() {
        crate::upstream::Policy::Hash { key, .. } => {
            let path = parts.uri.path();
            let vars = crate::site::RequestVars {
                method: parts.method.as_str(),
                request_uri: parts.uri.path_and_query().map_or(path, |p| p.as_str()),
                uri: path,
                args: parts.uri.query().unwrap_or(""),
                headers: &parts.headers,
                peer: conn.peer(),
                local: conn.local(),
                scheme: if conn.https() { "https" } else { "http" },
                server_name: "",
                document_root: "",
                protocol: "HTTP/1.1",
            };
            (Some(vars.expand(key).into_bytes()), None)
        }
        crate::upstream::Policy::Sticky { cookie } => {
            let value = parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == cookie).then(|| v.to_owned())
                });
            (None, value)
        }
        _ => (None, None),
    }
}

/// Adds the sticky cookie for the server that answered, if the pool is sticky.
pub(crate) fn add_sticky_cookie<B>(
    upstream: &Upstream,
    index: usize,
    had: Option<&str>,
    response: &mut http::Response<B>,
) {
    if let Some(c) = upstream.sticky_set_cookie(index, had) {
        if let Ok(v) = http::HeaderValue::from_str(&c) {
            response.headers_mut().append(http::header::SET_COOKIE, v);
        }
    }
}

/// Whether a request with `method` may be sent again to the next server after it was
/// sent once (RFC 9110's idempotent methods), as nginx's `*_next_upstream` decides.
pub(crate) fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// A request body read whole: in memory, or spooled to an (unlinked) temporary file.
#[derive(Debug)]
enum Spooled {
    Memory(Bytes),
    File(std::fs::File, u64),
}

impl Spooled {
    fn len(&self) -> u64 {
        match self {
            Self::Memory(b) => b.len() as u64,
            Self::File(_, n) => *n,
        }
    }
}

/// Something to connect to a backend over.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Pass {
    /// Passes to `upstream` with `protocol`, nginx's defaults otherwise.
    pub fn new(upstream: Arc<Upstream>, protocol: Protocol) -> Self {
        Self {
            upstream,
            protocol,
            params: Vec::new(),
            timeouts: Timeouts::default(),
            body_in_memory: 1 << 20,
            buffering: crate::spool::Buffering::default(),
            buffer_size: 65535,
            idle: None,
        }
    }

    /// `fastcgi_keep_conn on`: FastCGI connections stay open after a request and up to
    /// the upstream's `keepalive N` idle ones are kept for the next requests (nothing is
    /// kept without `keepalive`, as with nginx). The other protocols end each answer by
    /// closing: this does nothing for them.
    #[must_use]
    pub fn keep_conn(mut self, on: bool) -> Self {
        let max = self.upstream.idle_connections();
        self.idle = (on && max > 0 && self.protocol == Protocol::FastCgi).then(|| {
            Arc::new(Idle {
                max,
                conns: std::sync::Mutex::new(Vec::new()),
            })
        });
        self
    }

    /// `uwsgi_param NAME VALUE` / `scgi_param`: set after the stock params (replacing a
    /// variable of the same name).
    pub fn param(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sets the timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Request bodies up to this many bytes stay in memory; larger ones are spooled to a
    /// temporary file (default 1 MiB).
    pub fn body_in_memory(mut self, bytes: usize) -> Self {
        self.body_in_memory = bytes;
        self
    }

    /// How a response is buffered ahead of a slow client (default: 1 MiB in memory, then
    /// up to 1 GiB in a temporary file, as nginx): the backend is released as soon as it
    /// has sent its answer, however slowly the client reads.
    pub fn buffering(mut self, b: crate::spool::Buffering) -> Self {
        self.buffering = b;
        self
    }

    /// The largest uwsgi vars block sent (default 65535).
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// The pool.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Answers `req` through a backend: 502 when no backend can be reached or one sends
    /// garbage, 504 when it does not answer in time, 400 for a body that cannot be read.
    pub fn handle<'a, B>(
        &'a self,
        req: http::Request<B>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = http::Response<Body>> + 'a
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'a,
        B::Error: std::fmt::Display,
    {
        self.handle_with(req, conn, &[])
    }

    /// [`Pass::handle`] with per-request params (e.g. `uwsgi_param` values with nginx
    /// variables expanded), set after the handler's own.
    // A plain function returning an `async move` block, not an `async fn`: an async fn
    // keeps its arguments in the future beside what they are taken apart into, so the
    // request would be held twice.
    #[allow(clippy::manual_async_fn)]
    pub fn handle_with<'a, B>(
        &'a self,
        req: http::Request<B>,
        conn: &'a ConnInfo,
        extra: &'a [(Bytes, Bytes)],
    ) -> impl Future<Output = http::Response<Body>> + 'a
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'a,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        async move {
            // A request without a body (most) makes no spooling future.
            let body = if body.is_end_stream() {
                Spooled::Memory(Bytes::new())
            } else {
                match self.spool(body).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("reading the request body: {e}");
                        return plain(http::StatusCode::BAD_REQUEST, "Bad Request\n");
                    }
                }
            };
            let flavor = match self.protocol {
                Protocol::Uwsgi => Flavor::Uwsgi,
                Protocol::Scgi => Flavor::Scgi,
                Protocol::FastCgi => Flavor::FastCgi,
            };
            // The handler's params, then the request's (a later one of a name wins).
            let both: Vec<(Bytes, Bytes)>;
            let params = match (&self.params[..], extra) {
                (mine, []) => mine,
                ([], extra) => extra,
                (mine, extra) => {
                    both = mine.iter().chain(extra).cloned().collect();
                    &both
                }
            };
            // The server name: the Host header's, without its port (unless a param names it:
            // a site's own server_name).
            let named = params.iter().any(|(k, _)| &k[..] == b"SERVER_NAME");
            let server_name = match parts.headers.get(http::header::HOST).filter(|_| !named) {
                Some(host) => {
                    Bytes::copy_from_slice(crate::site::vars::bytes_without_port(host.as_bytes()))
                }
                None => Bytes::new(),
            };
            // The request as the protocol frames it. The builder lives in this block only, so
            // the future does not keep it across the exchange.
            let request = {
                // One expression: the builder is made in place, not moved from step to step.
                let builder = EnvBuilder::new(flavor)
                    .https(conn.https())
                    .content_length(Some(body.len()).filter(|&n| n > 0 || has_body(&parts)))
                    .addresses(conn.peer_text.clone(), conn.local_text.clone())
                    .server_name(server_name);
                let bad_request = |e: &dyn std::fmt::Display| {
                    tracing::warn!("{e}");
                    plain(http::StatusCode::BAD_REQUEST, "Bad Request\n")
                };
                let too_large = |e: &dyn std::fmt::Display| {
                    tracing::error!("the request does not fit the protocol: {e}");
                    plain(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "Request Header Fields Too Large\n",
                    )
                };
                match self.protocol {
                    // The env straight into the packet, var by var.
                    Protocol::Uwsgi => {
                        let mut packet = Vec::with_capacity(2048);
                        let mut p = uwsgi_proto::PacketBuilder::new(&mut packet);
                        p.limit(self.buffer_size);
                        match builder.write(&parts, params, &mut p) {
                            Ok(()) => {}
                            Err(WriteError::Path(e)) => return bad_request(&e),
                            Err(WriteError::Sink(e)) => return too_large(&e),
                        }
                        p.finish();
                        Bytes::from(packet)
                    }
                    Protocol::Scgi | Protocol::FastCgi => {
                        let env = match builder.build_with(&parts, params) {
                            Ok(env) => env,
                            Err(e) => return bad_request(&e),
                        };
                        // Room for the whole request: the pairs, their framing, record headers.
                        let mut request =
                            BytesMut::with_capacity(env.byte_len() + 8 * env.len() + 64);
                        let encoded = if self.protocol == Protocol::Scgi {
                            cgi_family::scgi::encode_request(&env, &mut request)
                                .map(drop)
                                .map_err(|e| e.to_string())
                        } else {
                            // BEGIN_REQUEST and PARAMS; the body follows in STDIN records.
                            use cgi_family::fastcgi;
                            let keep = self.idle.is_some();
                            fastcgi::encode_begin_request(
                                1,
                                fastcgi::Role::RESPONDER,
                                keep,
                                &mut request,
                            );
                            fastcgi::encode_params_stream(1, &env, &mut request)
                                .map_err(|e| e.to_string())
                        };
                        if let Err(e) = encoded {
                            return too_large(&e);
                        }
                        request.freeze()
                    }
                }
            };
            let idempotent = idempotent(&parts.method);
            let (key, sticky) = request_key(&self.upstream, &parts, conn);
            let ctx = PickContext {
                client: conn.peer().map(|p| p.ip()),
                key: key.as_deref(),
                sticky: sticky.as_deref(),
            };
            let mut tried = Vec::new();
            // As nginx: when the last server tried timed out, the answer is 504, else 502.
            let mut timed_out = false;
            loop {
                let Some(pick) = self.upstream.pick(&ctx, &tried) else {
                    tracing::error!(
                        "upstream {}: no server available for {} {}",
                        self.upstream.name(),
                        parts.method,
                        parts.uri
                    );
                    return gave_up(timed_out);
                };
                let started = Instant::now();
                match self.try_one(&pick.addr, &request, &body).await {
                    Ok(response) => {
                        self.upstream.report(pick.index, true);
                        tracing::debug!(
                            "upstream {} answered in {:?}",
                            pick.addr,
                            started.elapsed()
                        );
                        let mut response = response;
                        add_sticky_cookie(
                            &self.upstream,
                            pick.index,
                            sticky.as_deref(),
                            &mut response,
                        );
                        if crate::access::upstream_wanted() {
                            response
                                .extensions_mut()
                                .insert(crate::access::Upstream(pick.addr.clone()));
                        }
                        // The pick (least_conn's count) lasts until the body is read.
                        return response.map(|mut b| {
                            b.keep(pick);
                            Body::Pass(b)
                        });
                    }
                    Err(e) => {
                        // (Noted only on failure: a request answered at once allocates none.)
                        tried.push(pick.index);
                        self.upstream.report(pick.index, false);
                        timed_out = matches!(e, TryError::Timeout);
                        let again = match &e {
                            TryError::Connect(_) => true,
                            TryError::Upstream(_) | TryError::Stale(_) | TryError::Timeout => {
                                idempotent
                            }
                        };
                        log_failure(&self.upstream, &pick.addr, &parts, &e, again);
                        if !again {
                            return gave_up(timed_out);
                        }
                    }
                }
            }
        }
    }

    /// Reads the whole body: in memory up to the threshold, then into a temporary file.
    async fn spool<B>(&self, mut body: B) -> Result<Spooled, String>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut mem = BytesMut::new();
        let mut file: Option<(tokio::fs::File, u64)> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some((f, n)) = file.as_mut() {
                f.write_all(&data).await.map_err(|e| e.to_string())?;
                *n += data.len() as u64;
            } else if mem.len() + data.len() > self.body_in_memory {
                let mut f = tokio::fs::File::from_std(
                    tempfile::tempfile().map_err(|e| format!("spooling the body: {e}"))?,
                );
                f.write_all(&mem).await.map_err(|e| e.to_string())?;
                f.write_all(&data).await.map_err(|e| e.to_string())?;
                file = Some((f, (mem.len() + data.len()) as u64));
                mem = BytesMut::new();
            } else {
                mem.extend_from_slice(&data);
            }
        }
        Ok(match file {
            Some((f, n)) => {
                let f = f.into_std().await;
                Spooled::File(f, n)
            }
            None => Spooled::Memory(mem.freeze()),
        })
    }

    /// A new connection to `addr`, and how many bytes of `first` it has sent already.
    async fn connect(
        &self,
        addr: &ListenAddr,
        first: &[u8],
        clock: &mut StepClock,
    ) -> Result<(BackendConn, usize), TryError> {
        match clock
            .step(self.timeouts.connect, connect_sending(addr, first))
            .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TryError::Connect(e.to_string())),
            Err(_) => Err(TryError::Connect("connect timed out".into())),
        }
    }

    async fn send_body(
        &self,
        s: &mut BackendConn,
        body: &Spooled,
        clock: &mut StepClock,
    ) -> std::io::Result<()> {
        let send = self.timeouts.send;
        let fastcgi = self.protocol == Protocol::FastCgi;
        // FastCGI: the body as STDIN records, ended by an empty one.
        let framed = |data: &[u8]| -> std::io::Result<Bytes> {
            if !fastcgi {
                return Ok(Bytes::copy_from_slice(data));
            }
            let mut out = BytesMut::with_capacity(data.len() + 64);
            cgi_family::fastcgi::encode_stream(
                cgi_family::fastcgi::RecordType::STDIN,
                1,
                data,
                &mut out,
            )
            .map_err(std::io::Error::other)?;
            Ok(out.freeze())
        };
        let end = || {
            let mut out = BytesMut::new();
            if fastcgi {
                let _ = cgi_family::fastcgi::encode_record(
                    cgi_family::fastcgi::RecordType::STDIN,
                    1,
                    &[],
                    &mut out,
                );
            }
            out
        };
        match body {
            // No body, and no framing to end it: nothing to send.
            Spooled::Memory(b) if b.is_empty() && !fastcgi => Ok(()),
            Spooled::Memory(b) => {
                let b = framed(b)?;
                clock.send(send, s.write_all(&b)).await?;
                clock.send(send, s.write_all(&end())).await
            }
            Spooled::File(f, len) => {
                let mut at = 0;
                while at < *len {
                    let f = f.try_clone()?;
                    let want = usize::try_from(*len - at).map_or(256 * 1024, |n| n.min(256 * 1024));
                    let block = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut buf = vec![0u8; want];
                        f.read_exact_at(&mut buf, at).map(|()| buf)
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    at += block.len() as u64;
                    let block = framed(&block)?;
                    clock.send(send, s.write_all(&block)).await?;
                }
                clock.send(send, s.write_all(&end())).await
            }
        }
    }

    async fn try_one(
        &self,
        addr: &ListenAddr,
        request: &Bytes,
        body: &Spooled,
    ) -> Result<http::Response<PassBody>, TryError> {
        // The backend's name keys the kept-alive FastCGI connections (nothing else).
        let name = if self.protocol == Protocol::FastCgi {
            addr.to_string()
        } else {
            String::new()
        };
        let mut clock = StepClock::new();
        if let Some(c) = self.idle.as_ref().and_then(|idle| idle.take(&name)) {
            match self
                .exchange(c, 0, name.clone(), request, body, &mut clock)
                .await
            {
                Err(TryError::Stale(e)) => {
                    tracing::debug!("kept-alive connection to {name}: {e}; a new one");
                }
                r => return r,
            }
        }
        let (c, sent) = self.connect(addr, request, &mut clock).await?;
        self.exchange(c, sent, name, request, body, &mut clock)
            .await
            .map_err(|e| match e {
                TryError::Stale(e) => TryError::Upstream(e),
                e => e,
            })
    }

    /// One request on connection `s` to backend `name`, which has the first `sent` bytes
    /// of `request` already.
    async fn exchange(
        &self,
        mut s: BackendConn,
        sent: usize,
        name: String,
        request: &Bytes,
        body: &Spooled,
        clock: &mut StepClock,
    ) -> Result<http::Response<PassBody>, TryError> {
        let sent = async {
            if let Some(rest) = request.get(sent..).filter(|r| !r.is_empty()) {
                clock.send(self.timeouts.send, s.write_all(rest)).await?;
            }
            self.send_body(&mut s, body, clock).await
        };
        if let Err(e) = sent.await {
            return Err(TryError::Stale(format!("sending the request: {e}")));
        }
        // (uwsgi and SCGI read the connection itself: no box.)
        let mut s = if self.protocol == Protocol::FastCgi {
            tokio_util::either::Either::Right(fastcgi_stdout(s, name, self.idle.clone()))
        } else {
            tokio_util::either::Either::Left(s)
        };
        // The response head.
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut decoder = ResponseHeadDecoder::new(HeadOptions {
            // nginx skips an HTTP status line from a FastCGI app (it uses Status:).
            status_line: if self.protocol == Protocol::FastCgi {
                cgi_family::StatusLine::Ignore
            } else {
                cgi_family::StatusLine::Accept
            },
            ..HeadOptions::default()
        });
        // Whether all the backend sends has been read (see `read_noting_end`).
        let mut ended = false;
        let cgi = loop {
            match decoder.decode_split(&mut buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Err(TryError::Upstream(format!("bad response head: {e}"))),
            }
            buf.reserve(16 * 1024);
            match clock
                .step(self.timeouts.read, read_noting_end(&mut s, &mut buf))
                .await
            {
                Err(_) => return Err(TryError::Timeout),
                Ok(Err(e)) => return Err(TryError::Upstream(format!("reading: {e}"))),
                Ok(Ok((0, _))) if buf.is_empty() => {
                    return Err(TryError::Stale("closed without an answer".into()));
                }
                Ok(Ok((0, _))) => {
                    return Err(TryError::Upstream(
                        "closed before a whole response head".into(),
                    ));
                }
                Ok(Ok((_, last))) => ended = last,
            }
        };
        let status = http::StatusCode::from_u16(cgi.status)
            .map_err(|_| TryError::Upstream(format!("bad status {}", cgi.status)))?;
        let mut response = http::Response::new(PassBody::default());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.reserve(cgi.headers.len());
        let mut length = None;
        for (k, v) in cgi.headers {
            let Ok(name) = http::HeaderName::from_bytes(&k) else {
                continue;
            };
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            if name == http::header::CONTENT_LENGTH {
                length = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            }
            // The value shares the head's bytes (no copy).
            if let Ok(value) = http::HeaderValue::from_maybe_shared(v) {
                headers.append(name, value);
            }
        }
        // A small answer is often all there already (and, over uwsgi or SCGI, ended by
        // the close): what can be read without waiting is read now, and a complete
        // answer needs no reading task.
        while !ended && length.is_none_or(|n| (buf.len() as u64) < n) && buf.len() < 256 * 1024 {
            buf.reserve(8 * 1024);
            match futures_util::FutureExt::now_or_never(read_noting_end(&mut s, &mut buf)) {
                Some(Ok((0, _))) => ended = true,
                Some(Ok((_, last))) => ended = last,
                Some(Err(_)) | None => break, // the reading task meets an error again
            }
        }
        let complete = match length {
            Some(n) => buf.len() as u64 >= n,
            None => ended,
        };
        if complete {
            if let Some(n) = length {
                buf.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            }
            *response.body_mut() = PassBody::full(buf.freeze());
            return Ok(response);
        }
        // The body is read as fast as the backend sends it, into memory then a temporary
        // file: a slow client does not hold the backend.
        let (tx, rx) = self.buffering.channel();
        let read = self.timeouts.read;
        tokio::spawn(async move {
            let mut clock = StepClock::new();
            let mut left = length;
            if !buf.is_empty() {
                let first = buf.split().freeze();
                left = left.map(|n| n.saturating_sub(first.len() as u64));
                if tx.send(Ok(first)).await.is_err() {
                    return;
                }
            }
            loop {
                if left == Some(0) {
                    return;
                }
                let mut block = BytesMut::with_capacity(64 * 1024);
                match clock.step(read, s.read_buf(&mut block)).await {
                    Ok(Ok(0)) => {
                        if left.is_some_and(|n| n > 0) {
                            let _ = tx
                                .send(Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "the backend closed mid-body",
                                )))
                                .await;
                        }
                        return;
                    }
                    Ok(Ok(n)) => {
                        left = left.map(|l| l.saturating_sub(n as u64));
                        if tx.send(Ok(block.freeze())).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(_) => {
                        let _ = tx
                            .send(Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the backend stopped sending",
                            )))
                            .await;
                        return;
                    }
                }
            }
        });
        *response.body_mut() = PassBody::channel(rx, length);
        Ok(response)
    }
}

/// Turns a FastCGI connection into the plain byte stream of its STDOUT records (STDERR
/// is logged; END_REQUEST or a bad record ends the stream). After a clean END_REQUEST the
/// connection goes back to `idle`, when kept alive.
fn fastcgi_stdout(mut s: BackendConn, backend: String, idle: Option<Arc<Idle>>) -> Box<dyn Stream> {
    use cgi_family::fastcgi::{ResponseDecoder, ResponseEvent};
    let (mine, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let mut out = mine;
        let mut decoder = ResponseDecoder::new(1);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(ResponseEvent::Stdout(data))) => {
                        if out.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(ResponseEvent::Stderr(text))) => {
                        tracing::warn!(
                            "FastCGI {backend} says: {}",
                            String::from_utf8_lossy(&text).trim_end()
                        );
                    }
                    Ok(Some(ResponseEvent::End(_))) => {
                        // Kept alive (`fastcgi_keep_conn on`): nothing else must follow.
                        if let (Some(idle), true) = (idle, buf.is_empty()) {
                            idle.put(backend, s);
                        }
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("bad FastCGI stream from {backend}: {e}");
                        return;
                    }
                }
            }
            buf.reserve(64 * 1024);
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    Box::new(theirs)
}

/// A body passed between a client and a backend, as it arrives (also the request body
/// the HTTP proxy sends).
#[derive(Debug)]
pub struct PassBody {
    pub(crate) rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    pub(crate) full: Option<Bytes>,
    pub(crate) length: Option<u64>,
    /// The server it comes from (its `least_conn` count lasts as long as the body).
    pick: Option<crate::upstream::Pick>,
}

impl Default for PassBody {
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl PassBody {
    /// A body of these bytes.
    pub fn full(b: Bytes) -> Self {
        Self {
            length: Some(b.len() as u64),
            full: (!b.is_empty()).then_some(b),
            rx: None,
            pick: None,
        }
    }

    /// A body fed by a channel (`length` if known).
    pub fn channel(rx: mpsc::Receiver<std::io::Result<Bytes>>, length: Option<u64>) -> Self {
        Self {
            rx: Some(rx),
            full: None,
            length,
            pick: None,
        }
    }

    /// Keeps the server's pick (its `least_conn` count) until the body is dropped.
    pub fn keep(&mut self, pick: crate::upstream::Pick) {
        self.pick = Some(pick);
    }
}

impl http_body::Body for PassBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if let Some(b) = self.full.take() {
            self.length = self.length.map(|n| n.saturating_sub(b.len() as u64));
            return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.length = self.length.map(|n| n.saturating_sub(b.len() as u64));
                Poll::Ready(Some(Ok(http_body::Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && (self.rx.is_none() || self.length == Some(0))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.length.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

fn has_body(parts: &http::request::Parts) -> bool {
    parts.headers.contains_key(http::header::CONTENT_LENGTH)
        || parts.headers.contains_key(http::header::TRANSFER_ENCODING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_step_has_its_own_limit_counted_from_its_first_wait() {
        let mut clock = StepClock::new();
        // Done without waiting: no timer at all.
        assert_eq!(
            clock.step(Duration::from_secs(1), async { 7 }).await.ok(),
            Some(7)
        );
        assert!(clock.sleep.is_none());
        // Three steps of 0.8 s under a 1 s limit: 2.4 s in all, none times out.
        for _ in 0..3 {
            let slept = clock
                .step(
                    Duration::from_secs(1),
                    tokio::time::sleep(Duration::from_millis(800)),
                )
                .await;
            assert!(slept.is_ok());
        }
        // A step past its limit times out, at its limit.
        let start = tokio::time::Instant::now();
        let late = clock
            .step(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_secs(5)),
            )
            .await;
        assert!(late.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // A shorter limit after a longer one (the sleep moves earlier).
        let start = tokio::time::Instant::now();
        let late = clock
            .step(Duration::from_millis(100), std::future::pending::<()>())
            .await;
        assert!(late.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // And a longer one again.
        let slept = clock
            .step(
                Duration::from_secs(10),
                tokio::time::sleep(Duration::from_secs(9)),
            )
            .await;
        assert!(slept.is_ok());
    }
}
