//! Writing a WSGI response to a gateway-protocol peer (uwsgi, SCGI; FastCGI frames it in
//! records): a status line or a CGI `Status:` header, the headers, the body as it streams;
//! never chunk-encoded.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wsgi_host::{BodyChunk, WsgiHost, WsgiRequest, WsgiResponse};

/// The writing half of a peer's connection. Over TCP and unix sockets a file region
/// (`wsgi.file_wrapper` on a real file) goes out with `sendfile`, without passing through
/// user space; any other stream gets it in 256 KiB blocks.
pub enum SocketWriter {
    /// A TCP connection's writing half.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// A unix socket's writing half.
    Unix(tokio::net::unix::OwnedWriteHalf),
    /// Any other stream.
    Other(Pin<Box<dyn AsyncWrite + Send>>),
}

impl std::fmt::Debug for SocketWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "SocketWriter::Tcp",
            Self::Unix(_) => "SocketWriter::Unix",
            Self::Other(_) => "SocketWriter::Other",
        })
    }
}

/// The reading half that goes with a [`SocketWriter`].
pub type SocketReader = Pin<Box<dyn AsyncRead + Send>>;

impl SocketWriter {
    /// Splits `io` into its halves: the socket's own for TCP and unix sockets (so that
    /// files can be sent with `sendfile`), tokio's generic split otherwise.
    pub fn split<S>(io: S) -> (SocketReader, Self)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let any: Box<dyn std::any::Any + Send> = Box::new(io);
        let any = match any.downcast::<tokio::net::TcpStream>() {
            Ok(tcp) => {
                let (r, w) = tcp.into_split();
                return (Box::pin(r), Self::Tcp(w));
            }
            Err(any) => any,
        };
        let any = match any.downcast::<tokio::net::UnixStream>() {
            Ok(unix) => {
                let (r, w) = unix.into_split();
                return (Box::pin(r), Self::Unix(w));
            }
            Err(any) => any,
        };
        match any.downcast::<S>() {
            Ok(io) => {
                let (r, w) = tokio::io::split(*io);
                (Box::pin(r), Self::Other(Box::pin(w)))
            }
            Err(_) => unreachable!("the box holds an S"),
        }
    }

    /// Sends `len` bytes of `file` from `offset`.
    pub async fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        match self {
            Self::Tcp(w) => sendfile_to(w.as_ref(), file, offset, len).await,
            Self::Unix(w) => sendfile_to(w.as_ref(), file, offset, len).await,
            Self::Other(_) => write_file(self, file, offset, len).await,
        }
    }
}

/// A socket `sendfile` can write to, with tokio's readiness.
trait Sendable: std::os::fd::AsFd {
    async fn ready(&self) -> std::io::Result<()>;
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R>;
}

impl Sendable for tokio::net::TcpStream {
    async fn ready(&self) -> std::io::Result<()> {
        self.writable().await
    }
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(tokio::io::Interest::WRITABLE, f)
    }
}

impl Sendable for tokio::net::UnixStream {
    async fn ready(&self) -> std::io::Result<()> {
        self.writable().await
    }
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(tokio::io::Interest::WRITABLE, f)
    }
}

/// `sendfile` from `file` into the socket until `len` bytes are sent, waiting for the
/// socket to be writable between tries.
async fn sendfile_to<S: Sendable>(
    sock: &S,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut at = i64::try_from(offset).map_err(std::io::Error::other)?;
    let mut left = len;
    while left > 0 {
        sock.ready().await?;
        let count = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match sock.try_send(|| {
            nix::sys::sendfile::sendfile64(sock, file, Some(&mut at), count)
                .map_err(std::io::Error::from)
        }) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ));
            }
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Self::Unix(w) => Pin::new(w).poll_write(cx, buf),
            Self::Other(w) => w.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_flush(cx),
            Self::Unix(w) => Pin::new(w).poll_flush(cx),
            Self::Other(w) => w.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Self::Unix(w) => Pin::new(w).poll_shutdown(cx),
            Self::Other(w) => w.as_mut().poll_shutdown(cx),
        }
    }
}

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
    out.put_slice(format!(" {} ", head.status).as_bytes());
    out.put_slice(&head.reason);
    out.put_slice(b"\r\n");
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

/// `len` bytes of `file` from `offset`, written in blocks (for streams `sendfile` cannot
/// write to).
async fn write_file<W: AsyncWrite + Unpin>(
    w: &mut W,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let (mut at, mut left) = (offset, len);
    while left > 0 {
        let block = crate::handler::body::read_block(file, &mut at, &mut left)?;
        w.write_all(&block).await?;
    }
    Ok(())
}

/// Writes the whole response; returns the body bytes sent and whether it completed.
pub async fn write_response(
    w: &mut SocketWriter,
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
                w.send_file(&file, offset, len).await.is_ok()
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
pub async fn answer(
    w: &mut SocketWriter,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn file(n: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        (f, data)
    }

    /// Sends a region of a 3 MiB file through `writer` and reads it at `reader`.
    async fn region<R: AsyncRead + Unpin + Send + 'static>(
        mut writer: SocketWriter,
        mut reader: R,
    ) {
        let (f, data) = file(3 << 20);
        let (offset, len) = (12_345u64, (3 << 20) - 20_000u64);
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.map(|_| got)
        });
        writer.write_all(b"head:").await.unwrap();
        writer
            .send_file(&std::fs::File::open(f.path()).unwrap(), offset, len)
            .await
            .unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        let got = reading.await.unwrap().unwrap();
        assert_eq!(&got[..5], b"head:");
        assert!(
            got[5..] == data[offset as usize..(offset + len) as usize],
            "the region arrives whole and in order"
        );
        // A file shorter than announced is an error, not a hang.
        let (short, _) = file(100);
        let (mut w2, _r2) = (writer_for_error().await, ());
        let e = w2
            .send_file(&std::fs::File::open(short.path()).unwrap(), 0, 1000)
            .await;
        assert!(e.is_err());
    }

    async fn writer_for_error() -> SocketWriter {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        std::mem::forget(b); // keeps the peer open
        SocketWriter::split(a).1
    }

    #[tokio::test]
    async fn files_go_out_whole_over_tcp_unix_and_other_streams() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (_, w) = SocketWriter::split(server);
        assert!(matches!(w, SocketWriter::Tcp(_)));
        region(w, client).await;

        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_, w) = SocketWriter::split(a);
        assert!(matches!(w, SocketWriter::Unix(_)));
        region(w, b).await;

        let (a, b) = tokio::io::duplex(64 * 1024);
        let (_, w) = SocketWriter::split(a);
        assert!(matches!(w, SocketWriter::Other(_)));
        region(w, b).await;
    }
}
