//! The front: `--http` with `--http-to` passing over the uwsgi protocol to real uWSGI
//! backends (round robin, bodies in both directions, failover, bad upstreams).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testkit::{HttpResponse, Peer};

/// Says which backend answered, and echoes what it got.
const BACKEND_APP: &str = r#"
import hashlib, os
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/big":
        body = b"x" * (1 << 20)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path.endswith("/huge"):
        block = bytes(range(256)) * 4096
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(32 << 20))])
        return (block for _ in range(32))
    if path == "/sleep" and os.environ["BACKEND"] == "slow":
        import time
        time.sleep(0.3)
    if path.endswith("/ping"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pong"]
    data = environ["wsgi.input"].read()
    info = "%s %s %s %s len=%d sha=%s cl=%s host=%s port=%s" % (
        os.environ["BACKEND"], environ["REQUEST_METHOD"], path, environ["QUERY_STRING"],
        len(data), hashlib.sha256(data).hexdigest()[:16], environ.get("CONTENT_LENGTH", "-"),
        environ.get("HTTP_HOST"), environ.get("SERVER_PORT"))
    start_response("201 Created", [("Content-Type", "text/plain; charset=utf-8"), ("X-Backend", os.environ["BACKEND"])])
    return [info.encode("utf-8")]
"#;

fn uwsgi(dir: &Path, name: &str) -> (Peer, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    (uwsgi_at(dir, name, addr), addr)
}

fn uwsgi_at(dir: &Path, name: &str, addr: SocketAddr) -> Peer {
    let uwsgi = testkit::require("uwsgi");
    let mut cmd = Command::new(uwsgi);
    cmd.args(["--socket", &addr.to_string(), "--wsgi-file", "backend.py"])
        .args([
            "--env",
            &format!("BACKEND={name}"),
            "--buffer-size",
            "65535",
        ])
        .args(["--die-on-term", "--disable-logging"])
        .current_dir(dir);
    let mut peer = Peer::spawn(name, cmd, Some(&dir.join(format!("{name}.log"))));
    peer.wait_tcp(addr, Duration::from_secs(20));
    peer
}

/// The gateway with the nginx site `conf` (its `listen` is `addr`).
fn site(dir: &Path, addr: SocketAddr, conf: &str) -> Peer {
    std::fs::write(dir.join("site.conf"), conf).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"]).current_dir(dir);
    let mut gw = Peer::spawn("gateway", cmd, Some(&dir.join("front.log")));
    gw.wait_tcp(addr, Duration::from_secs(20));
    gw
}

/// Which backend answered `n` requests for `path`, in order.
fn answered_by(addr: SocketAddr, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(addr, path);
            assert!(r.status < 500, "{} {}", r.status, r.text());
            r.header("x-backend").unwrap_or("-").to_owned()
        })
        .collect()
}

fn front(dir: &Path, backends: &[String], extra: &[&str]) -> (Peer, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--http", &addr.to_string()]).current_dir(dir);
    for b in backends {
        cmd.args(["--http-to", b]);
    }
    cmd.args(extra);
    let mut peer = Peer::spawn("gateway", cmd, Some(&dir.join("front.log")));
    peer.wait_tcp(addr, Duration::from_secs(20));
    (peer, addr)
}

fn exchange(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    HttpResponse::parse(&testkit::raw_exchange(addr, raw, Duration::from_secs(20)))
}

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn sha16(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn http_to_balances_real_uwsgi_backends_and_carries_bodies() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("backend.py"), BACKEND_APP).unwrap();
    let (_b1, a1) = uwsgi(dir.path(), "b1");
    let (_b2, a2) = uwsgi(dir.path(), "b2");
    let (gw, addr) = front(dir.path(), &[a1.to_string(), a2.to_string()], &[]);

    let who: Vec<String> = (0..6)
        .map(|_| {
            let r = get(addr, "/caf%C3%A9?q=1");
            assert_eq!(r.status, 201, "{}", gw.log());
            assert_eq!(r.header("x-backend"), r.text().split(' ').next());
            assert!(
                // PATH_INFO is latin-1 decoded (PEP 3333): the UTF-8 bytes of é show as Ã©.
                r.text().contains("GET /cafÃ© q=1 len=0") && r.text().contains("host=example.test"),
                "{}",
                r.text()
            );
            r.text().split(' ').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(who, ["b1", "b2", "b1", "b2", "b1", "b2"], "round robin");
    assert!(
        get(addr, "/")
            .text()
            .ends_with(&format!("port={}", addr.port())),
        "SERVER_PORT is the front's"
    );

    // A 3 MiB POST (spooled to a file on the way) and a chunked upload (CONTENT_LENGTH set).
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let r = exchange(addr, &req);
    assert_eq!(r.status, 201);
    assert!(
        r.text().contains(&format!(
            "len={} sha={} cl={}",
            big.len(),
            sha16(&big),
            big.len()
        )),
        "{}",
        r.text()
    );
    let r = exchange(
        addr,
        b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert!(
        r.text()
            .contains(&format!("len=11 sha={} cl=11", sha16(b"hello world"))),
        "{}",
        r.text()
    );
    // A 1 MiB response streams through whole.
    let r = get(addr, "/big");
    assert_eq!((r.status, r.body.len()), (200, 1 << 20));
    assert!(r.body.iter().all(|&b| b == b'x'));
    // HEAD: headers, no body.
    let raw = testkit::raw_exchange(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after HEAD: {text}");
}

#[test]
fn a_backend_killed_mid_load_costs_no_idempotent_request() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("backend.py"), BACKEND_APP).unwrap();
    let (b1, a1) = uwsgi(dir.path(), "b1");
    let (_b2, a2) = uwsgi(dir.path(), "b2");
    let (gw, addr) = front(
        dir.path(),
        &[a1.to_string(), a2.to_string()],
        &["--processes", "2"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = get(addr, "/");
                    if r.status != 201 {
                        failures.push(format!("{} {}", r.status, r.text()));
                    }
                    n += 1;
                }
                (n, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    testkit::signal(b1.pid(), "KILL");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (n, failures) = c.join().unwrap();
        assert!(
            failures.is_empty(),
            "client errors: {failures:?}\n{}",
            gw.log()
        );
        total += n;
    }
    assert!(total > 20, "{total} requests");
    for _ in 0..4 {
        assert!(
            get(addr, "/").text().starts_with("b2 "),
            "the survivor serves"
        );
    }
    assert!(gw.log().contains("trying the next server"), "{}", gw.log());
}

/// A fake backend: answers each connection with `reply` after reading a little.
fn fake_backend(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    addr
}

#[test]
fn garbage_or_early_close_from_a_backend_is_a_502_and_nothing_else_breaks() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("backend.py"), BACKEND_APP).unwrap();
    let garbage = fake_backend(b"\x00\x01\x02 this is not HTTP\r\n\r\n");
    let closes = fake_backend(b"");
    let (_gw1, f1) = front(dir.path(), &[garbage.to_string()], &[]);
    let (gw2, f2) = front(dir.path(), &[closes.to_string()], &[]);
    assert_eq!(get(f1, "/").status, 502);
    assert_eq!(get(f2, "/").status, 502);
    // Nothing listening at all: 502 as well.
    let nobody = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let (_gw3, f3) = front(dir.path(), &[nobody.to_string()], &[]);
    assert_eq!(get(f3, "/").status, 502);
    // A POST is not repeated on another server once sent; the good backend serves the next.
    let (_b, good) = uwsgi(dir.path(), "good");
    let (gw4, f4) = front(dir.path(), &[closes.to_string(), good.to_string()], &[]);
    let r = exchange(
        f4,
        b"POST /once HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(f4, "/after");
    assert!(r.text().starts_with("good GET /after"), "{}", r.text());
    // Logged (a reset or an early close, as the kernel has it), and not retried.
    let log = gw4.log();
    let line = log
        .lines()
        .find(|l| l.contains("for POST /once"))
        .unwrap_or_else(|| panic!("no error logged:\n{log}"));
    assert!(!line.contains("trying the next server"), "{line}");
    assert!(gw2.log().contains("upstream http-to"), "{}", gw2.log());
    // The fronts still serve (keep-alive and new connections alike).
    let mut s = TcpStream::connect(f2).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 502");
    // (Last: the fronts share one log file.) A POST that no server took (a refused
    // connect) goes to the next one, as nginx's.
    let (_gw5, f5) = front(dir.path(), &[nobody.to_string(), good.to_string()], &[]);
    let r = exchange(
        f5,
        b"POST /refused HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(r.text().starts_with("good POST /refused"), "{}", r.text());
}

#[test]
fn a_master_runs_the_front_apart_from_two_app_workers() {
    let dir = testkit::temp_dir();
    std::fs::write(
        dir.path().join("app.py"),
        "import os\ndef application(e, sr):\n    sr('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("static")).unwrap();
    std::fs::write(dir.path().join("static/site.css"), "body { color: teal }").unwrap();
    let sock = dir.path().join("app.sock");
    let (http, stats) = (
        SocketAddr::from(([127, 0, 0, 1], testkit::free_port())),
        SocketAddr::from(([127, 0, 0, 1], testkit::free_port())),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--http", &http.to_string(), "--http-to"])
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket", sock.to_str().unwrap(), "--wsgi-file", "app.py"])
        .args(["--processes", "2", "--static-map", "/static=static"])
        .args(["--stats", &stats.to_string()])
        .current_dir(dir.path());
    let gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("gw.log")));
    gw.wait_log("2 worker(s) and a front serving", Duration::from_secs(30));
    let mut doc = String::new();
    TcpStream::connect(stats)
        .unwrap()
        .read_to_string(&mut doc)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let pid_of = |role: &str| -> Vec<u64> {
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["role"] == role)
            .map(|w| w["pid"].as_u64().unwrap())
            .collect()
    };
    let (workers, fronts) = (pid_of("worker"), pid_of("front"));
    assert_eq!((workers.len(), fronts.len()), (2, 1), "{doc}");
    // The front passes over the unix socket to the workers, which run the app.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = get(http, "/");
        assert_eq!(r.status, 200, "{}", gw.log());
        let pid: u64 = r.text().parse().unwrap();
        assert!(workers.contains(&pid), "{pid} is not a worker: {doc}");
        seen.insert(pid);
    }
    assert_eq!(get(http, "/static/site.css").text(), "body { color: teal }");
    // The front process runs no Python thread (the workers do).
    let threads = |pid: u64| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect()
    };
    assert!(
        !threads(fronts[0]).iter().any(|t| t.starts_with("wsgi-")),
        "{:?}",
        threads(fronts[0])
    );
    assert!(threads(workers[0]).iter().any(|t| t.starts_with("wsgi-")));
    // A front that dies is respawned like a worker.
    testkit::signal(fronts[0] as u32, "KILL");
    gw.wait_log("respawned front", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(http, "/").status, 200);
}

#[test]
fn sticky_sessions_and_hash_keys_pick_backends_from_the_request() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("backend.py"), BACKEND_APP).unwrap();
    let (b1, a1) = uwsgi(dir.path(), "b1");
    let (b2, a2) = uwsgi(dir.path(), "b2");
    let port = testkit::free_port();
    std::fs::write(
        dir.path().join("site.conf"),
        format!(
            "upstream sticky {{ session_sticky cookie=route mode=insert; server {a1}; server {a2}; }}\n\
             upstream hashed {{ hash $arg_user consistent; server {a1}; server {a2}; }}\n\
             server {{\n  listen 127.0.0.1:{port};\n\
             \x20 location /s/ {{ uwsgi_pass sticky; include uwsgi_params; }}\n\
             \x20 location /h/ {{ uwsgi_pass hashed; include uwsgi_params; }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"])
        .current_dir(dir.path());
    let mut gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("gw.log")));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    gw.wait_tcp(addr, Duration::from_secs(20));
    let with_cookie = |cookie: &str| {
        exchange(
            addr,
            format!("GET /s/page HTTP/1.1\r\nHost: t\r\nCookie: theme=dark; {cookie}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // The first answer sets the cookie naming its backend; the session then stays there.
    let first = get(addr, "/s/page");
    let set = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("route="), "{set}");
    let home = first.header("x-backend").unwrap().to_owned();
    for _ in 0..8 {
        let r = with_cookie(&cookie);
        assert_eq!(r.header("x-backend"), Some(home.as_str()));
        assert_eq!(r.header("set-cookie"), None, "the cookie is already right");
    }
    // Its backend goes away: the session moves, with a new cookie.
    let (gone, other) = if home == "b1" { (b1, "b2") } else { (b2, "b1") };
    drop(gone);
    let r = with_cookie(&cookie);
    assert_eq!(r.header("x-backend"), Some(other), "{}", gw.log());
    let moved = r.header("set-cookie").expect("a new cookie").to_owned();
    assert_ne!(moved.split(';').next().unwrap(), cookie);

    // hash $arg_user consistent: one user, one backend (the survivor now takes everyone,
    // so check stability only).
    for user in ["ada", "bob", "cy"] {
        let who: Vec<String> = (0..3)
            .map(|_| {
                get(addr, &format!("/h/x?user={user}"))
                    .header("x-backend")
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect();
        assert!(who.iter().all(|w| w == other), "{user}: {who:?}");
    }
}

#[test]
fn hash_keys_spread_users_and_keep_each_on_one_backend() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("backend.py"), BACKEND_APP).unwrap();
    let (_b1, a1) = uwsgi(dir.path(), "b1");
    let (_b2, a2) = uwsgi(dir.path(), "b2");
    let port = testkit::free_port();
    std::fs::write(
        dir.path().join("site.conf"),
        format!(
            "upstream hashed {{ hash $arg_user consistent; server {a1}; server {a2}; }}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ uwsgi_pass hashed; include uwsgi_params; }} }}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"])
        .current_dir(dir.path());
    let mut gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("gw.log")));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    gw.wait_tcp(addr, Duration::from_secs(20));
    let mut seen = std::collections::HashSet::new();
    for n in 0..24 {
        let who: Vec<String> = (0..3)
            .map(|_| {
                get(addr, &format!("/x?user=u{n}"))
                    .header("x-backend")
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect();
        assert!(who.windows(2).all(|w| w[0] == w[1]), "user u{n}: {who:?}");
        seen.insert(who[0].clone());
    }
    assert_eq!(seen.len(), 2, "24 users land on both backends: {seen:?}");
}

/// nginx's buffering: the front reads a backend's 32 MiB answer into memory and a
/// temporary file, so the one-thread uWSGI backend serves others while the client that
/// asked for it does not read; with `uwsgi_buffering off` that client holds the backend.
#[test]
fn a_slow_client_does_not_hold_the_backend_unless_buffering_is_off() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    let (_backend, up) = uwsgi(d, "only");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    std::fs::write(
        d.join("site.conf"),
        format!(
            "upstream app {{ server {up}; }}\n\
             server {{\n  listen {addr};\n\
               location /off/ {{ uwsgi_pass app; include uwsgi_params; uwsgi_buffering off; }}\n\
               location / {{ uwsgi_pass app; include uwsgi_params; }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--nginx-conf", "site.conf"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("front.log")));
    gw.wait_tcp(addr, Duration::from_secs(20));

    // Asks for the huge answer, reads its first 64 KiB, then stops reading.
    let stall = |prefix: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!("GET {prefix}huge HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut first = vec![0u8; 64 * 1024];
        s.read_exact(&mut first).unwrap();
        (s, first)
    };
    // Reads the rest and checks every byte.
    let finish = |mut s: TcpStream, first: Vec<u8>| {
        let mut all = first;
        s.read_to_end(&mut all).unwrap();
        let r = HttpResponse::parse(&all);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 32 << 20, "the whole body");
        assert!(
            r.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 256) as u8),
            "the body is intact"
        );
    };
    // `timeout`: how long the other request may take.
    let ping = |prefix: &str, timeout: Duration| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        s.write_all(
            format!("GET {prefix}ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).map(|_| out)
    };

    let (s, first) = stall("/");
    let started = std::time::Instant::now();
    let pong =
        ping("/", Duration::from_secs(10)).expect("the backend is free while the client stalls");
    assert_eq!(HttpResponse::parse(&pong).text(), "pong");
    assert!(started.elapsed() < Duration::from_secs(10));
    finish(s, first);

    // Unbuffered: the stalled client holds the only backend thread.
    let (s, first) = stall("/off/");
    let held = ping("/off/", Duration::from_secs(2));
    assert!(
        held.is_err(),
        "with buffering off the backend is held: {held:?}"
    );
    finish(s, first);
    let pong = ping("/off/", Duration::from_secs(10)).unwrap();
    assert_eq!(HttpResponse::parse(&pong).text(), "pong");
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

/// Tengine's `check`: a killed backend is taken out by the probes before any request goes
/// to it, and comes back as soon as it passes again (the passive `fail_timeout=30s` alone
/// would keep it out for 30 s).
#[test]
fn active_health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    let (a, a_addr) = uwsgi(d, "a");
    let (b, b_addr) = uwsgi(d, "b");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let gw = site(
        d,
        addr,
        &format!(
            "upstream app {{\n  server {a_addr} max_fails=1 fail_timeout=30s;\n  server {b_addr} max_fails=1 fail_timeout=30s;\n\
             \x20 check interval=200 rise=2 fall=2 timeout=500 type=tcp;\n}}\n\
             server {{ listen {addr}; location / {{ uwsgi_pass app; include uwsgi_params; }} }}\n"
        ),
    );
    let both = answered_by(addr, "/x", 6);
    assert!(
        both.contains(&"a".into()) && both.contains(&"b".into()),
        "{both:?}"
    );
    drop(b);
    gw.wait_log("failed 2 check(s): out of use", Duration::from_secs(10));
    // POSTs are not retried on another server: with the check, none goes to the dead one.
    for n in 0..8 {
        let r = exchange(
            addr,
            format!(
                "POST /p{n} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", gw.log());
        assert_eq!(r.header("x-backend"), Some("a"));
    }
    assert!(!gw.log().contains("cannot connect"), "{}", gw.log());
    let _b = uwsgi_at(d, "b", b_addr);
    gw.wait_log("passed 2 check(s): back in use", Duration::from_secs(10));
    let again = answered_by(addr, "/y", 6);
    assert!(again.contains(&"b".into()), "{again:?}");
    drop(a);
}

/// `type=http` probes a plain HTTP backend (Python's http.server) with
/// `check_http_send`, and `check_http_expect_alive` decides.
#[test]
fn http_health_checks_follow_the_status_a_backend_answers() {
    let python = testkit::require("python3");
    let dir = testkit::temp_dir();
    let d = dir.path();
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("health.txt"), "ok").unwrap();
    std::fs::write(www.join("page.txt"), "page").unwrap();
    let port = testkit::free_port();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string());
    let mut backend = Peer::spawn("http.server", cmd, Some(&d.join("http.log")));
    backend.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let gw = site(
        d,
        addr,
        &format!(
            "upstream web {{\n  server 127.0.0.1:{port};\n\
             \x20 check interval=200 rise=1 fall=1 timeout=1000 type=http;\n\
             \x20 check_http_send \"GET /health.txt HTTP/1.0\\r\\n\\r\\n\";\n\
             \x20 check_http_expect_alive http_2xx;\n}}\n\
             server {{ listen {addr}; location / {{ proxy_pass http://web; }} }}\n"
        ),
    );
    assert_eq!(get(addr, "/page.txt").text(), "page");
    std::fs::remove_file(www.join("health.txt")).unwrap(); // now 404
    gw.wait_log("failed 1 check(s): out of use", Duration::from_secs(10));
    assert_eq!(get(addr, "/page.txt").status, 502, "no server left");
    std::fs::write(www.join("health.txt"), "ok").unwrap();
    gw.wait_log("passed 1 check(s): back in use", Duration::from_secs(10));
    assert_eq!(get(addr, "/page.txt").text(), "page");
}

/// `server NAME resolve` with `resolver`: the pool follows DNS (a real dnsmasq serving a
/// hosts file that changes), as a Kubernetes service moves.
#[test]
fn resolve_servers_follow_dns_changes() {
    let dnsmasq = testkit::require("dnsmasq");
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    let port = testkit::free_port();
    let _a = uwsgi_at(d, "a", SocketAddr::from(([127, 0, 0, 1], port)));
    let _b = uwsgi_at(d, "b", SocketAddr::from(([127, 0, 0, 2], port)));
    let hosts = d.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 backend.test\n").unwrap();
    let dns_port = testkit::free_port();
    let mut cmd = Command::new(dnsmasq);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--user=root",
        "--pid-file=",
        "--local-ttl=1",
        "--log-queries",
        "--log-facility=-",
    ])
    .arg(format!("--port={dns_port}"))
    .arg(format!("--addn-hosts={}", hosts.display()));
    let dns = Peer::spawn("dnsmasq", cmd, Some(&d.join("dnsmasq.log")));
    dns.wait_log("read ", Duration::from_secs(10));
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let gw = site(
        d,
        addr,
        &format!(
            "resolver 127.0.0.1:{dns_port} valid=1s ipv6=off;\n\
             upstream app {{ zone app 64k; server backend.test:{port} resolve; }}\n\
             server {{ listen {addr}; location / {{ uwsgi_pass app; include uwsgi_params; }} }}\n"
        ),
    );
    gw.wait_log(
        &format!("backend.test now resolves to 127.0.0.1:{port}"),
        Duration::from_secs(10),
    );
    assert_eq!(answered_by(addr, "/", 3), ["a", "a", "a"]);
    std::fs::write(&hosts, "127.0.0.2 backend.test\n").unwrap();
    dns.signal("HUP");
    gw.wait_log(
        &format!("backend.test now resolves to 127.0.0.2:{port}"),
        Duration::from_secs(10),
    );
    assert_eq!(answered_by(addr, "/", 3), ["b", "b", "b"]);
    assert!(
        dns.log().contains("backend.test"),
        "the gateway asked dnsmasq: {}",
        dns.log()
    );
}

/// Weights under concurrent load, and `least_conn` steering away from a slow backend.
#[test]
fn weights_and_least_conn_under_concurrent_load() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    let (_heavy, heavy) = uwsgi(d, "heavy");
    let (_light, light) = uwsgi(d, "light");
    let (_slow, slow) = uwsgi(d, "slow");
    let (_fast, fast) = uwsgi(d, "fast");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let _gw = site(
        d,
        addr,
        &format!(
            "upstream weighted {{ server {heavy} weight=3; server {light}; }}\n\
             upstream least {{ least_conn; server {slow}; server {fast}; }}\n\
             server {{ listen {addr};\n\
             \x20 location /w/ {{ uwsgi_pass weighted; include uwsgi_params; }}\n\
             \x20 location / {{ uwsgi_pass least; include uwsgi_params; }}\n}}\n"
        ),
    );
    // 8 clients at once.
    let load = |path: &'static str, each: usize| {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(move || answered_by(addr, path, each)))
            .collect();
        let mut count = std::collections::HashMap::<String, usize>::new();
        for t in threads {
            for who in t.join().unwrap() {
                *count.entry(who).or_default() += 1;
            }
        }
        count
    };
    let w = load("/w/x", 25);
    let (h, l) = (
        w.get("heavy").copied().unwrap_or(0),
        w.get("light").copied().unwrap_or(0),
    );
    assert_eq!(h + l, 200, "{w:?}");
    // Stated tolerance: within 5 points of the weights' 75 %.
    assert!((140..=160).contains(&h), "weight=3 gets about 3/4: {w:?}");

    let c = load("/sleep", 5);
    let (s, f) = (
        c.get("slow").copied().unwrap_or(0),
        c.get("fast").copied().unwrap_or(0),
    );
    assert_eq!(s + f, 40, "{c:?}");
    // Round robin would give the slow one 20 (and take 6 s); least_conn keeps it to a few.
    assert!(
        s <= 10 && f >= 30,
        "least_conn avoids the slow backend: {c:?}"
    );
}

/// Bad input to a front site: smuggling probes, oversized heads, traversal on `alias`;
/// each gets a clear refusal (or a safe reading), nothing reaches the backend that the
/// client did not send as one request, and the next client is served.
#[test]
fn the_front_refuses_smuggling_oversized_heads_and_traversal() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    std::fs::create_dir(d.join("static")).unwrap();
    std::fs::write(d.join("static/site.css"), "body{}").unwrap();
    std::fs::write(d.join("secret.txt"), "SECRET").unwrap();
    let (_b, up) = uwsgi(d, "b");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let gw = site(
        d,
        addr,
        &format!(
            "server {{ listen {addr};\n\
             \x20 location /static/ {{ alias {}/static/; }}\n\
             \x20 location / {{ uwsgi_pass {up}; include uwsgi_params; }}\n}}\n",
            d.display()
        ),
    );
    // A second request hidden in the first one's body: if it were read as a request,
    // a second answer would come (and the connection close after it).
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let probes: Vec<(&str, String, &[u16])> = vec![
        (
            "Content-Length and Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"
            ),
            // RFC 9112 6.3: chunked wins and the connection closes after the answer
            // (nginx answers 400); either way the rest is never read as a request.
            &[400, 201],
        ),
        (
            "two Content-Lengths",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggle}"
            ),
            &[400],
        ),
        (
            "an unknown transfer coding",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggle}"
            ),
            &[400, 501],
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-A: a\r\n b\r\n\r\n".to_owned(),
            &[400],
        ),
        (
            "space before the colon",
            "GET / HTTP/1.1\r\nHost : t\r\nConnection: close\r\n\r\n".to_owned(),
            &[400],
        ),
        ("a 200 KB URI", long_uri, &[400, 414, 431]),
        ("a 200 KB header", long_header, &[400, 431]),
        (
            "encoded traversal on alias",
            "GET /static/..%2f..%2fsecret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                .to_owned(),
            &[400, 403, 404],
        ),
        (
            "traversal on alias",
            "GET /static/../secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(),
            // Normalized to /secret.txt, as nginx does: the backend's location answers.
            &[400, 403, 404, 201],
        ),
    ];
    for (what, raw, allowed) in &probes {
        let started = std::time::Instant::now();
        let out = testkit::raw_exchange(addr, raw.as_bytes(), Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: the connection stayed open"
        );
        let r = HttpResponse::parse(&out);
        assert!(
            allowed.contains(&r.status),
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            !r.text().contains("SECRET"),
            "{what}: a file outside the alias"
        );
        let responses = String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count();
        assert!(
            responses <= 1,
            "{what}: {responses} responses (a smuggled request?)"
        );
        // The next client is served.
        assert_eq!(get(addr, "/static/site.css").text(), "body{}", "{what}");
    }
    // "/static/../secret.txt" normalizes to /secret.txt, which the backend answers.
    assert!(!gw.log().contains("/smuggled"), "{}", gw.log());
}

/// The same front written in a `[uwsgi]` ini, as a small setup would: `http`, two
/// `http-to` backends and a `static-map`.
#[test]
fn a_front_described_in_an_ini_file() {
    let dir = testkit::temp_dir();
    let d = dir.path();
    std::fs::write(d.join("backend.py"), BACKEND_APP).unwrap();
    std::fs::create_dir(d.join("static")).unwrap();
    std::fs::write(d.join("static/app.js"), "console.log(1)").unwrap();
    let (_b1, a1) = uwsgi(d, "b1");
    let (_b2, a2) = uwsgi(d, "b2");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    std::fs::write(
        d.join("front.ini"),
        format!(
            "[uwsgi]\nbase = {}\nhttp = {addr}\nhttp-to = {a1}\nhttp-to = {a2}\nstatic-map = /static=%(base)/static\n",
            d.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--ini", "front.ini"]).current_dir(d);
    let mut gw = Peer::spawn("gateway", cmd, Some(&d.join("front.log")));
    gw.wait_tcp(addr, Duration::from_secs(20));
    let r = get(addr, "/static/app.js");
    assert_eq!((r.status, r.text().as_str()), (200, "console.log(1)"));
    assert_eq!(r.header("content-type"), Some("text/javascript"));
    let who = answered_by(addr, "/page", 4);
    assert_eq!(who, ["b1", "b2", "b1", "b2"], "{}", gw.log());
}

/// Reads a request from `s`, then plays `steps` (a pause, then some bytes) and closes.
fn play(mut s: impl Read + Write, steps: &[(u64, impl AsRef<[u8]>)]) {
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
    for (pause, bytes) in steps {
        std::thread::sleep(Duration::from_millis(*pause));
        if s.write_all(bytes.as_ref()).is_err() {
            return;
        }
    }
}

/// A fake backend that answers each connection with `steps`.
fn scripted_backend(steps: &'static [(u64, &'static [u8])]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || play(s, steps));
        }
    });
    addr
}

/// [`scripted_backend`] on a unix socket at `path`; `steps` may be built at run time.
fn scripted_unix_backend(path: &Path, steps: Vec<(u64, Vec<u8>)>) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    let steps: Arc<Vec<(u64, Vec<u8>)>> = Arc::new(steps);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let steps = steps.clone();
            std::thread::spawn(move || play(s, &steps));
        }
    });
}

#[test]
fn answers_ended_by_the_close_arrive_whole_over_unix_sockets() {
    let dir = testkit::temp_dir();
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    let with = |body: &[u8]| [&head[..], body].concat();
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // All at once, then the close; the rest after a pause (a close seen then must not
    // cut what came before it); a body larger than one read; a Content-Length.
    scripted_unix_backend(
        &dir.path().join("all.sock"),
        vec![(0, with(b"hello world"))],
    );
    scripted_unix_backend(
        &dir.path().join("later.sock"),
        vec![(0, with(b"hello ")), (300, b"world".to_vec())],
    );
    scripted_unix_backend(&dir.path().join("big.sock"), vec![(0, with(&big))]);
    scripted_unix_backend(
        &dir.path().join("length.sock"),
        vec![(
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        )],
    );
    // A socket file nobody listens on, and no file at all.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("dead.sock")).unwrap());
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let d = dir.path().display();
    let _gw = site(
        dir.path(),
        addr,
        &format!(
            "server {{\n  listen {addr};\n\
             \x20 location /all {{ uwsgi_pass unix:{d}/all.sock; }}\n\
             \x20 location /later {{ uwsgi_pass unix:{d}/later.sock; }}\n\
             \x20 location /big {{ uwsgi_pass unix:{d}/big.sock; }}\n\
             \x20 location /length {{ uwsgi_pass unix:{d}/length.sock; }}\n\
             \x20 location /dead {{ uwsgi_pass unix:{d}/dead.sock; }}\n\
             \x20 location /none {{ uwsgi_pass unix:{d}/none.sock; }}\n}}\n"
        ),
    );
    for _ in 0..20 {
        let r = get(addr, "/all");
        assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    }
    let r = get(addr, "/later");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let r = get(addr, "/big");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "{} bytes of {}", r.body.len(), big.len());
    let r = get(addr, "/length");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(get(addr, "/dead").status, 502);
    assert_eq!(get(addr, "/none").status, 502);
    assert_eq!(get(addr, "/all").text(), "hello world");
}

#[test]
fn uwsgi_read_timeout_is_counted_between_two_reads() {
    let dir = testkit::temp_dir();
    // Four pieces 0.5 s apart: 2 s in all, never 1 s without a byte.
    let steady = scripted_backend(&[
        (500, b"HTTP/1.1 200 OK\r\n"),
        (500, b"Content-Type: text/plain\r\n"),
        (500, b"\r\nhello "),
        (500, b"world"),
    ]);
    // A head, then silence.
    let stalls = scripted_backend(&[(0, b"HTTP/1.1 200 OK\r\n"), (5000, b"\r\n")]);
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let _gw = site(
        dir.path(),
        addr,
        &format!(
            "server {{\n  listen {addr};\n\
             \x20 location /steady {{ uwsgi_pass {steady}; uwsgi_read_timeout 1s; }}\n\
             \x20 location /stalls {{ uwsgi_pass {stalls}; uwsgi_read_timeout 1s; }}\n}}\n"
        ),
    );
    let r = get(addr, "/steady");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let start = std::time::Instant::now();
    let r = get(addr, "/stalls");
    assert_eq!(r.status, 504, "{}", r.text());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(3000),
        "{waited:?}"
    );
    // And the front serves on.
    assert_eq!(get(addr, "/steady").status, 200);
}
