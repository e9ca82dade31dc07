//! Writing a WSGI response to a gateway-protocol peer (uwsgi, SCGI): a status line or a
//! CGI `Status:` header, the headers, the body as it streams; never chunk-encoded.

use std::os::unix::fs::FileExt;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use wsgi_host::{BodyChunk, WsgiHost, WsgiRequest, WsgiResponse};

/// How the status goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadStyle<'a> {
    /// `HTTP/1.1 200 OK` (uwsgi: nginx reads a status line, and then hides nothing).
    StatusLine(&'a [u8]),
    /// `Status: 200 OK` (SCGI, FastCGI: nginx hides it from the client).
    Cgi,
}

/// Encodes the head.
pub fn head_bytes(response: &WsgiResponse, style: HeadStyle<'_>) -> BytesMut {
    let head = &response.head;
    let mut out = BytesMut::with_capacity(512);
    match style {
        HeadStyle::StatusLine(protocol) => out.put_slice(protocol),
        HeadStyle::Cgi => out.put_slice(b"Status:"),
    }
    out.put_slice(format!(" {} {}\r\n", head.status, head.reason).as_bytes());
    let mut has_length = false;
    for (k, v) in &head.headers {
        has_length |= k.eq_ignore_ascii_case(b"content-length");
        out.put_slice(k);
        out.put_slice(b": ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    if let (false, Some(n)) = (has_length, head.content_length) {
        out.put_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.put_slice(b"\r\n");
    out
}

/// Reads up to 256 KiB of `file` at `at` (of `end`), off the async threads.
pub(crate) async fn file_block(
    file: &std::sync::Arc<std::fs::File>,
    at: u64,
    end: u64,
) -> std::io::Result<Vec<u8>> {
    let want = usize::try_from(end - at).map_or(256 * 1024, |n| n.min(256 * 1024));
    let f = file.clone();
    let block = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; want];
        let n = f.read_at(&mut buf, at)?;
        buf.truncate(n);
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(std::io::Error::other)??;
    if block.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shorter than announced",
        ));
    }
    Ok(block)
}

async fn write_file<W: AsyncWrite + Unpin>(
    w: &mut W,
    file: std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let file = std::sync::Arc::new(file);
    let (mut at, end) = (offset, offset + len);
    while at < end {
        let block = file_block(&file, at, end).await?;
        at += block.len() as u64;
        w.write_all(&block).await?;
    }
    Ok(())
}

/// Writes the whole response; returns the body bytes sent and whether it completed.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut response: WsgiResponse,
    style: HeadStyle<'_>,
    head_request: bool,
) -> (u64, bool) {
    if w.write_all(&head_bytes(&response, style)).await.is_err() {
        return (0, false);
    }
    let mut sent = 0u64;
    while let Some(chunk) = response.body.recv().await {
        let ok = match chunk {
            _ if head_request => true,
            Ok(BodyChunk::Data(d)) => {
                sent += d.len() as u64;
                w.write_all(&d).await.is_ok()
            }
            Ok(BodyChunk::File { file, offset, len }) => {
                sent += len;
                write_file(w, file, offset, len).await.is_ok()
            }
            Ok(_) => true,
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        };
        if !ok {
            return (sent, false);
        }
    }
    (sent, true)
}

/// Hands `request` to the app and writes its answer in `style` (503 when the host is busy
/// or closed), closes the write side, and writes the request's access-log line.
pub async fn answer<W: AsyncWrite + Unpin>(
    w: &mut W,
    host: &WsgiHost,
    request: WsgiRequest,
    style: HeadStyle<'_>,
) {
    let mut line = crate::access::for_env(&request.env);
    let head = request.env.get("REQUEST_METHOD") == Some(b"HEAD");
    let (status, sent) = match host.call(request).await {
        Ok(response) => {
            let status = response.head.status;
            let (sent, _) = write_response(w, response, style, head).await;
            (status, sent)
        }
        Err(e) => {
            tracing::error!("{e}");
            let head: &[u8] = match style {
                HeadStyle::StatusLine(protocol) => protocol,
                HeadStyle::Cgi => b"Status:",
            };
            let _ = w.write_all(head).await;
            let _ = w
                .write_all(b" 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nService Unavailable\n")
                .await;
            (503, 0)
        }
    };
    let _ = w.shutdown().await;
    if let Some(line) = &mut line {
        line.record.status = status;
        line.record.sent = sent;
    }
}
