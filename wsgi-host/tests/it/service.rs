//! The tower::Service adapter, called as hyper or axum would call it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower_service::Service;
use wsgi_host::WsgiService;

use crate::support::host;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_at_a_path() {
    let mut svc = WsgiService::new(host("echo", 1)).mount("/legacy");
    let req = http::Request::post("http://example.com/legacy/items?x=1")
        .header("content-type", "text/plain")
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = svc.call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST|/legacy|/items|x=1|http|-\nhello");
}
