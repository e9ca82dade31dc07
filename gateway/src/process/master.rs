//! The master: binds, loads the app once, forks and supervises the workers.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use pyo3::prelude::*;

use super::balance::Balance;
use super::sys::{self, Forked};
use super::worker::{self, msg};
use crate::config::Options;
use crate::listen::{self, ListenAddr, StdListener};
use crate::server::{Proto, app_spec, drop_privileges, listen_addrs};

/// Environment variables a reloading master passes to its new image.
const ENV_FDS: &str = "GATEWAY_LISTEN_FDS";
const ENV_OLD: &str = "GATEWAY_OLD_WORKERS";

/// Respawn delays after quick deaths: 0.1 s doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that dies sooner than this after its start (or before it is ready) died
/// "quickly": its slot's respawn delay grows.
const QUICK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Serving,
    /// Asked to stop (SIGTERM sent); a new worker has its slot.
    Retiring {
        reason: String,
        since: Instant,
    },
    /// Of the generation before a reload: serves until its replacement is ready.
    Old,
}

#[derive(Debug)]
struct Worker {
    id: usize,
    pid: Pid,
    pipe: Option<std::fs::File>,
    buf: Vec<u8>,
    spawned: Instant,
    ready: bool,
    requests: u64,
    busy: usize,
    state: State,
    killed: bool,
    /// Its seat in [`Master::balance`].
    seat: Option<usize>,
}

#[derive(Debug, Default)]
struct Slot {
    quick_deaths: u32,
    next_spawn: Option<Instant>,
    respawns: u64,
}

/// A configured listen address and its socket (shared by the processes that serve it).
struct Listen {
    addr: ListenAddr,
    proto: Proto,
    socket: StdListener,
}

struct Master<'a> {
    o: &'a Options,
    listeners: Vec<Listen>,
    app: Option<Py<PyAny>>,
    /// False after a reload whose app failed to load: the old workers go on serving.
    can_spawn: bool,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    signals: Option<SignalFd>,
    stats: Option<StdListener>,
    stopping: Option<Instant>,
    mercy: Duration,
    started: Instant,
    last_rss_check: Instant,
    /// Whether "WSGI app ready" was logged (once all workers first were).
    announced: bool,
    /// The slot of the front process, if the front runs apart from the workers.
    front_slot: Option<usize>,
    /// The workers' connection counts, shared with them (none if it could not be
    /// mapped: the workers then accept whenever they can).
    balance: Option<Balance>,
}

/// Whether a front process serves the `--http-to` listeners apart from the app workers.
fn split_front(o: &Options) -> bool {
    let addrs = listen_addrs(o).unwrap_or_default();
    addrs.iter().any(|(_, p)| p.is_front()) && addrs.iter().any(|(_, p)| !p.is_front())
}

/// Runs the master until SIGTERM/SIGINT; SIGHUP reloads gracefully.
pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let processes = o.processes.unwrap_or(1).max(1);
    // Before the workers are forked: they inherit the access log (and its file).
    crate::access::install(crate::access::from_options(o)?);
    if let Some((_, warnings)) = crate::server::load_site(o)? {
        for w in warnings {
            tracing::warn!("{w}");
        }
    }
    let inherited = inherited_fds()?;
    let old = old_workers();
    let reloading = !old.is_empty() || !inherited.is_empty();

    // Signals are read from a signalfd: block them before any child exists.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ] {
        mask.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let mut inherited = inherited;
    let mut listeners = Vec::new();
    for (addr, proto) in listen_addrs(o)? {
        // One socket for all the workers, who take turns (see `balance`). A reloaded
        // image inherits it (the first one per address is kept, any other closed below).
        // The front's listeners belong to the front process alone when it runs apart.
        let name = addr.to_string();
        let socket = match inherited.iter().position(|(a, _)| *a == name) {
            Some(i) => {
                let (_, fd) = inherited.remove(i);
                match &addr {
                    ListenAddr::Tcp(_) => StdListener::Tcp(fd.into()),
                    ListenAddr::Unix(p) => StdListener::Unix(fd.into(), p.clone()),
                }
            }
            None => listen::bind_std(&addr, o.chmod_socket.as_deref())
                .with_context(|| format!("binding {addr}"))?,
        };
        tracing::info!("{proto:?} listening on {addr}");
        listeners.push(Listen {
            addr,
            proto,
            socket,
        });
    }
    drop(inherited); // addresses no longer configured: closed
    let stats = match &o.stats {
        Some(a) => {
            let addr = ListenAddr::parse(a)?;
            let l =
                listen::bind_std(&addr, None).with_context(|| format!("binding stats {addr}"))?;
            match &l {
                StdListener::Tcp(t) => t.set_nonblocking(true)?,
                StdListener::Unix(u, _) => u.set_nonblocking(true)?,
            }
            tracing::info!("stats server on {addr}");
            Some(l)
        }
        None => None,
    };
    if !reloading || nix::unistd::geteuid().is_root() {
        drop_privileges(o)?;
    }
    if let Some(pidfile) = &o.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pidfile.display()))?;
    }

    let mut can_spawn = true;
    let app = if o.lazy_apps || !crate::server::needs_app(o) {
        None
    } else {
        match app_spec(o)?.load() {
            Ok(app) => Some(app),
            Err(e) if reloading => {
                tracing::error!(
                    "reload failed, the old workers go on serving (fix the app and send SIGHUP again): {e}"
                );
                can_spawn = false;
                None
            }
            Err(e) => return Err(e.into()),
        }
    };
    if app.is_some() {
        tracing::info!("WSGI app loaded in the master (pid {})", std::process::id());
        // What the app loaded stays shared with the workers, and their collections skip it.
        match wsgi_host::freeze_for_fork() {
            Ok(n) => tracing::info!("{n} Python objects frozen (gc.freeze) for the workers"),
            Err(e) => tracing::warn!("gc.freeze() failed: {e}"),
        }
    }

    let now = Instant::now();
    let mut m = Master {
        o,
        listeners,
        app,
        can_spawn,
        workers: old
            .into_iter()
            .map(|(id, pid)| Worker {
                id,
                pid,
                pipe: None,
                buf: Vec::new(),
                spawned: now,
                ready: true,
                requests: 0,
                busy: 0,
                state: State::Old,
                killed: false,
                seat: None, // in the previous image's balance
            })
            .collect(),
        // Two seats per process: a retiring worker keeps its seat while its replacement
        // takes another.
        balance: Balance::new(2 * processes)
            .inspect_err(|e| tracing::warn!("connection balance unavailable: {e}"))
            .ok(),
        // A front (`--http` with `--http-to`) beside app listeners runs in a process of its
        // own (the last slot), as uWSGI's HTTP router does; the workers serve the app.
        front_slot: split_front(o).then_some(processes + 1),
        slots: (0..processes + usize::from(split_front(o)))
            .map(|_| Slot::default())
            .collect(),
        signals: Some(signals),
        stats,
        stopping: None,
        mercy: Duration::from_secs(o.worker_reload_mercy.max(1)),
        started: now,
        last_rss_check: now,
        announced: false,
    };
    tracing::info!(
        "master (pid {}) starting {processes} worker(s) with {} thread(s) each{}",
        std::process::id(),
        o.threads.unwrap_or(1).max(1),
        if o.lazy_apps { ", lazy apps" } else { "" }
    );
    m.run()?;
    if o.vacuum {
        for l in &m.listeners {
            if let ListenAddr::Unix(p) = &l.addr {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(pidfile) = &o.pidfile {
            let _ = std::fs::remove_file(pidfile);
        }
    }
    tracing::info!("master stopped");
    Ok(())
}

impl Master<'_> {
    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            self.spawn_due()?;
            self.wait_for_events();
            self.read_signals()?;
            self.reap();
            self.read_pipes();
            self.answer_stats();
            self.check_timers();
            if self.stopping.is_some() && self.workers.is_empty() {
                return Ok(());
            }
        }
    }

    fn wait_for_events(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = Vec::new();
        if let Some(s) = &self.signals {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        for w in &self.workers {
            if let Some(p) = &w.pipe {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        if let Some(l) = &self.stats {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(100u16));
    }

    fn role(&self, id: usize) -> &'static str {
        if self.front_slot == Some(id) {
            "front"
        } else {
            "worker"
        }
    }

    fn max_requests(&self, id: usize) -> Option<u64> {
        if self.front_slot == Some(id) {
            return None;
        }
        let delta = self.o.max_requests_delta.unwrap_or(0);
        self.o
            .max_requests
            .filter(|&m| m > 0)
            .map(|m| m + delta * id as u64)
    }

    fn serving(&self, id: usize) -> bool {
        self.workers
            .iter()
            .any(|w| w.id == id && w.state == State::Serving)
    }

    fn spawn_due(&mut self) -> anyhow::Result<()> {
        if self.stopping.is_some() || !self.can_spawn {
            return Ok(());
        }
        let now = Instant::now();
        for id in 1..=self.slots.len() {
            if self.serving(id) || self.slots[id - 1].next_spawn.is_some_and(|t| t > now) {
                continue;
            }
            self.spawn(id)?;
        }
        Ok(())
    }

    fn spawn(&mut self, id: usize) -> anyhow::Result<()> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // A free seat in the balance for an app worker (the front process is alone on
        // its listeners).
        let seat = match &self.balance {
            Some(b) if self.front_slot != Some(id) => (0..b.len())
                .find(|n| self.workers.iter().all(|w| w.seat != Some(*n)))
                .inspect(|&n| b.clear(n)),
            _ => None,
        };
        let master = nix::unistd::getpid();
        match sys::fork()? {
            Forked::Child => {
                drop(read);
                // The child keeps only its listeners and its end of its pipe.
                self.signals = None;
                self.stats = None;
                self.workers.clear();
                // The front process takes the front's listeners, the workers the rest.
                let front = self.front_slot == Some(id);
                let listeners: Vec<(&StdListener, Proto)> = self
                    .listeners
                    .iter()
                    .filter(|l| self.front_slot.is_none() || l.proto.is_front() == front)
                    .map(|l| (&l.socket, l.proto))
                    .collect();
                let seat = seat.and_then(|n| self.balance.as_ref()?.seat(n));
                let start = worker::Start {
                    id,
                    options: self.o,
                    listeners: &listeners,
                    app: self.app.as_ref(),
                    report: std::fs::File::from(write),
                    max_requests: self.max_requests(id),
                    front,
                    master,
                    seat,
                };
                worker::run(start)
            }
            Forked::Parent(pid) => {
                drop(write);
                fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                let role = self.role(id);
                let slot = &mut self.slots[id - 1];
                slot.next_spawn = None;
                if slot.respawns > 0 {
                    tracing::info!("respawned {role} {id} (pid {pid})");
                } else {
                    tracing::info!("spawned {role} {id} (pid {pid})");
                }
                slot.respawns += 1;
                self.workers.push(Worker {
                    id,
                    pid,
                    pipe: Some(std::fs::File::from(read)),
                    buf: Vec::new(),
                    spawned: Instant::now(),
                    ready: false,
                    requests: 0,
                    busy: 0,
                    state: State::Serving,
                    killed: false,
                    seat,
                });
                Ok(())
            }
        }
    }

    fn read_signals(&mut self) -> anyhow::Result<()> {
        loop {
            let Some(sigfd) = &self.signals else {
                return Ok(());
            };
            let Ok(Some(info)) = sigfd.read_signal() else {
                return Ok(());
            };
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {} // reaped every turn
                Signal::SIGHUP => self.reload(),
                Signal::SIGINT | Signal::SIGTERM | Signal::SIGQUIT => {
                    if self.stopping.is_some() {
                        if sig == Signal::SIGINT {
                            tracing::warn!("second SIGINT: killing the workers");
                            for w in &mut self.workers {
                                let _ = kill(w.pid, Signal::SIGKILL);
                                w.killed = true;
                            }
                        }
                        continue;
                    }
                    tracing::info!(
                        "{sig}: stopping gracefully ({} worker(s), up to {:?})",
                        self.workers.len(),
                        self.mercy
                    );
                    self.stopping = Some(Instant::now() + self.mercy);
                    for w in &self.workers {
                        let _ = kill(w.pid, Signal::SIGTERM);
                    }
                }
                _ => {}
            }
        }
    }

    /// SIGHUP: new workers with freshly loaded code take over; the old ones finish their
    /// requests. With the app loaded in the master, the master re-executes itself (same
    /// pid, listening sockets inherited) to load the new code.
    fn reload(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!("SIGHUP: graceful reload");
        if self.o.lazy_apps && self.can_spawn {
            for w in &mut self.workers {
                if w.state == State::Serving {
                    w.state = State::Old;
                }
            }
            for s in &mut self.slots {
                s.next_spawn = None;
                s.quick_deaths = 0;
            }
            return;
        }
        if let Err(e) = self.reexec() {
            tracing::error!("reload failed, going on as before: {e:#}");
        }
    }

    fn reexec(&mut self) -> anyhow::Result<()> {
        let mut fds = String::new();
        for l in &self.listeners {
            let s = &l.socket;
            fcntl(s.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
            fds.push_str(&format!("{} {}\n", s.as_fd().as_raw_fd(), l.addr));
        }
        let old: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{}:{}", w.id, w.pid))
            .collect();
        let exe = program();
        let run = |exe: &std::path::Path| {
            let mut args = std::env::args_os();
            let mut cmd = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                cmd.arg0(arg0);
            }
            cmd.args(args)
                .env(ENV_FDS, &fds)
                .env(ENV_OLD, old.join(","))
                .exec()
        };
        let mut tried = exe.as_path();
        let mut err = run(tried);
        if tried != std::path::Path::new(RUNNING_IMAGE) {
            // The file went away between the look and the exec (a build or an upgrade
            // replacing it): this image then goes on.
            tracing::warn!(
                "executing {}: {err}; running this image again",
                tried.display()
            );
            tried = std::path::Path::new(RUNNING_IMAGE);
            err = run(tried);
        }
        // exec returned: it failed. Back to close-on-exec.
        for l in &self.listeners {
            let _ = fcntl(l.socket.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
        Err(err).with_context(|| format!("executing {}", tried.display()))
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}")),
                WaitStatus::Signaled(pid, sig, _) => (pid, format!("killed by {sig}")),
                _ => continue,
            };
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let w = self.workers.swap_remove(i);
            if let (Some(b), Some(n)) = (&self.balance, w.seat) {
                b.clear(n); // counted out even if it died holding connections
            }
            match &w.state {
                State::Retiring { reason, .. } => {
                    tracing::info!(
                        "{} {} (pid {pid}) retired ({reason}, {how})",
                        self.role(w.id),
                        w.id
                    );
                }
                State::Old => {
                    tracing::info!("old worker {} (pid {pid}) exited ({how})", w.id);
                }
                State::Serving if self.stopping.is_some() => {
                    tracing::info!("{} {} (pid {pid}) stopped ({how})", self.role(w.id), w.id);
                }
                State::Serving => {
                    let Some(slot) = self.slots.get_mut(w.id - 1) else {
                        continue;
                    };
                    let quick = !w.ready || w.spawned.elapsed() < QUICK;
                    slot.quick_deaths = if quick { slot.quick_deaths + 1 } else { 0 };
                    let delay = match slot.quick_deaths {
                        0 | 1 => Duration::ZERO,
                        n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2))
                            .min(MAX_BACKOFF),
                    };
                    slot.next_spawn = Some(Instant::now() + delay);
                    tracing::error!(
                        "{} {} (pid {pid}) died ({how}){}; respawning in {:.1} s",
                        self.role(w.id),
                        w.id,
                        if w.ready { "" } else { " before it was ready" },
                        delay.as_secs_f64()
                    );
                }
            }
        }
    }

    fn read_pipes(&mut self) {
        let mut lines = Vec::new();
        for w in &mut self.workers {
            let Some(pipe) = &mut w.pipe else { continue };
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => {
                        w.pipe = None;
                        break;
                    }
                    Ok(n) => w.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            while let Some(end) = w.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = w.buf.drain(..=end).collect();
                lines.push((w.pid, String::from_utf8_lossy(&line).trim().to_owned()));
            }
        }
        for (pid, line) in lines {
            self.on_message(pid, &line);
        }
    }

    fn on_message(&mut self, pid: Pid, line: &str) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some(msg::READY) => {
                self.workers[i].ready = true;
                let id = self.workers[i].id;
                if self.workers[i].state == State::Serving {
                    // A new generation's worker took over: its predecessor may go.
                    self.retire_old(Some(id));
                    let all_ready = (1..=self.slots.len()).all(|id| {
                        self.workers
                            .iter()
                            .any(|w| w.id == id && w.state == State::Serving && w.ready)
                    });
                    if all_ready {
                        self.retire_old(None);
                        if !self.announced {
                            self.announced = true;
                            let workers = self.slots.len() - usize::from(self.front_slot.is_some());
                            if self.front_slot.is_some() {
                                tracing::info!(
                                    "WSGI app ready: {workers} worker(s) and a front serving"
                                );
                            } else if crate::server::needs_app(self.o) {
                                tracing::info!("WSGI app ready: {workers} worker(s) serving");
                            } else {
                                tracing::info!("ready: {workers} worker(s) serving");
                            }
                        }
                    }
                }
            }
            Some(msg::STAT) => {
                let mut n = words.filter_map(|w| w.parse::<u64>().ok());
                let w = &mut self.workers[i];
                w.requests = n.next().unwrap_or(w.requests);
                w.busy = n.next().map_or(w.busy, |b| b as usize);
            }
            Some(msg::RETIRE) => {
                let reason = words.collect::<Vec<_>>().join(" ");
                self.retire(i, &reason);
            }
            Some(msg::RELOAD) => self.reload(),
            _ => tracing::warn!("worker (pid {pid}) said {line:?}"),
        }
    }

    /// Stops the old generation's workers (of slot `id`, or all).
    fn retire_old(&mut self, id: Option<usize>) {
        let old: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                self.workers[i].state == State::Old && id.is_none_or(|id| self.workers[i].id == id)
            })
            .collect();
        for i in old {
            self.retire(i, "reload");
        }
    }

    /// Asks worker `i` to stop gracefully; a new worker takes its slot at once.
    fn retire(&mut self, i: usize, reason: &str) {
        let w = &mut self.workers[i];
        if matches!(w.state, State::Retiring { .. }) {
            return;
        }
        let was_serving = w.state == State::Serving;
        w.state = State::Retiring {
            reason: reason.to_owned(),
            since: Instant::now(),
        };
        let _ = kill(w.pid, Signal::SIGTERM);
        if was_serving {
            tracing::info!(
                "worker {} (pid {}) retiring ({reason}) after {} requests; a new worker takes its place",
                w.id,
                w.pid,
                w.requests
            );
            if let Some(slot) = self.slots.get_mut(w.id - 1) {
                slot.next_spawn = None;
            }
        } else {
            tracing::info!("old worker {} (pid {}) retiring ({reason})", w.id, w.pid);
        }
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            let overdue = match (&w.state, self.stopping) {
                (_, Some(deadline)) => now >= deadline,
                (State::Retiring { since, .. }, None) => now.duration_since(*since) >= self.mercy,
                _ => false,
            };
            if overdue && !w.killed {
                tracing::warn!(
                    "worker {} (pid {}) still running after {:?}: killed",
                    w.id,
                    w.pid,
                    self.mercy
                );
                let _ = kill(w.pid, Signal::SIGKILL);
                w.killed = true;
            }
        }
        if let Some(limit) = self.o.reload_on_rss.filter(|&mb| mb > 0) {
            if now.duration_since(self.last_rss_check) >= Duration::from_millis(500) {
                self.last_rss_check = now;
                let heavy: Vec<(usize, u64)> = self
                    .workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.state == State::Serving && w.ready)
                    .filter_map(|(i, w)| Some((i, rss_bytes(w.pid)?)))
                    .filter(|&(_, rss)| rss > limit * 1024 * 1024)
                    .collect();
                for (i, rss) in heavy {
                    self.retire(
                        i,
                        &format!("reload-on-rss: {} MB > {limit} MB", rss / (1024 * 1024)),
                    );
                }
            }
        }
    }

    fn answer_stats(&mut self) {
        let Some(l) = &self.stats else { return };
        loop {
            let doc = self.stats_json();
            let body = if self.o.stats_http {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                    doc.len()
                )
            } else {
                doc
            };
            let sent = match l {
                StdListener::Tcp(t) => t.accept().map(|(mut s, _)| {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = s.write_all(body.as_bytes());
                }),
                StdListener::Unix(u, _) => u.accept().map(|(mut s, _)| {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = s.write_all(body.as_bytes());
                }),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// uWSGI's stats document, with the fields this master knows.
    fn stats_json(&self) -> String {
        let mut workers: Vec<&Worker> = self.workers.iter().collect();
        workers.sort_by_key(|w| (w.id, w.spawned));
        let items: Vec<String> = workers
            .iter()
            .map(|w| {
                let status = match &w.state {
                    State::Serving if !w.ready => "starting",
                    State::Serving if w.busy > 0 => "busy",
                    State::Serving => "idle",
                    State::Retiring { .. } => "retiring",
                    State::Old => "old",
                };
                format!(
                    "{{\"id\":{},\"role\":\"{}\",\"pid\":{},\"requests\":{},\"status\":\"{status}\",\"busy_threads\":{},\"rss\":{},\"respawn_count\":{},\"running_time\":{}}}",
                    w.id,
                    self.role(w.id),
                    w.pid,
                    w.requests,
                    w.busy,
                    rss_bytes(w.pid).unwrap_or(0),
                    self.slots.get(w.id - 1).map_or(0, |s| s.respawns),
                    w.spawned.elapsed().as_secs()
                )
            })
            .collect();
        format!(
            "{{\"version\":\"{}\",\"pid\":{},\"uptime\":{},\"threads\":{},\"workers\":[{}]}}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.started.elapsed().as_secs(),
            self.o.threads.unwrap_or(1).max(1),
            items.join(",")
        )
    }
}

/// The resident set size of `pid`, from /proc.
pub(crate) fn rss_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Listening sockets a reloading master passed to this image: (address, descriptor).
fn inherited_fds() -> anyhow::Result<Vec<(String, OwnedFd)>> {
    let Some(list) = sys::take_env(ENV_FDS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in list.lines().filter(|l| !l.is_empty()) {
        let Some((fd, addr)) = line.split_once(' ') else {
            continue;
        };
        let fd: i32 = fd.parse().context("inherited descriptor")?;
        let fd = sys::adopt_fd(fd).with_context(|| format!("inherited socket for {addr}"))?;
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        out.push((addr.to_owned(), fd));
    }
    Ok(out)
}

/// The previous generation's workers (slot, pid), still running, after a reload.
fn old_workers() -> Vec<(usize, Pid)> {
    sys::take_env(ENV_OLD)
        .unwrap_or_default()
        .split(',')
        .filter_map(|w| {
            let (id, pid) = w.split_once(':')?;
            Some((id.parse().ok()?, Pid::from_raw(pid.parse().ok()?)))
        })
        .collect()
}

/// The running program's image, which Linux keeps reachable even once its file is gone.
const RUNNING_IMAGE: &str = "/proc/self/exe";

/// What a reload executes: the file now at the path this master was started from, so
/// that an upgraded binary takes over as it does on uWSGI's reload; when nothing is at
/// that path any more (deleted, or being replaced this instant), the running image.
///
/// Linux names a replaced or deleted program `PATH (deleted)`; the suffix is taken off
/// to find what is at the path now.
fn program() -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let Ok(exe) = std::env::current_exe() else {
        return RUNNING_IMAGE.into();
    };
    if exe.is_file() {
        return exe;
    }
    let bytes = exe.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(path) if std::path::Path::new(std::ffi::OsStr::from_bytes(path)).is_file() => {
            std::ffi::OsStr::from_bytes(path).into()
        }
        _ => RUNNING_IMAGE.into(),
    }
}
