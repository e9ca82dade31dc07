//! The tutorial command lines, HTTP straight to the gateway, and nginx's `uwsgi_pass` in
//! front of `--socket` over TCP and a unix socket.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{HttpResponse, Peer};

const ECHO_APP: &str = r#"
import hashlib
def application(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else environ["wsgi.input"].read()
    info = "%s %s %s %s cookie=%s len=%d sha=%s\n" % (
        environ["REQUEST_METHOD"], environ["SCRIPT_NAME"], environ["PATH_INFO"],
        environ["QUERY_STRING"], environ.get("HTTP_COOKIE", "-"), len(body),
        hashlib.sha256(body).hexdigest()[:16])
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [info.encode("latin-1")]
"#;

fn gateway(dir: &Path, args: &[&str], wait: Option<SocketAddr>) -> Peer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args).current_dir(dir);
    let mut peer = Peer::spawn("gateway", cmd, Some(&dir.join("gateway.log")));
    if let Some(addr) = wait {
        peer.wait_tcp(addr, Duration::from_secs(20));
    }
    peer
}

fn addr() -> (String, SocketAddr) {
    let port = testkit::free_port();
    (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

fn exchange(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    HttpResponse::parse(&testkit::raw_exchange(addr, raw, Duration::from_secs(20)))
}

fn wait_ready(peer: &Peer) {
    for _ in 0..200 {
        if peer.log().contains("WSGI app ready") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the app did not load:\n{}", peer.log());
}

#[test]
fn the_client_address_reaches_every_request_of_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "def application(environ, start_response):\n    \
         body = ('%s %s' % (environ['REMOTE_ADDR'], environ['REMOTE_PORT'])).encode()\n    \
         start_response('200 OK', [('Content-Length', str(len(body)))])\n    \
         return [body]\n",
    )
    .unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &["--http-socket", &a, "--wsgi-file", "app.py"],
        Some(sa),
    );
    wait_ready(&gw);
    use std::io::{Read, Write};
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(sa).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let me = format!("127.0.0.1 {}", s.local_addr().unwrap().port());
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).ends_with(&me) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() < 1024, "{}", String::from_utf8_lossy(&got));
            }
        }
    }
}

#[test]
fn http_tutorial_hello_world_and_requests() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &["--http", &a, "--wsgi-file", "app.py", "--threads", "2"],
        Some(sa),
    );
    wait_ready(&gw);

    let r = exchange(sa, b"GET /caf%C3%A9/x?q=1 HTTP/1.1\r\nHost: t\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", gw.log());
    // PATH_INFO holds the raw UTF-8 bytes (latin-1 in Python): they come back unchanged.
    assert!(
        r.text()
            .starts_with("GET  /café/x q=1 cookie=a=1; b=2 len=0"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // A chunked upload, de-chunked into wsgi.input.
    let r = exchange(
        sa,
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert!(
        r.text().contains("POST  /up  cookie=- len=11 "),
        "{}",
        r.text()
    );

    // Keep-alive: two requests on one connection, then HEAD.
    let raw = testkit::raw_exchange(
        sa,
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert!(text.contains("GET  /1 "), "{text}");
    assert!(text.contains("GET  /2 "), "{text}");
    assert!(!text.contains("HEAD  /3"), "no body for HEAD: {text}");
}

#[test]
fn flask_tutorial_command_line() {
    let dir = testkit::temp_dir();
    let flask =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wsgi-host/tests/apps/flaskapp/run.py");
    std::fs::copy(&flask, dir.path().join("run.py")).unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &["--http", &a, "--wsgi-file", "run.py", "--callable", "app"],
        Some(sa),
    );
    wait_ready(&gw);
    let r = exchange(
        sa,
        b"GET /?a=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"hello\":\"flask\""), "{}", r.text());
}

#[test]
fn unknown_option_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--htpp", ":9000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--htpp"));
}

#[test]
fn failing_import_exits_non_zero_with_the_traceback() {
    let dir = testkit::temp_dir();
    std::fs::write(
        dir.path().join("broken.py"),
        "import not_a_module_anywhere\n",
    )
    .unwrap();
    let (a, _) = addr();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--http", &a, "--wsgi-file", "broken.py"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("ModuleNotFoundError") && log.contains("Traceback"),
        "{log}"
    );
}

fn nginx_uwsgi(dir: &Path, backend: &str) -> (Peer, SocketAddr) {
    nginx_front(
        dir,
        &format!(" location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass {backend}; }}"),
    )
}

#[test]
fn nginx_uwsgi_pass_to_the_socket_over_tcp() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &["--socket", &a, "--wsgi-file", "app.py"],
        Some(sa),
    );
    wait_ready(&gw);
    let (_nginx, front) = nginx_uwsgi(dir.path(), &a);

    let r = exchange(front, b"GET /caf%C3%A9/a%20b?x=1 HTTP/1.1\r\nHost: example.com\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(
        r.text()
            .starts_with("GET  /café/a b x=1 cookie=a=1; b=2 len=0"),
        "{}",
        r.text()
    );

    // A 6 KB cookie: over uWSGI's default --buffer-size 4096, fine here.
    let cookie = "c".repeat(6000);
    let r = exchange(front, format!("GET / HTTP/1.1\r\nHost: example.com\r\nCookie: big={cookie}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200);

    // 10 MiB POST.
    let body: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut raw = format!(
        "POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = exchange(front, &raw);
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains(&format!("len={}", body.len())),
        "{}",
        r.text()
    );
}

#[test]
fn nginx_uwsgi_pass_to_a_unix_socket_with_chmod() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let sock = dir.path().join("mysite.sock");
    let gw = gateway(
        dir.path(),
        &[
            "--socket",
            "mysite.sock",
            "--wsgi-file",
            "app.py",
            "--chmod-socket=664",
            "--vacuum",
        ],
        None,
    );
    wait_ready(&gw);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o664);
    let (_nginx, front) = nginx_uwsgi(dir.path(), &format!("unix:{}", sock.display()));
    let r = exchange(front, b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(
        r.text().starts_with("POST  /form  cookie=- len=5 "),
        "{}",
        r.text()
    );
}

#[test]
fn ini_file_with_socket_and_http() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (h, sh) = addr();
    let (s, ss) = addr();
    std::fs::write(
        dir.path().join("app.ini"),
        format!("[uwsgi]\nchdir = %d\nwsgi-file = app.py\nhttp = {h}\nsocket = {s}\nprocess = 1\nthreads = 2\nmaster = true\n"),
    )
    .unwrap();
    let gw = gateway(dir.path(), &["--ini", "app.ini"], Some(sh));
    wait_ready(&gw);
    assert!(
        std::net::TcpStream::connect(ss).is_ok(),
        "the uwsgi socket listens too"
    );
    let r = exchange(
        sh,
        b"GET /ini HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(
        gw.log().contains("`process` read as `processes`"),
        "{}",
        gw.log()
    );
}

fn nginx_front(dir: &Path, locations: &str) -> (Peer, SocketAddr) {
    let port = testkit::free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = format!(
        "server {{\n listen 127.0.0.1:{port};\n server_name example.com;\n client_max_body_size 20m;\n{locations}\n}}\n"
    );
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    (testkit::start_nginx(&nginx_dir, &conf, listen), listen)
}

#[test]
fn nginx_fastcgi_pass_and_scgi_pass_to_the_gateway() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (f, sf) = addr();
    let (s, ss) = addr();
    let gw = gateway(
        dir.path(),
        &[
            "--fastcgi-socket",
            &f,
            "--scgi-socket",
            &s,
            "--wsgi-file",
            "app.py",
            "--threads",
            "4",
        ],
        Some(sf),
    );
    wait_ready(&gw);
    assert!(std::net::TcpStream::connect(ss).is_ok());
    let (_nginx, front) = nginx_front(
        dir.path(),
        &format!(
            " location /f/ {{ include /etc/nginx/fastcgi_params; fastcgi_pass {f}; fastcgi_keep_conn on; }}\n\
             location /s/ {{ include /etc/nginx/scgi_params; scgi_pass {s}; }}\n"
        ),
    );
    for prefix in ["f", "s"] {
        let r = exchange(
            front,
            format!("GET /{prefix}/caf%C3%A9?x=1 HTTP/1.1\r\nHost: example.com\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{prefix}: {}", gw.log());
        assert_eq!(
            r.header("status"),
            None,
            "nginx hides the CGI Status header"
        );
        assert!(
            r.text()
                .starts_with(&format!("GET  /{prefix}/café x=1 cookie=a=1; b=2 len=0")),
            "{prefix}: {}",
            r.text()
        );
        let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 249) as u8).collect();
        let mut raw = format!("POST /{prefix}/up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
        raw.extend_from_slice(&body);
        let r = exchange(front, &raw);
        assert_eq!(r.status, 200, "{prefix}");
        assert!(
            r.text().contains(&format!("len={}", body.len())),
            "{prefix}: {}",
            r.text()
        );
    }
}

#[test]
fn cgi_fcgi_against_the_fastcgi_socket() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (f, sf) = addr();
    let gw = gateway(
        dir.path(),
        &["--fastcgi-socket", &f, "--wsgi-file", "app.py"],
        Some(sf),
    );
    wait_ready(&gw);
    let mut child = Command::new(testkit::require("cgi-fcgi"))
        .args(["-bind", "-connect", &f])
        .env_clear()
        .env("REQUEST_METHOD", "POST")
        .env("SCRIPT_NAME", "/fcgi/path")
        .env("QUERY_STRING", "k=v")
        .env("CONTENT_LENGTH", "5")
        .env("SERVER_NAME", "localhost")
        .env("SERVER_PORT", "80")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(
        text.contains("POST  /fcgi/path k=v cookie=- len=5 "),
        "{text}"
    );
}

/// The echo app (already in `dir`) on `--http` with `/static` mapped to `root`.
fn static_gateway(dir: &Path, root: &Path) -> (Peer, SocketAddr) {
    let (a, sa) = addr();
    let map = format!("/static={}", root.display());
    let gw = gateway(
        dir,
        &["--http", &a, "--wsgi-file", "app.py", "--static-map", &map],
        Some(sa),
    );
    (gw, sa)
}

/// A static root that is a symlink switched to a new release (a common deployment) is
/// followed: the opened root is kept for at most a second.
#[test]
fn a_switched_root_symlink_is_followed() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    for (release, text) in [("r1", "one"), ("r2", "two")] {
        std::fs::create_dir_all(dir.path().join(release)).unwrap();
        std::fs::write(dir.path().join(release).join("v.txt"), text).unwrap();
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink(dir.path().join("r1"), &current).unwrap();
    let (gw, sa) = static_gateway(dir.path(), &current);
    wait_ready(&gw);
    let get = || {
        exchange(
            sa,
            b"GET /static/v.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    };
    assert_eq!(get().text(), "one", "{}", gw.log());
    // Switched the way deployment tools do it: a new link renamed over the old one.
    let next = dir.path().join("current.new");
    std::os::unix::fs::symlink(dir.path().join("r2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get().text(), "two", "{}", gw.log());
}

#[test]
fn static_maps() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let st = dir.path().join("static");
    std::fs::create_dir_all(st.join("sub")).unwrap();
    let css: Vec<u8> = b"body { color: #333; }\n".repeat(100);
    std::fs::write(st.join("style.css"), &css).unwrap();
    // Larger than one read block (256 KiB) and than the inline-read limit.
    let large: Vec<u8> = (0..700_001u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(st.join("large.bin"), &large).unwrap();
    std::fs::write(st.join("sub/index.html"), b"<h1>index</h1>").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", st.join("escape.txt")).unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"SECRET").unwrap();
    std::os::unix::fs::symlink("../../secret.txt", st.join("sub/up.txt")).unwrap();
    std::os::unix::fs::symlink("../style.css", st.join("sub/inside.css")).unwrap();
    let (gw, sa) = static_gateway(dir.path(), &st);
    wait_ready(&gw);
    let get = |path: &str, extra: &str| {
        exchange(
            sa,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };

    let r = get("/static/style.css", "");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.body, css);
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(
        r.header("content-length"),
        Some(css.len().to_string().as_str())
    );
    let etag = r.header("etag").expect("an ETag").to_owned();
    let last_modified = r.header("last-modified").expect("Last-Modified").to_owned();

    assert_eq!(
        get("/static/style.css", &format!("If-None-Match: {etag}\r\n")).status,
        304
    );
    let r = get(
        "/static/style.css",
        &format!("If-Modified-Since: {last_modified}\r\n"),
    );
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = get("/static/style.css", "Range: bytes=0-9\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &css[..10]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-9/{}", css.len()).as_str())
    );
    let r = get("/static/large.bin", "");
    assert_eq!((r.status, r.body.len()), (200, large.len()));
    assert!(r.body == large, "the large file arrived altered");
    let r = get("/static/large.bin", "Range: bytes=262000-600000\r\n");
    assert_eq!(r.status, 206);
    assert!(r.body == large[262_000..=600_000], "a range across blocks");
    let r = get("/static/style.css", "Range: bytes=-5\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &css[css.len() - 5..]));
    let r = get("/static/style.css", "Range: bytes=999999-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", css.len()).as_str())
    );

    let head = testkit::raw_exchange(
        sa,
        b"HEAD /static/style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    let r = get("/static/sub/", "");
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>index</h1>"));
    // Traversal: decoded `..` above the root is refused; inside, it just leaves the map.
    assert_eq!(
        get("/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "").status,
        400
    );
    let r = get("/static/../app.py", "");
    assert!(
        r.text().starts_with("GET  /app.py "),
        "went to the app: {}",
        r.text()
    );
    // A symlink out of the root, absolute or relative; one that stays inside is followed.
    assert_eq!(get("/static/escape.txt", "").status, 403);
    assert_eq!(get("/static/sub/up.txt", "").status, 403);
    let r = get("/static/sub/inside.css", "");
    assert_eq!((r.status, r.body.len()), (200, css.len()));
    // A missing file goes on to the app (uWSGI's behaviour).
    let r = get("/static/missing.png", "");
    assert!(
        r.text().starts_with("GET  /static/missing.png "),
        "{}",
        r.text()
    );
    let r = exchange(sa, b"POST /static/style.css HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
}

#[test]
fn limit_post_answers_413_before_reading() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &[
            "--http",
            &a,
            "--wsgi-file",
            "app.py",
            "--limit-post",
            "1000",
        ],
        Some(sa),
    );
    wait_ready(&gw);
    let r = exchange(sa, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 413);
    let r = exchange(
        sa,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(r.status, 200);
}

/// Sends `bytes` on a fresh connection and reads until the server closes (or 5 s).
fn probe(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    testkit::raw_exchange(addr, bytes, Duration::from_secs(5))
}

#[test]
fn bad_input_on_every_listener_disturbs_nothing_else() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (h, sh) = addr();
    let (u, su) = addr();
    let (f, sf) = addr();
    let (s, ss) = addr();
    let gw = gateway(
        dir.path(),
        &[
            "--http",
            &h,
            "--socket",
            &u,
            "--fastcgi-socket",
            &f,
            "--scgi-socket",
            &s,
            "--wsgi-file",
            "app.py",
            "--buffer-size",
            "4096",
            "--socket-timeout",
            "1",
            "--threads",
            "2",
        ],
        Some(sh),
    );
    wait_ready(&gw);
    let good_http = |why: &str| {
        let r = exchange(
            sh,
            b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200, "after {why}: {}", gw.log());
    };

    // HTTP request smuggling and framing probes: a clean 400 (or close), never a second
    // request read out of the body.
    for (why, raw) in [
        ("CL and TE", &b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"[..]),
        ("two CLs", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n"),
    ] {
        let out = String::from_utf8_lossy(&probe(sh, raw)).into_owned();
        assert!(!out.contains("/smuggled"), "{why}: {out}");
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 200"), "{why}: {out}");
        assert_eq!(out.matches("HTTP/1.1").count().min(1), out.matches("HTTP/1.1").count(), "{why}: one answer at most: {out}");
        good_http(why);
    }
    // A head far over the limit: 431 (or a close), not a crash.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(1 << 20)
    );
    let out = String::from_utf8_lossy(&probe(sh, big.as_bytes())).into_owned();
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    good_http("a huge head");

    // uwsgi: truncated packets, lengths past the end, a block over --buffer-size, a bogus
    // modifier, a peer that never finishes its head: each connection is closed with no
    // reply, and the next request is served.
    let mut over = vec![0u8, 0x00, 0x20, 0]; // datasize 8192 > 4096
    over.extend(vec![b'x'; 8192]);
    for (why, raw) in [
        ("truncated", &[0u8, 10, 0, 0, 3, 0][..]),
        (
            "key past the end",
            &[0u8, 6, 0, 0, 40, 0, b'A', b'B', b'C', b'D'],
        ),
        ("over --buffer-size", &over),
        ("unknown modifier", &[42u8, 0, 0, 0]),
    ] {
        assert!(probe(su, raw).is_empty(), "uwsgi {why}: no reply");
    }
    let slow = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(su).unwrap();
    use std::io::{Read, Write};
    s.write_all(&[0u8, 30, 0]).unwrap(); // three bytes of a header, then nothing
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "slowloris: closed");
    assert!(
        slow.elapsed() < Duration::from_secs(4),
        "closed after --socket-timeout"
    );
    let mut ok = Vec::new();
    uwsgi_proto::encode_packet(
        uwsgi_proto::Modifier1::WSGI,
        uwsgi_proto::Modifier2::ZERO,
        &[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/u"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SERVER_NAME", "x"),
            ("SERVER_PORT", "80"),
        ],
        65535,
        &mut ok,
    )
    .unwrap();
    let out = String::from_utf8_lossy(&probe(su, &ok)).into_owned();
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("GET  /u "),
        "{out}"
    );

    // HTTP: a head that never ends, and a kept-alive connection that never sends its next
    // request, are closed after --socket-timeout (1 s here), while requests that keep
    // coming on another connection are served past it.
    let slow = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(sh).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "no answer to half a head"
    );
    let took = slow.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a half head is cut after --socket-timeout, took {took:?}"
    );
    let mut idle = std::net::TcpStream::connect(sh).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut busy = std::net::TcpStream::connect(sh).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n";
    let answer = |s: &mut std::net::TcpStream| {
        s.write_all(ask).unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        // The whole response (its Content-Length), so nothing is left unread.
        let whole = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            text.find("\r\n\r\n").is_some_and(|end| {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok());
                length.is_some_and(|n| got.len() >= end + 4 + n)
            })
        };
        while !whole(&got) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    };
    answer(&mut idle);
    let since = std::time::Instant::now();
    while since.elapsed() < Duration::from_millis(2500) {
        answer(&mut busy); // one request every 100 ms: never idle for the timeout
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut buf = [0u8; 64];
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "the idle connection is closed"
    );
    answer(&mut busy);

    // FastCGI: a bogus version closes that connection only.
    assert!(probe(sf, &[9u8, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_empty());
    // SCGI: a bad netstring, and a header without SCGI=1.
    assert!(probe(ss, b"12x:garbage").is_empty());
    assert!(probe(ss, b"20:CONTENT_LENGTH\x000\x00A\x00b\x00,").is_empty());
    good_http("every protocol's probes");
    assert!(
        gw.log().contains("over --buffer-size 4096"),
        "the log names the limit: {}",
        gw.log()
    );
}

#[test]
fn django_tutorial_command_lines() {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wsgi-host/tests/apps/djsite");
    let site = site.canonicalize().unwrap();
    let dir = testkit::temp_dir();
    let statics = dir.path().join("static");
    std::fs::create_dir_all(&statics).unwrap();
    std::fs::write(statics.join("site.css"), "h1 { color: teal }").unwrap();
    // gateway --http :8000 --module mysite.wsgi (run from the project directory)
    let (a, sa) = addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--http", &a, "--module", "mysite.wsgi"])
        .current_dir(&site);
    let mut gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("a.log")));
    gw.wait_tcp(sa, Duration::from_secs(20));
    wait_ready(&gw);
    let r = exchange(
        sa,
        b"GET /items/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(r.text().contains("<h1>Items ("), "{}", r.text());
    drop(gw);
    // gateway --http :9005 --chdir DIR --wsgi-file PROJ/wsgi.py --master --process 4 --threads 2 --static-map /static=DIR
    let (b, sb) = addr();
    let st = format!("/static={}", statics.display());
    let gw = gateway(
        dir.path(),
        &[
            "--http",
            &b,
            "--chdir",
            site.to_str().unwrap(),
            "--wsgi-file",
            "mysite/wsgi.py",
            "--master",
            "--process",
            "4",
            "--threads",
            "2",
            "--static-map",
            &st,
        ],
        Some(sb),
    );
    wait_ready(&gw);
    let r = exchange(
        sb,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(
        r.text().starts_with("Django says hello to 127.0.0.1"),
        "{}",
        r.text()
    );
    let r = exchange(
        sb,
        b"GET /static/site.css HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "h1 { color: teal }"));
    assert!(
        gw.log()
            .contains("starting 4 worker(s) with 2 thread(s) each"),
        "a master with 4 workers: {}",
        gw.log()
    );
}

#[test]
fn a_slow_upload_does_not_hold_the_only_python_thread() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (a, sa) = addr();
    let gw = gateway(
        dir.path(),
        &["--http", &a, "--wsgi-file", "app.py", "--threads", "1"],
        Some(sa),
    );
    wait_ready(&gw);
    use std::io::Write;
    // A client announces 100 bytes, sends 10, and stalls.
    let mut slow = std::net::TcpStream::connect(sa).unwrap();
    slow.write_all(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let r = exchange(
        sa,
        b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "served while the upload stalls"
    );
    // The slow client finishes: its request is answered with the whole body.
    slow.write_all(&[b'x'; 90]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = std::io::Read::read(&mut slow, &mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("POST  /slow  cookie=- len=100 "), "{text}");
}

#[test]
fn logto_and_disable_logging() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    for (disable, expect_access) in [(false, true), (true, false)] {
        let log = dir.path().join(format!("log-{disable}.txt"));
        let (a, sa) = addr();
        let mut args = vec![
            "--http",
            &a,
            "--wsgi-file",
            "app.py",
            "--logto",
            log.to_str().unwrap(),
        ];
        if disable {
            args.push("--disable-logging");
        }
        let gw = gateway(dir.path(), &args, Some(sa));
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("WSGI app ready")
        {
            assert!(start.elapsed() < Duration::from_secs(20), "{}", gw.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = exchange(
            sa,
            b"GET /logged-path HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(200));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.contains(&format!(
                "GET /logged-path => generated {} bytes in ",
                r.body.len()
            )),
            expect_access,
            "disable={disable}: {text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "no terminal colours in a log file"
        );
    }
}

#[test]
fn logformat_and_req_logger_write_a_line_per_request_from_an_ini() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("app.py"), ECHO_APP).unwrap();
    let (h, sh) = addr();
    let (u, su) = addr();
    let log = d.join("requests.log");
    // uWSGI's own syntax for the format, in an ini as uWSGI users write it; two workers
    // under a master write to the same file.
    std::fs::write(
        d.join("app.ini"),
        format!(
            "[uwsgi]\nhttp-socket = {h}\nsocket = {u}\nwsgi-file = app.py\nmaster = true\nprocesses = 2\n\
             logformat = %(addr) \"%(method) %(uri) %(proto)\" %(status) %(size) \"%(uagent)\" w%(wid) %(msecs)ms\n\
             req-logger = file:{}\n",
            log.display()
        ),
    )
    .unwrap();
    let gw = gateway(d, &["--ini", "app.ini"], Some(sh));
    let r = exchange(
        sh,
        b"GET /one?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/2\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let one = r.body.len();
    let r = exchange(
        sh,
        b"HEAD /two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let mut packet = Vec::new();
    uwsgi_proto::encode_packet(
        uwsgi_proto::Modifier1::WSGI,
        uwsgi_proto::Modifier2::ZERO,
        &[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/three"),
            ("PATH_INFO", "/three"),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
            ("SERVER_NAME", "x"),
            ("SERVER_PORT", "80"),
            ("REMOTE_ADDR", "192.0.2.9"),
            ("HTTP_USER_AGENT", "nginx-said"),
        ],
        65535,
        &mut packet,
    )
    .unwrap();
    let out = probe(su, &packet);
    let three = out.len() - out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    let started = std::time::Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 || started.elapsed() > Duration::from_secs(5) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:#?}\n{}", gw.log());
    let worker = |l: &str| {
        let w = l.split(" w").last().unwrap().split(' ').next().unwrap();
        assert!(w == "1" || w == "2", "a worker id: {l}");
    };
    assert!(
        lines[0].starts_with(&format!(
            "127.0.0.1 \"GET /one?x=1 HTTP/1.1\" 200 {one} \"probe/2\" w"
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("127.0.0.1 \"HEAD /two HTTP/1.1\" 200 0 \"-\" w"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!(
            "192.0.2.9 \"GET /three HTTP/1.0\" 200 {three} \"nginx-said\" w"
        )),
        "{}",
        lines[2]
    );
    for l in &lines {
        worker(l);
        assert!(l.ends_with("ms"), "{l}");
    }
    // Not in the server's log as well.
    assert!(!gw.log().contains("GET /one"), "{}", gw.log());
}

#[test]
fn an_unknown_logformat_variable_is_a_clear_error() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), ECHO_APP).unwrap();
    let (h, _) = addr();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--http-socket",
            &h,
            "--wsgi-file",
            "app.py",
            "--logformat",
            "%(addr) %(vsz)",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--logformat: unknown \"vsz\" variable"),
        "{err}"
    );
}

/// `wsgi.file_wrapper` on a real file behind nginx's `uwsgi_pass` (unix socket and TCP):
/// the file goes out with `sendfile`, whole, byte for byte, with the app's headers.
#[test]
fn file_wrapper_through_nginx_uwsgi_pass() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    let (data, gw, t) = file_wrapper_app(d, 5_000_000, "--socket");
    for upstream in [format!("unix:{}", d.join("app.sock").display()), t] {
        let (_nginx, front) = nginx_uwsgi(d, &upstream);
        let r = exchange(
            front,
            b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{upstream}: {}", gw.log());
        assert_eq!(r.header("content-length"), Some("5000000"));
        assert!(r.body == data, "{upstream}: the file arrives whole");
    }
}

/// `wsgi.file_wrapper` on a real file behind nginx's `fastcgi_pass` (unix socket and TCP,
/// connections kept alive): the file goes out in STDOUT records whose content is sent with
/// `sendfile`; a size that is not a multiple of 8 ends with a padded record; the
/// connection stays usable for the next request.
#[test]
fn file_wrapper_through_nginx_fastcgi_pass() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    let (data, gw, t) = file_wrapper_app(d, 3_000_003, "--fastcgi-socket");
    let unix = format!("unix:{}", d.join("app.sock").display());
    let (_nginx, front) = nginx_front(
        d,
        &format!(
            " location /u/ {{ include /etc/nginx/fastcgi_params; fastcgi_pass {unix}; fastcgi_keep_conn on; }}\n\
             location /t/ {{ include /etc/nginx/fastcgi_params; fastcgi_pass {t}; fastcgi_keep_conn on; }}\n"
        ),
    );
    for prefix in ["u", "t"] {
        for _ in 0..2 {
            let r = exchange(
                front,
                format!("GET /{prefix}/big.bin HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            assert_eq!(r.status, 200, "{prefix}: {}", gw.log());
            assert_eq!(r.header("content-length"), Some("3000003"), "{prefix}");
            assert!(r.body == data, "{prefix}: the file arrives whole");
            let r = exchange(
                front,
                format!("GET /{prefix}/x?small HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "small answer"),
                "{prefix}"
            );
        }
    }
}

/// Writes a `size`-byte `big.bin` and an app answering it through `wsgi.file_wrapper`
/// (and `small answer` for the query `small`) into `d`, and serves it on `flag` over
/// `app.sock` and a TCP address; returns the file's bytes, the gateway and the address.
fn file_wrapper_app(d: &Path, size: u32, flag: &str) -> (Vec<u8>, Peer, String) {
    let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.join("big.bin"), &data).unwrap();
    std::fs::write(
        d.join("app.py"),
        r#"
import os
def application(environ, start_response):
    path = os.path.join(os.path.dirname(__file__), "big.bin")
    if environ.get("QUERY_STRING") == "small":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"small answer"]
    f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(os.path.getsize(path)))])
    return environ["wsgi.file_wrapper"](f, 65536)
"#,
    )
    .unwrap();
    let (t, st) = addr();
    let gw = gateway(
        d,
        &[flag, "app.sock", flag, &t, "--wsgi-file", "app.py"],
        Some(st),
    );
    wait_ready(&gw);
    (data, gw, t)
}
