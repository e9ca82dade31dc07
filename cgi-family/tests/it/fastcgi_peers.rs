//! FastCGI against real peers: Debian's `cgi-fcgi` and nginx (`fastcgi_pass`, over TCP
//! and a unix socket, with `fastcgi_keep_conn`) as clients of the application side; flup's
//! FastCGI server as the application behind the web-server side.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cgi_family::fastcgi::{
    self, EndRequest, Event, ProtocolStatus, RecordType, ResponseDecoder, ResponseEvent,
    ServerConfig, ServerConnection,
};
use cgi_family::{Env, EnvBuilder, Flavor, HeadOptions, StatusLine, parse_response_head};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::support::{Req, python};

/// The answer of the echo app: method, path, a few vars, the body's length and bytes.
fn echo(env: &Env, body: &[u8]) -> Vec<u8> {
    let var = |k: &str| String::from_utf8_lossy(env.get(k).unwrap_or(b"-")).into_owned();
    let mut out = format!(
        "Status: 200 OK\r\nContent-Type: text/plain\r\nX-Method: {}\r\n\r\n\
         script={} query={} cookie={} length={}\n",
        var("REQUEST_METHOD"),
        var("SCRIPT_NAME"),
        var("QUERY_STRING"),
        var("HTTP_COOKIE"),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serves one connection with the sans-IO application side; returns the requests seen.
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    config: ServerConfig,
    served_total: Arc<AtomicUsize>,
) -> usize {
    let mut conn = ServerConnection::new(config);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut reqs: HashMap<u16, (Env, Vec<u8>)> = HashMap::new();
    let mut served = 0;
    loop {
        loop {
            let ev = match conn.poll_event(&mut buf) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => return served, // protocol error: close
            };
            if let Some(out) = conn.take_output() {
                s.write_all(&out).await.unwrap();
            }
            match ev {
                Event::Request { id, env, .. } => {
                    reqs.insert(id, (env, Vec::new()));
                }
                Event::Stdin { id, data } => reqs.get_mut(&id).unwrap().1.extend_from_slice(&data),
                Event::StdinEnd { id } => {
                    let (env, body) = reqs.remove(&id).unwrap();
                    let mut out = BytesMut::new();
                    conn.write_stdout(id, &echo(&env, &body), &mut out).unwrap();
                    let keep = conn.end_request(id, 0, &mut out);
                    s.write_all(&out).await.unwrap();
                    served += 1;
                    served_total.fetch_add(1, Ordering::SeqCst);
                    if !keep && conn.active_requests().next().is_none() {
                        let _ = s.shutdown().await;
                        return served;
                    }
                }
                Event::Abort { id } => {
                    reqs.remove(&id);
                    let mut out = BytesMut::new();
                    conn.end_request(id, 1, &mut out);
                    s.write_all(&out).await.unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if let Some(out) = conn.take_output() {
            s.write_all(&out).await.unwrap();
        }
        buf.reserve(64 * 1024);
        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return served;
        }
    }
}

struct App {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn tcp_app() -> App {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_conn(s, ServerConfig::default(), r.clone()));
        }
    });
    App {
        addr,
        connections,
        requests,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_fcgi_client_against_the_application_side() {
    let app = tcp_app().await;
    let cgi_fcgi = testkit::require("cgi-fcgi");
    let body = b"field=value&other=2".repeat(500);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(cgi_fcgi)
            .args(["-bind", "-connect", &app.addr.to_string()])
            .env_clear()
            .env("REQUEST_METHOD", "POST")
            .env("SCRIPT_NAME", "/cgi/fcgi")
            .env("QUERY_STRING", "a=1")
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_COOKIE", "k=v")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        (out.stdout, body)
    })
    .await
    .unwrap();
    let (stdout, body) = out;
    let (head, used) = parse_response_head(&stdout, &HeadOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("X-Method"), Some(&b"POST"[..]));
    let text = &stdout[used..];
    let first_line = format!(
        "script=/cgi/fcgi query=a=1 cookie=k=v length={}\n",
        body.len()
    );
    assert!(
        text.starts_with(first_line.as_bytes()),
        "{}",
        String::from_utf8_lossy(text)
    );
    assert_eq!(&text[first_line.len()..], &body[..]);
}

fn nginx_conf(listen: u16, upstream: &str) -> String {
    format!(
        "upstream fcgi {{ server {upstream}; keepalive 4; }}\n\
         server {{\n listen 127.0.0.1:{listen};\n server_name example.com;\n client_max_body_size 20m;\n\
         location / {{ include /etc/nginx/fastcgi_params; fastcgi_pass fcgi; fastcgi_keep_conn on; }}\n\
         location /close/ {{ include /etc/nginx/fastcgi_params; fastcgi_pass {upstream}; }}\n}}\n"
    )
}

async fn through_nginx(listen: SocketAddr, req: Req) -> testkit::HttpResponse {
    tokio::task::spawn_blocking(move || {
        testkit::HttpResponse::parse(&testkit::raw_exchange(
            listen,
            &req.raw(),
            Duration::from_secs(10),
        ))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fastcgi_pass_with_keep_conn() {
    let app = tcp_app().await;
    let dir = testkit::temp_dir();
    let port = testkit::free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = nginx_conf(port, &app.addr.to_string());
    let path = dir.path().to_path_buf();
    let _nginx = tokio::task::spawn_blocking(move || testkit::start_nginx(&path, &conf, listen))
        .await
        .unwrap();

    for i in 0..3 {
        let reply = through_nginx(
            listen,
            Req::get(&format!("/keep/{i}?n={i}")).header("Cookie", "a=1"),
        )
        .await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert_eq!(
            text,
            format!("script=/keep/{i} query=n={i} cookie=a=1 length=0\n")
        );
    }
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        1,
        "one kept connection for 3 requests"
    );

    // A 10 MiB body arrives whole (nginx sends it in 32 KiB STDIN records).
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = through_nginx(
        listen,
        Req::post("/keep/big", "application/octet-stream", &big),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = &reply.body;
    let line_end = body.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(
        String::from_utf8_lossy(&body[..line_end]),
        format!("script=/keep/big query= cookie=- length={}\n", big.len())
    );
    assert!(
        body[line_end..] == big[..],
        "the body came back byte for byte"
    );

    // Without keep_conn the app closes after each request.
    let before = app.connections.load(Ordering::SeqCst);
    for _ in 0..2 {
        let reply = through_nginx(listen, Req::get("/close/x")).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), before + 2);
    assert!(app.requests.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fastcgi_pass_over_a_unix_socket() {
    let dir = testkit::temp_dir();
    let sock = dir.path().join("app.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(serve_conn(s, ServerConfig::default(), Arc::default()));
        }
    });
    let port = testkit::free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = nginx_conf(port, &format!("unix:{}", sock.display()));
    let path = dir.path().to_path_buf();
    let _nginx = tokio::task::spawn_blocking(move || testkit::start_nginx(&path, &conf, listen))
        .await
        .unwrap();
    let reply = through_nginx(
        listen,
        Req::post("/unix", "text/plain", b"over a unix socket"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-method"), Some("POST"));
    assert_eq!(
        reply.text(),
        "script=/unix query= cookie=- length=18\nover a unix socket"
    );
}

fn records(input: &mut BytesMut) -> Vec<(RecordType, u16, Bytes)> {
    let mut out = Vec::new();
    while let Some((r, used)) = fastcgi::parse_record(input).unwrap() {
        out.push((
            r.header.record_type,
            r.header.request_id,
            Bytes::copy_from_slice(r.content),
        ));
        let _ = input.split_to(used);
    }
    out
}

#[test]
fn management_records_multiplexing_and_refusals() {
    let mut conn = ServerConnection::new(ServerConfig {
        max_conns: 7,
        max_reqs: 3,
        ..ServerConfig::default()
    });
    let mut wire = BytesMut::new();
    // GET_VALUES for the three names and one unknown.
    let mut q = Vec::new();
    for n in [
        "FCGI_MAX_CONNS",
        "FCGI_MAX_REQS",
        "FCGI_MPXS_CONNS",
        "X_UNKNOWN",
    ] {
        fastcgi::encode_pair(n.as_bytes(), b"", &mut q).unwrap();
    }
    fastcgi::encode_record(RecordType::GET_VALUES, 0, &q, &mut wire).unwrap();
    fastcgi::encode_record(RecordType(42), 0, &[], &mut wire).unwrap();
    // Two requests interleaved record by record.
    let env = |m: &str| -> Env { [("REQUEST_METHOD", m.to_owned())].into_iter().collect() };
    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
    fastcgi::encode_request(1, true, &env("GET"), b"one", &mut a).unwrap();
    fastcgi::encode_request(2, true, &env("PUT"), b"two", &mut b).unwrap();
    let (ra, rb) = (records(&mut a.clone()), records(&mut b.clone()));
    for (x, y) in ra.iter().zip(&rb) {
        fastcgi::encode_record(x.0, x.1, &x.2, &mut wire).unwrap();
        fastcgi::encode_record(y.0, y.1, &y.2, &mut wire).unwrap();
    }
    // An Authorizer request (not served) and an abort of request 2.
    fastcgi::encode_begin_request(3, fastcgi::Role::AUTHORIZER, true, &mut wire);
    fastcgi::encode_record(RecordType::ABORT_REQUEST, 2, &[], &mut wire).unwrap();

    let mut events = Vec::new();
    while let Some(ev) = conn.poll_event(&mut wire).unwrap() {
        events.push(ev);
    }
    let mut replies = BytesMut::from(&conn.take_output().unwrap()[..]);
    let replies = records(&mut replies);
    let values = fastcgi::Params::parse(&replies[0].2).unwrap();
    assert_eq!(replies[0].0, RecordType::GET_VALUES_RESULT);
    assert_eq!(
        values.iter().collect::<Vec<_>>(),
        [
            (&b"FCGI_MAX_CONNS"[..], &b"7"[..]),
            (b"FCGI_MAX_REQS", b"3"),
            (b"FCGI_MPXS_CONNS", b"1")
        ]
    );
    assert_eq!(
        (replies[1].0, &replies[1].2[..1]),
        (RecordType::UNKNOWN_TYPE, &[42u8][..])
    );
    assert_eq!(replies[2].0, RecordType::END_REQUEST);
    assert_eq!(replies[2].1, 3);
    assert_eq!(
        EndRequest::parse(&replies[2].2).unwrap().protocol_status,
        ProtocolStatus::UNKNOWN_ROLE
    );

    let bodies: HashMap<u16, Vec<u8>> = events.iter().fold(HashMap::new(), |mut m, e| {
        if let Event::Stdin { id, data } = e {
            m.entry(*id).or_default().extend_from_slice(data);
        }
        m
    });
    assert_eq!(bodies[&1], b"one");
    assert_eq!(bodies[&2], b"two");
    let methods: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Request { id, env, .. } => {
                Some((*id, env.get("REQUEST_METHOD").unwrap().to_vec()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(methods, [(1, b"GET".to_vec()), (2, b"PUT".to_vec())]);
    assert_eq!(events.last(), Some(&Event::Abort { id: 2 }));

    // Without multiplexing a concurrent request is refused with CANT_MPX_CONN.
    let mut single = ServerConnection::new(ServerConfig {
        multiplex: false,
        ..ServerConfig::default()
    });
    let mut wire = BytesMut::new();
    fastcgi::encode_begin_request(1, fastcgi::Role::RESPONDER, true, &mut wire);
    fastcgi::encode_begin_request(2, fastcgi::Role::RESPONDER, true, &mut wire);
    assert_eq!(single.poll_event(&mut wire).unwrap(), None);
    let mut out = BytesMut::from(&single.take_output().unwrap()[..]);
    let out = records(&mut out);
    assert_eq!(out[0].1, 2);
    assert_eq!(
        EndRequest::parse(&out[0].2).unwrap().protocol_status,
        ProtocolStatus::CANT_MPX_CONN
    );
    // A bogus version is an error for the connection.
    let mut bad = BytesMut::from(&[9u8, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0][..]);
    assert_eq!(
        ServerConnection::new(ServerConfig::default()).poll_event(&mut bad),
        Err(fastcgi::Error::UnsupportedVersion { version: 9 })
    );
}

const FLUP_APP: &str = r#"
import sys
from flup.server.fcgi import WSGIServer
def app(environ, start_response):
    n = int(environ.get('CONTENT_LENGTH') or 0)
    body = environ['wsgi.input'].read(n)
    head = ('%s %s %s %s\n' % (environ['REQUEST_METHOD'], environ.get('SCRIPT_NAME', ''),
            environ.get('QUERY_STRING', ''), environ.get('HTTP_COOKIE', ''))).encode('latin-1')
    start_response('201 Created', [('Content-Type', 'text/plain'), ('X-Len', str(len(body)))])
    return [head, body]
WSGIServer(app, bindAddress=('127.0.0.1', int(sys.argv[1]))).run()
"#;

async fn exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Vec<u8>, EndRequest) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::new();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        while let Some(ev) = dec.decode(&mut buf).unwrap() {
            match ev {
                ResponseEvent::Stdout(b) => stdout.extend_from_slice(&b),
                ResponseEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ResponseEvent::End(end) => return (stdout, stderr, end),
                _ => {}
            }
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "flup closed before END_REQUEST"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_side_against_flup() {
    let dir = testkit::temp_dir();
    let script = dir.path().join("flup_app.py");
    std::fs::write(&script, FLUP_APP).unwrap();
    let port = testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(port.to_string());
    let log = dir.path().join("flup.log");
    let mut flup = testkit::Peer::spawn("flup", cmd, Some(&log));
    let _flup = tokio::task::spawn_blocking(move || {
        flup.wait_tcp(addr, Duration::from_secs(10));
        flup
    })
    .await
    .unwrap();

    for size in [0usize, 11, 200_000] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let req = Req::post("/app/path?q=%41", "text/plain", &body).header("Cookie", "s=1");
        let env = EnvBuilder::new(Flavor::FastCgi)
            .peer("127.0.0.1:1234".parse().unwrap())
            .local(addr)
            .server_name("example.com")
            .build(&req.head())
            .unwrap();
        let mut wire = BytesMut::new();
        fastcgi::encode_request(1, false, &env, &body, &mut wire).unwrap();
        let (stdout, _stderr, end) = exchange(addr, &wire).await;
        assert_eq!(end.protocol_status, ProtocolStatus::REQUEST_COMPLETE);
        let opts = HeadOptions {
            status_line: StatusLine::Ignore,
            ..HeadOptions::default()
        };
        let (head, used) = parse_response_head(&stdout, &opts).unwrap().unwrap();
        assert_eq!((head.status, &head.reason[..]), (201, &b"Created"[..]));
        assert_eq!(head.header("X-Len"), Some(size.to_string().as_bytes()));
        let expect_line = b"POST /app/path q=%41 s=1\n";
        assert_eq!(&stdout[used..used + expect_line.len()], expect_line);
        assert_eq!(&stdout[used + expect_line.len()..], &body[..]);
    }
}
