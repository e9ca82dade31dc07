//! Test support shared by the workspace's integration tests.
//!
//! Real peers, not mocks: this crate starts Debian's nginx, uWSGI, flup and friends on
//! loopback with their own config files under a temp dir, and stops them by PID when the
//! guard drops. A missing peer is a test failure that says how to install it
//! (`scripts/install-deps.sh`), never a silent skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// A fresh temp dir, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("gateway-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The full path of `program`, or a panic that says how to install it.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: run `bash scripts/install-deps.sh` \
         (the README's test command does it)"
    );
}

/// A running peer process, killed (by PID) and reaped when dropped.
#[derive(Debug)]
pub struct Peer {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Peer {
    /// Starts `cmd` with stdout and stderr sent to `log` (if given).
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Self {
        if let Some(log) = log {
            let f = std::fs::File::create(log).expect("create peer log");
            cmd.stdout(f.try_clone().expect("dup log")).stderr(f);
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log: log.map(Path::to_path_buf),
        }
    }

    /// The peer's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the peer logged so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the peer to exit by itself: its exit status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends signal `sig` (a name such as `HUP` or `TERM`) to the peer, by PID.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `addr` accepts TCP connections; panics (with the peer's log) if the
    /// peer exits or `timeout` passes first.
    pub fn wait_tcp(&mut self, addr: SocketAddr, timeout: Duration) {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.name,
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not listen on {addr} within {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends signal `sig` (a name such as `HUP`, `TERM` or `KILL`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's nginx in the foreground (`daemon off; master_process off;`) with the
/// `http {}` block body `http_conf`, everything (pid, logs, temp paths) under `dir`.
/// Returns the guard once `listen` accepts connections.
pub fn start_nginx(dir: &Path, http_conf: &str, listen: SocketAddr) -> Peer {
    let nginx = require("nginx");
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n{http_conf}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut peer = Peer::spawn("nginx", cmd, Some(&dir.join("nginx.out")));
    peer.wait_tcp(listen, Duration::from_secs(10));
    peer
}

/// Sends `request` raw over TCP to `addr` and reads the reply until the server closes
/// (or `timeout` passes with no byte).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Accepts one connection on `listener`, records every byte the peer sends until it goes
/// quiet for `quiet`, answers `reply`, closes, and returns what it recorded.
pub fn capture_one(listener: &TcpListener, quiet: Duration, reply: &[u8]) -> Vec<u8> {
    let (mut s, _) = listener.accept().expect("accept");
    s.set_read_timeout(Some(quiet)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(reply);
    out
}

/// Where a crate's committed fixtures live: `<crate>/tests/data/<name>`.
pub fn fixture_path(manifest_dir: &str, name: &str) -> PathBuf {
    Path::new(manifest_dir).join("tests/data").join(name)
}

/// Whether the run should rewrite committed fixtures from live captures
/// (`UPDATE_FIXTURES=1`).
pub fn updating_fixtures() -> bool {
    std::env::var_os("UPDATE_FIXTURES").is_some_and(|v| v == "1")
}

/// An HTTP/1.x response read off the wire by [`raw_exchange`], with its body de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header lines, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked when the response was chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Parses a whole response; panics (a test failure) when it is not one.
    pub fn parse(raw: &[u8]) -> Self {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no end of head in {:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(300)])
                )
            });
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let rest = &raw[end + 4..];
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_vec()
        };
        Self {
            status,
            headers,
            body,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            panic!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        b = &b[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A global allocator that counts allocations, for tests that prove a code path does not
/// allocate. Declare it in the test binary (one test per binary, so no other thread
/// allocates meanwhile):
/// `#[global_allocator] static A: testkit::CountingAlloc = testkit::CountingAlloc::new();`
#[derive(Debug)]
pub struct CountingAlloc {
    count: std::sync::atomic::AtomicUsize,
}

impl CountingAlloc {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            count: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Allocations so far.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `System` unchanged with the caller's arguments, so
// `System`'s guarantees carry over; the counter has no effect on the memory handed out.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}
