//! A `tower::Service` adapter, so any hyper or axum server can mount a WSGI app.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use cgi_family::{AddrText, EnvBuilder, Flavor};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    AbortError, BodyChunk, BodyError, BodyStream, HostError, RequestBody, WsgiHost, WsgiRequest,
};

/// A WSGI app as a `tower::Service<http::Request<B>>`, mounted at a path prefix (which
/// becomes SCRIPT_NAME). The peer address is the one given to [`WsgiService::peer`], else
/// a `SocketAddr` request extension when the server puts one there.
///
/// ```no_run
/// # fn demo(host: wsgi_host::WsgiHost) {
/// let service = wsgi_host::WsgiService::new(host).mount("/legacy");
/// // e.g. axum: Router::new().nest_service("/legacy", service)
/// # let _ = service;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct WsgiService {
    host: WsgiHost,
    mount: Bytes,
    server_name: Bytes,
    post_buffering: u64,
    peer: Option<AddrText>,
    read_ahead: Option<Arc<Semaphore>>,
}

impl WsgiService {
    /// Serves `host` at the root.
    pub fn new(host: WsgiHost) -> Self {
        Self {
            host,
            mount: Bytes::new(),
            server_name: Bytes::from_static(b"localhost"),
            post_buffering: DEFAULT_POST_BUFFERING,
            peer: None,
            read_ahead: None,
        }
    }

    /// Bodies with a Content-Length up to `bytes` are read whole on the async side before
    /// the app is called (uWSGI's `--post-buffering`, nginx's request buffering): a slow
    /// client then never holds a Python thread, and the app reads them from memory.
    /// Larger or chunked bodies stream. Default 1 MiB; 0 streams everything.
    pub fn post_buffering(mut self, bytes: u64) -> Self {
        self.post_buffering = bytes;
        self
    }

    /// At most `bodies` requests whose body [`Self::post_buffering`] reads whole are in
    /// the host at a time, counted from the start of the body's read until the app's
    /// status and headers come back; a further upload waits with its body left in the
    /// socket, as it would with uWSGI, instead of having it read into memory. Without the
    /// bound, a burst of uploads is read into memory whole however far behind the Python
    /// threads are (100 clients posting 1 MiB to an app of two threads taking 20 ms each:
    /// 132 MB resident at the peak, 55 MB with 12 slots). A body still incomplete
    /// [`READ_AHEAD_PATIENCE`] after it got its slot gives the slot up and is read on
    /// without one, so slow uploads never hold the others back. Requests without a body,
    /// and bodies that stream, do not take a slot. 0 (the default) sets no bound.
    ///
    /// Set it before the service is cloned (the clones share the slots); a count above
    /// tokio's `Semaphore::MAX_PERMITS` is taken as that. The patience
    /// timer needs tokio's time driver, which hyper's servers enable for their own
    /// timeouts.
    pub fn read_ahead(mut self, bodies: usize) -> Self {
        let bodies = bodies.min(Semaphore::MAX_PERMITS);
        self.read_ahead = (bodies > 0).then(|| Arc::new(Semaphore::new(bodies)));
        self
    }

    /// Mounts the app at `prefix` (SCRIPT_NAME = prefix, PATH_INFO = the rest).
    pub fn mount(mut self, prefix: impl Into<Bytes>) -> Self {
        self.mount = prefix.into();
        self
    }

    /// The client of every request this service (a clone made per connection) serves,
    /// written out once: REMOTE_ADDR and REMOTE_PORT without reading a request extension.
    pub fn peer(mut self, peer: AddrText) -> Self {
        self.peer = Some(peer);
        self
    }

    /// SERVER_NAME (default `localhost`).
    pub fn server_name(mut self, name: impl Into<Bytes>) -> Self {
        self.server_name = name.into();
        self
    }
}

/// The default [`WsgiService::post_buffering`].
pub const DEFAULT_POST_BUFFERING: u64 = 1 << 20;

/// How long a body read under [`WsgiService::read_ahead`] may take before its slot is
/// given to the next request (a body of 1 MiB from a client on a 100 Mbit/s link).
pub const READ_AHEAD_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

fn plain(status: u16, text: &'static str) -> http::Response<ResponseBody> {
    let mut r = http::Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

impl<B> tower_service::Service<http::Request<B>> for WsgiService
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    type Response = http::Response<ResponseBody>;
    /// Never fails: a host that is busy or shut down answers 503.
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(self.serve(req))
    }
}

impl WsgiService {
    /// Answers `req`, as the `tower::Service` impl does, without needing `&mut self` or
    /// boxing the future (a server that boxes its own future around it saves a box).
    pub fn serve<B>(
        &self,
        req: http::Request<B>,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, std::convert::Infallible>>
    + Send
    + 'static
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let (parts, mut body) = req.into_parts();
        let mut builder = EnvBuilder::new(Flavor::Wsgi)
            .mount(self.mount.clone())
            .server_name(self.server_name.clone());
        if let Some(peer) = &self.peer {
            builder = builder.peer_text(peer.clone());
        } else if let Some(peer) = parts.extensions.get::<SocketAddr>() {
            builder = builder.peer(*peer);
        }
        // Read from the request's parts in place (no copy of the head first).
        let env = builder.build_with(&parts, &[]);
        let host = self.host.clone();
        let known = body
            .size_hint()
            .exact()
            .filter(|&n| n > 0 && n <= self.post_buffering);
        let gate = known.and_then(|_| self.read_ahead.clone());
        async move {
            let Ok(env) = env else {
                return Ok(plain(400, "Bad Request\n"));
            };
            let mut slot = None;
            let body = if body.is_end_stream() {
                RequestBody::Empty
            } else if known.is_some() {
                if let Some(gate) = gate {
                    // Never closed, so the permit always comes.
                    slot = gate.acquire_owned().await.ok();
                }
                let mut patience = pin!(None::<tokio::time::Sleep>);
                let mut next_frame = std::future::poll_fn(|cx| {
                    let frame = Pin::new(&mut body).poll_frame(cx);
                    if frame.is_pending() && slot.is_some() {
                        if patience.is_none() {
                            patience.set(Some(tokio::time::sleep(READ_AHEAD_PATIENCE)));
                        }
                        if let Some(timer) = patience.as_mut().as_pin_mut()
                            && timer.poll(cx).is_ready()
                        {
                            slot = None; // a slow upload: read on without a slot
                        }
                    }
                    frame
                });
                // Kept in the pieces it came in: `wsgi.input` copies them into the
                // Python object without joining them here first.
                let mut pieces: smallvec::SmallVec<[Bytes; 1]> = smallvec::SmallVec::new();
                loop {
                    match (&mut next_frame).await {
                        None => break,
                        Some(Ok(f)) => {
                            if let Ok(d) = f.into_data()
                                && !d.is_empty()
                            {
                                pieces.push(d);
                            }
                        }
                        Some(Err(_)) => return Ok(plain(400, "Bad Request\n")),
                    }
                }
                // One piece (the common case) is kept without an allocation; more have
                // spilled to the heap already, which `into_vec` keeps.
                match pieces.len() {
                    0 => RequestBody::Empty,
                    1 => RequestBody::Full(pieces.swap_remove(0)),
                    _ => RequestBody::Pieces(pieces.into_vec()),
                }
            } else {
                let (tx, rx) = RequestBody::channel(4);
                tokio::spawn(async move {
                    loop {
                        let frame =
                            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                        let item = match frame {
                            None => return,
                            Some(Ok(f)) => match f.into_data() {
                                Ok(d) => Ok(d),
                                Err(_) => continue, // trailers
                            },
                            Some(Err(e)) => Err(BodyError(e.to_string())),
                        };
                        let stop = item.is_err();
                        if tx.send(item).await.is_err() || stop {
                            return;
                        }
                    }
                });
                rx
            };
            let request = WsgiRequest::new(env).with_body(body);
            let response = host.call(request).await;
            drop(slot);
            let response = match response {
                Ok(r) => r,
                Err(HostError::Overloaded) => {
                    return Ok(plain(
                        503,
                        "Service Unavailable: all WSGI threads are busy\n",
                    ));
                }
                Err(_) => return Ok(plain(503, "Service Unavailable\n")),
            };
            let head = response.head;
            let mut out = http::Response::new(ResponseBody {
                rx: Some(response.body),
                file: None,
                full: None,
                length: head.content_length,
            });
            *out.status_mut() = http::StatusCode::from_u16(head.status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            let headers = out.headers_mut();
            // An app may send more header fields than a response map holds (32,768),
            // where `append` would panic: that answer is the app's error.
            let fits = headers.try_reserve(head.headers.len()).is_ok()
                && head.headers.into_iter().all(|(k, v)| {
                    match (
                        http::HeaderName::from_bytes(&k),
                        http::HeaderValue::from_maybe_shared(v),
                    ) {
                        (Ok(k), Ok(v)) => headers.try_append(k, v).is_ok(),
                        _ => true, // a field that is not HTTP is left out
                    }
                });
            if !fits {
                tracing::error!(
                    "the application's response has more header fields than an HTTP response can carry"
                );
                return Ok(plain(500, "Internal Server Error\n"));
            }
            Ok(out)
        }
    }
}

/// The body of a [`WsgiService`] response: the application's blocks as they come, files
/// from `wsgi.file_wrapper` read in 64 KiB blocks off the async threads.
#[derive(Debug)]
pub struct ResponseBody {
    rx: Option<BodyStream>,
    file: Option<mpsc::Receiver<Result<Bytes, AbortError>>>,
    full: Option<Bytes>,
    length: Option<u64>,
}

impl ResponseBody {
    fn full(b: Bytes) -> Self {
        Self {
            rx: None,
            file: None,
            length: Some(b.len() as u64),
            full: Some(b),
        }
    }
}

fn read_file(
    file: std::fs::File,
    offset: u64,
    len: u64,
) -> mpsc::Receiver<Result<Bytes, AbortError>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut at = offset;
        let end = offset + len;
        let mut buf = vec![0u8; 64 * 1024];
        while at < end {
            let want = usize::try_from(end - at).map_or(buf.len(), |w| w.min(buf.len()));
            let item = match file.read_at(&mut buf[..want], at) {
                Ok(0) => Err(AbortError("the file is shorter than announced".into())),
                Ok(n) => {
                    at += n as u64;
                    Ok(Bytes::copy_from_slice(&buf[..n]))
                }
                Err(e) => Err(AbortError(e.to_string())),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    rx
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = AbortError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AbortError>>> {
        if let Some(b) = self.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            if let Some(file) = self.file.as_mut() {
                match ready!(file.poll_recv(cx)) {
                    Some(item) => return Poll::Ready(Some(item.map(Frame::data))),
                    None => self.file = None,
                }
            }
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(rx.poll_recv(cx)) {
                None => {
                    self.rx = None;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(BodyChunk::Data(d))) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(Ok(BodyChunk::File { file, offset, len })) => {
                    self.file = Some(read_file(file, offset, len));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() && self.file.is_none() && self.full.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
