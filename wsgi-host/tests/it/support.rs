//! Helpers: start a host on a test app, send a request, collect the response.

use std::os::unix::fs::FileExt;

use bytes::Bytes;
use cgi_family::{EnvBuilder, Flavor, RequestHead};
use wsgi_host::{
    AbortError, AppSpec, BodyChunk, HostOptions, RequestBody, ResponseHead, WsgiHost, WsgiRequest,
};

pub(crate) fn python() -> std::path::PathBuf {
    testkit::require("python3")
}

pub(crate) fn apps_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A host running `callable` from `tests/apps/basic.py` on `threads` threads.
pub(crate) fn host(callable: &str, threads: usize) -> WsgiHost {
    host_with(
        callable,
        HostOptions {
            threads,
            ..HostOptions::default()
        },
    )
}

/// A host running `callable` from `tests/apps/basic.py` with `opts`.
pub(crate) fn host_with(callable: &str, opts: HostOptions) -> WsgiHost {
    let spec = AppSpec::wsgi_file(apps_dir().join("basic.py")).callable(callable);
    WsgiHost::start(&spec, opts).unwrap_or_else(|e| panic!("loading {callable}: {e}"))
}

#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) head: ResponseHead,
    pub(crate) body: Vec<u8>,
    pub(crate) aborted: Option<AbortError>,
    pub(crate) had_file: bool,
}

impl Resp {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut h = RequestHead::new(method.to_owned(), target.to_owned(), "HTTP/1.1");
    h.push_header("Host", "testserver");
    for (k, v) in headers {
        h.push_header((*k).to_owned(), (*v).to_owned());
    }
    h
}

pub(crate) async fn send(host: &WsgiHost, head: &RequestHead, body: RequestBody) -> Resp {
    let env = EnvBuilder::new(Flavor::Wsgi)
        .server_name("testserver")
        .peer("127.0.0.1:5555".parse().unwrap())
        .local("127.0.0.1:80".parse().unwrap())
        .build(head)
        .unwrap();
    let mut r = host
        .call(WsgiRequest::new(env).with_body(body))
        .await
        .expect("the host takes the request");
    let mut body = Vec::new();
    let mut aborted = None;
    let mut had_file = false;
    while let Some(chunk) = r.body.recv().await {
        match chunk {
            Ok(BodyChunk::Data(d)) => body.extend_from_slice(&d),
            Ok(BodyChunk::File { file, offset, len }) => {
                had_file = true;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset).unwrap();
                body.extend_from_slice(&buf);
            }
            Ok(_) => unreachable!("no other chunk kinds"),
            Err(e) => {
                aborted = Some(e);
                break;
            }
        }
    }
    Resp {
        head: r.head,
        body,
        aborted,
        had_file,
    }
}

pub(crate) async fn get(host: &WsgiHost, target: &str) -> Resp {
    send(host, &head("GET", target, &[]), RequestBody::Empty).await
}

pub(crate) async fn post(host: &WsgiHost, target: &str, body: &[u8]) -> Resp {
    let len = body.len().to_string();
    let h = head(
        "POST",
        target,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &len),
        ],
    );
    send(host, &h, RequestBody::Full(Bytes::copy_from_slice(body))).await
}
