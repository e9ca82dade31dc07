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
