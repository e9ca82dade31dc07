//! Listeners: binding TCP and unix sockets, and the protocols served on them.

mod addr;
pub mod fastcgi;
pub mod http;
pub mod respond;
pub mod scgi;
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

/// Binds `addr`; a unix socket replaces a stale socket file and gets `chmod` (octal, as
/// uWSGI's `--chmod-socket`).
pub async fn bind(addr: &ListenAddr, chmod: Option<&str>) -> std::io::Result<Listener> {
    match addr {
        ListenAddr::Tcp(a) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(a).await?)),
        ListenAddr::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                std::fs::remove_file(path)?;
            }
            let l = tokio::net::UnixListener::bind(path)?;
            if let Some(mode) = chmod {
                let mode = u32::from_str_radix(mode, 8).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("--chmod-socket: {mode:?} is not an octal mode"),
                    )
                })?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(Listener::Unix(l, path.clone()))
        }
    }
}
