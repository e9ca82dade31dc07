//! `gateway`: serve a WSGI app with the uWSGI options and ini files you already have.

use std::process::ExitCode;

/// mimalloc, called so that its fast paths serve the request's small allocations (see
/// [`gateway::alloc`]).
#[global_allocator]
static ALLOCATOR: gateway::alloc::Allocator = gateway::alloc::Allocator;

fn main() -> ExitCode {
    // Python's larger objects come from glibc: keep its heaps from shrinking and growing
    // back at every request (see `tune_libc_malloc`).
    gateway::alloc::tune_libc_malloc();
    let (options, warnings) = match gateway::config::parse(std::env::args()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Before any thread exists: --daemonize forks.
    if let Some(log) = &options.daemonize {
        if let Err(e) = gateway::process::daemonize(log) {
            eprintln!("--daemonize {}: {e}", log.display());
            return ExitCode::FAILURE;
        }
    }
    // uWSGI's --disable-logging installs no access log (`access::from_options`); errors
    // are still logged.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // uWSGI's --logto: the log goes to a file (appended) instead of stderr.
    match &options.logto {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init(),
            Err(e) => {
                eprintln!("--logto {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => builder.init(),
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if gateway::process::wants_master(&options) {
        return match gateway::process::run_master(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (threads, python) = gateway::single_process_runtime(&options);
    if python {
        // An app server gives the memory its requests freed back at once (see
        // `tune_mimalloc`); a worker under a master does the same when it starts.
        gateway::alloc::tune_mimalloc();
    }
    // Before the runtime's and Python's threads, which inherit it.
    let one_core = gateway::process::bind_cores(&options, 1, python);
    let runtime = match gateway::build_runtime(threads, python, one_core) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gateway::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
