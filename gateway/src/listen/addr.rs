//! Listen addresses as uWSGI and nginx users write them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Where to listen: a TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// An address that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid listen address {0:?}: use :PORT, HOST:PORT, [IPv6]:PORT, /path.sock or unix:/path.sock"
)]
pub struct AddrError(pub String);

impl ListenAddr {
    /// Parses `:9000` (all interfaces, as uWSGI), `127.0.0.1:9000`, `[::1]:9000`,
    /// `localhost:9000`, `/path/app.sock`, `unix:/path/app.sock` or a relative `app.sock`.
    ///
    /// ```
    /// use gateway::listen::ListenAddr;
    /// assert_eq!(ListenAddr::parse(":9000").unwrap(), ListenAddr::Tcp("0.0.0.0:9000".parse().unwrap()));
    /// assert_eq!(ListenAddr::parse("[::1]:80").unwrap(), ListenAddr::Tcp("[::1]:80".parse().unwrap()));
    /// assert_eq!(ListenAddr::parse("unix:/run/app.sock").unwrap(), ListenAddr::Unix("/run/app.sock".into()));
    /// assert_eq!(ListenAddr::parse("mysite.sock").unwrap(), ListenAddr::Unix("mysite.sock".into()));
    /// ```
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        let err = || AddrError(s.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.is_empty() {
                Err(err())
            } else {
                Ok(Self::Unix(path.into()))
            };
        }
        if s.contains('/') || (!s.contains(':') && !s.is_empty()) {
            return Ok(Self::Unix(s.into()));
        }
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| err())?;
            return Ok(Self::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Tcp(a));
        }
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Self::Tcp)
            .ok_or_else(err)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
