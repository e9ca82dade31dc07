//! SCGI: what nginx's `scgi_pass` talks to. One request per connection; the response is a
//! CGI-style head (`Status:`) and the body, ended by closing the connection.

use bytes::BytesMut;
use cgi_family::scgi::{Duplicates, ScgiDecoder, ScgiLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use wsgi_host::{BodyError, RequestBody, WsgiHost, WsgiRequest};

use super::respond::{HeadStyle, answer};

/// Serves one SCGI connection with the WSGI app. nginx 1.22 repeats `HTTP_COOKIE` for
/// repeated Cookie lines (the spec forbids duplicates): the values are joined.
pub async fn serve_connection<S>(
    io: S,
    max_header: usize,
    max_body: Option<u64>,
    head_timeout: std::time::Duration,
    host: &WsgiHost,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = super::respond::SocketWriter::split(io);
    let mut decoder = ScgiDecoder::new(ScgiLimits {
        max_header,
        max_body,
        duplicates: Duplicates::Join,
    });
    let mut buf = BytesMut::with_capacity(8192);
    let read_head = async {
        loop {
            match decoder.decode_head(&mut buf) {
                Ok(Some(h)) => return Some(h),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("bad SCGI request: {e}");
                    return None;
                }
            }
            buf.reserve(8192);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    // A peer that trickles its head (slowloris) is cut off.
    let head = match tokio::time::timeout(head_timeout, read_head).await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(_) => {
            tracing::warn!("SCGI peer sent no whole request head in time: closed");
            return;
        }
    };
    let mut env = head.into_env();
    // scgi_params sends DOCUMENT_URI, no PATH_INFO: the app is mounted at the root.
    if !env.contains("PATH_INFO") {
        let uri = env.get_bytes("DOCUMENT_URI").cloned().unwrap_or_default();
        env.push("PATH_INFO", uri);
    }
    let https = matches!(env.get("HTTPS"), Some(b"on" | b"1"));
    let body = if decoder.body_remaining() > 0 {
        let (tx, rx) = RequestBody::channel(4);
        tokio::spawn(async move {
            while !decoder.is_done() {
                if let Some(chunk) = decoder.decode_body(&mut buf) {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                    continue;
                }
                buf.reserve(16 * 1024);
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = tx
                            .send(Err(BodyError("the SCGI peer closed mid-body".into())))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(BodyError(e.to_string()))).await;
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        rx
    } else {
        RequestBody::Empty
    };
    answer(
        &mut writer,
        host,
        WsgiRequest::new(env).with_body(body).with_https(https),
        HeadStyle::Cgi,
    )
    .await;
}
