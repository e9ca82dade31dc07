//! The smaller examples, started as users start them (`cargo run --example NAME`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn start(name: &str, port: u16, dir: &Path) -> testkit::Peer {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "-q", "--example", name, "--", "--port"])
        .arg(port.to_string())
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let mut peer = testkit::Peer::spawn(name, cmd, Some(&dir.join(format!("{name}.log"))));
    peer.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(300),
    );
    peer
}

fn exchange(port: u16, raw: &[u8]) -> testkit::HttpResponse {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    testkit::HttpResponse::parse(&testkit::raw_exchange(addr, raw, Duration::from_secs(30)))
}

#[test]
fn flask_app_serves_the_tutorial_app_with_two_workers() {
    let dir = testkit::temp_dir();
    let port = testkit::free_port();
    let app = start("flask_app", port, dir.path());
    app.wait_log("2 worker(s) serving", Duration::from_secs(60));
    let r = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello from Flask, served by the gateway!\n")
    );
    let r = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\nConnection: close\r\n\r\nname=Ada!",
    );
    assert_eq!(r.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["length"], 9);
    assert_eq!(json["form"]["name"], "Ada!");
}

#[test]
fn fastcgi_backend_fronts_a_flup_app() {
    let dir = testkit::temp_dir();
    let port = testkit::free_port();
    let mut app = start("fastcgi_backend", port, dir.path());
    // flup may need a moment to bind its socket after the front is up.
    let mut r = exchange(
        port,
        b"GET /hello/world HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..50 {
        if r.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = exchange(
            port,
            b"GET /hello/world HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
    }
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "FastCGI app: GET /hello/world, 0 bytes\n")
    );
    let body = vec![b'z'; 200_000];
    let mut raw = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = exchange(port, &raw);
    assert_eq!(r.text(), "FastCGI app: POST /up, 200000 bytes\n");
    // Stopped as a user stops it (Ctrl-C), it stops its flup app and removes the app's
    // socket (a SIGKILL, as the guard's drop sends, would leave the app running).
    // `cargo run` execs the example, so the peer's PID is the example's.
    let sock = std::env::temp_dir().join(format!("fastcgi_backend-{}.sock", app.pid()));
    assert!(sock.exists(), "no app socket at {}", sock.display());
    app.signal("INT");
    assert!(
        app.wait_exit(Duration::from_secs(20)).is_some(),
        "the example did not stop on SIGINT"
    );
    assert!(!sock.exists(), "the app's socket was left behind");
}
