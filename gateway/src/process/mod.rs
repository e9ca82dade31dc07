//! The process model: uWSGI's master and workers.
//!
//! The master binds every listener, loads the app once (unless `--lazy-apps`), and forks
//! `--processes` workers before any runtime or thread exists, so the workers share the
//! loaded pages (copy on write) as uWSGI's do. Each worker builds its own tokio runtime
//! and `--threads` Python threads, and accepts with one blocking `accept` thread per
//! listener on the socket all workers share: the kernel wakes a single waiter per
//! connection (no thundering herd), and a worker holding more connections than another
//! waits before it accepts again (connection counts in memory shared by the workers), so
//! a client's pool of keep-alive connections spreads evenly.
//!
//! The master is a single-threaded `poll` loop over a signalfd, one pipe per worker
//! (`ready`, request counters, `retire <reason>`, `reload`) and the optional stats
//! socket. It respawns workers that die (with a back-off when they die quickly),
//! recycles them on `--max-requests`, `--reload-on-rss` and after a `--harakiri`
//! (a replacement starts first; the old worker finishes its other requests), reloads on
//! SIGHUP without closing the listening sockets (a re-exec of the master keeps its pid
//! and passes the sockets by number; the old workers serve until the new ones are ready),
//! and stops gracefully on SIGTERM/SIGINT.

mod affinity;
mod balance;
mod master;
mod sys;
mod worker;

use crate::config::Options;

/// Whether these options need a master: `--master`, more than one process, or a
/// feature only a master provides (harakiri, recycling, autoreload, stats).
pub fn wants_master(o: &Options) -> bool {
    o.master
        || o.processes.is_some_and(|p| p > 1)
        || o.harakiri.is_some_and(|h| h > 0)
        || o.max_requests.is_some_and(|m| m > 0)
        || o.reload_on_rss.is_some_and(|r| r > 0)
        || o.py_autoreload.is_some_and(|n| n > 0)
        || o.stats.is_some()
}

/// Binds this process, worker `id` (1-based; the one-process server is worker 1), to its
/// cores: `--cpu-affinity N`, or by default one core when it runs Python (`python`) and
/// the workers cannot have two cores each (see the `affinity` module for why). Call it
/// before any other thread starts: threads started later inherit the binding.
///
/// Returns whether the process now runs Python on a single core, beside its event loop:
/// the case for [`crate::build_runtime`]'s `batch`.
pub fn bind_cores(o: &Options, id: usize, python: bool) -> bool {
    let processes = o.processes.unwrap_or(1).max(1);
    let usable = std::thread::available_parallelism().map_or(1, usize::from);
    let allowed = match affinity::allowed() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("worker {id}: reading the cpu affinity: {e}");
            return false;
        }
    };
    let Some(cores) = affinity::plan(id, processes, o.cpu_affinity, python, &allowed, usable)
    else {
        return false;
    };
    let list = cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match affinity::bind(&cores) {
        Ok(()) => {
            tracing::info!("worker {id} bound to cpu(s) {list}");
            python && cores.len() == 1
        }
        Err(e) => {
            tracing::warn!("worker {id}: binding to cpu(s) {list}: {e}");
            false
        }
    }
}

/// Puts the calling thread under `SCHED_BATCH` (see [`crate::build_runtime`]).
pub(crate) fn batch_this_thread() -> std::io::Result<()> {
    sys::batch_this_thread()
}

/// Runs the master and its workers until SIGTERM/SIGINT (SIGHUP reloads). Call it from
/// the main thread before any other thread or runtime exists: it forks.
pub fn run_master(o: &Options) -> anyhow::Result<()> {
    master::run(o)
}

/// uWSGI's `--daemonize FILE`: detach, logging to FILE. Call it first thing in `main`,
/// before any thread exists. A reloading master (which re-executes itself) is already
/// detached and does nothing.
pub fn daemonize(log: &std::path::Path) -> std::io::Result<()> {
    if std::env::var_os("GATEWAY_LISTEN_FDS").is_some() {
        return Ok(());
    }
    sys::daemonize(log)
}
