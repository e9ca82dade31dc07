//! The uwsgi protocol: what nginx's `uwsgi_pass` talks to. One request per connection;
//! the response is raw HTTP (status line, headers, body), never chunk-encoded, ended by
//! closing the connection.

use bytes::BytesMut;
use cgi_family::Env;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use uwsgi_proto::io::{read_body_chunk, read_request_head};
use uwsgi_proto::{Limits, Modifier1, PacketHeader, RequestDecoder};
use wsgi_host::{BodyError, RequestBody, WsgiHost, WsgiRequest};

use super::respond::{HeadStyle, answer};

/// Serves one uwsgi connection with the WSGI app.
pub async fn serve_connection<S>(
    mut io: S,
    limits: Limits,
    head_timeout: std::time::Duration,
    host: &WsgiHost,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8192);
    let mut decoder = RequestDecoder::new(limits);
    // A peer that trickles its head (slowloris) is cut off, as uWSGI's --socket-timeout.
    let read = tokio::time::timeout(
        head_timeout,
        read_request_head(&mut io, &mut buf, &mut decoder),
    )
    .await;
    let Ok(read) = read else {
        tracing::warn!("uwsgi peer sent no whole request head in {head_timeout:?}: closed");
        return;
    };
    let head = match read {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(e) => {
            // uWSGI closes without a reply; say why in the log, with the hint.
            match &e {
                uwsgi_proto::io::ReadError::Protocol(uwsgi_proto::Error::BlockTooLarge {
                    size,
                    limit,
                }) => {
                    tracing::error!(
                        "uwsgi packet of {size} bytes is over --buffer-size {limit}: raise --buffer-size (up to 65535)"
                    );
                }
                other => tracing::error!("bad uwsgi request: {other}"),
            }
            return;
        }
    };
    match head.header().modifier1 {
        Modifier1::PING => {
            let _ = io.write_all(&PacketHeader::PONG.to_bytes()).await;
            return;
        }
        m if m != Modifier1::WSGI && m != Modifier1::WSGI_MANAGE_PATH_INFO => {
            tracing::error!("unavailable modifier requested: {}", m.0);
            return;
        }
        _ => {}
    }
    let Some(vars) = head.vars() else { return };
    let env = Env::from_uwsgi_shared(vars, head.raw());
    let https = matches!(env.get("HTTPS"), Some(b"on" | b"1"));
    let protocol = env
        .get("SERVER_PROTOCOL")
        .filter(|p| p.starts_with(b"HTTP/"))
        .map_or_else(|| b"HTTP/1.0".to_vec(), <[u8]>::to_vec);

    // The body streams from the connection into wsgi.input.
    let (mut reader, mut writer) = super::respond::SocketWriter::split(io);
    let body = if head.content_length() > 0 {
        let (tx, rx) = RequestBody::channel(4);
        tokio::spawn(async move {
            loop {
                match read_body_chunk(&mut reader, &mut buf, &mut decoder).await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(BodyError(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        rx
    } else {
        RequestBody::Empty
    };
    let request = WsgiRequest::new(env).with_body(body).with_https(https);
    answer(&mut writer, host, request, HeadStyle::StatusLine(&protocol)).await;
}
