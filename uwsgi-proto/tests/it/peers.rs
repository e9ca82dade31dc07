//! Byte vectors from real peers: what Debian's nginx sends through `uwsgi_pass` with its
//! stock `uwsgi_params`, and what uWSGI's own HTTP router sends to a backend.
//!
//! Each test captures the packet live (the peer is started here, on loopback, with its own
//! config under a temp dir), decodes it, and checks the exact vars; the same expectations
//! are then checked against the copy committed under `tests/data/`, so the fixtures stay
//! honest. `UPDATE_FIXTURES=1` rewrites the committed copies from the live captures.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use uwsgi_proto::{Error, Limits, Modifier1, Modifier2, RequestDecoder, parse_packet};

type Pairs = Vec<(String, String)>;

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// Decodes a whole capture: the vars (ports replaced by `<port>` after checking they are
/// decimal) and the body that followed the packet.
fn decode(capture: &[u8], limits: Limits, router: bool) -> Result<(Pairs, Vec<u8>), Error> {
    let mut buf = BytesMut::from(capture);
    let mut dec = RequestDecoder::new(limits);
    let head = dec
        .decode_head(&mut buf)?
        .expect("a whole packet was captured");
    assert_eq!(head.header().modifier1, Modifier1::WSGI);
    assert_eq!(head.header().modifier2, Modifier2::ZERO);
    let vars = head
        .vars()
        .expect("WSGI packets carry vars")
        .iter()
        .map(|(k, v)| {
            let k = String::from_utf8(k.to_vec()).expect("ASCII keys");
            let mut v = String::from_utf8_lossy(v).into_owned();
            if k == "REMOTE_PORT" || k == "SERVER_PORT" {
                assert!(
                    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
                    "{k}={v}"
                );
                v = "<port>".into();
            }
            // uWSGI's router sends the machine's host name, which differs per machine.
            if k == "SERVER_NAME" && router {
                assert!(!v.is_empty());
                v = "<hostname>".into();
            }
            (k, v)
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = dec.decode_body(&mut buf) {
        body.extend_from_slice(&chunk);
    }
    assert!(dec.is_done(), "the capture holds the whole body");
    assert!(buf.is_empty(), "nothing after the body: {:?}", &buf[..]);
    Ok((vars, body))
}

fn pairs(list: &[(&str, &str)]) -> Pairs {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Checks a live capture and the committed fixture of the same name against `expected`.
fn check(name: &str, live: &[u8], expected: &[(&str, &str)], body: &[u8]) {
    let path = testkit::fixture_path(env!("CARGO_MANIFEST_DIR"), name);
    if testkit::updating_fixtures() {
        std::fs::write(&path, live).expect("write fixture");
    }
    let committed = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (capture with UPDATE_FIXTURES=1)", path.display()));
    for (what, bytes) in [
        ("live capture", live),
        ("committed fixture", &committed[..]),
    ] {
        let (vars, got_body) =
            decode(bytes, Limits::new(), name.starts_with("uwsgi_router")).unwrap();
        assert_eq!(vars, pairs(expected), "{name}: {what}");
        assert_eq!(got_body, body, "{name}: {what} body");
        // The one-shot parser agrees with the stream decoder.
        let (packet, used) = parse_packet(bytes, &Limits::new()).unwrap().unwrap();
        assert_eq!(used, bytes.len() - body.len());
        assert_eq!(packet.vars().unwrap().len(), expected.len());
    }
}

struct Nginx {
    _peer: testkit::Peer,
    addr: SocketAddr,
    backend: TcpListener,
}

fn nginx(dir: &Path) -> Nginx {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let bport = backend.local_addr().unwrap().port();
    let port = testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = format!(
        "server {{\n  listen 127.0.0.1:{port};\n  server_name example.com;\n  root /srv/www;\n\
         location / {{\n    include /etc/nginx/uwsgi_params;\n    uwsgi_pass 127.0.0.1:{bport};\n  }}\n}}\n"
    );
    let peer = testkit::start_nginx(dir, &conf, addr);
    Nginx {
        _peer: peer,
        addr,
        backend,
    }
}

fn through_nginx(n: &Nginx, request: &[u8]) -> Vec<u8> {
    std::thread::scope(|s| {
        let cap = s.spawn(|| testkit::capture_one(&n.backend, Duration::from_millis(400), REPLY));
        let reply = testkit::raw_exchange(n.addr, request, Duration::from_secs(5));
        assert!(
            reply.starts_with(b"HTTP/1.1 200 OK"),
            "nginx answered: {}",
            String::from_utf8_lossy(&reply)
        );
        cap.join().unwrap()
    })
}

#[test]
fn nginx_uwsgi_pass_captures() {
    let dir = testkit::temp_dir();
    let n = nginx(dir.path());

    // A browser-like GET: encoded non-ASCII path, merged slashes, a query, two Cookie
    // lines, a client X-Forwarded-Proto, a Host with a port.
    let get = through_nginx(
        &n,
        b"GET /caf%C3%A9/a%20b//c?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\n\
          User-Agent: capture-test\r\nAccept: */*\r\nCookie: a=1\r\nCookie: b=2\r\n\
          X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    check(
        "nginx_get.bin",
        &get,
        &[
            ("QUERY_STRING", "x=1&y=%20"),
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", ""),
            ("REQUEST_URI", "/caf%C3%A9/a%20b//c?x=1&y=%20"),
            ("PATH_INFO", "/café/a b/c"),
            ("DOCUMENT_ROOT", "/srv/www"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "<port>"),
            ("SERVER_PORT", "<port>"),
            ("SERVER_NAME", "example.com"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_USER_AGENT", "capture-test"),
            ("HTTP_ACCEPT", "*/*"),
            ("HTTP_COOKIE", "a=1"),
            ("HTTP_COOKIE", "b=2"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
            ("HTTP_CONNECTION", "close"),
        ],
        b"",
    );

    // A form POST: the body follows the packet on the same stream.
    let post = through_nginx(
        &n,
        b"POST /submit HTTP/1.1\r\nHost: example.com\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\
          Connection: close\r\n\r\nhello=world",
    );
    check(
        "nginx_post.bin",
        &post,
        &[
            ("QUERY_STRING", ""),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("CONTENT_LENGTH", "11"),
            ("REQUEST_URI", "/submit"),
            ("PATH_INFO", "/submit"),
            ("DOCUMENT_ROOT", "/srv/www"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "<port>"),
            ("SERVER_PORT", "<port>"),
            ("SERVER_NAME", "example.com"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("HTTP_CONTENT_LENGTH", "11"),
            ("HTTP_CONNECTION", "close"),
        ],
        b"hello=world",
    );

    // A chunked upload: nginx de-chunks it, sends the decoded length, and still forwards
    // the Transfer-Encoding header.
    let chunked = through_nginx(
        &n,
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    check(
        "nginx_chunked.bin",
        &chunked,
        &[
            ("QUERY_STRING", ""),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", "11"),
            ("REQUEST_URI", "/up"),
            ("PATH_INFO", "/up"),
            ("DOCUMENT_ROOT", "/srv/www"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "<port>"),
            ("SERVER_PORT", "<port>"),
            ("SERVER_NAME", "example.com"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_TRANSFER_ENCODING", "chunked"),
            ("HTTP_CONNECTION", "close"),
        ],
        b"hello world",
    );

    // A 6 KB cookie: nginx builds a packet over uWSGI's default 4096-byte buffer; the
    // codec's default (65535) takes it, a 4096 limit refuses it with a clear error.
    let cookie = "c".repeat(6000);
    let big = through_nginx(
        &n,
        format!("GET / HTTP/1.1\r\nHost: example.com\r\nCookie: big={cookie}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let big_cookie = format!("big={cookie}");
    check(
        "nginx_big_cookie.bin",
        &big,
        &[
            ("QUERY_STRING", ""),
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", ""),
            ("REQUEST_URI", "/"),
            ("PATH_INFO", "/"),
            ("DOCUMENT_ROOT", "/srv/www"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "<port>"),
            ("SERVER_PORT", "<port>"),
            ("SERVER_NAME", "example.com"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_COOKIE", &big_cookie),
            ("HTTP_CONNECTION", "close"),
        ],
        b"",
    );
    let size = usize::from(u16::from_le_bytes([big[1], big[2]]));
    assert!(size > 6000);
    assert_eq!(
        decode(&big, Limits::new().max_block_size(4096), false).unwrap_err(),
        Error::BlockTooLarge { size, limit: 4096 }
    );
}

#[test]
fn uwsgi_http_router_capture() {
    let uwsgi = testkit::require("uwsgi");
    let dir = testkit::temp_dir();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let bport = backend.local_addr().unwrap().port();
    let port = testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(uwsgi);
    cmd.args(["--master", "--http"])
        .arg(addr.to_string())
        .arg("--http-to")
        .arg(format!("127.0.0.1:{bport}"))
        .args(["--processes", "1", "--disable-logging"]);
    let log = dir.path().join("uwsgi.log");
    let mut peer = testkit::Peer::spawn("uwsgi", cmd, Some(&log));
    peer.wait_tcp(addr, Duration::from_secs(10));

    let live = std::thread::scope(|s| {
        let cap = s.spawn(|| testkit::capture_one(&backend, Duration::from_millis(400), REPLY));
        let reply = testkit::raw_exchange(
            addr,
            b"POST /router/path?q=%41 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: capture-test\r\n\
              Content-Type: text/plain\r\nContent-Length: 4\r\nCookie: a=1\r\nCookie: b=2\r\n\r\nping",
            Duration::from_secs(5),
        );
        assert!(
            reply.starts_with(b"HTTP/1.1 200 OK"),
            "uwsgi answered: {}\n{}",
            String::from_utf8_lossy(&reply),
            peer.log()
        );
        cap.join().unwrap()
    });
    check(
        "uwsgi_router_post.bin",
        &live,
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/router/path"),
            ("REQUEST_URI", "/router/path?q=%41"),
            ("QUERY_STRING", "q=%41"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SCRIPT_NAME", ""),
            ("SERVER_NAME", "<hostname>"),
            ("SERVER_PORT", "<port>"),
            ("UWSGI_ROUTER", "http"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "<port>"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_USER_AGENT", "capture-test"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "4"),
            // uWSGI's router joins repeated headers itself, Cookie with ", " too.
            ("HTTP_COOKIE", "a=1, b=2"),
        ],
        b"ping",
    );
}
