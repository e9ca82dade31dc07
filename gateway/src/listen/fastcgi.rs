//! FastCGI: what nginx's `fastcgi_pass` (and `cgi-fcgi`) talk to. Requests may share a
//! connection (`fastcgi_keep_conn on`) or be multiplexed on it; each answer is a CGI-style
//! response in STDOUT records, then END_REQUEST.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cgi_family::Env;
use cgi_family::fastcgi::{self, Event, RecordType, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use wsgi_host::{BodyChunk, BodyError, RequestBody, WsgiHost, WsgiRequest};

use super::respond::{HeadStyle, SocketWriter, head_bytes};

/// The connection's writing half, shared by the requests multiplexed on it (a record is
/// written whole while it is held).
type Writer = Arc<Mutex<SocketWriter>>;

/// The content of each STDOUT record a file is sent in: the largest multiple of 8 a record
/// holds, so no padding follows.
const FILE_RECORD: u64 = 65_528;

async fn send_stdout(w: &Writer, id: u16, data: &[u8]) -> bool {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    if fastcgi::encode_stream(RecordType::STDOUT, id, data, &mut out).is_err() {
        return false;
    }
    w.lock().await.write_all(&out).await.is_ok()
}

/// nginx's fastcgi_params send the whole path as SCRIPT_NAME and no PATH_INFO: for a WSGI
/// app mounted at the root, that path is PATH_INFO.
fn mount_at_root(env: &mut Env) {
    if !env.contains("PATH_INFO") {
        let path = env.get_bytes("SCRIPT_NAME").cloned().unwrap_or_default();
        env.set("PATH_INFO", path);
        env.set("SCRIPT_NAME", Bytes::new());
    }
}

/// `len` bytes of `file` from `offset` in STDOUT records: each record's header is written,
/// then its content goes with `sendfile` over TCP and unix sockets (no copy through user
/// space). Returns the bytes sent and whether all were.
async fn send_file_records(
    w: &Writer,
    id: u16,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> (u64, bool) {
    let (mut at, end) = (offset, offset + len);
    while at < end {
        let n = (end - at).min(FILE_RECORD);
        let header = fastcgi::RecordHeader::new(RecordType::STDOUT, id, n as u16);
        let mut w = w.lock().await;
        let ok = w.write_all(&header.to_bytes()).await.is_ok()
            && w.send_file(file, at, n).await.is_ok()
            && w.write_all(&[0u8; 8][..usize::from(header.padding_length)])
                .await
                .is_ok();
        if !ok {
            // A record may be cut: nothing can follow it on this connection.
            let _ = w.shutdown().await;
            return (at - offset, false);
        }
        at += n;
    }
    (len, true)
}

async fn answer(
    w: Writer,
    id: u16,
    request: WsgiRequest,
    host: WsgiHost,
    done: mpsc::UnboundedSender<u16>,
) {
    let mut line = crate::access::for_env(&request.env);
    let method =
        String::from_utf8_lossy(request.env.get("REQUEST_METHOD").unwrap_or(b"-")).into_owned();
    let uri = String::from_utf8_lossy(request.env.get("REQUEST_URI").unwrap_or(b"-")).into_owned();
    let head_request = method == "HEAD";
    let mut status = 503;
    let mut sent = 0u64;
    match host.call(request).await {
        Err(e) => {
            tracing::error!("{e}");
            send_stdout(&w, id, b"Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nService Unavailable\n").await;
        }
        Ok(mut response) => {
            status = response.head.status;
            let mut ok = send_stdout(&w, id, &head_bytes(&response, HeadStyle::Cgi)).await;
            while ok {
                let Some(chunk) = response.body.recv().await else {
                    break;
                };
                ok = match chunk {
                    _ if head_request => true,
                    Ok(BodyChunk::Data(d)) => {
                        sent += d.len() as u64;
                        send_stdout(&w, id, &d).await
                    }
                    Ok(BodyChunk::File { file, offset, len }) => {
                        let (n, good) = send_file_records(&w, id, &file, offset, len).await;
                        sent += n;
                        good
                    }
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!("{method} {uri}: {e}");
                        false
                    }
                };
            }
        }
    }
    if let Some(line) = &mut line {
        line.record.status = status;
        line.record.sent = sent;
    }
    let _ = done.send(id);
}

/// Serves one FastCGI connection with the WSGI app.
pub async fn serve_connection<S>(io: S, max_body: Option<u64>, host: &WsgiHost)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_until(io, max_body, host, &CancellationToken::new()).await;
}

/// Serves one FastCGI connection until `shutdown` is cancelled: then the connection is
/// closed as soon as no request is in flight on it and no record is half read.
pub async fn serve_connection_until<S>(
    io: S,
    max_body: Option<u64>,
    host: &WsgiHost,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = SocketWriter::split(io);
    let writer: Writer = Arc::new(Mutex::new(writer));
    let mut conn = ServerConnection::new(ServerConfig::default());
    let mut bodies: HashMap<u16, mpsc::Sender<Result<Bytes, BodyError>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u16>();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut served_any = false;
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut stop = super::stop::StopWatch::new(shutdown);
    loop {
        loop {
            let ev = match conn.poll_event(&mut buf) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("bad FastCGI stream: {e}");
                    return;
                }
            };
            match ev {
                Event::Request { id, mut env, .. } => {
                    served_any = true;
                    mount_at_root(&mut env);
                    let too_big = max_body
                        .zip(
                            env.get("CONTENT_LENGTH")
                                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()),
                        )
                        .is_some_and(|(limit, n)| n > limit);
                    if too_big {
                        send_stdout(&writer, id, b"Status: 413 Request Entity Too Large\r\nContent-Type: text/plain\r\n\r\nRequest Entity Too Large\n").await;
                        let _ = done_tx.send(id);
                        continue;
                    }
                    let https = matches!(env.get("HTTPS"), Some(b"on" | b"1"));
                    let (tx, body) = RequestBody::channel(4);
                    bodies.insert(id, tx);
                    let request = WsgiRequest::new(env).with_body(body).with_https(https);
                    tokio::spawn(answer(
                        writer.clone(),
                        id,
                        request,
                        host.clone(),
                        done_tx.clone(),
                    ));
                }
                Event::Stdin { id, data } => {
                    if let Some(tx) = bodies.get(&id) {
                        if tx.send(Ok(data)).await.is_err() {
                            bodies.remove(&id); // the app stopped reading
                        }
                    }
                }
                Event::StdinEnd { id } => {
                    bodies.remove(&id);
                }
                Event::Abort { id } => {
                    if let Some(tx) = bodies.remove(&id) {
                        let _ = tx
                            .send(Err(BodyError("the web server aborted the request".into())))
                            .await;
                    }
                }
                _ => {}
            }
        }
        if let Some(out) = conn.take_output() {
            if writer.lock().await.write_all(&out).await.is_err() {
                return;
            }
        }
        buf.reserve(16 * 1024);
        let idle = buf.is_empty() && conn.active_requests().next().is_none();
        tokio::select! {
            // On shutdown an idle connection closes; one accepted just before the stop
            // that has not sent its request yet gets a moment to send it (and is served).
            () = stop.stopped(), if idle && (served_any || grace.is_none()) => {
                if served_any {
                    let _ = writer.lock().await.shutdown().await;
                    return;
                }
                grace = Some(Box::pin(tokio::time::sleep(Duration::from_secs(2))));
            }
            () = async { if let Some(g) = grace.as_mut() { g.await } }, if idle && grace.is_some() => {
                let _ = writer.lock().await.shutdown().await;
                return;
            }
            read = reader.read_buf(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return; // requests in flight see their body end; their output is dropped
                }
            }
            Some(id) = done_rx.recv() => {
                let mut out = BytesMut::new();
                let keep = conn.end_request(id, 0, &mut out);
                let mut w = writer.lock().await;
                if w.write_all(&out).await.is_err() {
                    return;
                }
                if !keep && conn.active_requests().next().is_none() {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    }
}
