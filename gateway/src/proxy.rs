//! `proxy_pass` to HTTP/1.1 backends over an [`Upstream`] pool, with keep-alive
//! connections to the backends (hyper's client pool).
//!
//! The request goes out with the headers nginx users set in every tutorial (`Host $host`,
//! `X-Real-IP $remote_addr`, `X-Forwarded-For $proxy_add_x_forwarded_for`,
//! `X-Forwarded-Proto $scheme`) unless the site sets them itself, hop-by-hop headers
//! removed on both ways; the body is read whole first (as the other passes); connection
//! failures go to the next server, and so do failures before the response head for
//! methods safe to repeat; 502 and 504 otherwise.
//!
//! ```no_run
//! # async fn demo(req: http::Request<hyper::body::Incoming>) {
//! use std::sync::Arc;
//! use gateway::proxy::Proxy;
//! use gateway::upstream::{Policy, ServerSpec, Upstream};
//! let pool = Upstream::new("api", vec![ServerSpec::parse("127.0.0.1:8080").unwrap()], Policy::LeastConn);
//! let proxy = Proxy::new(Arc::new(pool), None);
//! let response = proxy.handle(req, &Default::default(), &[]).await;
//! # let _ = response;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::handler::Body;
use crate::listen::ListenAddr;
use crate::pass::{ConnInfo, HOP_BY_HOP, PassBody, Timeouts, idempotent, plain};
use crate::upstream::{PickContext, Upstream};

/// A `proxy_pass` handler.
#[derive(Debug)]
pub struct Proxy {
    upstream: Arc<Upstream>,
    /// The URI part of `proxy_pass http://backend/uri`: it replaces the matched location
    /// prefix (`None`: the request's URI is passed as it came).
    uri: Option<String>,
    timeouts: Timeouts,
    buffering: crate::spool::Buffering,
    client: Client<HttpConnector, PassBody>,
}

impl Proxy {
    /// Proxies to `upstream`; `uri` as in `proxy_pass http://backend/uri`.
    pub fn new(upstream: Arc<Upstream>, uri: Option<String>) -> Self {
        Self::with_timeouts(upstream, uri, Timeouts::default())
    }

    /// [`Proxy::new`] with timeouts (`proxy_connect_timeout`, `proxy_read_timeout`).
    pub fn with_timeouts(upstream: Arc<Upstream>, uri: Option<String>, timeouts: Timeouts) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            upstream,
            uri,
            timeouts,
            buffering: crate::spool::Buffering::default(),
            client,
        }
    }

    /// How a response is buffered ahead of a slow client (see
    /// [`crate::pass::Pass::buffering`]).
    #[must_use]
    pub fn buffering(mut self, b: crate::spool::Buffering) -> Self {
        self.buffering = b;
        self
    }

    /// Answers `req` through a backend. `prefix` is the location prefix that matched
    /// (replaced by the proxy URI when there is one); `headers` are the site's
    /// `proxy_set_header` lines, values already expanded (an empty value removes the
    /// header, as nginx).
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        conn: &ConnInfo,
        headers: &[(HeaderName, Bytes)],
    ) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin,
        B::Error: std::fmt::Display,
    {
        self.handle_under(req, conn, headers, "").await
    }

    /// [`Proxy::handle`] for a request matched by location `prefix`.
    pub async fn handle_under<B>(
        &self,
        req: http::Request<B>,
        conn: &ConnInfo,
        headers: &[(HeaderName, Bytes)],
        prefix: &str,
    ) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::warn!("reading the request body: {e}");
                return plain(http::StatusCode::BAD_REQUEST, "Bad Request\n");
            }
        };
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = match &self.uri {
            Some(uri) => format!(
                "{uri}{}",
                path_and_query
                    .strip_prefix(prefix)
                    .unwrap_or(path_and_query)
                    .trim_start_matches('/')
            ),
            None => path_and_query.to_owned(),
        };
        let mut out = http::HeaderMap::new();
        let connection_listed: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        for (k, v) in &parts.headers {
            let name = k.as_str();
            if HOP_BY_HOP.contains(&name) || connection_listed.iter().any(|c| c == name) {
                continue;
            }
            out.append(k.clone(), v.clone());
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(crate::site::vars::without_port)
            .unwrap_or("")
            .to_owned();
        let client_ip = conn.peer().map(|p| p.ip().to_string()).unwrap_or_default();
        let forwarded_for = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {client_ip}"),
            None => client_ip.clone(),
        };
        let defaults = [
            ("host", host),
            ("x-real-ip", client_ip),
            ("x-forwarded-for", forwarded_for),
            (
                "x-forwarded-proto",
                if conn.https() { "https" } else { "http" }.to_owned(),
            ),
        ];
        for (k, v) in defaults {
            if let Ok(v) = HeaderValue::from_str(&v) {
                out.insert(HeaderName::from_static(k), v);
            }
        }
        for (name, v) in headers {
            if v.is_empty() {
                out.remove(name);
            } else if let Ok(v) = HeaderValue::from_maybe_shared(v.clone()) {
                out.insert(name.clone(), v);
            }
        }
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let idempotent = idempotent(&parts.method);
        let (key, sticky) = crate::pass::request_key(&self.upstream, &parts, conn);
        let ctx = PickContext {
            client: conn.peer().map(|p| p.ip()),
            key: key.as_deref(),
            sticky: sticky.as_deref(),
        };
        let mut tried = Vec::new();
        loop {
            let Some(pick) = self.upstream.pick(&ctx, &tried) else {
                return plain(http::StatusCode::BAD_GATEWAY, "Bad Gateway\n");
            };
            tried.push(pick.index);
            let ListenAddr::Tcp(addr) = pick.addr else {
                tracing::error!("proxy_pass to a unix socket is not supported yet");
                return plain(http::StatusCode::BAD_GATEWAY, "Bad Gateway\n");
            };
            let uri = format!("http://{addr}{target}");
            let mut request = http::Request::builder()
                .method(parts.method.clone())
                .uri(&uri)
                .body(PassBody::full(body.clone()))
                .unwrap_or_default();
            *request.headers_mut() = out.clone();
            let sent = tokio::time::timeout(self.timeouts.read, self.client.request(request)).await;
            let failure = match sent {
                Ok(Ok(response)) => {
                    self.upstream.report(pick.index, true);
                    let (mut head, incoming) = response.into_parts();
                    for h in HOP_BY_HOP {
                        head.headers.remove(h);
                    }
                    let length = head
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let (tx, rx) = self.buffering.channel();
                    let read = self.timeouts.read;
                    tokio::spawn(async move {
                        let mut incoming = incoming;
                        loop {
                            match tokio::time::timeout(read, incoming.frame()).await {
                                Ok(Some(Ok(frame))) => {
                                    if let Ok(data) = frame.into_data() {
                                        if tx.send(Ok(data)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                Ok(None) => return,
                                Ok(Some(Err(e))) => {
                                    let _ = tx.send(Err(std::io::Error::other(e))).await;
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
                    let mut b = PassBody::channel(rx, length);
                    let index = pick.index;
                    let upstream = crate::access::Upstream(pick.addr.clone());
                    b.keep(pick);
                    let mut r = http::Response::from_parts(head, Body::Pass(b));
                    crate::pass::add_sticky_cookie(
                        &self.upstream,
                        index,
                        sticky.as_deref(),
                        &mut r,
                    );
                    if crate::access::upstream_wanted() {
                        r.extensions_mut().insert(upstream);
                    }
                    return r;
                }
                Ok(Err(e)) => (e.is_connect(), e.to_string()),
                Err(_) => (false, "no response head in time".to_owned()),
            };
            self.upstream.report(pick.index, false);
            let (connect, why) = failure;
            let again = connect || idempotent;
            crate::pass::log_failure(&self.upstream, &addr, &parts, &why, again);
            if !again {
                return crate::pass::gave_up(why.contains("in time"));
            }
        }
    }
}
