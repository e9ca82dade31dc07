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
