//! The few system calls the process model needs that have no safe wrapper: `fork` (with
//! CPython's fork hooks), a no-op signal handler, ignoring signals, adopting inherited
//! descriptors, memory shared with the workers, and a thread's scheduling policy. Every
//! `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::{ForkResult, Pid};

/// The number of threads of this process (from `/proc/self/task`).
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The parent, with the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// Forks this process. When the interpreter is initialized, CPython's own fork protocol
/// runs around it (`PyOS_BeforeFork`, `PyOS_AfterFork_Parent`/`_Child`, with the GIL
/// held, exactly as `os.fork()` does), so the child's interpreter is consistent.
///
/// Refuses (an error) unless this process has a single thread: the caller must fork
/// before any runtime or thread exists.
pub(crate) fn fork() -> std::io::Result<Forked> {
    let threads = thread_count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "cannot fork safely: this process has {threads} threads (the app started threads while loading? use --lazy-apps)"
        )));
    }
    // SAFETY (PyO3 FFI): `Py_IsInitialized` may be called at any time, with or without
    // the GIL.
    let python = unsafe { pyo3::ffi::Py_IsInitialized() } != 0;
    if !python {
        return raw_fork();
    }
    pyo3::Python::attach(|_py| {
        // SAFETY: we hold the GIL (inside `attach`) on the thread that initialized the
        // interpreter (the process's only thread, checked above), which is what
        // `PyOS_BeforeFork` and the two after-fork functions require; each is called
        // exactly once, on the matching side, as CPython's `os.fork()` does.
        unsafe { pyo3::ffi::PyOS_BeforeFork() };
        let forked = raw_fork();
        match &forked {
            Ok(Forked::Child) => unsafe { pyo3::ffi::PyOS_AfterFork_Child() },
            _ => unsafe { pyo3::ffi::PyOS_AfterFork_Parent() },
        }
        forked
    })
}

fn raw_fork() -> std::io::Result<Forked> {
    // SAFETY: `fork` in a multi-threaded process leaves the child with locks that other
    // threads held; our callers fork only when the process has exactly one thread
    // (checked by `fork` above and by `daemonize`), so the child is a full copy with no
    // other thread's state half-changed, and may run any code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// uWSGI's `--daemonize FILE`: detaches from the terminal (fork, the parent exits 0,
/// `setsid`), with stdin from /dev/null and stdout and stderr appended to `log`. Must be
/// called before any thread exists.
pub(crate) fn daemonize(log: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let null = std::fs::File::open("/dev/null")?;
    if thread_count() != 1 {
        return Err(std::io::Error::other(
            "cannot daemonize with threads running",
        ));
    }
    match raw_fork()? {
        Forked::Parent(_) => std::process::exit(0),
        Forked::Child => {}
    }
    nix::unistd::setsid()?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&file)?;
    nix::unistd::dup2_stderr(&file)?;
    Ok(())
}

extern "C" fn wake(_: nix::libc::c_int) {}

/// The signal that interrupts a worker's blocking `accept` (SIGURG is ignored by default
/// and not used by the gateway otherwise).
pub(crate) const WAKE: Signal = Signal::SIGURG;

/// Installs a handler that does nothing for [`WAKE`], without `SA_RESTART`, so a thread
/// blocked in `accept` returns `EINTR` when signalled with `pthread_kill`.
pub(crate) fn install_wake_handler() -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler is an empty function, trivially async-signal-safe, and it
    // replaces no handler anybody else installed for SIGURG.
    unsafe { sigaction(WAKE, &action) }.map(drop)
}

/// Ignores `sig` (workers leave SIGINT and SIGHUP to the master).
pub(crate) fn ignore(sig: Signal) -> nix::Result<()> {
    let action = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in the signal context.
    unsafe { sigaction(sig, &action) }.map(drop)
}

/// Takes ownership of a descriptor inherited across `exec` (a listening socket a
/// reloading master passed by number). Checks that it is an open socket first.
pub(crate) fn adopt_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fcntl(F_GETFD)` and `getsockopt` only read the descriptor table entry; an
    // invalid number gives an error, not undefined behaviour.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ty: nix::libc::c_int = 0;
    let mut len = size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        nix::libc::getsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            nix::libc::SO_TYPE,
            (&raw mut ty).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and nothing in this process owns it:
    // it was inherited across exec by number, and the caller adopts each inherited
    // number once (the environment variable naming them is removed when read).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads and removes an environment variable (so it is taken once and the app does not
/// see it). Must be called while the process has a single thread.
pub(crate) fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    if thread_count() == 1 {
        // SAFETY: the environment may only be changed while no other thread can read it;
        // this process has a single thread (checked just above).
        unsafe { std::env::remove_var(name) };
    }
    Some(value)
}

/// `n` zeroed atomic counters in an anonymous `MAP_SHARED` mapping: the processes forked
/// after this call share them (see [`super::balance`]).
pub(crate) fn shared_counters(
    n: usize,
) -> std::io::Result<&'static [std::sync::atomic::AtomicU32]> {
    use std::sync::atomic::AtomicU32;
    let len = std::num::NonZeroUsize::new(n * size_of::<AtomicU32>())
        .ok_or_else(|| std::io::Error::other("no counters"))?;
    // SAFETY: a fresh anonymous mapping (no address hint, no file) aliases nothing.
    let ptr = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
        )
    }?;
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for AtomicU32) and
    // zero-filled by the kernel (any 4 bytes are a valid AtomicU32); it is never
    // unmapped, so it lives as long as the process ('static). Other processes share it,
    // but every access, here and there, is an atomic operation, so no data race exists.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU32>(), n) })
}

/// Puts the calling thread under `SCHED_BATCH`: the kernel's fair scheduler as before
/// (same share, same nice value), except that the thread's wake-ups do not preempt the
/// thread running on its core. Any user may choose it for its own threads.
pub(crate) fn batch_this_thread() -> std::io::Result<()> {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is an initialized `sched_param`
    // that outlives the call, which only reads it (priority 0 is the one SCHED_BATCH
    // takes). No memory of ours is kept or written.
    let r = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &raw const param) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
