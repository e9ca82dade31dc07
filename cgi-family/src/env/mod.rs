//! The CGI environment: ordered, byte-exact name/value pairs.

mod http;
pub mod names;
mod sink;

use std::fmt;

use bytes::Bytes;

pub use self::http::{AddrText, EnvBuilder, Flavor, PathError, RequestHead, normalize_path};
pub use self::sink::{EnvSink, HeadSource, Piece, WriteError};

/// The CGI meta-variables of one request: ordered, byte-exact pairs.
///
/// Names and values are bytes (no charset is assumed; PEP 3333 decodes them as latin-1
/// only at the Python edge). Order is kept, and duplicate names are allowed because the
/// wire formats allow them (nginx 1.22 sends one `HTTP_COOKIE` per `Cookie` line); lookup
/// returns the first. Pairs are [`Bytes`], so an env decoded from a connection buffer
/// shares that buffer instead of copying each pair.
///
/// It converts losslessly to and from a uwsgi vars block
/// ([`Env::from_uwsgi`]/[`Env::encode_uwsgi`]), FastCGI PARAMS
/// ([`fastcgi::decode_params`](crate::fastcgi::decode_params)/
/// [`fastcgi::encode_params`](crate::fastcgi::encode_params)) and an SCGI header
/// ([`scgi::encode_request`](crate::scgi::encode_request)/[`crate::scgi::ScgiHeader`]).
///
/// ```
/// use cgi_family::Env;
/// let mut env = Env::new();
/// env.push("REQUEST_METHOD", "GET");
/// env.push("PATH_INFO", "/caf\u{e9}");
/// env.set("REQUEST_METHOD", "HEAD"); // replaces in place
/// assert_eq!(env.get("REQUEST_METHOD"), Some(&b"HEAD"[..]));
/// assert_eq!(env.iter().count(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    pairs: Vec<(Bytes, Bytes)>,
}

fn into_bytes(b: impl Into<Bytes>) -> Bytes {
    b.into()
}

impl Env {
    /// An empty env.
    pub const fn new() -> Self {
        Self { pairs: Vec::new() }
    }

    /// An empty env with room for `n` pairs.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            pairs: Vec::with_capacity(n),
        }
    }

    /// The bytes of every name and value together (a packet holding this env is this
    /// plus its framing: 4 bytes a pair for uwsgi, up to 8 for FastCGI, 2 for SCGI).
    pub fn byte_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Appends a pair (even if the name is already present).
    pub fn push(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.pairs.push((into_bytes(name), into_bytes(value)));
    }

    /// Sets `name`: replaces the first pair with that name (and removes later ones), or
    /// appends it.
    pub fn set(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        let name = into_bytes(name);
        let value = into_bytes(value);
        match self.position(&name) {
            Some(i) => {
                self.pairs[i].1 = value;
                if !self.pairs[i + 1..].iter().any(|(k, _)| k[..] == name[..]) {
                    return; // the usual case: no later pair to remove
                }
                let mut seen = false;
                self.pairs.retain(|(k, _)| {
                    if k[..] != name[..] {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.pairs.push((name, value)),
        }
    }

    /// Removes every pair named `name`; returns how many there were.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) -> usize {
        let name = name.as_ref();
        let before = self.pairs.len();
        self.pairs.retain(|(k, _)| &k[..] != name);
        before - self.pairs.len()
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        self.pairs.iter().position(|(k, _)| &k[..] == name)
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = name.as_ref();
        self.pairs
            .iter()
            .find(|(k, _)| &k[..] == name)
            .map(|(_, v)| &v[..])
    }

    /// The value of the first pair named `name`, as shared [`Bytes`].
    pub fn get_bytes(&self, name: impl AsRef<[u8]>) -> Option<&Bytes> {
        let name = name.as_ref();
        self.pairs
            .iter()
            .find(|(k, _)| &k[..] == name)
            .map(|(_, v)| v)
    }

    /// The values of every pair named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| &k[..] == name)
            .map(|(_, v)| &v[..])
    }

    /// Whether a pair named `name` exists.
    pub fn contains(&self, name: impl AsRef<[u8]>) -> bool {
        self.get(name).is_some()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    /// The pairs as shared [`Bytes`], in order.
    pub fn pairs(&self) -> &[(Bytes, Bytes)] {
        &self.pairs
    }

    /// Takes the pairs.
    pub fn into_pairs(self) -> Vec<(Bytes, Bytes)> {
        self.pairs
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The env of a decoded uwsgi vars block, sharing `buf` (the buffer `vars` borrows
    /// from, e.g. [`uwsgi_proto::RequestHead::raw`]) instead of copying.
    ///
    /// # Panics
    /// If `vars` does not borrow from `buf`.
    pub fn from_uwsgi_shared(vars: uwsgi_proto::Vars<'_>, buf: &Bytes) -> Self {
        Self {
            pairs: vars
                .iter()
                .map(|(k, v)| (buf.slice_ref(k), buf.slice_ref(v)))
                .collect(),
        }
    }

    /// The env of a decoded uwsgi vars block (copied).
    pub fn from_uwsgi(vars: uwsgi_proto::Vars<'_>) -> Self {
        Self {
            pairs: vars
                .iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                .collect(),
        }
    }

    /// Writes this env as a uwsgi packet (header + vars block) into `dst`, within `limit`
    /// (the backend's `--buffer-size`).
    pub fn encode_uwsgi<B: bytes::BufMut>(
        &self,
        modifier1: uwsgi_proto::Modifier1,
        modifier2: uwsgi_proto::Modifier2,
        limit: usize,
        dst: &mut B,
    ) -> Result<usize, uwsgi_proto::EncodeError> {
        uwsgi_proto::encode_packet(modifier1, modifier2, &self.pairs, limit, dst)
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.pairs.iter().map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

impl<K: Into<Bytes>, V: Into<Bytes>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            pairs: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl<K: Into<Bytes>, V: Into<Bytes>> Extend<(K, V)> for Env {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.pairs
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uwsgi_proto::{Modifier1, Modifier2, Vars};

    #[test]
    fn set_replaces_first_and_drops_duplicates() {
        let mut env: Env = [("A", "1"), ("B", "2"), ("A", "3")].into_iter().collect();
        env.set("A", "x");
        assert_eq!(
            env.iter().collect::<Vec<_>>(),
            [(&b"A"[..], &b"x"[..]), (b"B", b"2")]
        );
        env.set("C", "");
        assert_eq!(env.get("C"), Some(&b""[..]));
        assert_eq!(env.remove("A"), 1);
        assert!(!env.contains("A"));
    }

    #[test]
    fn uwsgi_round_trip_is_lossless() {
        let env: Env = [
            (&b"HTTP_COOKIE"[..], &b"a=1"[..]),
            (b"HTTP_COOKIE", b"b=2"),
            (b"X", b"\xff\x00"),
            (b"EMPTY", b""),
        ]
        .into_iter()
        .map(|(k, v)| (Bytes::from_static(k), Bytes::from_static(v)))
        .collect();
        let mut wire = Vec::new();
        env.encode_uwsgi(Modifier1::WSGI, Modifier2::ZERO, 65535, &mut wire)
            .unwrap();
        let wire = Bytes::from(wire);
        let vars = Vars::parse(&wire[4..]).unwrap();
        assert_eq!(Env::from_uwsgi(vars), env);
        assert_eq!(Env::from_uwsgi_shared(vars, &wire), env);
    }
}
