//! HTTP/1.1 on hyper: keep-alive, pipelining, chunked bodies, `Expect: 100-continue`,
//! HEAD; static maps first, then the WSGI app.

use futures_util::FutureExt;
use futures_util::future::Either;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wsgi_host::WsgiService;

use crate::handler::{Body, StaticFiles};

/// What answers the requests the static maps do not.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A WSGI app in this process.
    Wsgi(WsgiService),
    /// A pool of backends (uWSGI's `--http-to`, nginx's `uwsgi_pass`).
    Pass(Arc<crate::pass::Pass>),
    /// An nginx site (`--nginx-conf`), on its listener number `listen`; the static maps
    /// and `--limit-post` are not used (the site has its own).
    Site {
        /// The site.
        site: Arc<crate::site::Site>,
        /// Which of its listeners this is.
        listen: usize,
    },
}

/// What an HTTP listener serves.
#[derive(Debug, Clone)]
pub struct HttpApp {
    /// The app or the backends.
    pub backend: Backend,
    /// Static maps, looked at first.
    pub statics: Arc<StaticFiles>,
    /// The largest body accepted (`--limit-post`): 413 before reading it.
    pub limit_post: Option<u64>,
    /// How long a client may take to send a request head, the wait for the next request
    /// of a kept-alive connection included (`--socket-timeout`): slow clients cannot pin
    /// connections.
    pub head_timeout: Duration,
}

/// What a connection's requests tell its driver.
#[derive(Default)]
struct Flags {
    /// Set when the first request arrives...
    arrived: AtomicBool,
    /// ... and notified.
    first: Notify,
    /// Set when a request comes with a body (which may be left unread, see [`linger`]).
    body: AtomicBool,
}

struct PerConnection {
    app: HttpApp,
    conn: Arc<crate::pass::ConnInfo>,
    /// The WSGI backend with this connection's client set (written out once).
    wsgi: Option<WsgiService>,
    /// What its requests tell the connection's driver.
    flags: Arc<Flags>,
}

impl PerConnection {
    fn new(
        app: &HttpApp,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        https: bool,
        flags: &Arc<Flags>,
    ) -> Self {
        let conn = crate::pass::ConnInfo::new(peer, local, https);
        let wsgi = match &app.backend {
            Backend::Wsgi(w) => conn.peer_text().map(|p| w.clone().peer(p.clone())),
            _ => None,
        };
        Self {
            app: app.clone(),
            conn: Arc::new(conn),
            wsgi,
            flags: flags.clone(),
        }
    }
}

/// How long a graceful stop waits for the first request of a connection that was accepted
/// but has not sent one yet (it is then served, not dropped).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for PerConnection {
    type Response = http::Response<Body>;
    type Error = Infallible;
    /// An answer given at once, or a boxed future.
    type Future = Either<
        std::future::Ready<Result<Self::Response, Infallible>>,
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if !self.flags.arrived.swap(true, Ordering::SeqCst) {
            self.flags.first.notify_one();
        }
        if !hyper::body::Body::is_end_stream(req.body()) {
            self.flags.body.store(true, Ordering::Relaxed);
        }
        let conn = self.conn.clone();
        // A site's requests get a future of their own: it is moved into its box at every
        // request, and the other backends' states would make it larger. The site's future
        // itself, which owns the request, goes in the box (an async block around it would
        // hold the request twice).
        if let Backend::Site { site, listen } = &self.app.backend {
            let record = log_record(&req, &conn, site.has_own_logs());
            return match crate::site::Site::serve(site.clone(), req, *listen, conn) {
                // (Not boxed: most `return`s and error pages.)
                Either::Left(now) => {
                    Either::Left(std::future::ready(Ok(with_log(now.into_inner(), record))))
                }
                Either::Right(later) => Either::Right(Box::pin(
                    later.map(move |response| Ok(with_log(response, record))),
                )),
            };
        }
        // The app server without static maps: the WSGI service's own future in the box.
        if let Backend::Wsgi(plain_svc) = &self.app.backend
            && self.app.statics.is_empty()
        {
            let record = log_record(&req, &conn, false);
            if over_limit(&self.app, &req) {
                return Either::Left(std::future::ready(Ok(with_log(too_large(), record))));
            }
            let svc = self.wsgi.as_ref().unwrap_or(plain_svc);
            return Either::Right(Box::pin(
                svc.serve(req)
                    .map(move |r| r.map(|r| with_log(r.map(Body::Wsgi), record))),
            ));
        }
        let app = self.app.clone();
        let wsgi = self.wsgi.clone();
        Either::Right(Box::pin(async move {
            let record = log_record(&req, &conn, false);
            let response = if let Some(r) = app
                .statics
                .serve(req.method(), req.uri().path(), req.headers())
                .await
            {
                r
            } else if over_limit(&app, &req) {
                too_large()
            } else {
                match &app.backend {
                    Backend::Wsgi(plain) => {
                        let svc = wsgi.as_ref().unwrap_or(plain);
                        let r = svc.serve(req).await?;
                        r.map(Body::Wsgi)
                    }
                    // Boxed: the pass's future is large, and most requests take
                    // another branch (this one's size would be copied for all).
                    Backend::Pass(pass) => Box::pin(pass.handle(req, &conn)).await,
                    // (Not reached: a site's requests take the future above.)
                    Backend::Site { site, listen } => {
                        Box::pin(site.handle(req, *listen, &conn)).await
                    }
                }
            };
            Ok(with_log(response, record))
        }))
    }
}

/// Whether the request's Content-Length is over `--limit-post`: it is refused before its
/// body is read (no 100 Continue is sent).
fn over_limit<B>(app: &HttpApp, req: &http::Request<B>) -> bool {
    app.limit_post
        .is_some_and(|limit| crate::handler::declared_over(req.headers(), limit))
}

fn too_large() -> http::Response<Body> {
    crate::pass::plain(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "Request Entity Too Large\n",
    )
}

/// The logs and the request's facts for its access-log line, taken only when a line may
/// be written: by default, or to a site's `own` `access_log`. Boxed: the request's future
/// holds it, and is moved whole at every request.
fn log_record(
    req: &http::Request<hyper::body::Incoming>,
    conn: &crate::pass::ConnInfo,
    own: bool,
) -> Option<Box<(crate::access::Logs, crate::access::Record)>> {
    let logs = crate::access::default_logs();
    (own || crate::access::any_enabled(logs)).then(|| {
        let record =
            crate::access::Record::from_request(req, conn.peer().map(|p| p.ip()), conn.https());
        Box::new((logs.clone(), record))
    })
}

/// `response` with its access-log record attached (when one was taken).
fn with_log(
    response: http::Response<Body>,
    record: Option<Box<(crate::access::Logs, crate::access::Record)>>,
) -> http::Response<Body> {
    match record.map(|b| *b) {
        Some((logs, record)) => crate::access::attach(response, logs, record),
        None => response,
    }
}

/// Serves one HTTP/1.1 connection.
pub async fn serve_connection<S>(io: S, peer: Option<SocketAddr>, app: &HttpApp)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_until(io, peer, None, app, &CancellationToken::new()).await;
}

/// Serves one HTTP/1.1 connection (`local`: our address, for SERVER_PORT when passing to
/// backends) until `shutdown` is cancelled: then the request in
/// flight (if any) completes with `Connection: close` and the connection ends (a graceful
/// stop never cuts a request that was accepted).
pub async fn serve_connection_until<S>(
    io: S,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    app: &HttpApp,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let flags = Arc::new(Flags::default());
    let mut conn = KeepSocket(
        http1::Builder::new()
            .keep_alive(true)
            .timer(super::timer::ConnTimer::default())
            .header_read_timeout(app.head_timeout)
            .serve_connection(
                TokioIo::new(super::reads::SmallReads(io)),
                PerConnection::new(app, peer, local, false, &flags),
            ),
    );
    let result = drive(Pin::new(&mut conn), &flags, shutdown, |c| {
        Pin::new(&mut c.get_mut().0).graceful_shutdown()
    })
    .await;
    let failed = result.is_err();
    if let Err(e) = result {
        tracing::debug!("http connection: {e}");
    }
    // Only a connection that had a request with a body (or ended in an error) may have
    // bytes left coming; the others close at once.
    let io = conn.0.into_parts().io.into_inner().0;
    if failed || flags.body.load(Ordering::Relaxed) {
        linger(io, shutdown).await;
    }
}

/// An HTTP/1.1 connection run to its end without the final shutdown of its socket, so
/// the socket can be taken back for [`linger`].
struct KeepSocket<S>(http1::Connection<TokioIo<super::reads::SmallReads<S>>, PerConnection>);

impl<S> Future for KeepSocket<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Output = hyper::Result<()>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.get_mut().0.poll_without_shutdown(cx)
    }
}

/// nginx's `lingering_time`: the longest a closed connection's socket is read and dropped.
const LINGERING_TIME: Duration = Duration::from_secs(30);
/// nginx's `lingering_timeout`: the longest wait for more from the client meanwhile.
const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);

/// nginx's `lingering_close`. A connection can end while its client is still sending: a
/// body refused with a 413 before it was read, a request after an error. Closing the
/// socket with unread bytes (or receiving more after the close) makes the kernel answer
/// with a reset, and a reset can destroy the answer in the client's buffers before the
/// client reads it: the client sees a broken pipe instead of its 413. So the sending side
/// is shut (the client sees the end of the answer), then what still comes is read and
/// dropped until the client closes, is silent for [`LINGERING_TIMEOUT`], or
/// [`LINGERING_TIME`] has passed; a graceful stop ends it at once. A client that closes
/// when it has its answer costs one read here; a connection whose requests had no body
/// does not linger.
async fn linger<S>(mut io: S, shutdown: &CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if shutdown.is_cancelled() || io.shutdown().await.is_err() {
        return;
    }
    let until = tokio::time::Instant::now() + LINGERING_TIME;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let wait = until
            .saturating_duration_since(tokio::time::Instant::now())
            .min(LINGERING_TIMEOUT);
        tokio::select! {
            r = tokio::time::timeout(wait, io.read(&mut buf)) => match r {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Serves one TLS connection: the handshake (up to 10 s), then HTTP/2 or HTTP/1.1 as ALPN
/// chose, with the same graceful stop as [`serve_connection_until`].
pub async fn serve_tls_connection_until<S>(
    io: S,
    tls: Arc<rustls::ServerConfig>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    app: &HttpApp,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let flags = Arc::new(Flags::default());
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(super::timer::ConnTimer::default())
        .header_read_timeout(app.head_timeout);
    let conn = builder.serve_connection(
        TokioIo::new(super::reads::SmallReads(stream)),
        PerConnection::new(app, peer, local, true, &flags),
    );
    tokio::pin!(conn);
    let result = drive(conn, &flags, shutdown, |c| c.graceful_shutdown()).await;
    if let Err(e) = result {
        tracing::debug!("https connection: {e}");
    }
}

/// Runs a connection to its end. On shutdown: a connection that has had a request closes
/// after the one in flight; one accepted just before the stop gets a moment to send its
/// request, which is served (closing it at once would drop a request the client already
/// sent).
async fn drive<C, T, E>(
    mut conn: Pin<&mut C>,
    flags: &Flags,
    shutdown: &CancellationToken,
    graceful: impl Fn(Pin<&mut C>),
) -> Result<T, E>
where
    C: Future<Output = Result<T, E>>,
{
    let mut grace = None;
    let mut closing = false;
    let mut stop = super::stop::StopWatch::new(shutdown);
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => return r,
            () = stop.stopped(), if !closing && grace.is_none() => {
                if flags.arrived.load(Ordering::SeqCst) {
                    graceful(conn.as_mut());
                    closing = true;
                } else {
                    grace = Some(Box::pin(tokio::time::sleep(FIRST_REQUEST_GRACE)));
                }
            }
            () = flags.first.notified(), if !closing && grace.is_some() => {
                graceful(conn.as_mut());
                closing = true;
            }
            () = async { if let Some(g) = grace.as_mut() { g.await } }, if !closing && grace.is_some() => {
                graceful(conn.as_mut());
                closing = true;
            }
        }
    }
}
