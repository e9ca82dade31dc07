//! Putting the pieces together for the binary: what every process serves connections
//! with (a [`Stack`]), and the single-process server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uwsgi_proto::Limits;
use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiService};

use crate::config::Options;
use crate::handler::{StaticFiles, StaticMap};
use crate::listen::http::{Backend, HttpApp};
use crate::listen::{self, ListenAddr, Listener};

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Http,
    /// `--http` with `--http-to`: a front passing to a pool of uwsgi backends.
    HttpFront,
    /// A listener of the `--nginx-conf` site (its index in the site's listeners).
    Site(usize),
    Uwsgi,
    FastCgi,
    Scgi,
}

pub(crate) fn app_spec(o: &Options) -> anyhow::Result<AppSpec> {
    let mut spec = AppSpec {
        wsgi_file: o.wsgi_file.clone(),
        module: o.module.clone(),
        callable: o.callable.clone(),
        chdir: o.chdir.clone(),
        pythonpath: o.pythonpath.clone(),
        home: o.home.clone(),
        env: Vec::new(),
    };
    for kv in &o.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected KEY=VALUE");
        };
        spec.env.push((k.to_owned(), v.to_owned()));
    }
    Ok(spec)
}

impl Proto {
    /// Whether the listener is a front's (no Python behind it in this process).
    pub(crate) fn is_front(self) -> bool {
        matches!(self, Self::HttpFront | Self::Site(_))
    }
}

/// The `--nginx-conf` site, and the warnings for directives it ignores.
pub(crate) fn load_site(o: &Options) -> anyhow::Result<Option<(crate::site::Site, Vec<String>)>> {
    let Some(path) = &o.nginx_conf else {
        return Ok(None);
    };
    let tree = crate::config::nginx::load(path, None)?;
    Ok(Some(crate::site::Site::from_nginx(&tree)?))
}

/// Every listen address of the options, with its protocol.
pub(crate) fn listen_addrs(o: &Options) -> anyhow::Result<Vec<(ListenAddr, Proto)>> {
    let mut addrs = Vec::new();
    let front = if o.http_to.is_empty() {
        Proto::Http
    } else {
        Proto::HttpFront
    };
    for (list, proto) in [
        (&o.http, front),
        (&o.http_socket, Proto::Http),
        (&o.socket, Proto::Uwsgi),
        (&o.fastcgi_socket, Proto::FastCgi),
        (&o.scgi_socket, Proto::Scgi),
    ] {
        for a in list {
            addrs.push((ListenAddr::parse(a)?, proto));
        }
    }
    if let Some((site, _)) = load_site(o)? {
        for (i, a) in site.listens().iter().enumerate() {
            addrs.push((a.clone(), Proto::Site(i)));
        }
    }
    if addrs.is_empty() {
        bail!(
            "nothing to serve: give --http, --http-socket, --socket, --fastcgi-socket, --scgi-socket or --nginx-conf"
        );
    }
    Ok(addrs)
}

/// How many runtime threads a process runs: `TOKIO_WORKER_THREADS` when set, else the
/// cores shared among the `processes` of its kind. A process that runs Python gets half
/// its share: its Python threads (one core's worth under the GIL) need the other half,
/// and measured here one runtime thread beside two Python threads served hello world
/// faster than two (48-52k against 43-45k requests/s, 0.5 MB less resident memory):
/// fewer threads, fewer hand-offs between cores.
pub(crate) fn runtime_threads(processes: usize, runs_python: bool) -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let share = cores / processes.max(1);
    if runs_python { share / 2 } else { share }.max(1)
}

/// Builds a process's tokio runtime with `threads` runtime threads.
///
/// One thread and no `outside_wakes` gets the current-thread scheduler, run by the thread
/// that calls `block_on` (the main thread, which must stay in `block_on` while the process
/// serves): it polls and wakes tasks without the multi-thread scheduler's hand-offs (a
/// `return 200` of the front: 11,000 -> 10,600 instructions per request, callgrind).
///
/// `outside_wakes` says that threads outside the runtime wake its tasks for every request
/// (the Python threads of a process that runs an app, finishing each response). The
/// current-thread scheduler wakes its driver for each such wake with a write to an eventfd,
/// even while it is busy; the multi-thread scheduler's worker (one here, beside the thread
/// in `block_on`) is woken only when it is parked. Such a process gets the multi-thread
/// scheduler for one thread too: hello world from one process 75-81k -> 95-99k requests/s,
/// 13.4-16.4 -> 11.4-11.8 µs of CPU per request (alternating runs).
///
/// `batch` puts each runtime thread under `SCHED_BATCH` the first time it wakes from
/// idle (the blocking pool's threads, which may start Python's, are left as they are).
/// It is for a process bound to one core with its Python threads
/// ([`crate::process::bind_cores`] says when): there every wake of the event loop (a
/// response finished, a request arrived) preempted the Python thread at once, to write
/// one response or read one request, and the core went back and forth between the two
/// threads for every request. Under `SCHED_BATCH` the Python thread keeps the core until
/// it has nothing left to run or its slice ends, and the event loop then writes and reads
/// for all the connections that are ready. Alternating runs on 2 cores, wrk -c32, 2
/// threads per process: hello world at 2 workers 77-81k -> 92-98k requests/s and at 4
/// workers 72-73k -> 88-92k, with p99s 2-24 % lower; the Django template page at 2
/// workers 1.15-1.46x the requests/s with p99s 16-32 % lower, at 4 workers 1.03-1.11x
/// with p99s 2-15 % lower; the Django view at 4 workers 1.07-1.20x. One process left
/// unbound (on two cores) gained nothing from it and is not given it.
pub fn build_runtime(
    threads: usize,
    outside_wakes: bool,
    batch: bool,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 && !outside_wakes {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads.max(1));
        b
    };
    if batch {
        // Only the runtime's own threads unpark; the flag makes it one system call each.
        builder.on_thread_unpark(|| {
            thread_local! {
                static BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
            }
            if !BATCH.replace(true)
                && let Err(e) = crate::process::batch_this_thread()
            {
                tracing::warn!("event loop thread: SCHED_BATCH: {e}");
            }
        });
    }
    builder.enable_all().build()
}

/// The runtime the one-process gateway (no `--master`) runs for `o`: its threads by the
/// rule of the workers, with the process alone on the machine's cores, and whether Python
/// threads wake its tasks (the arguments of [`build_runtime`]).
pub fn single_process_runtime(o: &Options) -> (usize, bool) {
    let python = needs_app(o);
    (runtime_threads(1, python), python)
}

/// Whether any listener serves the app in this process (a pure `--http-to` front does not
/// load Python).
pub(crate) fn needs_app(o: &Options) -> bool {
    listen_addrs(o).is_ok_and(|a| a.iter().any(|(_, p)| !p.is_front()))
}

/// The `--http-to` pool: uwsgi backends, round robin.
fn front(o: &Options) -> anyhow::Result<Option<Arc<crate::pass::Pass>>> {
    use crate::upstream::{Policy, ServerSpec, Upstream};
    if o.http_to.is_empty() {
        return Ok(None);
    }
    let servers = o
        .http_to
        .iter()
        .map(|a| ServerSpec::parse(a).with_context(|| format!("--http-to {a}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = Upstream::new("http-to", servers, Policy::RoundRobin);
    Ok(Some(Arc::new(
        crate::pass::Pass::new(Arc::new(pool), crate::pass::Protocol::Uwsgi)
            .buffer_size(o.buffer_size),
    )))
}

/// Whether `processes` processes that run Python can have two of `cores` cores each: each
/// keeps about two busy under load (its event loop and the Python thread holding the GIL).
/// When they can, an idle Python thread may spin (`HostOptions::spin`); when they cannot,
/// the workers are bound to one core each (`process::bind_cores`).
pub(crate) fn two_cores_each(processes: usize, cores: usize) -> bool {
    processes * 2 <= cores
}

pub(crate) fn host_options(o: &Options) -> HostOptions {
    let processes = o.processes.unwrap_or(1).max(1);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    HostOptions {
        threads: o.threads.unwrap_or(1).max(1),
        multiprocess: processes > 1,
        harakiri: o.harakiri.filter(|&s| s > 0).map(Duration::from_secs),
        // A thread may spin for the next request only when that leaves a core free for it.
        spin: two_cores_each(processes, cores),
        ..HostOptions::default()
    }
}

/// Drops root privileges after binding, as uWSGI's `--uid`/`--gid`.
pub(crate) fn drop_privileges(o: &Options) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};
    if let Some(g) = &o.gid {
        let gid = match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)?
                    .with_context(|| format!("--gid: no group {g:?}"))?
                    .gid
            }
        };
        setgroups(&[gid]).context("--gid: setgroups")?;
        setgid(gid).context("--gid: setgid")?;
        tracing::info!("now running as group {g} ({gid})");
    }
    if let Some(u) = &o.uid {
        let uid = match u.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(u)?
                    .with_context(|| format!("--uid: no user {u:?}"))?
                    .uid
            }
        };
        setuid(uid).context("--uid: setuid")?;
        tracing::info!("now running as user {u} ({uid})");
    }
    Ok(())
}

/// What every connection of a listener is served with.
#[derive(Clone, Copy, Debug)]
struct Settings {
    limits: Limits,
    buffer_size: usize,
    limit_post: Option<u64>,
    head_timeout: Duration,
}

/// An accepted connection.
#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(std::net::TcpStream, SocketAddr),
    Unix(std::os::unix::net::UnixStream),
}

/// Everything one process serves connections with: the app, the static maps, the limits,
/// and the graceful stop (no new requests on kept-alive connections, wait for the
/// requests in flight).
#[derive(Debug)]
pub(crate) struct Stack {
    settings: Settings,
    host: Option<WsgiHost>,
    app: Option<Arc<HttpApp>>,
    front: Option<Arc<HttpApp>>,
    /// One per listener of the `--nginx-conf` site.
    site: Vec<Arc<HttpApp>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Stack {
    pub(crate) fn new(o: &Options, host: Option<WsgiHost>) -> anyhow::Result<Arc<Self>> {
        let statics = o
            .static_map
            .iter()
            .map(|m| StaticMap::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let statics = Arc::new(StaticFiles::new(statics));
        let head_timeout = Duration::from_secs(o.socket_timeout.max(1));
        let app = host.as_ref().map(|host| {
            Arc::new(HttpApp {
                backend: Backend::Wsgi(
                    WsgiService::new(host.clone())
                        .post_buffering(o.post_buffering)
                        .read_ahead(o.post_read_ahead.unwrap_or(4 * host.threads() + 4)),
                ),
                statics: statics.clone(),
                limit_post: o.limit_post,
                head_timeout,
            })
        });
        let front = front(o)?.map(|pass| {
            Arc::new(HttpApp {
                backend: Backend::Pass(pass),
                statics: statics.clone(),
                limit_post: o.limit_post,
                head_timeout,
            })
        });
        let site = match load_site(o)? {
            Some((site, _)) => {
                let site = Arc::new(site);
                // DNS lookups and health checks run on this process's runtime.
                if tokio::runtime::Handle::try_current().is_ok() {
                    site.start();
                }
                (0..site.listens().len())
                    .map(|listen| {
                        Arc::new(HttpApp {
                            backend: Backend::Site {
                                site: site.clone(),
                                listen,
                            },
                            statics: Arc::new(StaticFiles::new(Vec::new())),
                            limit_post: None,
                            head_timeout,
                        })
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        Ok(Arc::new(Self {
            settings: Settings {
                limits: Limits::new()
                    .max_block_size(o.buffer_size)
                    .max_body(o.limit_post),
                buffer_size: o.buffer_size,
                limit_post: o.limit_post,
                head_timeout,
            },
            host,
            app,
            front,
            site,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }))
    }

    /// The WSGI host, if this process runs the app.
    pub(crate) fn host(&self) -> Option<&WsgiHost> {
        self.host.as_ref()
    }

    /// Serves an accepted connection on `rt` (tracked for the graceful stop).
    pub(crate) fn spawn(self: &Arc<Self>, conn: Conn, proto: Proto, rt: &tokio::runtime::Handle) {
        self.spawn_counted(conn, proto, rt, ());
    }

    /// [`Stack::spawn`], holding `count` (a guard that counts the connection) until the
    /// connection ends.
    pub(crate) fn spawn_counted<G: Send + 'static>(
        self: &Arc<Self>,
        conn: Conn,
        proto: Proto,
        rt: &tokio::runtime::Handle,
        count: G,
    ) {
        let stack = self.clone();
        self.tracker.spawn_on(
            async move {
                let _count = count;
                match conn {
                    Conn::Tcp(s, peer) => {
                        let _ = s.set_nodelay(true);
                        let local = s.local_addr().ok();
                        match s
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpStream::from_std(s))
                        {
                            Ok(s) => stack.serve(s, Some(peer), local, proto).await,
                            Err(e) => tracing::warn!("accepted connection: {e}"),
                        }
                    }
                    Conn::Unix(s) => match s
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::UnixStream::from_std(s))
                    {
                        Ok(s) => stack.serve(s, None, None, proto).await,
                        Err(e) => tracing::warn!("accepted connection: {e}"),
                    },
                }
            },
            rt,
        );
    }

    /// Serves one connection with its listener's protocol.
    async fn serve<S>(
        &self,
        s: S,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        proto: Proto,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let c = &self.settings;
        let http = match proto {
            Proto::HttpFront => self.front.as_ref(),
            Proto::Site(i) => self.site.get(i),
            _ => self.app.as_ref(),
        };
        if let (Proto::Site(i), Some(app)) = (proto, http) {
            if let Backend::Site { site, .. } = &app.backend {
                if let Some(tls) = site.tls(i) {
                    listen::http::serve_tls_connection_until(
                        s,
                        tls,
                        peer,
                        local,
                        app,
                        &self.shutdown,
                    )
                    .await;
                    return;
                }
            }
        }
        if let (Proto::Http | Proto::HttpFront | Proto::Site(_), Some(app)) = (proto, http) {
            listen::http::serve_connection_until(s, peer, local, app, &self.shutdown).await;
            return;
        }
        let Some(host) = &self.host else {
            tracing::error!("{proto:?} connection without an app in this process: closed");
            return;
        };
        match proto {
            Proto::Http | Proto::HttpFront | Proto::Site(_) => {}
            Proto::Uwsgi => {
                listen::uwsgi::serve_connection(s, c.limits, c.head_timeout, host).await;
            }
            Proto::FastCgi => {
                listen::fastcgi::serve_connection_until(s, c.limit_post, host, &self.shutdown)
                    .await;
            }
            Proto::Scgi => {
                listen::scgi::serve_connection(
                    s,
                    c.buffer_size,
                    c.limit_post,
                    c.head_timeout,
                    host,
                )
                .await;
            }
        }
    }

    /// The graceful stop: kept-alive connections close after their request in flight,
    /// and this waits (up to `mercy`) for every connection to finish. False if some were
    /// still running at the deadline.
    pub(crate) async fn drain(&self, mercy: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(mercy, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Connections being served now.
    pub(crate) fn connections(&self) -> usize {
        self.tracker.len()
    }
}

/// Loads the app, binds every listener, and serves in this one process until
/// SIGINT/SIGTERM, then stops gracefully (requests in flight finish, up to
/// `--worker-reload-mercy`).
pub async fn run(o: Options) -> anyhow::Result<()> {
    crate::access::install(crate::access::from_options(&o)?);
    let addrs = listen_addrs(&o)?;
    // Bind first (clear errors before the app loads), then load the app.
    let mut listeners = Vec::new();
    for (addr, proto) in &addrs {
        let l = listen::bind(addr, o.chmod_socket.as_deref())
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!("{proto:?} listening on {addr}");
        listeners.push((l, *proto));
    }
    if let Some((_, warnings)) = load_site(&o)? {
        for w in warnings {
            tracing::warn!("{w}");
        }
    }
    drop_privileges(&o)?;
    let host = if needs_app(&o) {
        let spec = app_spec(&o)?;
        let opts = host_options(&o);
        let host = tokio::task::spawn_blocking(move || WsgiHost::start(&spec, opts)).await??;
        tracing::info!("WSGI app ready");
        Some(host)
    } else {
        tracing::info!("front only (no WSGI app in this process)");
        None
    };
    let stack = Stack::new(&o, host)?;
    let rt = tokio::runtime::Handle::current();
    let mut unix_paths = Vec::new();
    let mut acceptors = Vec::new();
    for (l, proto) in listeners {
        if let Listener::Unix(_, p) = &l {
            unix_paths.push(p.clone());
        }
        let (stack, rt) = (stack.clone(), rt.clone());
        acceptors.push(tokio::spawn(async move {
            loop {
                let accepted = match &l {
                    Listener::Tcp(t) => t
                        .accept()
                        .await
                        .and_then(|(s, peer)| Ok(Conn::Tcp(s.into_std()?, peer))),
                    Listener::Unix(u, _) => u
                        .accept()
                        .await
                        .and_then(|(s, _)| Ok(Conn::Unix(s.into_std()?))),
                };
                match accepted {
                    Ok(c) => stack.spawn(c, proto, &rt),
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    if let Some(pidfile) = &o.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pidfile.display()))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for a in &acceptors {
        a.abort();
    }
    tracing::info!("stopping: {} connection(s) to finish", stack.connections());
    let mercy = Duration::from_secs(o.worker_reload_mercy);
    tokio::select! {
        done = stack.drain(mercy) => if !done {
            tracing::warn!("requests still running after {mercy:?}: stopped");
        },
        _ = tokio::signal::ctrl_c() => tracing::warn!("second SIGINT: stopping now"),
    }
    if o.vacuum {
        for p in unix_paths {
            let _ = std::fs::remove_file(p);
        }
        if let Some(pidfile) = &o.pidfile {
            let _ = std::fs::remove_file(pidfile);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::build_runtime;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_thread_woken_from_python_gets_the_scheduler_that_skips_busy_wakes() {
        let flavor = |threads, python| {
            build_runtime(threads, python, false)
                .unwrap()
                .block_on(async { tokio::runtime::Handle::current().runtime_flavor() })
        };
        assert_eq!(flavor(1, false), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(1, true), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(2, false), RuntimeFlavor::MultiThread);
    }
}
