//! What goes in and out of the host on the Rust side.

use std::net::IpAddr;

use bytes::Bytes;
use cgi_family::Env;
use tokio::sync::mpsc;

use crate::{AbortError, BodyError};

/// One request for the application: its CGI env and its body.
#[derive(Debug)]
pub struct WsgiRequest {
    /// The CGI variables (REQUEST_METHOD, PATH_INFO, HTTP_*, ...).
    pub env: Env,
    /// The body.
    pub body: RequestBody,
    /// Whether the connection the request came on is TLS (`wsgi.url_scheme`).
    pub https: bool,
}

impl WsgiRequest {
    /// A request without a body.
    pub fn new(env: Env) -> Self {
        Self {
            env,
            body: RequestBody::Empty,
            https: false,
        }
    }

    /// Sets the body.
    pub fn with_body(mut self, body: RequestBody) -> Self {
        self.body = body;
        self
    }

    /// Sets whether the request came over TLS.
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }
}

/// A request body: nothing, all of it at once (in one piece or in the pieces it came in),
/// or streamed as it arrives.
#[derive(Debug, Default)]
pub enum RequestBody {
    /// No body.
    #[default]
    Empty,
    /// The whole body.
    Full(Bytes),
    /// The whole body, in the pieces it arrived in: `wsgi.input.read()` copies them
    /// straight into the Python object, so they need not be joined first.
    Pieces(Vec<Bytes>),
    /// Pieces as they arrive; the stream ends when the sender is dropped. `wsgi.input`
    /// waits for them with the GIL released, and never hands out more than
    /// `CONTENT_LENGTH` bytes when the env has one.
    Stream(mpsc::Receiver<Result<Bytes, BodyError>>),
}

impl RequestBody {
    /// A streamed body and the sender that feeds it (`capacity` pieces in flight).
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, BodyError>>, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Self::Stream(rx))
    }
}

/// The status line and headers the application chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase as the app gave it (may be empty), as latin-1 bytes.
    pub reason: Bytes,
    /// The headers, in the app's order, as latin-1 bytes.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The body length, when known: the app's `Content-Length`, the length of a
    /// single-block body, or of a file sent through `wsgi.file_wrapper`.
    pub content_length: Option<u64>,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &v[..])
    }
}

/// A piece of response body.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyChunk {
    /// Bytes the application yielded.
    Data(Bytes),
    /// A region of a real file returned through `wsgi.file_wrapper`: send it without
    /// copying it through Python (sendfile where the transport allows).
    File {
        /// The file (its own open file description).
        file: std::fs::File,
        /// Where to start.
        offset: u64,
        /// How many bytes to send.
        len: u64,
    },
}

/// A response: the head, then the body as it is produced.
#[derive(Debug)]
pub struct WsgiResponse {
    /// Status and headers.
    pub head: ResponseHead,
    /// The body pieces; the stream ends when the application's iterable is exhausted
    /// (and `close()` was called). An `Err` means the response must be cut short.
    pub body: BodyStream,
}

/// The body of a [`WsgiResponse`], piece by piece. A body of one block (the common
/// case) arrives with the head, without a channel.
#[derive(Debug, Default)]
pub struct BodyStream {
    pub(crate) first: Option<Result<BodyChunk, AbortError>>,
    pub(crate) rx: Option<mpsc::Receiver<Result<BodyChunk, AbortError>>>,
}

impl BodyStream {
    /// The next piece; `None` at the end of the body.
    pub async fn recv(&mut self) -> Option<Result<BodyChunk, AbortError>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next piece; `Ready(None)` at the end of the body.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<BodyChunk, AbortError>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(first));
        }
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    /// The next piece if one is ready now: `Ok(None)` at the end, `Err(())` if the
    /// application has not produced the next piece yet.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Result<BodyChunk, AbortError>>, ()> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        match self.rx.as_mut() {
            None => Ok(None),
            Some(rx) => match rx.try_recv() {
                Ok(item) => Ok(Some(item)),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => Err(()),
            },
        }
    }

    /// Whether the whole body is known to be over.
    pub fn is_end(&self) -> bool {
        self.first.is_none() && self.rx.is_none()
    }
}

/// How the host runs the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Python threads serving requests (uWSGI's `threads`).
    pub threads: usize,
    /// `wsgi.multiprocess`: whether other processes run the same app (`processes > 1`).
    pub multiprocess: bool,
    /// Requests waiting for a free thread before new ones are refused (503).
    pub queue: usize,
    /// Peers whose `X-Forwarded-Proto` is believed for `wsgi.url_scheme` (uWSGI believes
    /// any client).
    pub trusted_proxies: Vec<IpAddr>,
    /// uWSGI's `harakiri`: a request running longer than this is answered `504 Gateway
    /// Timeout` from the Rust side (or its response is cut if the headers went out), the
    /// Python stack of its thread is logged, and [`HostStats::harakiri`] counts it, so the
    /// process can be retired. Works with any number of threads.
    pub harakiri: Option<std::time::Duration>,
    /// Whether a thread that finds no request waiting looks for the next one for a
    /// moment (spinning, then yielding its core) before it sleeps. That saves the
    /// sender a futex wake and the thread a context switch when requests come a few
    /// microseconds apart and a core is free for the spinning. When every core is busy
    /// (the gateway turns it off when its processes outnumber half the cores), the
    /// spinning takes the core from the threads that would bring the next request:
    /// measured on 2 cores with 2 processes, hello world 58k requests/s with it and 70k
    /// without, the box a quarter idle with it.
    pub spin: bool,
}

/// What a host has done so far ([`WsgiHost::stats`](crate::WsgiHost::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Requests the application finished (successfully or not).
    pub requests: u64,
    /// Python threads running a request now.
    pub busy: usize,
    /// Requests stopped by harakiri (their threads may still be stuck in Python).
    pub harakiri: u64,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            multiprocess: false,
            queue: 1024,
            trusted_proxies: Vec::new(),
            harakiri: None,
            spin: true,
        }
    }
}
