//! `--nginx-conf`: one site config run by real nginx and by the gateway, in front of the
//! same real uWSGI backend; the same requests get the same answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{HttpResponse, Peer};

const APP: &str = r#"
import hashlib
def application(environ, start_response):
    data = environ["wsgi.input"].read()
    keys = ["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
            "HTTP_HOST", "CONTENT_LENGTH", "CONTENT_TYPE", "REMOTE_ADDR", "X_SITE", "DOCUMENT_ROOT",
            "X_ROOT", "HTTP_PROXY", "HTTP_X_TAG", "HTTP_X_PROBE", "HTTPS", "X_EMPTY", "X_FULL"]
    lines = ["%s=%s" % (k, environ.get(k, "-")) for k in keys]
    lines.append("body=%d:%s" % (len(data), hashlib.sha256(data).hexdigest()[:16]))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
    return ["\n".join(lines).encode("latin-1")]
"#;

fn site(dir: &Path, listen: SocketAddr, upstream: SocketAddr, log: &str) -> String {
    let d = dir.display();
    format!(
        r#"
log_format probe '$remote_addr|$request|$status|$body_bytes_sent|$http_user_agent|'
                 '$http_x_probe|$uri|$args|$request_method|$server_protocol|$host|${{request_uri}}|'
                 '$upstream_addr';
upstream django {{ server {upstream}; }}
server {{
    listen {listen};
    server_name example.com www.example.com;
    access_log {d}/{log}-probe.log probe;
    charset utf-8;
    default_type application/octet-stream;
    client_max_body_size 2M;
    root {d}/www;
    location = /health {{ access_log off; return 200 "ok"; }}
    location /static/ {{ alias {d}/static/; access_log {d}/{log}-static.log; }}
    location /media {{ alias {d}/media; }}
    location ~* \.(png|gif)$ {{ root {d}/images; }}
    location /docs/ {{ try_files $uri $uri/ =404; }}
    location /old {{ return 301 http://$host/new$is_args$args; }}
    location / {{
        uwsgi_pass django;
        include uwsgi_params;
        uwsgi_param X_SITE tutorial-$host;
        uwsgi_param X_ROOT $document_root/app;
        uwsgi_param HTTP_PROXY "";
        uwsgi_param HTTP_X_TAG fixed-$host;
        uwsgi_param X_EMPTY $http_x_none if_not_empty;
        uwsgi_param X_FULL $host if_not_empty;
    }}
}}
server {{
    listen {listen};
    server_name other.example;
    return 404;
}}
"#
    )
}

fn tree(dir: &Path) {
    for (path, text) in [
        ("www/index.html", "<h1>home</h1>"),
        ("static/site.css", "body { color: teal }"),
        ("static/js/app.js", "console.log(1)"),
        ("media/up.txt", "uploaded"),
        ("images/logo.png", "PNGDATA"),
        ("www/docs/index.html", "<p>docs</p>"),
        ("www/docs/a.txt", "docs a"),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    std::fs::write(dir.join("app.py"), APP).unwrap();
    std::fs::copy("/etc/nginx/uwsgi_params", dir.join("uwsgi_params")).unwrap_or_else(|_| {
        std::fs::write(
            dir.join("uwsgi_params"),
            gateway::config::nginx::stock_file("uwsgi_params").unwrap(),
        )
        .unwrap();
        0
    });
}

fn exchange(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    HttpResponse::parse(&testkit::raw_exchange(addr, raw, Duration::from_secs(20)))
}

#[test]
fn the_same_site_answers_the_same_under_nginx_and_the_gateway() {
    testkit::require("nginx");
    let uwsgi = testkit::require("uwsgi");
    let dir = testkit::temp_dir();
    let d = dir.path();
    tree(d);
    let up = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let mut cmd = Command::new(uwsgi);
    cmd.args([
        "--socket",
        &up.to_string(),
        "--wsgi-file",
        "app.py",
        "--disable-logging",
    ])
    .current_dir(d);
    let mut backend = Peer::spawn("uwsgi", cmd, Some(&d.join("uwsgi.log")));
    backend.wait_tcp(up, Duration::from_secs(20));

    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let ndir = d.join("nginx");
    std::fs::create_dir(&ndir).unwrap();
    std::fs::copy(d.join("uwsgi_params"), ndir.join("uwsgi_params")).unwrap();
    let _nginx = testkit::start_nginx(
        &ndir,
        &format!(
            "include /etc/nginx/mime.types;\n{}",
            site(d, nginx_addr, up, "nginx")
        ),
        nginx_addr,
    );

    let gw_addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    std::fs::write(d.join("site.conf"), site(d, gw_addr, up, "gateway")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("gateway.log")));
    gw.wait_tcp(gw_addr, Duration::from_secs(20));

    let body_1m: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let body_3m = vec![b'x'; 3 << 20];
    let post = |path: &str, body: &[u8]| {
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: probe/1.0 (t)\r\nX-Probe: a b\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("exact return", get("/health", "example.com")),
        ("alias", get("/static/site.css", "example.com")),
        ("alias, nested", get("/static/js/app.js", "www.example.com")),
        ("alias dir without index", get("/static/", "example.com")),
        ("alias, no slash", get("/media/up.txt", "example.com")),
        ("regex over prefix", get("/static/x/logo.png", "example.com")),
        ("regex", get("/pics/logo.PNG", "example.com")),
        ("root index", get("/index.html", "example.com")),
        ("try_files dir", get("/docs/", "example.com")),
        ("try_files file", get("/docs/a.txt", "example.com")),
        ("try_files =404", get("/docs/missing.txt", "example.com")),
        ("return with variables", get("/old/page?x=1&y=2", "Example.com:81")),
        ("pass", get("/app/caf%C3%A9?q=1&r=%20", "example.com")),
        ("pass, second server name", get("/app/x", "www.example.com")),
        ("pass, encoded slash kept raw in REQUEST_URI", get("/app/a%2Fb", "example.com")),
        ("pass, dot segments", get("/app/./x/../y", "example.com")),
        (
            "pass, params in place of the client's headers",
            b"GET /app/h HTTP/1.1\r\nHost: example.com\r\nProxy: http://evil\r\nX-Tag: client\r\nX-Probe: one\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("above the root", get("/media/../../etc/passwd", "example.com")),
        ("other server", get("/", "other.example")),
        ("unknown host: first server", get("/health", "nobody.example")),
        ("post 1.5 MB", post("/form", &body_1m)),
        ("post over client_max_body_size", post("/form", &body_3m)),
        (
            "chunked post",
            b"POST /chunked HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "head",
            b"HEAD /static/site.css HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ];
    for (what, raw) in &cases {
        let n = exchange(nginx_addr, raw);
        let g = exchange(gw_addr, raw);
        assert_eq!(g.status, n.status, "{what}: status\n{}", gw.log());
        for h in ["content-type", "location", "x-app"] {
            let strip_port = |v: Option<&str>| {
                v.map(|v| {
                    v.replace(&nginx_addr.port().to_string(), "P")
                        .replace(&gw_addr.port().to_string(), "P")
                })
            };
            assert_eq!(
                strip_port(g.header(h)),
                strip_port(n.header(h)),
                "{what}: {h}"
            );
        }
        if n.status < 300 {
            assert_eq!(g.text(), n.text(), "{what}: body");
        }
    }
    assert!(
        !gw.log().contains("ERROR"),
        "no errors logged: {}",
        gw.log()
    );
    // The access logs: the same lines (error pages' sizes and times aside), the same
    // requests in each file (`access_log off` for /health, /static/ in its own file).
    let lines = |name: &str, want: usize| {
        let path = d.join(name);
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= want || started.elapsed() > Duration::from_secs(5) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let masked = |line: &str| -> String {
        let line = line
            .replace(&nginx_addr.port().to_string(), "P")
            .replace(&gw_addr.port().to_string(), "P");
        let mut f: Vec<String> = line.split('|').map(str::to_owned).collect();
        if f[2].parse::<u16>().unwrap_or(0) >= 300 {
            f[3] = "N".into(); // each server's own error page
        }
        f.join("|")
    };
    // Not in the probe log: /health twice (off), four /static/ requests (their own
    // file), the other server's.
    let probe = cases.len() - 7;
    let (n, g) = (
        lines("nginx-probe.log", probe),
        lines("gateway-probe.log", probe),
    );
    assert_eq!(n.len(), probe, "{n:#?}");
    let mut n: Vec<String> = n.iter().map(|l| masked(l)).collect();
    let mut g: Vec<String> = g.iter().map(|l| masked(l)).collect();
    for (n, g) in n.iter_mut().zip(&mut g) {
        let nf: Vec<String> = n.split('|').map(str::to_owned).collect();
        let gf: Vec<String> = g.split('|').map(str::to_owned).collect();
        // nginx counts the chunk framing of a response it chunks (a backend's answer
        // without Content-Length, in one chunk here: 12 bytes); the gateway counts the body.
        let passed = nf[6].starts_with("/app/")
            || ["/form", "/chunked", "/index.html"].contains(&nf[6].as_str());
        if let (Ok(nb), Ok(gb)) = (nf[3].parse::<u64>(), gf[3].parse::<u64>()) {
            if passed && nb == gb + 12 {
                *n = n.replacen(&format!("|{nb}|"), &format!("|{gb}|"), 1);
            }
        }
        // A request nginx refuses at its request line: it reads no header.
        if nf[2] == "400" {
            *n = nf[..3].join("|");
            *g = gf[..3].join("|");
        }
    }
    assert_eq!(g, n, "the probe format's lines");
    let combined = |l: &String| {
        // Without the time: `127.0.0.1 - - [29/Nov/2026:19:00:00 +0000] "GET ...`.
        let (a, rest) = l.split_once(" [").unwrap_or_else(|| panic!("{l}"));
        let (time, b) = rest.split_once("] ").unwrap();
        assert_eq!(time.len(), 26, "time_local: {time}");
        let mut f: Vec<String> = b.split('"').map(str::to_owned).collect();
        let status_bytes: Vec<&str> = f[2].split_whitespace().collect();
        if status_bytes[0].parse::<u16>().unwrap_or(0) >= 300 {
            f[2] = format!(" {} N ", status_bytes[0]);
        }
        format!("{a} {}", f.join("\""))
    };
    let (n, g) = (lines("nginx-static.log", 4), lines("gateway-static.log", 4));
    assert_eq!(n.len(), 4, "{n:#?}");
    let n: Vec<String> = n.iter().map(combined).collect();
    let g: Vec<String> = g.iter().map(combined).collect();
    assert_eq!(g, n, "combined lines");
}

/// Real nginx (one worker, under `d/nginx`, with copies of the files `copy` names from
/// `d`) and the gateway (`--nginx-conf d/site.conf`) running the site `site` writes for a
/// listen address: their addresses and processes.
fn nginx_and_gateway(
    d: &Path,
    copy: &[&str],
    site: impl Fn(SocketAddr) -> String,
) -> (SocketAddr, Peer, SocketAddr, Peer) {
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let ndir = d.join("nginx");
    std::fs::create_dir(&ndir).unwrap();
    for f in copy {
        std::fs::copy(d.join(f), ndir.join(f)).unwrap();
    }
    let nginx = testkit::start_nginx(&ndir, &site(nginx_addr), nginx_addr);
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    std::fs::write(d.join("site.conf"), site(gw_addr)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("gateway.log")));
    gw.wait_tcp(gw_addr, Duration::from_secs(20));
    (nginx_addr, nginx, gw_addr, gw)
}

/// Sends a POST head declaring `len` bytes, then all of them in 64 KiB writes without
/// reading, then reads the answer: the status, or the first write or read that failed.
fn upload_all_then_read(addr: SocketAddr, path: &str, len: usize) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes())
        .map_err(|e| format!("head: {e}"))?;
    let block = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = block.len().min(len - sent);
        s.write_all(&block[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += n;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    Ok(HttpResponse::parse(&raw).status)
}

#[test]
fn a_refused_upload_is_read_and_dropped_so_its_client_gets_the_413() {
    // nginx's lingering close: an upload over client_max_body_size is answered 413 before
    // its body is read, and the connection closes; the rest of the body is then read and
    // dropped, so a client that sends everything before it reads (as most do) gets its
    // 413 instead of a broken pipe or a reset.
    testkit::require("nginx");
    let dir = testkit::temp_dir();
    let d = dir.path();
    let site = |listen: SocketAddr| {
        format!(
            "server {{\n    listen {listen};\n    client_max_body_size 1m;\n    \
             location / {{ return 200 \"ok\"; }}\n}}\n"
        )
    };
    let (nginx_addr, _nginx, gw_addr, _gw) = nginx_and_gateway(d, &[], site);
    // 32 MiB: far more than the sockets' buffers hold.
    for (who, addr) in [("nginx", nginx_addr), ("gateway", gw_addr)] {
        for _ in 0..2 {
            assert_eq!(
                upload_all_then_read(addr, "/upload", 32 << 20),
                Ok(413),
                "{who}"
            );
        }
    }
    // And the next client is served as usual.
    let r = exchange(
        gw_addr,
        b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));
}

#[test]
fn unsupported_directives_are_errors_with_file_and_line() {
    let dir = testkit::temp_dir();
    std::fs::write(
        dir.path().join("site.conf"),
        "server {\n    listen 127.0.0.1:1;\n    sendfile on;\n    location / {\n        grpc_pass grpc://127.0.0.1:2;\n    }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--nginx-conf", "site.conf"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"grpc_pass\" is not supported") && text.contains("site.conf:5"),
        "{text}"
    );
}

const FLUP: &str = r#"
import hashlib, sys
def app(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(n)
    keys = ["REQUEST_METHOD", "REQUEST_URI", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
            "DOCUMENT_URI", "SERVER_NAME", "CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_X_TEST", "APP_MODE"]
    lines = ["%s=%s" % (k, environ.get(k, "-")) for k in keys]
    lines.append("body=%d:%s" % (len(data), hashlib.sha256(data).hexdigest()[:16]))
    start_response("202 Accepted", [("Content-Type", "text/plain"), ("X-Proto", sys.argv[1])])
    return ["\n".join(lines).encode("latin-1")]
if sys.argv[1] == "fcgi":
    from flup.server.fcgi import WSGIServer
else:
    from flup.server.scgi import WSGIServer
WSGIServer(app, bindAddress=("127.0.0.1", int(sys.argv[2]))).run()
"#;

#[test]
fn fastcgi_pass_and_scgi_pass_to_flup_answer_as_under_nginx() {
    testkit::require("nginx");
    let python = testkit::require("python3");
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("flup_app.py"), FLUP).unwrap();
    let mut backends = Vec::new();
    let mut ports = Vec::new();
    for proto in ["fcgi", "scgi"] {
        let port = testkit::free_port();
        let mut cmd = Command::new(&python);
        cmd.args(["flup_app.py", proto, &port.to_string()])
            .current_dir(d);
        let mut p = Peer::spawn(proto, cmd, Some(&d.join(format!("{proto}.log"))));
        p.wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        );
        backends.push(p);
        ports.push(port);
    }
    for f in ["fastcgi_params", "scgi_params"] {
        std::fs::write(d.join(f), gateway::config::nginx::stock_file(f).unwrap()).unwrap();
    }
    let conf = |listen: SocketAddr| {
        format!(
            "server {{\n  listen {listen};\n  server_name cgi.example;\n  client_max_body_size 8m;\n\
             \x20 location /fcgi/ {{ fastcgi_pass 127.0.0.1:{}; include fastcgi_params; fastcgi_param APP_MODE fast-$request_method; }}\n\
             \x20 location /scgi/ {{ scgi_pass 127.0.0.1:{}; include scgi_params; scgi_param APP_MODE simple; }}\n}}\n",
            ports[0], ports[1]
        )
    };
    let (nginx_addr, _nginx, gw_addr, gw) =
        nginx_and_gateway(d, &["fastcgi_params", "scgi_params"], conf);

    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    for prefix in ["/fcgi", "/scgi"] {
        let mut requests = vec![
            format!("GET {prefix}/a/b?x=1&y=%20 HTTP/1.1\r\nHost: cgi.example\r\nX-Test: yes\r\nConnection: close\r\n\r\n").into_bytes(),
        ];
        for body in [&b"small body"[..], &big[..]] {
            let mut r = format!(
                "POST {prefix}/up HTTP/1.1\r\nHost: cgi.example\r\nContent-Type: application/x-test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            requests.push(r);
        }
        for raw in &requests {
            let n = exchange(nginx_addr, raw);
            let g = exchange(gw_addr, raw);
            let what = String::from_utf8_lossy(&raw[..40]).into_owned();
            assert_eq!(
                (g.status, g.header("x-proto")),
                (n.status, n.header("x-proto")),
                "{what}\n{}",
                gw.log()
            );
            assert_eq!(g.header("content-type"), n.header("content-type"), "{what}");
            assert_eq!(g.text(), n.text(), "{what}");
        }
    }
}

const HTTP_BACKEND: &str = r#"
import hashlib
def application(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(n)
    keys = ["REQUEST_METHOD", "RAW_URI", "HTTP_HOST", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_FOR",
            "HTTP_X_FORWARDED_PROTO", "HTTP_X_CUSTOM", "HTTP_KEEP_ALIVE", "CONTENT_TYPE",
            "HTTP_X_FIXED", "HTTP_USER_AGENT"]
    lines = ["%s=%s" % (k, environ.get(k, "-")) for k in keys]
    lines.append("body=%d:%s" % (len(data), hashlib.sha256(data).hexdigest()[:16]))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Backend", "gunicorn")])
    return ["\n".join(lines).encode("latin-1")]
"#;

#[test]
fn proxy_pass_to_http_backends_sets_the_headers_nginx_users_set() {
    testkit::require("nginx");
    let gunicorn = testkit::require("gunicorn");
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), HTTP_BACKEND).unwrap();
    let mut backends = Vec::new();
    let mut addrs = Vec::new();
    for n in 0..2 {
        let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
        let mut cmd = Command::new(&gunicorn);
        cmd.args(["-b", &addr.to_string(), "-w", "1", "backend:application"])
            .current_dir(d);
        let mut p = Peer::spawn("gunicorn", cmd, Some(&d.join(format!("gunicorn{n}.log"))));
        p.wait_tcp(addr, Duration::from_secs(30));
        backends.push(p);
        addrs.push(addr);
    }
    let conf = |listen: SocketAddr| {
        format!(
            "upstream api {{ server {}; server {}; }}\n\
             server {{\n  listen {listen};\n  server_name proxy.example;\n\
             \x20 location /api/ {{\n    proxy_pass http://api/v1/;\n    proxy_set_header Host $host;\n\
             \x20   proxy_set_header X-Real-IP $remote_addr;\n    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20   proxy_set_header X-Forwarded-Proto $scheme;\n    proxy_set_header X-Custom \"$request_method $uri\";\n\
             \x20   proxy_set_header X-Fixed \"a fixed value\";\n    proxy_set_header User-Agent \"\";\n  }}\n\
             \x20 location / {{ proxy_pass http://{}; proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr; \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }}\n}}\n",
            addrs[0], addrs[1], addrs[0]
        )
    };
    let (nginx_addr, _nginx, gw_addr, gw) = nginx_and_gateway(d, &[], conf);

    let body = vec![b'q'; 300_000];
    let mut post = b"POST /api/items?id=7 HTTP/1.1\r\nHost: proxy.example\r\nContent-Type: application/json\r\nContent-Length: 300000\r\nConnection: close\r\n\r\n".to_vec();
    post.extend_from_slice(&body);
    let requests: Vec<Vec<u8>> = vec![
        b"GET /api/items/3?x=1 HTTP/1.1\r\nHost: proxy.example:8080\r\nX-Forwarded-For: 10.0.0.9\r\nUser-Agent: probe/1\r\nKeep-Alive: timeout=5\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /plain/path?y=2 HTTP/1.1\r\nHost: proxy.example\r\nConnection: close\r\n\r\n".to_vec(),
        post,
    ];
    for raw in &requests {
        let n = exchange(nginx_addr, raw);
        let g = exchange(gw_addr, raw);
        let what = String::from_utf8_lossy(&raw[..30]).into_owned();
        assert_eq!(
            (g.status, g.header("x-backend")),
            (n.status, n.header("x-backend")),
            "{what}\n{}",
            gw.log()
        );
        assert_eq!(g.text(), n.text(), "{what}");
    }
    // Both backends get requests (round robin), and one going away costs no GET.
    let mut seen_errors = 0;
    drop(backends.remove(1));
    for _ in 0..6 {
        let g = exchange(
            gw_addr,
            b"GET /api/x HTTP/1.1\r\nHost: proxy.example\r\nConnection: close\r\n\r\n",
        );
        if g.status != 200 {
            seen_errors += 1;
        }
    }
    assert_eq!(seen_errors, 0, "{}", gw.log());
}

#[test]
fn listen_ssl_serves_http2_and_http1_with_the_certificate_sni_asks_for() {
    testkit::require("curl");
    let dir = testkit::temp_dir();
    let d = dir.path();
    for name in ["secure", "other"] {
        let c = rcgen::generate_simple_self_signed(vec![format!("{name}.example")]).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), c.cert.pem()).unwrap();
        std::fs::write(d.join(format!("{name}.key")), c.signing_key.serialize_pem()).unwrap();
    }
    let port = testkit::free_port();
    std::fs::write(
        d.join("tls.conf"),
        format!(
            "server {{\n  listen 127.0.0.1:{port} ssl;\n  server_name secure.example;\n  ssl_certificate secure.pem;\n  ssl_certificate_key secure.key;\n\
             \x20 location / {{ return 200 \"secure $scheme $server_protocol $https\"; }}\n}}\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  server_name other.example;\n  ssl_certificate other.pem;\n  ssl_certificate_key other.key;\n\
             \x20 location / {{ return 200 \"other\"; }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "tls.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("gateway.log")));
    gw.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    let curl = |host: &str, ca: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "--cacert", ca, "--resolve"])
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(["-w", " %{http_version}"])
            .args(extra)
            .arg(format!("https://{host}:{port}/"))
            .current_dir(d)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        curl("secure.example", "secure.pem", &["--http2"]),
        (Some(0), "secure https HTTP/2.0 on 2".to_owned()),
        "{}",
        gw.log()
    );
    assert_eq!(
        curl("secure.example", "secure.pem", &["--http1.1"]),
        (Some(0), "secure https HTTP/1.1 on 1.1".to_owned())
    );
    // SNI picks the other server's certificate.
    assert_eq!(
        curl("other.example", "other.pem", &[]),
        (Some(0), "other 2".to_owned())
    );
    // ... so a client expecting the first certificate for that name refuses it.
    assert_eq!(curl("other.example", "secure.pem", &[]).0, Some(60));
    // Plain HTTP on the TLS port is refused, and the server goes on.
    let raw = testkit::raw_exchange(
        SocketAddr::from(([127, 0, 0, 1], port)),
        b"GET / HTTP/1.1\r\nHost: secure.example\r\n\r\n",
        Duration::from_secs(15),
    );
    assert!(!raw.starts_with(b"HTTP/1.1 200"));
    assert_eq!(curl("secure.example", "secure.pem", &[]).0, Some(0));
}

/// Sockets on this machine with `port` at either end, but the listener (from
/// /proc/net/tcp: a kept connection shows as its two ends, closed ones as TIME_WAIT).
fn sockets_on(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].ends_with(&hex) || f[2].ends_with(&hex)) && f[3] != "0A"
        })
        .count()
}

#[test]
fn fastcgi_keep_conn_with_keepalive_reuses_connections_to_flup() {
    let python = testkit::require("python3");
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("flup_app.py"), FLUP).unwrap();
    let port = testkit::free_port();
    let flup = || {
        let mut cmd = Command::new(&python);
        cmd.args(["flup_app.py", "fcgi", &port.to_string()])
            .current_dir(d);
        let mut p = Peer::spawn("fcgi", cmd, Some(&d.join("fcgi.log")));
        p.wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        );
        p
    };
    let backend = flup();
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    std::fs::write(
        d.join("site.conf"),
        format!(
            "upstream fc {{ server 127.0.0.1:{port}; keepalive 2; }}\n\
             server {{\n  listen {gw_addr};\n\
             \x20 location /k/ {{ fastcgi_pass fc; include fastcgi_params; fastcgi_keep_conn on; }}\n\
             \x20 location /n/ {{ fastcgi_pass fc; include fastcgi_params; }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("gateway.log")));
    gw.wait_tcp(gw_addr, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200)); // the wait's probe connection gone
    let before = sockets_on(port);
    let ask = |path: &str, body: &str| {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = exchange(gw_addr, raw.as_bytes());
        assert_eq!(r.status, 202, "{}", gw.log());
        assert!(
            r.text().contains(&format!("body={}:", body.len())),
            "{}",
            r.text()
        );
        r
    };
    for n in 0..6 {
        ask(&format!("/k/{n}"), &"x".repeat(n * 1000));
        // The client can have the whole body before the gateway has read the record that
        // ends the request and put the connection back in the pool: let it get there
        // (a loaded machine made the next request open a second connection).
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = sockets_on(port) - before;
    assert_eq!(kept, 2, "one connection (two ends) for six requests");
    for n in 0..6 {
        ask(&format!("/n/{n}"), "y");
    }
    let closed = sockets_on(port) - before;
    assert!(
        closed >= 2 + 6,
        "one connection per request without keep_conn: {closed}"
    );

    // The backend restarts: the kept connection is dead, the next request gets a new one.
    drop(backend); // killed and reaped
    let _backend = flup();
    for n in 0..3 {
        ask(&format!("/k/after-{n}"), "z");
    }
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

/// A whole nginx.conf: the main context's `worker_processes`, `worker_cpu_affinity auto`,
/// `pid` and `error_log` are the gateway's processes, their binding to cores, pid file and
/// log; `events {}` is accepted.
#[test]
fn a_whole_nginx_conf_sets_processes_pid_file_and_log() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let (pid, log) = (d.join("run/nginx.pid"), d.join("error.log"));
    std::fs::create_dir(d.join("run")).unwrap();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "worker_processes 2;\nworker_cpu_affinity auto;\npid {};\nerror_log {} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  include mime.types;\n  sendfile on;\n  keepalive_timeout 65;\n\
             \x20 server {{ listen {addr}; location = /who {{ return 200 \"$pid\"; }} }}\n}}\n",
            pid.display(),
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "nginx.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("out.log")));
    gw.wait_tcp(addr, Duration::from_secs(20));
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready: 2 worker(s)")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let master: u32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(master, gw.pid(), "the pid file names the master");
    // Two worker processes answer (each its own pid), neither is the master.
    let mut pids = std::collections::HashSet::new();
    for _ in 0..200 {
        let r = exchange(
            addr,
            b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        pids.insert(r.text());
        if pids.len() == 2 {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(!pids.contains(&master.to_string()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("worker_processes\" is not used"), "{text}");
    assert!(text.contains("worker 2 bound to cpu(s)"), "{text}");
}
