//! SCGI against real peers: nginx's `scgi_pass` as the client of the application side,
//! flup's SCGI server as the application behind the web-server side.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use cgi_family::scgi::{self, Duplicates, ScgiDecoder, ScgiLimits};
use cgi_family::{EnvBuilder, Flavor, HeadOptions, parse_response_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Req, python};

async fn scgi_app(duplicates: Duplicates) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut dec = ScgiDecoder::new(ScgiLimits {
                    duplicates,
                    ..ScgiLimits::default()
                });
                let mut buf = BytesMut::new();
                let head = loop {
                    match dec.decode_head(&mut buf) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                        Err(_) => return, // refuse: close without a reply
                    }
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                };
                let mut body = Vec::new();
                while !dec.is_done() {
                    match dec.decode_body(&mut buf) {
                        Some(b) => body.extend_from_slice(&b),
                        None => {
                            if s.read_buf(&mut buf).await.unwrap() == 0 {
                                return;
                            }
                        }
                    }
                }
                let env = head.env();
                let v = |k: &str| String::from_utf8_lossy(env.get(k).unwrap_or(b"-")).into_owned();
                let mut out = format!(
                    "Status: 201 Created\r\nContent-Type: text/plain\r\n\r\n{} {} cookie={} length={}\n",
                    v("REQUEST_METHOD"),
                    v("DOCUMENT_URI"),
                    v("HTTP_COOKIE"),
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(&body);
                s.write_all(&out).await.unwrap();
                // SCGI: closing the connection ends the response.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_scgi_pass_against_the_application_side() {
    let strict = scgi_app(Duplicates::Reject).await;
    let lenient = scgi_app(Duplicates::Join).await;
    let dir = testkit::temp_dir();
    let port = testkit::free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = format!(
        "server {{\n listen 127.0.0.1:{port};\n server_name example.com;\n client_max_body_size 20m;\n\
         location /strict/ {{ include /etc/nginx/scgi_params; scgi_pass {strict}; }}\n\
         location /lenient/ {{ include /etc/nginx/scgi_params; scgi_pass {lenient}; }}\n}}\n"
    );
    let path = dir.path().to_path_buf();
    let _nginx = tokio::task::spawn_blocking(move || testkit::start_nginx(&path, &conf, listen))
        .await
        .unwrap();
    let send = |req: Req| {
        tokio::task::spawn_blocking(move || {
            testkit::HttpResponse::parse(&testkit::raw_exchange(
                listen,
                &req.raw(),
                Duration::from_secs(10),
            ))
        })
    };

    let body: Vec<u8> = (0..1024 * 1024).map(|i| b'0' + (i % 10) as u8).collect();
    let reply = send(Req::post("/strict/up", "text/plain", &body))
        .await
        .unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("status"), None, "nginx hides Status for SCGI");
    let line = format!("POST /strict/up cookie=- length={}\n", body.len());
    assert!(reply.body.starts_with(line.as_bytes()), "echo line");
    assert!(
        reply.body[line.len()..] == body[..],
        "the body came back byte for byte"
    );

    // nginx 1.22 repeats HTTP_COOKIE for two Cookie lines, which the spec forbids: the
    // strict decoder refuses (nginx answers 502), the lenient one joins them.
    let two_cookies = |target: &str| {
        let mut r = Req::get(target)
            .header("Cookie", "a=1")
            .header("Cookie", "b=2");
        r.target = target.into();
        r
    };
    let reply = send(two_cookies("/strict/c")).await.unwrap();
    assert_eq!(reply.status, 502);
    let reply = send(two_cookies("/lenient/c")).await.unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(reply.text(), "GET /lenient/c cookie=a=1; b=2 length=0\n");
}

const FLUP_SCGI: &str = r#"
import sys
from flup.server.scgi import WSGIServer
def app(environ, start_response):
    n = int(environ.get('CONTENT_LENGTH') or 0)
    body = environ['wsgi.input'].read(n)
    start_response('200 OK', [('Content-Type', 'text/plain'), ('X-Uri', environ.get('REQUEST_URI', ''))])
    return [('%s %d\n' % (environ['REQUEST_METHOD'], len(body))).encode(), body]
WSGIServer(app, bindAddress=('127.0.0.1', int(sys.argv[1]))).run()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_side_against_flup() {
    let dir = testkit::temp_dir();
    let script = dir.path().join("flup_scgi.py");
    std::fs::write(&script, FLUP_SCGI).unwrap();
    let port = testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(port.to_string());
    let mut flup = testkit::Peer::spawn("flup-scgi", cmd, Some(&dir.path().join("flup.log")));
    let _flup = tokio::task::spawn_blocking(move || {
        flup.wait_tcp(addr, Duration::from_secs(10));
        flup
    })
    .await
    .unwrap();

    for size in [0usize, 5, 300_000] {
        let body = vec![b'z'; size];
        let req = Req::post("/scgi/x?y=1", "text/plain", &body);
        let env = EnvBuilder::new(Flavor::Scgi)
            .peer("127.0.0.1:9".parse().unwrap())
            .local(addr)
            .build(&req.head())
            .unwrap();
        let mut wire = Vec::new();
        scgi::encode_request(&env, &mut wire).unwrap();
        wire.extend_from_slice(&body);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let (head, used) = parse_response_head(&out, &HeadOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-uri"), Some(&b"/scgi/x?y=1"[..]));
        let line = format!("POST {size}\n");
        assert_eq!(&out[used..used + line.len()], line.as_bytes());
        assert_eq!(&out[used + line.len()..], &body[..]);
    }
}
