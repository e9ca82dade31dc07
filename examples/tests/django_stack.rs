//! The django_stack example, started as a user starts it (`cargo run --example
//! django_stack`), driven with curl: the admin login with CSRF, a form with a file upload,
//! validation errors, static files with 304, Ctrl-C, a fast second start, the same stack from
//! the written nginx.conf + uwsgi.ini, and the same pages under `uwsgi --http`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("django_stack")
}

/// Starts the example on `port`; returns it once it says where to open it, with the
/// admin password it printed.
fn start(port: u16, log: &Path) -> (Child, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO"))
        .args(["run", "-q", "--example", "django_stack", "--", "--port"])
        .arg(port.to_string())
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = log.to_path_buf();
    std::thread::spawn(move || {
        let mut sink = std::fs::File::create(&log).unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(sink, "{line}");
            if let Some(rest) = line.split(" as admin / ").nth(1) {
                let _ = tx.send(rest.split(')').next().unwrap_or("").to_owned());
            }
            if line.contains("WSGI app ready") {
                let _ = tx.send(String::from("\u{0}ready"));
            }
        }
    });
    let mut password = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(msg) if msg == "\u{0}ready" => break,
            Ok(p) => password = Some(p),
            Err(e) => panic!("the example did not start: {e}"),
        }
    }
    (
        child,
        password.expect("the admin password is printed"),
        started.elapsed(),
    )
}

struct Curl {
    jar: PathBuf,
    base: String,
}

impl Curl {
    /// Runs curl; returns (status, body).
    fn call(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-b",
                self.jar.to_str().unwrap(),
                "-c",
                self.jar.to_str().unwrap(),
            ])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn csrf(&self, path: &str) -> String {
        let (status, page) = self.call(&[&self.url(path)]);
        assert_eq!(status, 200, "{path}: {page}");
        page.split("name=\"csrfmiddlewaretoken\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token in {path}"))
            .to_owned()
    }
}

/// Ctrl-C: SIGINT to the example (the master, after `cargo run` replaced itself with it);
/// it stops gracefully and exits 0.
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_django_stack_example_end_to_end() {
    testkit::require("curl");
    let tmp = testkit::temp_dir();
    let port = testkit::free_port();
    let (child, password, _) = start(port, &tmp.path().join("first.log"));
    let c = Curl {
        jar: tmp.path().join("cookies"),
        base: format!("http://127.0.0.1:{port}"),
    };

    // `manage.py check --deploy`: only the HTTPS-only warnings (the example serves HTTP).
    let check = Command::new(site().join(".venv/bin/python"))
        .args(["manage.py", "check", "--deploy"])
        .current_dir(site())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stderr).into_owned()
        + &String::from_utf8_lossy(&check.stdout);
    let found: Vec<&str> = text
        .split("(security.")
        .skip(1)
        .filter_map(|w| w.split(')').next())
        .collect();
    assert!(
        found
            .iter()
            .all(|w| ["W004", "W008", "W012", "W016"].contains(w)),
        "{text}"
    );
    assert!(!text.contains("ERRORS"), "{text}");

    // The admin: log in through the CSRF-protected form.
    let token = c.csrf("/admin/login/");
    let (status, _) = c.call(&[
        "-H",
        &format!("Referer: {}", c.url("/admin/login/")),
        "--data-urlencode",
        &format!("csrfmiddlewaretoken={token}"),
        "--data-urlencode",
        "username=admin",
        "--data-urlencode",
        &format!("password={password}"),
        "--data-urlencode",
        "next=/admin/",
        &c.url("/admin/login/?next=/admin/"),
    ]);
    assert_eq!(status, 302, "logged in");
    let (status, page) = c.call(&[&c.url("/admin/")]);
    assert_eq!(status, 200);
    assert!(page.contains("Site administration"), "{page}");

    // A note through the form, with a file upload.
    let upload = tmp.path().join("upload.txt");
    let content = format!("uploaded at {:?}", Instant::now());
    std::fs::write(&upload, &content).unwrap();
    let title = format!("Note {port}");
    let token = c.csrf("/new/");
    let (status, _) = c.call(&[
        "-H",
        &format!("Referer: {}", c.url("/new/")),
        "-F",
        &format!("csrfmiddlewaretoken={token}"),
        "-F",
        &format!("title={title}"),
        "-F",
        "body=written by the end-to-end test",
        "-F",
        &format!("attachment=@{}", upload.display()),
        &c.url("/new/"),
    ]);
    assert_eq!(status, 302, "saved, redirected to the list");
    let (status, list) = c.call(&[&c.url("/")]);
    assert_eq!(status, 200);
    assert!(list.contains(&title), "{list}");
    let media = list
        .split(&title)
        .nth(1)
        .and_then(|r| r.split("href=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .expect("an attachment link")
        .to_owned();
    assert!(media.starts_with("/media/uploads/"), "{media}");
    assert_eq!(c.call(&[&c.url(&media)]), (200, content.clone()));
    // Validation errors are shown, nothing is saved.
    let token = c.csrf("/new/");
    let (status, page) = c.call(&[
        "-H",
        &format!("Referer: {}", c.url("/new/")),
        "-F",
        &format!("csrfmiddlewaretoken={token}"),
        "-F",
        "title=x",
        &c.url("/new/"),
    ]);
    assert_eq!(status, 200);
    assert!(
        page.contains("A title needs at least 3 characters."),
        "{page}"
    );

    // Static files from the front, revalidated with a 304.
    let head = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &c.url("/static/css/site.css"),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).into_owned();
    let etag = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .expect("an ETag")
        .trim()
        .to_owned();
    let (status, _) = c.call(&[
        "-H",
        &format!("If-None-Match: {etag}"),
        &c.url("/static/css/site.css"),
    ]);
    assert_eq!(status, 304);
    let (status, css) = c.call(&[&c.url("/static/admin/css/base.css")]);
    assert!(
        status == 200 && css.len() > 1000,
        "the admin's collected CSS"
    );

    // A real browser: the pages render with their CSS.
    browser_checks(&c.base, tmp.path());

    // The same pages under uWSGI's own HTTP server and static maps.
    let uwsgi = testkit::require("uwsgi");
    let up = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let s = site();
    let mut u = testkit::Peer::spawn(
        "uwsgi",
        {
            let mut cmd = Command::new(uwsgi);
            cmd.args([
                "--http",
                &up.to_string(),
                "--module",
                "mysite.wsgi",
                "--master",
            ])
            .arg("--chdir")
            .arg(&s)
            .arg("--home")
            .arg(s.join(".venv"))
            .arg(format!(
                "--static-map=/static={}",
                s.join("staticfiles").display()
            ))
            .arg(format!("--static-map=/media={}", s.join("media").display()))
            .arg("--disable-logging");
            cmd
        },
        Some(&tmp.path().join("uwsgi.log")),
    );
    u.wait_tcp(up, Duration::from_secs(60));
    let plain = |url: String| {
        let out = Command::new("curl").args(["-s", &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for path in ["/", "/static/css/site.css", media.as_str()] {
        assert_eq!(
            plain(format!("http://{up}{path}")),
            plain(c.url(path)),
            "{path}: the same under uwsgi --http"
        );
    }
    drop(u);
    stop(child);

    // A second start is quick (no install, no migration).
    let (child, again, took) = start(port, &tmp.path().join("second.log"));
    assert_eq!(again, password);
    assert!(took < Duration::from_secs(60), "second start took {took:?}");
    let second = std::fs::read_to_string(tmp.path().join("second.log")).unwrap();
    assert!(
        !second.contains("installing") && !second.contains("migrating"),
        "{second}"
    );
    assert!(plain(c.url("/")).contains(&title));
    stop(child);

    // The written nginx.conf + uwsgi.ini run the same stack with the gateway binary.
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "gateway", "--bin", "gateway"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    let other = testkit::free_port();
    let conf = std::fs::read_to_string(s.join("run/nginx.conf"))
        .unwrap()
        .replace(
            &format!("127.0.0.1:{port};"),
            &format!("127.0.0.1:{other};"),
        );
    std::fs::write(tmp.path().join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(root().join("target/debug/gateway"));
    cmd.arg("--nginx-conf")
        .arg(tmp.path().join("nginx.conf"))
        .arg("--ini")
        .arg(s.join("run/uwsgi.ini"));
    let mut g = testkit::Peer::spawn("gateway", cmd, Some(&tmp.path().join("gateway.log")));
    g.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], other)),
        Duration::from_secs(60),
    );
    g.wait_log("WSGI app ready", Duration::from_secs(60));
    let page = plain(format!("http://127.0.0.1:{other}/"));
    assert!(page.contains(&title), "{page}\n{}", g.log());
    assert_eq!(
        plain(format!("http://127.0.0.1:{other}/static/css/site.css")),
        std::fs::read_to_string(s.join("staticfiles/css/site.css")).unwrap()
    );
    assert_eq!(plain(format!("http://127.0.0.1:{other}{media}")), content);
}

/// A minimal W3C WebDriver client for chromedriver (JSON over HTTP/1.1 on loopback).
struct Browser {
    addr: SocketAddr,
    session: String,
    _driver: testkit::Peer,
}

fn webdriver(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    use std::io::{Read, Write};
    let payload = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).expect("chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    // Read the head, then Content-Length bytes (chromedriver may keep the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf).unwrap();
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len || n == 0 {
                break;
            }
        } else if n == 0 {
            break;
        }
    }
    let r = testkit::HttpResponse::parse(&raw);
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.text()))
}

impl Browser {
    fn start(dir: &Path) -> Self {
        let driver = testkit::require("chromedriver");
        let port = testkit::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}"));
        let mut peer =
            testkit::Peer::spawn("chromedriver", cmd, Some(&dir.join("chromedriver.log")));
        peer.wait_tcp(addr, Duration::from_secs(20));
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": testkit::require("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1024,768", &format!("--user-data-dir={}", dir.join("profile").display())]
        }}}});
        let r = webdriver(addr, "POST", "/session", &caps);
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Self {
            addr,
            session,
            _driver: peer,
        }
    }

    fn open(&self, url: &str) {
        let r = webdriver(
            self.addr,
            "POST",
            &format!("/session/{}/url", self.session),
            &serde_json::json!({"url": url}),
        );
        assert!(r["value"].is_null(), "{r}");
    }

    fn eval(&self, script: &str) -> serde_json::Value {
        webdriver(
            self.addr,
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            &serde_json::json!({"script": script, "args": []}),
        )["value"]
            .clone()
    }

    /// Saves a PNG screenshot (kept under target/artifacts/ for CI).
    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let r = webdriver(
            self.addr,
            "GET",
            &format!("/session/{}/screenshot", self.session),
            &serde_json::json!({}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().expect("a screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = root().join("target/artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = webdriver(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &serde_json::json!({}),
        );
    }
}

/// Headless Chromium loads the front page and the admin: the CSS arrived (computed style).
fn browser_checks(base: &str, dir: &Path) {
    let b = Browser::start(dir);
    b.open(&format!("{base}/"));
    assert_eq!(b.eval("return document.title"), "Notes · django_stack");
    // site.css sets the body's color: only a loaded stylesheet gives it.
    assert_eq!(
        b.eval("return getComputedStyle(document.body).color"),
        "rgb(20, 60, 90)"
    );
    let shot = b.screenshot("django_stack_front.png");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    b.open(&format!("{base}/admin/login/"));
    let header =
        b.eval("return getComputedStyle(document.querySelector('#header')).backgroundColor");
    assert!(
        header
            .as_str()
            .is_some_and(|c| c.starts_with("rgb(") && c != "rgba(0, 0, 0, 0)"),
        "the admin's CSS colours its header: {header}"
    );
    b.screenshot("django_stack_admin.png");
}
