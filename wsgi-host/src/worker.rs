//! The pool of Python threads and the life of one request inside it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::sync::oneshot;

use crate::environ::{self, Statics};
use crate::input::WsgiInput;
use crate::interpreter::traceback;
use crate::respond::{
    FileWrapper, HeadTx, Responder, Shared, StartResponse, block_bytes, lock, send_chunk,
};
use crate::{
    AppSpec, BodyChunk, HostError, HostOptions, HostStats, LoadError, WsgiRequest, WsgiResponse,
};

/// Response blocks a Python thread may have sent ahead of the client (the thread waits,
/// with the GIL released, when this many are queued). With 4, a generator of 16 blocks
/// of 64 KiB waited about 20 times per response (20 context switches); with 16 it
/// finishes and moves on (one), and streams 15-20 % more responses per second. A slow
/// client holds at most this many blocks in memory, where uWSGI's thread would wait in
/// `write` with the kernel's socket buffer (up to 4 MB on Linux) holding them.
const BODY_BLOCKS: usize = 16;

struct Job {
    request: WsgiRequest,
    id: u64,
    reply: HeadTx,
}

/// The requests waiting for a Python thread.
///
/// Only a thread that holds the GIL takes a request. A thread that took one first and
/// then waited for the GIL could wait for seconds (measured: Django, two threads, up to
/// 2 s, p99 over 100 ms): CPython hands the GIL over by force only when its holder has
/// kept it for a whole switch interval, and a holder that releases and takes it again
/// between requests never has. Here idle threads wait with the GIL released until a
/// request is queued, then take the GIL and the oldest request; a thread keeps the GIL
/// from one request to the next while requests are waiting. A request wakes a thread
/// only when no thread would otherwise see it soon (see [`QueueState::pick_waker`]).
struct JobQueue {
    state: Mutex<QueueState>,
    /// One per thread, so a request wakes exactly the thread chosen for it.
    wake: Vec<std::sync::Condvar>,
    /// How many requests are queued, readable without the lock (for a thread spinning
    /// briefly before it sleeps).
    queued: AtomicUsize,
    capacity: usize,
    /// [`HostOptions::spin`].
    spin: bool,
}

struct QueueState {
    jobs: std::collections::VecDeque<Job>,
    /// The host was dropped: threads finish when the queue is empty.
    closed: bool,
    /// Python threads still serving (none: nothing would ever take a request).
    serving: usize,
    /// Threads in a request: each takes the next one itself when it is done.
    running: usize,
    /// Threads asleep until a request comes, the most recent last (a request wakes the
    /// last one: its caches are the warmest).
    idle: Vec<usize>,
    /// Threads that look again on their own every [`Admission::WATCH`] while a thread
    /// is in a request (they start one beside it when it waits, see [`Admission`]).
    watching: Vec<usize>,
}

impl QueueState {
    /// The thread to wake for a request just queued, if any. With no thread in a
    /// request, an idle one (else a watching one, at once). With threads in requests,
    /// nobody when a thread is watching already (requests arrive in bursts: waking a
    /// thread per request that then finds the serving thread still running would cost
    /// two context switches each); else an idle thread, which becomes the watcher.
    fn pick_waker(&mut self) -> Option<usize> {
        if self.running == 0 {
            self.idle.pop().or_else(|| self.watching.last().copied())
        } else if self.watching.is_empty() {
            self.idle.pop()
        } else {
            None
        }
    }
}

impl JobQueue {
    fn new(capacity: usize, threads: usize, spin: bool) -> Self {
        Self {
            state: Mutex::new(QueueState {
                jobs: std::collections::VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
                serving: threads,
                running: 0,
                idle: Vec::with_capacity(threads),
                watching: Vec::with_capacity(threads),
            }),
            wake: (0..threads).map(|_| std::sync::Condvar::new()).collect(),
            queued: AtomicUsize::new(0),
            capacity,
            spin,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a request, waking a thread only when one must (see
    /// [`QueueState::pick_waker`]; a futex wake is a system call, and a wake-up for a
    /// thread that then finds nothing to do is two context switches).
    fn push(&self, job: Job) -> Result<(), HostError> {
        let mut s = self.lock();
        if s.closed || s.serving == 0 {
            return Err(HostError::Closed);
        }
        if s.jobs.len() >= self.capacity {
            return Err(HostError::Overloaded);
        }
        s.jobs.push_back(job);
        self.queued.store(s.jobs.len(), Ordering::Relaxed);
        let wake = s.pick_waker();
        drop(s);
        if let Some(t) = wake {
            self.wake[t].notify_one();
        }
        Ok(())
    }

    /// The caller (holding the GIL) finished a request (`finished`) and takes the
    /// oldest one waiting, if `admit` lets it: [`Admit::Alone`] only when the count of
    /// threads in requests agrees (another thread may have taken one and not yet
    /// started it).
    fn next(&self, finished: bool, admit: Admit) -> Option<Job> {
        let mut s = self.lock();
        if finished {
            s.running -= 1;
        }
        let job = if admit.lets_in(s.running) {
            s.jobs.pop_front()
        } else {
            None
        };
        if job.is_some() {
            s.running += 1;
            self.queued.store(s.jobs.len(), Ordering::Relaxed);
        }
        job
    }

    /// Blocks (call it with the GIL released) until thread `me` may take a request:
    /// one is queued and, beside a thread in a request, [`Admission`] lets it start
    /// (true); or the host is gone and nothing is left (false). No Python runs here, so
    /// a thread that is kept out never takes the GIL from the one serving.
    fn await_turn(&self, me: usize, admission: &mut Admission, watch: &Watch) -> bool {
        let mut s = self.lock();
        loop {
            if !s.jobs.is_empty() {
                let admit = if s.running == 0 {
                    Admit::Start
                } else {
                    drop(s);
                    let admit = admission.check(watch, me);
                    s = self.lock();
                    admit
                };
                if admit.lets_in(s.running) && !s.jobs.is_empty() {
                    // More requests than this thread takes: someone must look at them.
                    if s.jobs.len() > 1
                        && let Some(t) = s.pick_waker()
                    {
                        self.wake[t].notify_one();
                    }
                    return true;
                }
            } else if s.closed {
                return false;
            }
            if s.running > 0 || !s.jobs.is_empty() {
                s.watching.push(me);
                s = self.wake[me]
                    .wait_timeout(s, admission.every)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                s.watching.retain(|&t| t != me);
            } else {
                // Requests come in bursts a few microseconds apart: look for the next
                // one for a moment (spinning, then yielding the core) before sleeping,
                // which costs the sender a futex wake and this thread a context switch
                // (when a core is free for it: HostOptions::spin).
                if self.spin {
                    drop(s);
                    let backoff = crossbeam_utils::Backoff::new();
                    while !backoff.is_completed() && self.queued.load(Ordering::Relaxed) == 0 {
                        backoff.snooze();
                    }
                    s = self.lock();
                    if !s.jobs.is_empty() || s.closed {
                        continue;
                    }
                }
                s.idle.push(me);
                while s.idle.contains(&me) && !s.closed {
                    s = self.wake[me]
                        .wait(s)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                s.idle.retain(|&t| t != me);
            }
        }
    }

    /// Every request still waiting.
    fn drain(&self) -> Vec<Job> {
        let mut s = self.lock();
        self.queued.store(0, Ordering::Relaxed);
        s.jobs.drain(..).collect()
    }

    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.idle.clear();
        drop(s);
        for w in &self.wake {
            w.notify_all();
        }
    }

    /// A thread stopped serving.
    fn leave(&self) {
        self.lock().serving -= 1;
    }
}

/// Counts a Python thread out of its [`JobQueue`] when the thread ends.
struct Leave<'q>(&'q JobQueue);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A WSGI application running on a pool of Python threads.
///
/// Cloning is cheap (a handle); the threads stop when the last handle is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiRequest};
/// use cgi_family::Env;
/// let host = WsgiHost::start(&AppSpec::wsgi_file("app.py"), HostOptions { threads: 4, ..Default::default() })?;
/// let env: Env = [("REQUEST_METHOD", "GET"), ("PATH_INFO", "/"), ("SERVER_NAME", "localhost"),
///                 ("SERVER_PORT", "80"), ("SERVER_PROTOCOL", "HTTP/1.1")].into_iter().collect();
/// let mut response = host.call(WsgiRequest::new(env)).await?;
/// println!("{}", response.head.status);
/// while let Some(chunk) = response.body.recv().await {
///     let _ = chunk?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WsgiHost {
    inner: Arc<Inner>,
}

struct Inner {
    app: Arc<Py<PyAny>>,
    opts: Arc<HostOptions>,
    statics: pyo3::sync::PyOnceLock<Statics>,
    queue: Arc<JobQueue>,
    next_id: AtomicU64,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    watch: Arc<Watch>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: the threads finish what is queued, then stop.
        self.queue.close();
    }
}

/// What the Python threads are doing: for [`WsgiHost::stats`] and harakiri.
struct Watch {
    requests: AtomicU64,
    harakiri: AtomicU64,
    /// Threads whose request harakiri stopped and that have not returned from it.
    stuck: AtomicUsize,
    threads: Vec<ThreadSlot>,
}

#[derive(Default)]
struct ThreadSlot {
    /// Python's `threading.get_ident()` of the thread (0 until it has started).
    ident: AtomicU64,
    busy: Mutex<Option<Busy>>,
    /// The thread's CPU-time clock (see [`Admission`]); set when the thread starts, if
    /// the host has more than one.
    cpu_clock: std::sync::OnceLock<nix::time::ClockId>,
}

/// The calling thread's CPU-time clock, readable from other threads: Linux's clock id
/// for a thread's scheduler time, `(!tid << 3) | CPUCLOCK_PERTHREAD_MASK (4) |
/// CPUCLOCK_SCHED (2)` (the kernel ABI glibc's `pthread_getcpuclockid` returns).
fn own_cpu_clock() -> Option<nix::time::ClockId> {
    let tid = nix::unistd::gettid().as_raw();
    let clock = nix::time::ClockId::from_raw((!tid << 3) | 6);
    // A clock the kernel does not know would fail here, once, rather than later.
    nix::time::clock_gettime(clock).ok().map(|_| clock)
}

/// The CPU time a thread's clock shows now (None if the thread is gone).
fn cpu_time(clock: nix::time::ClockId) -> Option<Duration> {
    let ts = nix::time::clock_gettime(clock).ok()?;
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    Some(Duration::new(secs, nanos))
}

/// When a Python thread may start a request while another thread is in one.
///
/// Two threads that both run Python hand the GIL back and forth at every point where
/// either releases it (a sqlite call, a file read, the interpreter's switch interval),
/// and each hand-over is a context switch, often to the other core with cold caches:
/// measured with a Django page and two threads, a third more CPU per request and a
/// third fewer requests per second than with one thread. Threads are there for requests
/// that wait (a database, an upstream API, `time.sleep`), so a thread starts a request
/// while another is in one only when that one is waiting: its CPU time advanced for less
/// than half of a millisecond or more of watching, or it has run its request for longer
/// than [`Admission::LONG`] (a long CPU-bound request then shares the GIL, as before).
struct Admission {
    /// Per other thread: the request watched, its CPU time and when it was read.
    seen: Vec<Option<(u64, Duration, Instant)>>,
    /// How long to wait before looking again: [`Admission::WATCH`], doubled at every
    /// look that finds the other threads running, up to [`Admission::WATCH_MAX`].
    every: Duration,
}

/// What [`Admission::check`] decided.
enum Admit {
    /// No other thread is in a request (one may be between two: see
    /// [`JobQueue::next`]).
    Alone,
    /// Every other thread in a request is waiting: take one now.
    Start,
    /// Another thread is running Python: look again in a moment.
    Wait,
}

impl Admit {
    /// Whether a thread may take a request, `running` threads being in one.
    fn lets_in(&self, running: usize) -> bool {
        match self {
            Self::Start => true,
            Self::Alone => running == 0,
            Self::Wait => false,
        }
    }
}

impl Admission {
    /// How long a request may run before another thread joins in regardless.
    const LONG: Duration = Duration::from_millis(20);
    /// How long a request is watched before its thread is judged waiting.
    const WATCH: Duration = Duration::from_millis(1);
    /// The longest wait between two looks. Looking every millisecond at threads that
    /// keep running cost a Django page on 2 processes × 2 threads (2 cores) about 15 µs
    /// of its 220 µs of CPU.
    const WATCH_MAX: Duration = Duration::from_millis(8);

    fn new(threads: usize) -> Self {
        Self {
            seen: vec![None; threads],
            every: Self::WATCH,
        }
    }

    /// Whether thread `me` may start a request now (GIL held or not: no Python here).
    fn check(&mut self, watch: &Watch, me: usize) -> Admit {
        let now = Instant::now();
        let mut alone = true;
        for (i, slot) in watch.threads.iter().enumerate() {
            if i == me {
                continue;
            }
            let Some((id, since)) = lock_slot(slot).as_ref().map(|b| (b.id, b.since)) else {
                self.seen[i] = None;
                continue;
            };
            alone = false;
            if now.duration_since(since) >= Self::LONG {
                continue;
            }
            let Some(cpu) = slot.cpu_clock.get().and_then(|&c| cpu_time(c)) else {
                continue;
            };
            // Reading the CPU clock when each request starts would cost the serving
            // thread a system call per request: a request is judged at the second look.
            match self.seen[i] {
                Some((seen_id, seen_cpu, at)) if seen_id == id => {
                    let wall = now.duration_since(at);
                    if wall < Self::WATCH {
                        return self.wait();
                    }
                    if cpu.saturating_sub(seen_cpu) * 2 >= wall {
                        // Running: watch it afresh.
                        self.seen[i] = Some((id, cpu, now));
                        return self.wait();
                    }
                }
                _ => {
                    self.seen[i] = Some((id, cpu, now));
                    return self.wait();
                }
            }
            // Waiting: this one does not hold us back.
        }
        if alone {
            // Between two requests of the other thread, maybe: no reason to look sooner.
            Admit::Alone
        } else {
            self.every = Self::WATCH;
            Admit::Start
        }
    }

    /// [`Admit::Wait`], looking again later the longer the threads in requests keep
    /// running: each look wakes this thread, often on the core of the one it watches.
    fn wait(&mut self) -> Admit {
        self.every = (self.every * 2).min(Self::WATCH_MAX);
        Admit::Wait
    }
}

/// The request a thread is running.
struct Busy {
    id: u64,
    since: Instant,
    shared: Shared,
    stopped: bool,
}

fn lock_slot(slot: &ThreadSlot) -> std::sync::MutexGuard<'_, Option<Busy>> {
    slot.busy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks the running requests against the harakiri limit until the host is dropped.
fn watchdog(watch: &Weak<Watch>, limit: Duration, queue: &JobQueue) {
    let tick = (limit / 20).clamp(Duration::from_millis(10), Duration::from_millis(100));
    loop {
        std::thread::sleep(tick);
        let Some(w) = watch.upgrade() else { return };
        for (n, slot) in w.threads.iter().enumerate() {
            let mut busy = lock_slot(slot);
            let Some(b) = busy
                .as_mut()
                .filter(|b| !b.stopped && b.since.elapsed() >= limit)
            else {
                continue;
            };
            b.stopped = true;
            w.stuck.fetch_add(1, Ordering::SeqCst);
            let id = b.id;
            {
                let mut r = lock(&b.shared);
                if r.sent() {
                    r.finish(Some(format!(
                        "harakiri: the request ran longer than {limit:?}"
                    )));
                } else {
                    r.send_error(504, "Gateway Timeout");
                }
            }
            drop(busy);
            tracing::error!(
                request_id = id,
                "HARAKIRI: request {id} on thread wsgi-{n} ran longer than {limit:?}: stopped (504 Gateway Timeout unless the headers had gone out)"
            );
            // The stack is read on another thread: if the stuck code holds the GIL, that
            // thread waits, and the watchdog goes on after a second. The event is counted
            // (so the process may be retired) once the stack is logged, or after that second.
            let ident = slot.ident.load(Ordering::Relaxed);
            let (logged_tx, logged) = std::sync::mpsc::channel::<()>();
            let _ = std::thread::Builder::new()
                .name("harakiri-stack".into())
                .spawn(move || {
                    let stack = Python::attach(|py| python_stack(py, ident));
                    tracing::error!(
                        request_id = id,
                        "HARAKIRI: Python stack of thread wsgi-{n} (request {id}):\n{stack}"
                    );
                    let _ = logged_tx.send(());
                });
            let _ = logged.recv_timeout(Duration::from_secs(1));
            w.harakiri.fetch_add(1, Ordering::Relaxed);
        }
        // Every thread stuck: requests waiting for one would wait forever.
        if w.stuck.load(Ordering::SeqCst) >= w.threads.len() {
            let mut refused = 0;
            for job in queue.drain() {
                lock(&Responder::new(job.reply, 1)).send_error(503, "Service Unavailable");
                refused += 1;
            }
            if refused > 0 {
                tracing::warn!(
                    "every Python thread is stuck: {refused} waiting request(s) answered 503"
                );
            }
        }
    }
}

/// The formatted Python stack of the thread whose `threading.get_ident()` is `ident`.
fn python_stack(py: Python<'_>, ident: u64) -> String {
    let stack = (|| -> PyResult<String> {
        let frames = py.import("sys")?.call_method0("_current_frames")?;
        let frame = frames.call_method1("get", (ident,))?;
        if frame.is_none() {
            return Ok("(the thread has no Python frame)".into());
        }
        let lines: Vec<String> = py
            .import("traceback")?
            .call_method1("format_stack", (frame,))?
            .extract()?;
        Ok(lines.concat())
    })();
    stack.unwrap_or_else(|e| format!("(cannot read the stack: {e})"))
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsgiHost")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl WsgiHost {
    /// Starts the interpreter (once per process), loads the application as `spec` says
    /// (a failing import is an error here, with its traceback, not on the first request),
    /// and starts `opts.threads` Python threads.
    pub fn start(spec: &AppSpec, opts: HostOptions) -> Result<Self, LoadError> {
        Ok(Self::from_callable(spec.load()?, opts))
    }

    /// Serves an application object the caller already has (the interpreter must be
    /// initialized).
    pub fn from_callable(app: Py<PyAny>, opts: HostOptions) -> Self {
        let queue = Arc::new(JobQueue::new(
            opts.queue.max(1),
            opts.threads.max(1),
            opts.spin,
        ));
        let opts = Arc::new(opts);
        let app = Arc::new(app);
        let watch = Arc::new(Watch {
            requests: AtomicU64::new(0),
            harakiri: AtomicU64::new(0),
            stuck: AtomicUsize::new(0),
            threads: (0..opts.threads.max(1))
                .map(|_| ThreadSlot::default())
                .collect(),
        });
        let threads = (0..opts.threads.max(1))
            .map(|n| {
                let (queue, opts, app, watch) =
                    (queue.clone(), opts.clone(), app.clone(), watch.clone());
                std::thread::Builder::new()
                    .name(format!("wsgi-{n}"))
                    .spawn(move || {
                        // Counted out however the thread ends (a panic included), so
                        // requests are refused rather than queued for no thread.
                        let _leave = Leave(&queue);
                        worker(&app, &queue, &opts, &watch, n);
                    })
                    .expect("spawn a WSGI thread")
            })
            .collect();
        if let Some(limit) = opts.harakiri {
            let (weak, queue) = (Arc::downgrade(&watch), queue.clone());
            std::thread::Builder::new()
                .name("harakiri".into())
                .spawn(move || watchdog(&weak, limit, &queue))
                .expect("spawn the harakiri watchdog");
        }
        Self {
            inner: Arc::new(Inner {
                app,
                opts,
                statics: pyo3::sync::PyOnceLock::new(),
                queue,
                next_id: AtomicU64::new(1),
                threads: Mutex::new(threads),
                watch,
            }),
        }
    }

    /// Hands a request to the application; resolves when the status and headers are
    /// known (the body then streams through [`WsgiResponse::body`]).
    pub async fn call(&self, request: WsgiRequest) -> Result<WsgiResponse, HostError> {
        let watch = &self.inner.watch;
        if watch.stuck.load(Ordering::Relaxed) >= watch.threads.len() {
            return Err(HostError::Overloaded); // every thread is stuck (harakiri)
        }
        let (reply, rx) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.queue.push(Job { request, id, reply })?;
        let (head, body) = rx.await.map_err(|_| HostError::Closed)?;
        Ok(WsgiResponse { head, body })
    }

    /// Runs one request on the calling thread (attaching it to the interpreter) and
    /// returns the whole response: for embedding in a thread you own, for tests and for
    /// measuring the bridge without the thread hand-off. Never call it from an async task.
    pub fn call_blocking(
        &self,
        request: WsgiRequest,
    ) -> Result<(crate::ResponseHead, Vec<BodyChunk>), HostError> {
        let (reply, mut rx) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Python::attach(|py| {
            let app = self.inner.app.bind(py);
            let statics = self.inner.statics.get_or_try_init(py, || Statics::new(py));
            match statics {
                Ok(statics) => handle(
                    py,
                    app,
                    statics,
                    &self.inner.opts,
                    Job { request, id, reply },
                    1 << 20,
                    None,
                ),
                Err(e) => tracing::error!("{}", traceback(py, &e)),
            }
        });
        let (head, mut body) = rx.try_recv().map_err(|_| HostError::Closed)?;
        let mut chunks = Vec::new();
        while let Ok(Some(item)) = body.try_recv() {
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(_) => return Err(HostError::Closed),
            }
        }
        Ok((head, chunks))
    }

    /// The number of Python threads.
    pub fn threads(&self) -> usize {
        self.inner.threads.lock().map_or(0, |t| t.len())
    }

    /// Requests served, threads busy now, requests stopped by harakiri.
    pub fn stats(&self) -> HostStats {
        let w = &self.inner.watch;
        HostStats {
            requests: w.requests.load(Ordering::Relaxed),
            busy: w.threads.iter().filter(|t| lock_slot(t).is_some()).count(),
            harakiri: w.harakiri.load(Ordering::Relaxed),
        }
    }
}

fn worker(app: &Py<PyAny>, queue: &JobQueue, opts: &HostOptions, watch: &Watch, n: usize) {
    Python::attach(|py| {
        let slot = &watch.threads[n];
        let ident = py
            .import("threading")
            .and_then(|t| t.call_method0("get_ident"))
            .and_then(|i| i.extract::<u64>());
        slot.ident.store(ident.unwrap_or(0), Ordering::Relaxed);
        let statics = match Statics::new(py) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("WSGI thread cannot start: {}", traceback(py, &e));
                return;
            }
        };
        let app = app.bind(py);
        // Only threads that watch each other need it (one thread never waits its turn).
        if watch.threads.len() > 1
            && let Some(clock) = own_cpu_clock()
        {
            let _ = slot.cpu_clock.set(clock);
        }
        let mut admission = Admission::new(watch.threads.len());
        let mut finished = false;
        loop {
            // Take the oldest request while holding the GIL when this thread may start
            // one now; else wait for that with the GIL released (see JobQueue).
            let admit = if watch.threads.len() == 1 {
                Admit::Start
            } else {
                admission.check(watch, n)
            };
            let job = match queue.next(std::mem::take(&mut finished), admit) {
                Some(job) => job,
                None => {
                    if !py.detach(|| queue.await_turn(n, &mut admission, watch)) {
                        break;
                    }
                    let Some(job) = queue.next(false, Admit::Start) else {
                        continue;
                    };
                    job
                }
            };
            handle(py, app, &statics, opts, job, BODY_BLOCKS, Some(slot));
            admission.every = Admission::WATCH;
            finished = true;
            if lock_slot(slot).take().is_some_and(|b| b.stopped) {
                watch.stuck.fetch_sub(1, Ordering::SeqCst);
            }
            watch.requests.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Logs an application error and answers 500, or cuts the response if the headers went out.
fn fail(py: Python<'_>, shared: &Shared, id: u64, what: &str, err: &PyErr) {
    tracing::error!(request_id = id, "{what}:\n{}", traceback(py, err));
    fail_response(shared, || format!("{what}: {err}"));
}

/// Answers 500, or cuts the response with `why` if the headers went out.
fn fail_response(shared: &Shared, why: impl FnOnce() -> String) {
    let mut r = lock(shared);
    if r.sent() {
        r.finish(Some(why()));
    } else {
        r.send_error(500, "Internal Server Error");
    }
}

fn call_close(py: Python<'_>, iterable: &Bound<'_, PyAny>, shared: &Shared, id: u64) {
    // Lists and tuples have no close(); asking would raise (and build) an AttributeError.
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
        return;
    }
    match iterable.hasattr(intern!(py, "close")) {
        Ok(true) => {
            if let Err(e) = iterable.call_method0(intern!(py, "close")) {
                // The body (if any went out) is complete: log, and answer 500 only if
                // nothing was sent yet.
                tracing::error!(
                    request_id = id,
                    "the iterable's close() raised:\n{}",
                    traceback(py, &e)
                );
                let mut r = lock(shared);
                if !r.sent() {
                    r.send_error(500, "Internal Server Error");
                }
            }
        }
        Ok(false) => {}
        Err(e) => fail(py, shared, id, "looking up close()", &e),
    }
}

fn handle(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    statics: &Statics,
    opts: &HostOptions,
    job: Job,
    capacity: usize,
    slot: Option<&ThreadSlot>,
) {
    let Job { request, id, reply } = job;
    let shared = Responder::new(reply, capacity);
    if let Some(slot) = slot {
        *lock_slot(slot) = Some(Busy {
            id,
            since: Instant::now(),
            shared: shared.clone(),
            stopped: false,
        });
    }
    // A panic (a bug of ours, in this crate or in a method the app called, which pyo3
    // carries through Python as PanicException and resumes here) ends this request with
    // a 500 or a cut response, and the thread goes on serving: without this, the thread
    // would die and every request queued behind it would wait for ever.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(py, app, statics, opts, request, id, &shared);
    }));
    if let Err(panic) = served {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(request_id = id, "the request's handling panicked: {what}");
        fail_response(&shared, || format!("panicked: {what}"));
    }
}

/// Calls the app for one request and sends what it answers through `shared`.
fn serve(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    statics: &Statics,
    opts: &HostOptions,
    request: WsgiRequest,
    id: u64,
    shared: &Shared,
) {
    let objects = (|| -> PyResult<_> {
        let errors = statics.errors(py, id)?;
        let (environ, content_length) = environ::build(
            py,
            statics,
            &request.env,
            request.https,
            opts,
            errors.clone(),
        )?;
        let input = match request.body {
            crate::RequestBody::Empty => statics.empty_input(py)?,
            body => Bound::new(py, WsgiInput::new(body, content_length))?,
        };
        environ.set_item(intern!(py, "wsgi.input"), &input)?;
        let start_response = Bound::new(
            py,
            StartResponse {
                shared: shared.clone(),
            },
        )?;
        Ok((environ, start_response, errors, input))
    })();
    let (environ, start_response, errors, input) = match objects {
        Ok(o) => o,
        Err(e) => return fail(py, shared, id, "building the environ", &e),
    };
    let result = app.call1((environ, start_response));
    let iterable = match result {
        Ok(it) if it.is_none() => {
            let err = pyo3::exceptions::PyTypeError::new_err("the application returned None");
            return fail(py, shared, id, "the application returned None", &err);
        }
        Ok(it) => it,
        Err(e) if input.get().body_failed() => {
            // The app failed because the client's body was broken: the client's fault.
            tracing::warn!(request_id = id, "the request body could not be read: {e}");
            lock(shared).send_error(400, "Bad Request");
            return;
        }
        Err(e) => return fail(py, shared, id, "the application raised", &e),
    };
    stream(py, &iterable, shared, id);
    call_close(py, &iterable, shared, id);
    errors.get().end_request();
    let mut r = lock(shared);
    if !r.sent() {
        // Nothing went out (an empty body, or an error already answered).
        match r.send_whole(None, 0) {
            Ok(()) => {}
            Err(why) => {
                tracing::error!(request_id = id, "{why}");
                r.send_error(500, "Internal Server Error");
            }
        }
    }
    r.finish(None);
}

/// Sends the iterable's blocks, headers with the first non-empty one.
fn stream(py: Python<'_>, iterable: &Bound<'_, PyAny>, shared: &Shared, id: u64) {
    if let Ok(fw) = iterable.cast::<FileWrapper>() {
        if send_file(py, fw.get(), shared) {
            return;
        }
    }
    // One block (a list or tuple of one bytes): the host knows the Content-Length.
    let single = if let Ok(l) = iterable.cast::<PyList>() {
        (l.len() == 1).then(|| l.get_item(0).ok()).flatten()
    } else if let Ok(t) = iterable.cast::<PyTuple>() {
        (t.len() == 1).then(|| t.get_item(0).ok()).flatten()
    } else {
        None
    };
    if let Some(block) = single {
        if let Ok(b) = block.cast::<PyBytes>() {
            let len = b.as_bytes().len();
            let chunk = (len > 0).then(|| BodyChunk::Data(block_bytes(b)));
            let sent = lock(shared).send_whole(chunk, len as u64);
            if let Err(why) = sent {
                let err = pyo3::exceptions::PyRuntimeError::new_err(why);
                fail(py, shared, id, why, &err);
            }
            return;
        }
    }
    let iter = match iterable.try_iter() {
        Ok(i) => i,
        Err(e) => {
            return fail(
                py,
                shared,
                id,
                "the application's result is not iterable",
                &e,
            );
        }
    };
    for item in iter {
        let item = match item {
            Ok(i) => i,
            Err(e) => return fail(py, shared, id, "the application's iterable raised", &e),
        };
        let Ok(block) = item.cast::<PyBytes>() else {
            let err = pyo3::exceptions::PyTypeError::new_err(format!(
                "the application yielded {} instead of bytes",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ));
            return fail(
                py,
                shared,
                id,
                "the application yielded a non-bytes block",
                &err,
            );
        };
        if block.as_bytes().is_empty() {
            continue;
        }
        let tx = lock(shared).send_head(None);
        let tx = match tx {
            Ok(Some(tx)) => tx,
            Ok(None) => return,
            Err(why) => {
                let err = pyo3::exceptions::PyRuntimeError::new_err(why);
                return fail(py, shared, id, why, &err);
            }
        };
        if !send_chunk(py, &tx, BodyChunk::Data(block_bytes(block))) {
            return; // the client went away: stop iterating (close() still runs)
        }
    }
}

/// Hands a real file to the server whole; false to fall back to iterating.
fn send_file(py: Python<'_>, fw: &FileWrapper, shared: &Shared) -> bool {
    let f = fw.filelike.bind(py);
    let fd: Option<i32> = f.call_method0("fileno").ok().and_then(|v| v.extract().ok());
    let offset: u64 = f
        .call_method0("tell")
        .ok()
        .and_then(|v| v.extract().ok())
        .unwrap_or(0);
    let Some(fd) = fd else {
        return false;
    };
    // A new open file description for the same file: independent offset, no unsafe fd
    // juggling, and the Python object keeps its own.
    let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut len = meta.len().saturating_sub(offset);
    let declared = lock(shared).content_length;
    if let Some(cl) = declared {
        len = len.min(cl); // never more than the app's Content-Length
    }
    let tx = lock(shared).send_head(Some(len));
    match tx {
        Ok(Some(tx)) => {
            // A client that went away needs nothing more; close() still runs.
            let _ = len > 0 && send_chunk(py, &tx, BodyChunk::File { file, offset, len });
            true
        }
        Ok(None) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::QueueState;

    fn state(running: usize, idle: &[usize], watching: &[usize]) -> QueueState {
        QueueState {
            jobs: std::collections::VecDeque::new(),
            closed: false,
            serving: 3,
            running,
            idle: idle.to_vec(),
            watching: watching.to_vec(),
        }
    }

    #[test]
    fn a_request_wakes_a_thread_only_when_nobody_would_see_it() {
        // Nobody in a request: the thread that went idle last, else a watcher.
        let mut s = state(0, &[0, 2], &[]);
        assert_eq!(s.pick_waker(), Some(2));
        assert_eq!(s.idle, [0]);
        assert_eq!(state(0, &[], &[1]).pick_waker(), Some(1));
        // A thread in a request and none watching: an idle one comes to watch.
        let mut s = state(1, &[0, 2], &[]);
        assert_eq!(s.pick_waker(), Some(2));
        // ... and once one watches, a burst wakes nobody else.
        assert_eq!(state(1, &[0], &[2]).pick_waker(), None);
        assert_eq!(state(2, &[], &[]).pick_waker(), None);
    }
}
