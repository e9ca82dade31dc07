//! Writing an env straight to where it goes: [`EnvBuilder::write`](super::EnvBuilder::write)
//! hands each var to an [`EnvSink`] (a uwsgi packet being written, an [`Env`] being
//! collected), reading the request from any [`HeadSource`] (a [`RequestHead`], or the
//! `http` crate's request parts without copying them first).

use std::convert::Infallible;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::http::RequestHead;
use super::{Env, PathError};

/// A name or a value handed to an [`EnvSink`].
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// Text that lives as long as the program (the stock names).
    Static(&'static [u8]),
    /// Bytes within a shared buffer (the second field, a slice of the first): a sink that
    /// keeps them can share the buffer instead of copying (`Bytes::slice_ref`).
    Shared(&'a Bytes, &'a [u8]),
    /// Bytes valid for this call only: a sink that keeps them copies them.
    Temp(&'a [u8]),
}

impl<'a> Piece<'a> {
    /// The bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Self::Static(b) => b,
            Self::Shared(_, b) | Self::Temp(b) => b,
        }
    }

    /// The bytes at `range` of this piece, of the same kind.
    pub(crate) fn sub(self, range: Range<usize>) -> Self {
        match self {
            Self::Static(b) => Self::Static(&b[range]),
            Self::Shared(owner, b) => Self::Shared(owner, &b[range]),
            Self::Temp(b) => Self::Temp(&b[range]),
        }
    }

    /// The part `inner` of this piece, of the same kind; bytes from elsewhere (a constant
    /// `/`, say) become a [`Piece::Temp`].
    pub(crate) fn within(self, inner: &'a [u8]) -> Self {
        let outer = self.as_bytes();
        let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
        match start.checked_add(inner.len()) {
            Some(end) if start <= outer.len() && end <= outer.len() => self.sub(start..end),
            _ => Self::Temp(inner),
        }
    }
}

/// Where [`EnvBuilder::write`](super::EnvBuilder::write) puts each var, in order.
pub trait EnvSink {
    /// What stops the writing (a packet over its size limit, say).
    type Error;

    /// Takes one var.
    fn var(&mut self, name: Piece<'_>, value: Piece<'_>) -> Result<(), Self::Error>;
}

/// Why [`EnvBuilder::write`](super::EnvBuilder::write) stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError<E> {
    /// The request's path cannot be a PATH_INFO (nginx answers 400).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The sink refused a var.
    #[error("{0}")]
    Sink(E),
}

/// A request head the env is read from.
///
/// Implemented for [`RequestHead`] (values shared with its buffer) and, with the `http`
/// feature, for `http::request::Parts` (read in place: nothing is copied before the sink
/// takes it).
pub trait HeadSource {
    /// The method.
    fn method(&self) -> Piece<'_>;
    /// The request target (path and query, or absolute-form).
    fn target(&self) -> Piece<'_>;
    /// The protocol (`HTTP/1.1`).
    fn version(&self) -> Piece<'_>;
    /// Every header line in arrival order (repeated names allowed).
    fn headers(&self) -> impl Iterator<Item = (&[u8], Piece<'_>)>;
    /// The first value of the header `name` (given in lower case).
    fn header(&self, name: &str) -> Option<Piece<'_>>;
    /// Whether no two header names are equal (ignoring case): lets the writer skip
    /// looking for repeated headers to join.
    fn names_distinct(&self) -> bool {
        false
    }
}

impl HeadSource for RequestHead {
    fn method(&self) -> Piece<'_> {
        Piece::Shared(&self.method, &self.method)
    }

    fn target(&self) -> Piece<'_> {
        Piece::Shared(&self.target, &self.target)
    }

    fn version(&self) -> Piece<'_> {
        Piece::Shared(&self.version, &self.version)
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], Piece<'_>)> {
        self.headers
            .iter()
            .map(|(n, v)| (&n[..], Piece::Shared(v, &v[..])))
    }

    fn header(&self, name: &str) -> Option<Piece<'_>> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| Piece::Shared(v, &v[..]))
    }
}

#[cfg(feature = "http")]
impl HeadSource for http::request::Parts {
    fn method(&self) -> Piece<'_> {
        Piece::Temp(self.method.as_str().as_bytes())
    }

    fn target(&self) -> Piece<'_> {
        Piece::Temp(
            self.uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        )
    }

    fn version(&self) -> Piece<'_> {
        Piece::Static(match self.version {
            http::Version::HTTP_09 => b"HTTP/0.9",
            http::Version::HTTP_10 => b"HTTP/1.0",
            http::Version::HTTP_2 => b"HTTP/2.0",
            http::Version::HTTP_3 => b"HTTP/3.0",
            _ => b"HTTP/1.1",
        })
    }

    /// The header map's lines (a repeated name's values together, as the map keeps
    /// them), then, for a request without `Host` (HTTP/2), the URI's authority as `host`.
    fn headers(&self) -> impl Iterator<Item = (&[u8], Piece<'_>)> {
        let authority = match self.headers.contains_key(http::header::HOST) {
            true => None,
            false => self.uri.authority(),
        };
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), Piece::Temp(v.as_bytes())))
            .chain(authority.map(|a| (&b"host"[..], Piece::Temp(a.as_str().as_bytes()))))
    }

    fn header(&self, name: &str) -> Option<Piece<'_>> {
        use http::header;
        // The names the env reads, looked up by their constants (no parsing).
        let found = match name {
            "host" => self.headers.get(header::HOST),
            "content-type" => self.headers.get(header::CONTENT_TYPE),
            "content-length" => self.headers.get(header::CONTENT_LENGTH),
            "authorization" => self.headers.get(header::AUTHORIZATION),
            other => self.headers.get(other),
        };
        match found {
            Some(v) => Some(Piece::Temp(v.as_bytes())),
            None if name == "host" => self
                .uri
                .authority()
                .map(|a| Piece::Temp(a.as_str().as_bytes())),
            None => None,
        }
    }

    fn names_distinct(&self) -> bool {
        self.headers.len() == self.headers.keys_len()
    }
}

/// Collects an [`Env`]: shared pieces are kept by reference, the others copied into one
/// arena whose values share its allocation.
pub(crate) struct Collect {
    pub(crate) env: Env,
    pub(crate) arena: BytesMut,
}

impl Collect {
    fn keep(&mut self, p: Piece<'_>) -> Bytes {
        match p {
            Piece::Static(b) => Bytes::from_static(b),
            Piece::Shared(owner, b) => owner.slice_ref(b),
            Piece::Temp(b) => {
                self.arena.extend_from_slice(b);
                self.arena.split().freeze()
            }
        }
    }
}

impl EnvSink for Collect {
    type Error = Infallible;

    fn var(&mut self, name: Piece<'_>, value: Piece<'_>) -> Result<(), Infallible> {
        let name = self.keep(name);
        let value = self.keep(value);
        self.env.push(name, value);
        Ok(())
    }
}

/// A uwsgi packet being written takes the vars as they come (an error: the vars block
/// would pass the packet's limit).
impl EnvSink for uwsgi_proto::PacketBuilder<'_> {
    type Error = uwsgi_proto::EncodeError;

    fn var(&mut self, name: Piece<'_>, value: Piece<'_>) -> Result<(), Self::Error> {
        uwsgi_proto::PacketBuilder::var(self, name.as_bytes(), value.as_bytes()).map(drop)
    }
}
