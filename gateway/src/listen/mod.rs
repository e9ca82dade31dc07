//! Listeners: binding TCP and unix sockets, and the protocols served on them.

mod addr;
pub mod fastcgi;
pub mod http;
mod reads;
pub mod respond;
pub mod scgi;
mod stop;
mod timer;
pub mod uwsgi;

pub use addr::{AddrError, ListenAddr};

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket, with its path (removed on drop when `vacuum` is set).
    Unix(tokio::net::UnixListener, PathBuf),
}

/// A bound listening socket in blocking mode, before any runtime exists: what a master
/// binds and its workers inherit across `fork` (and a reload inherits across `exec`).
#[derive(Debug)]
pub enum StdListener {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// A unix socket, with its path.
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// The listen backlog: connections the kernel queues while every worker is busy or
/// while workers are being replaced (nginx and tokio use 511 and 1024).
pub const BACKLOG: i32 = 1024;

impl StdListener {
    /// The socket's file descriptor.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l, _) => l.as_fd(),
        }
    }

    /// For a tokio runtime (non-blocking mode).
    pub fn into_tokio(self) -> std::io::Result<Listener> {
        Ok(match self {
            Self::Tcp(l) => {
                l.set_nonblocking(true)?;
                Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            Self::Unix(l, p) => {
                l.set_nonblocking(true)?;
                Listener::Unix(tokio::net::UnixListener::from_std(l)?, p)
            }
        })
    }

    /// The unix socket path, if it is one.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Tcp(_) => None,
            Self::Unix(_, p) => Some(p),
        }
    }
}

/// Binds `addr`; a unix socket replaces a stale socket file and gets `chmod` (octal, as
/// uWSGI's `--chmod-socket`). An address another server listens on (a TCP port, or a
/// unix socket that accepts a connection) is an `AddrInUse` error.
pub async fn bind(addr: &ListenAddr, chmod: Option<&str>) -> std::io::Result<Listener> {
    bind_std(addr, chmod)?.into_tokio()
}

/// [`bind`] without a runtime: a blocking-mode socket (SO_REUSEADDR for TCP, a backlog
/// of [`BACKLOG`]).
pub fn bind_std(addr: &ListenAddr, chmod: Option<&str>) -> std::io::Result<StdListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    match addr {
        ListenAddr::Tcp(a) => {
            let s = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
            // SO_REUSEADDR only: a port some other process listens on is refused with
            // "Address already in use" (as uWSGI and nginx do), never silently shared.
            s.set_reuse_address(true)?;
            if a.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&SockAddr::from(*a))?;
            s.listen(BACKLOG)?;
            Ok(StdListener::Tcp(s.into()))
        }
        ListenAddr::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                // A stale file (left by a killed server) is replaced, as uWSGI does; one
                // a live server still accepts on is not taken over. The probe does not
                // wait: a server whose backlog is full (EAGAIN) is live too.
                let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                probe.set_nonblocking(true)?;
                let live = match probe.connect(&SockAddr::unix(path)?) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                };
                drop(probe);
                if live {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!(
                            "address already in use: a server listens on {}",
                            path.display()
                        ),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            s.listen(BACKLOG)?;
            if let Some(mode) = chmod {
                let mode = u32::from_str_radix(mode, 8).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("--chmod-socket: {mode:?} is not an octal mode"),
                    )
                })?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(StdListener::Unix(s.into(), path.clone()))
        }
    }
}
