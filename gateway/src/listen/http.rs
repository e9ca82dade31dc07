//! HTTP/1.1 on hyper: keep-alive, pipelining, chunked bodies, `Expect: 100-continue`, HEAD.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower_like::ServiceExt;
use wsgi_host::WsgiService;

mod tower_like {
    //! `hyper::service::Service` from the WSGI `tower::Service`, with the peer address.
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use wsgi_host::WsgiService;

    pub(super) trait ServiceExt {
        fn with_peer(&self, peer: Option<SocketAddr>) -> WithPeer;
    }

    impl ServiceExt for WsgiService {
        fn with_peer(&self, peer: Option<SocketAddr>) -> WithPeer {
            WithPeer {
                inner: self.clone(),
                peer,
            }
        }
    }

    pub(super) struct WithPeer {
        inner: WsgiService,
        peer: Option<SocketAddr>,
    }

    impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithPeer {
        type Response = http::Response<wsgi_host::ResponseBody>;
        type Error = Infallible;
        type Future =
            <WsgiService as tower_service::Service<http::Request<hyper::body::Incoming>>>::Future;

        fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
            if let Some(peer) = self.peer {
                req.extensions_mut().insert(peer);
            }
            let mut svc = self.inner.clone();
            tower_service::Service::call(&mut svc, req)
        }
    }
}

/// Serves one HTTP/1.1 connection with the WSGI app.
pub async fn serve_connection<S>(io: S, peer: Option<SocketAddr>, app: &WsgiService)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // Slow clients cannot pin a connection forever while sending the head.
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), app.with_peer(peer));
    if let Err(e) = conn.await {
        tracing::debug!("http connection: {e}");
    }
}
