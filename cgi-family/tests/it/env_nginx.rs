//! The env builder against Debian's nginx: the same requests go through nginx's
//! `uwsgi_pass`, `fastcgi_pass` and `scgi_pass` (stock params files) to capturing
//! listeners, and the builder's env for each must equal what nginx sent, var for var and
//! in order, but for the two documented differences: repeated headers joined into one var
//! (as nginx >= 1.23 does; this nginx is 1.22) and no `HTTP_CONTENT_TYPE` /
//! `HTTP_CONTENT_LENGTH` copies. Captures are also committed under `tests/data/` and
//! checked on every run (`UPDATE_FIXTURES=1` rewrites them).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cgi_family::fastcgi::{Event, ServerConfig, ServerConnection};
use cgi_family::scgi::{self, Duplicates, ScgiLimits};
use cgi_family::{Env, EnvBuilder, Flavor};

use crate::support::{Req, strings};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Uwsgi,
    FastCgi,
    Scgi,
}

impl Proto {
    fn prefix(self) -> &'static str {
        match self {
            Self::Uwsgi => "u",
            Self::FastCgi => "f",
            Self::Scgi => "s",
        }
    }
    fn flavor(self) -> Flavor {
        match self {
            Self::Uwsgi => Flavor::Uwsgi,
            Self::FastCgi => Flavor::FastCgi,
            Self::Scgi => Flavor::Scgi,
        }
    }
    fn reply(self) -> Vec<u8> {
        let cgi = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        match self {
            Self::FastCgi => {
                let mut conn = ServerConnection::new(ServerConfig::default());
                let mut out = BytesMut::new();
                conn.write_stdout(1, cgi, &mut out).unwrap();
                conn.end_request(1, 0, &mut out);
                out.to_vec()
            }
            _ => cgi.to_vec(),
        }
    }
}

/// Decodes a capture into nginx's raw pairs (duplicates kept) and the body.
fn decode(proto: Proto, capture: &[u8]) -> (Vec<(Bytes, Bytes)>, Vec<u8>) {
    let buf = Bytes::copy_from_slice(capture);
    match proto {
        Proto::Uwsgi => {
            let (packet, used) = uwsgi_proto::parse_packet(&buf, &uwsgi_proto::Limits::new())
                .unwrap()
                .unwrap();
            let env = Env::from_uwsgi_shared(packet.vars().unwrap(), &buf);
            (env.into_pairs(), buf[used..].to_vec())
        }
        Proto::FastCgi => {
            let mut conn = ServerConnection::new(ServerConfig::default());
            let mut src = BytesMut::from(&buf[..]);
            let mut pairs = None;
            let mut body = Vec::new();
            while let Some(ev) = conn.poll_event(&mut src).unwrap() {
                match ev {
                    Event::Request { env, keep_conn, .. } => {
                        assert!(!keep_conn);
                        pairs = Some(env.into_pairs());
                    }
                    Event::Stdin { data, .. } => body.extend_from_slice(&data),
                    Event::StdinEnd { .. } => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(src.is_empty());
            (pairs.expect("a request"), body)
        }
        Proto::Scgi => {
            let limits = ScgiLimits {
                duplicates: Duplicates::Join,
                ..ScgiLimits::default()
            };
            let (h, used) = scgi::parse_header(&buf, &limits).unwrap().unwrap();
            let pairs = h
                .iter()
                .map(|(k, v)| (buf.slice_ref(k), buf.slice_ref(v)))
                .collect();
            (pairs, buf[used..].to_vec())
        }
    }
}

/// What the builder should produce, from what nginx 1.22 sent.
fn expected_from_nginx(pairs: &[(Bytes, Bytes)]) -> Env {
    let mut env = Env::new();
    for (k, v) in pairs {
        if &k[..] == b"HTTP_CONTENT_TYPE" || &k[..] == b"HTTP_CONTENT_LENGTH" {
            continue;
        }
        if k.starts_with(b"HTTP_") {
            if let Some(prev) = env.get(k) {
                let sep: &[u8] = if &k[..] == b"HTTP_COOKIE" {
                    b"; "
                } else {
                    b", "
                };
                let joined = [prev, sep, v].concat();
                env.set(k.clone(), joined);
                continue;
            }
        }
        env.push(k.clone(), v.clone());
    }
    env
}

fn built(proto: Proto, req: &Req, nginx: &[(Bytes, Bytes)]) -> Env {
    let get = |name: &str| {
        nginx
            .iter()
            .find(|(k, _)| &k[..] == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let port = |name| get(name).unwrap().parse::<u16>().unwrap();
    let mut b = EnvBuilder::new(proto.flavor())
        .peer(SocketAddr::from(([127, 0, 0, 1], port("REMOTE_PORT"))))
        .local(SocketAddr::from(([127, 0, 0, 1], port("SERVER_PORT"))))
        .server_name("example.com")
        .document_root("/srv/www");
    if let Some(software) = get("SERVER_SOFTWARE") {
        b = b.server_software(software);
    }
    if req.chunked {
        b = b.content_length(Some(req.body.len() as u64));
    }
    b.build(&req.head()).unwrap()
}

fn requests(p: &str) -> Vec<(&'static str, Req)> {
    vec![
        (
            "get",
            Req::get(&format!("/{p}/caf%C3%A9/a%20b//c/./d/../e?x=1&y=%20"))
                .header("User-Agent", "capture-test")
                .header("Cookie", "a=1")
                .header("Cookie", "b=2")
                .header("X-Forwarded-For", "1.2.3.4")
                .header("X-Forwarded_For", "6.6.6.6")
                .header("X-Dup", "one")
                .header("X-Dup", "two")
                .header("Accept-Language", "fr, en;q=0.5"),
        ),
        (
            "post",
            Req::post(
                &format!("/{p}/submit"),
                "application/x-www-form-urlencoded",
                b"a=1&b=2",
            )
            .header("Authorization", "Basic dXNlcjpwYXNz"),
        ),
        (
            "chunked",
            Req::post(
                &format!("/{p}/upload"),
                "text/plain",
                b"hello chunked world",
            )
            .chunked(),
        ),
    ]
}

#[test]
fn builder_matches_nginx_stock_params() {
    let dir = testkit::temp_dir();
    let protos = [Proto::Uwsgi, Proto::FastCgi, Proto::Scgi];
    let backends: Vec<TcpListener> = protos
        .iter()
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = testkit::free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bport = |i: usize| backends[i].local_addr().unwrap().port();
    let conf = format!(
        "server {{\n listen 127.0.0.1:{port};\n server_name example.com;\n root /srv/www;\n\
         location /u/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{}; }}\n\
         location /f/ {{ include /etc/nginx/fastcgi_params; fastcgi_pass 127.0.0.1:{}; }}\n\
         location /s/ {{ include /etc/nginx/scgi_params; scgi_pass 127.0.0.1:{}; }}\n}}\n",
        bport(0),
        bport(1),
        bport(2)
    );
    let _nginx = testkit::start_nginx(dir.path(), &conf, listen);

    for (i, proto) in protos.into_iter().enumerate() {
        for (name, req) in requests(proto.prefix()) {
            let fixture = format!("nginx_{}_{name}.bin", format!("{proto:?}").to_lowercase());
            let reply = proto.reply();
            let live = std::thread::scope(|s| {
                let cap = s.spawn(|| {
                    testkit::capture_one(&backends[i], Duration::from_millis(400), &reply)
                });
                let answer = testkit::raw_exchange(listen, &req.raw(), Duration::from_secs(5));
                assert!(
                    answer.starts_with(b"HTTP/1.1 200 OK"),
                    "{fixture}: nginx answered {}",
                    String::from_utf8_lossy(&answer)
                );
                cap.join().unwrap()
            });
            let path = testkit::fixture_path(env!("CARGO_MANIFEST_DIR"), &fixture);
            if testkit::updating_fixtures() {
                std::fs::write(&path, &live).unwrap();
            }
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_FIXTURES=1)", path.display()));
            for (what, capture) in [("live", &live), ("committed", &committed)] {
                let (pairs, body) = decode(proto, capture);
                assert_eq!(body, req.body, "{fixture} ({what}): body");
                let want = expected_from_nginx(&pairs);
                let got = built(proto, &req, &pairs);
                assert_eq!(strings(&got), strings(&want), "{fixture} ({what})");
                // The smuggling probe never reaches the env.
                assert!(
                    !pairs.iter().any(|(_, v)| &v[..] == b"6.6.6.6"),
                    "nginx dropped the underscore header too"
                );
                if name == "get" {
                    assert_eq!(got.get("HTTP_X_FORWARDED_FOR"), Some(&b"1.2.3.4"[..]));
                    assert_eq!(got.get("HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
                }
            }
        }
    }
}

#[test]
fn underscore_header_cannot_overwrite_its_dashed_twin() {
    let head = cgi_family::RequestHead::new("GET", "/", "HTTP/1.1")
        .header("X-Forwarded_For", "6.6.6.6")
        .header("X-Forwarded-For", "1.2.3.4")
        .header("X_Forwarded_For", "7.7.7.7")
        .header("X.Forwarded.For", "8.8.8.8");
    for flavor in [Flavor::Uwsgi, Flavor::FastCgi, Flavor::Scgi, Flavor::Cgi] {
        let env = EnvBuilder::new(flavor).build(&head).unwrap();
        let all: Vec<_> = env.get_all(b"HTTP_X_FORWARDED_FOR").collect();
        assert_eq!(all, [&b"1.2.3.4"[..]], "{flavor:?}");
    }
    // With underscores allowed (nginx's `underscores_in_headers on`) they collide and
    // are joined, never silently overwritten.
    let env = EnvBuilder::new(Flavor::Uwsgi)
        .underscores_in_headers(true)
        .build(&head)
        .unwrap();
    assert_eq!(
        env.get("HTTP_X_FORWARDED_FOR"),
        Some(&b"6.6.6.6, 1.2.3.4, 7.7.7.7"[..])
    );
}

#[test]
fn https_mount_and_params() {
    let head = cgi_family::RequestHead::new("GET", "/app/x?q", "HTTP/2.0")
        .header("Host", "a.example")
        .header("Proxy", "http://evil/");
    let env = EnvBuilder::new(Flavor::Cgi)
        .https(true)
        .mount("/app")
        .build(&head)
        .unwrap();
    assert_eq!(env.get("HTTPS"), Some(&b"on"[..]));
    assert_eq!(env.get("REQUEST_SCHEME"), Some(&b"https"[..]));
    assert_eq!(env.get("SCRIPT_NAME"), Some(&b"/app"[..]));
    assert_eq!(env.get("PATH_INFO"), Some(&b"/x"[..]));
    assert_eq!(env.get("GATEWAY_INTERFACE"), Some(&b"CGI/1.1"[..]));
    assert!(!env.contains("HTTP_PROXY"), "httpoxy");
    assert!(!env.contains("CONTENT_LENGTH"), "CGI: only with a body");
    // An empty HTTP_ param suppresses the header (nginx's httpoxy fix); others override.
    let env = EnvBuilder::new(Flavor::FastCgi)
        .param("HTTP_PROXY", "")
        .param("SCRIPT_FILENAME", "/srv/app.php")
        .param("SERVER_NAME", "override")
        .build(&head)
        .unwrap();
    assert!(!env.contains("HTTP_PROXY"));
    assert_eq!(env.get("SCRIPT_FILENAME"), Some(&b"/srv/app.php"[..]));
    assert_eq!(env.get("SERVER_NAME"), Some(&b"override"[..]));
    assert!(!env.contains("HTTPS"));
    assert_eq!(
        EnvBuilder::new(Flavor::Uwsgi)
            .build(&cgi_family::RequestHead::new(
                "GET",
                "/%2e%2e/x",
                "HTTP/1.1"
            ))
            .unwrap_err(),
        cgi_family::PathError::AboveRoot
    );
}
