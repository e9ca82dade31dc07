//! Shared helpers: an HTTP request described once, as raw bytes and as a RequestHead.

use cgi_family::{Env, RequestHead};

/// One HTTP request for the tests.
pub(crate) struct Req {
    pub(crate) method: &'static str,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) chunked: bool,
}

impl Req {
    pub(crate) fn get(target: &str) -> Self {
        Self {
            method: "GET",
            target: target.into(),
            headers: vec![("Host".into(), "example.com".into())],
            body: Vec::new(),
            chunked: false,
        }
    }

    pub(crate) fn post(target: &str, content_type: &str, body: &[u8]) -> Self {
        let mut r = Self::get(target);
        r.method = "POST";
        r.headers.push(("Content-Type".into(), content_type.into()));
        r.body = body.to_vec();
        r
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// The request on the wire (HTTP/1.1, `Connection: close`).
    pub(crate) fn raw(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        if self.chunked {
            for piece in self.body.chunks(7) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// The same request as the head the env builder takes (headers as sent).
    pub(crate) fn head(&self) -> RequestHead {
        let mut h = RequestHead::new(self.method, self.target.clone(), "HTTP/1.1");
        for (k, v) in &self.headers {
            h.push_header(k.clone(), v.clone());
        }
        if self.chunked {
            h.push_header("Transfer-Encoding", "chunked");
        } else if !self.body.is_empty() {
            h.push_header("Content-Length", self.body.len().to_string());
        }
        h.push_header("Connection", "close");
        h
    }
}

/// `env` as (name, value) strings, for readable assertion failures.
pub(crate) fn strings(env: &Env) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// The python3 that has the pip packages (flup, ...).
pub(crate) fn python() -> std::path::PathBuf {
    testkit::require("python3")
}
