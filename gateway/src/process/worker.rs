//! One worker process: forked by the master, serves the inherited listeners until it is
//! told to stop, reporting to the master through a pipe.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use pyo3::prelude::*;
use wsgi_host::WsgiHost;

use super::balance::Seat;
use super::sys;
use crate::config::Options;
use crate::listen::StdListener;
use crate::server::{Conn, Proto, Stack};

/// What a worker starts from (all of it inherited from the master by `fork`).
pub(crate) struct Start<'a> {
    /// 1-based slot number (stable across respawns).
    pub(crate) id: usize,
    pub(crate) options: &'a Options,
    pub(crate) listeners: &'a [(&'a StdListener, Proto)],
    /// The loaded app (fork after load), or `None` to load it here (`--lazy-apps`).
    pub(crate) app: Option<&'a Py<PyAny>>,
    /// The write end of this worker's pipe to the master.
    pub(crate) report: std::fs::File,
    /// Requests before this worker asks to be recycled.
    pub(crate) max_requests: Option<u64>,
    /// A front process: serves `--http-to` listeners, without Python.
    pub(crate) front: bool,
    /// The master's pid (the parent this worker must outlive no longer than a moment).
    pub(crate) master: nix::unistd::Pid,
    /// This worker's seat in the connection balance of the workers (none: it accepts
    /// whenever it can).
    pub(crate) seat: Option<Seat>,
}

/// Lines a worker sends the master.
pub(crate) mod msg {
    pub(crate) const READY: &str = "ready";
    pub(crate) const STAT: &str = "stat";
    pub(crate) const RETIRE: &str = "retire";
    pub(crate) const RELOAD: &str = "reload";
}

/// Runs the worker and exits the process; never returns.
pub(crate) fn run(start: Start<'_>) -> ! {
    let code = match serve(start) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("worker: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(start: Start<'_>) -> anyhow::Result<()> {
    let Start {
        id,
        options: o,
        listeners,
        app,
        report,
        max_requests,
        front,
        master,
        seat,
    } = start;
    let app = app.filter(|_| !front); // the front runs no Python
    crate::access::set_worker(id);
    // The master blocks the signals it reads from a signalfd: a worker wants them back.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // The master handles Ctrl-C and SIGHUP for everyone; a worker stops on SIGTERM, which
    // it also gets if the master dies.
    sys::ignore(Signal::SIGINT)?;
    sys::ignore(Signal::SIGHUP)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // A master that died between the fork and the line above sent no signal: an orphan
    // stops here rather than serve (and hold the sockets) forever.
    if nix::unistd::getppid() != master {
        tracing::warn!("worker {id}: the master is gone: exiting");
        return Ok(());
    }
    sys::install_wake_handler()?;
    // Before any thread starts: the runtime's and Python's inherit the binding.
    let one_core = super::bind_cores(
        o,
        id,
        app.is_some() || (!front && crate::server::needs_app(o)),
    );
    let report = Arc::new(std::sync::Mutex::new(report));
    let send = {
        move |line: &str| {
            // The master may be gone (a reload re-executes it): nothing to do then.
            let mut r = report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = r.write_all(format!("{line}\n").as_bytes());
        }
    };

    let host = match app {
        Some(app) => {
            let app = Python::attach(|py| app.clone_ref(py));
            Some(WsgiHost::from_callable(app, crate::server::host_options(o)))
        }
        None if crate::server::needs_app(o) && !front => {
            let spec = crate::server::app_spec(o)?;
            Some(WsgiHost::start(&spec, crate::server::host_options(o))?)
        }
        None => None,
    };
    if host.is_some() {
        crate::alloc::tune_mimalloc();
    }
    // The cores are shared by the workers: a runtime thread per core each would have
    // 2N threads fight for N cores.
    let processes = if front {
        1
    } else {
        o.processes.unwrap_or(1).max(1)
    };
    // This thread stays in `block_on` (below) while the worker serves, so a current-thread
    // runtime is driven the whole time.
    let runtime = crate::server::build_runtime(
        crate::server::runtime_threads(processes, host.is_some()),
        host.is_some(),
        one_core && host.is_some(),
    )?;
    let stack = {
        let _runtime = runtime.enter(); // for the site's background tasks
        Stack::new(o, host)?
    };
    let acceptors = Arc::new(Acceptors::default());
    if let Some(seat) = seat {
        seat.accepting(true);
    }
    for (n, (l, proto)) in listeners.iter().enumerate() {
        let l = match l {
            StdListener::Tcp(t) => StdListener::Tcp(t.try_clone()?),
            StdListener::Unix(u, p) => StdListener::Unix(u.try_clone()?, p.clone()),
        };
        let (stack, a, rt, proto) = (
            stack.clone(),
            acceptors.clone(),
            runtime.handle().clone(),
            *proto,
        );
        let thread = std::thread::Builder::new()
            .name(format!("accept-{n}"))
            .spawn(move || accept_loop(&l, proto, &stack, &a.stop, seat, &rt))?;
        acceptors.lock().push(thread);
    }
    send(msg::READY);
    let role = if front { "front" } else { "worker" };
    tracing::info!("{role} {id} (pid {}) ready", std::process::id());

    // Reports for the master: counters, and asking to be recycled.
    {
        let (stack, acceptors, send) = (stack.clone(), acceptors.clone(), send.clone());
        std::thread::Builder::new()
            .name("report".into())
            .spawn(move || report_loop(&stack, &acceptors, max_requests, &send))?;
    }
    if id == 1 {
        if let Some(every) = o.py_autoreload.filter(|&n| n > 0) {
            let send = send.clone();
            std::thread::Builder::new()
                .name("autoreload".into())
                .spawn(move || autoreload(Duration::from_secs(every), &send))?;
        }
    }

    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        anyhow::Ok(())
    })?;
    // Graceful stop: no new connections, the accepted ones finish.
    if let Some(seat) = seat {
        seat.accepting(false);
    }
    acceptors.stop();
    tracing::info!(
        "{role} {id} (pid {}) stopping: {} connection(s) to finish",
        std::process::id(),
        stack.connections()
    );
    let mercy = Duration::from_secs(o.worker_reload_mercy);
    if !runtime.block_on(stack.drain(mercy)) {
        tracing::warn!("worker {id}: requests still running after {mercy:?}: stopped");
    }
    Ok(())
}

/// Accepts with a blocking `accept` on the shared socket: the kernel wakes one waiting
/// thread per connection (no thundering herd), and with a `seat` a worker with more
/// connections than another waits before it accepts again (see [`super::balance`]).
fn accept_loop(
    l: &StdListener,
    proto: Proto,
    stack: &Arc<Stack>,
    stop: &AtomicBool,
    seat: Option<Seat>,
    rt: &tokio::runtime::Handle,
) {
    while !stop.load(Ordering::SeqCst) {
        if let Some(seat) = seat {
            seat.wait_turn(|| stop.load(Ordering::SeqCst));
        }
        // socket2's accept returns EINTR (std's retries it), so the stop signal wakes it.
        let accepted = socket2::SockRef::from(&l.as_fd())
            .accept()
            .map(|(s, peer)| match l {
                StdListener::Tcp(_) => Conn::Tcp(
                    s.into(),
                    peer.as_socket()
                        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                ),
                StdListener::Unix(..) => Conn::Unix(s.into()),
            });
        match accepted {
            // Even when stopping: a connection accepted is served.
            Ok(c) => stack.spawn_counted(c, proto, rt, seat.map(Seat::opened)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The accept threads of a worker, and how to stop them.
#[derive(Default)]
struct Acceptors {
    stop: AtomicBool,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Acceptors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::thread::JoinHandle<()>>> {
        self.threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting: sets the flag, then interrupts each thread's `accept` until it
    /// has returned (a connection accepted meanwhile is still served). The lock is held
    /// throughout, so a second caller (SIGTERM while a retiring worker stops itself)
    /// returns only once every accept thread is gone and has handed its last connection
    /// over: draining before that would exit with a just-accepted request unserved.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut guard = self.lock();
        for a in guard.drain(..) {
            let thread = a.as_pthread_t();
            while !a.is_finished() {
                let _ = nix::sys::pthread::pthread_kill(thread, sys::WAKE);
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = a.join();
        }
    }
}

/// Every 10 ms: tells the master the counters when they change; after `max-requests`
/// or a harakiri, stops accepting and asks to be recycled.
fn report_loop(
    stack: &Stack,
    acceptors: &Acceptors,
    max_requests: Option<u64>,
    send: &dyn Fn(&str),
) {
    let mut last = None;
    let mut asked = false;
    while !acceptors.stop.load(Ordering::SeqCst) || !asked {
        std::thread::sleep(Duration::from_millis(10));
        let s = stack.host().map(WsgiHost::stats).unwrap_or_default();
        if last != Some(s) {
            send(&format!("{} {} {}", msg::STAT, s.requests, s.busy));
            last = Some(s);
        }
        if asked {
            continue;
        }
        let reason = if s.harakiri > 0 {
            "harakiri"
        } else if max_requests.is_some_and(|m| s.requests >= m) {
            "max-requests"
        } else if acceptors.stop.load(Ordering::SeqCst) {
            return; // stopping for another reason
        } else {
            continue;
        };
        // The replacement is forked at once; this worker takes no new connection.
        send(&format!("{} {reason}", msg::RETIRE));
        acceptors.stop();
        asked = true;
    }
}

/// `--py-autoreload N`: every N seconds, compares the modification times of every
/// imported module's file with the first look; on a change asks the master to reload.
fn autoreload(every: Duration, send: &dyn Fn(&str)) {
    const SCAN: &std::ffi::CStr = c"
import os, sys
def scan():
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, '__file__', None)
        if not f:
            continue
        if f.endswith(('.pyc', '.pyo')):
            f = f[:-1]
        try:
            out[f] = os.stat(f).st_mtime_ns
        except OSError:
            pass
    return out
";
    let scan = || -> PyResult<std::collections::HashMap<String, i64>> {
        Python::attach(|py| {
            let m = PyModule::from_code(py, SCAN, c"gateway_autoreload.py", c"gateway_autoreload")?;
            m.getattr("scan")?.call0()?.extract()
        })
    };
    let Ok(first) = scan() else {
        tracing::error!("py-autoreload: cannot list the modules");
        return;
    };
    loop {
        std::thread::sleep(every);
        let Ok(now) = scan() else { continue };
        let changed = now
            .iter()
            .find(|(f, t)| first.get(*f).is_some_and(|t0| t0 != *t))
            .map(|(f, _)| f.clone());
        if let Some(f) = changed {
            tracing::info!("py-autoreload: {f} changed, reloading");
            send(msg::RELOAD);
            return;
        }
    }
}
