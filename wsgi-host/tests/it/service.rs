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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_header_fields_than_a_response_holds_is_a_500_and_the_next_is_served() {
    let mut svc = WsgiService::new(host("misbehave", 1));
    let get = |path: &str| {
        http::Request::get(format!("http://example.com{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = svc.call(get("/many-headers")).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().len() < 10, "{} fields", resp.headers().len());
    let resp = svc.call(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// A request body fed through a channel, which notes when it is first read.
struct Watched {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    len: u64,
    read: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.read.store(true, std::sync::atomic::Ordering::SeqCst);
        self.rx
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// A POST of `body` to `misbehave`'s `/sleep?SECONDS`, with the sender of its body (send
/// it and drop the sender), and whether its body was read yet.
fn watched_post(
    seconds: &str,
    body: &'static [u8],
) -> (
    http::Request<Watched>,
    tokio::sync::mpsc::Sender<Bytes>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = http::Request::post(format!("http://example.com/sleep?{seconds}"))
        .header("content-length", body.len())
        .body(Watched {
            rx,
            len: body.len() as u64,
            read: read.clone(),
        })
        .unwrap();
    (req, tx, read)
}

/// [`watched_post`] with its whole body sent.
fn whole_post(
    seconds: &str,
    body: &'static [u8],
) -> (
    http::Request<Watched>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (req, tx, read) = watched_post(seconds, body);
    tx.try_send(Bytes::from_static(body)).unwrap();
    (req, read)
}

fn is_read(flag: &std::sync::atomic::AtomicBool) -> bool {
    flag.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_leaves_further_bodies_unread_until_a_slot_is_free() {
    // One slot: the first POST holds it while its (only) thread sleeps in the app.
    let svc = WsgiService::new(host("misbehave", 1)).read_ahead(1);
    let (first, first_read) = whole_post("0.6", b"first");
    let (second, second_read) = whole_post("0", b"second");
    let one = tokio::spawn(svc.clone().call(first));
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(is_read(&first_read));
    let started = std::time::Instant::now();
    let two = tokio::spawn(svc.clone().call(second));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !is_read(&second_read),
        "the second body was read while the first held the only slot"
    );
    // A request without a body is not held back by the slots.
    let get = http::Request::get("http://example.com/sleep?0")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let third = tokio::spawn(svc.clone().call(get));
    let resp = one.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let resp = two.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(is_read(&second_read));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(third.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_gives_its_slot_up() {
    let svc = WsgiService::new(host("misbehave", 1)).read_ahead(1);
    // The first body never comes: after READ_AHEAD_PATIENCE its slot goes to the next.
    let (slow, slow_tx, slow_read) = watched_post("0", b"slow");
    let (fast, fast_read) = whole_post("0", b"fast");
    let slow = tokio::spawn(svc.clone().call(slow));
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert!(is_read(&slow_read));
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), svc.clone().call(fast))
        .await
        .expect("the fast upload waited for the slow one")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(is_read(&fast_read));
    assert!(started.elapsed() >= wsgi_host::READ_AHEAD_PATIENCE / 2);
    assert!(!slow.is_finished());
    // The slow body comes at last and is served.
    slow_tx.send(Bytes::from_static(b"slow")).await.unwrap();
    drop(slow_tx);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_read_ahead_count_is_taken() {
    // More slots than a semaphore holds: taken as its maximum, not a panic.
    let mut svc = WsgiService::new(host("echo", 1)).read_ahead(usize::MAX);
    let req = http::Request::post("http://example.com/x")
        .header("content-length", "2")
        .body(Full::new(Bytes::from_static(b"hi")))
        .unwrap();
    let resp = svc.call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}
