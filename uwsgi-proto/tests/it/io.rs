//! The tokio helpers over real in-memory and TCP streams.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use uwsgi_proto::io::{ReadError, read_body_chunk, read_request_head, write_packet};
use uwsgi_proto::{Error, Limits, Modifier1, Modifier2, RequestDecoder};

#[tokio::test]
async fn head_and_body_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let vars = [("REQUEST_METHOD", "PUT"), ("CONTENT_LENGTH", "100000")];
        write_packet(&mut s, Modifier1::WSGI, Modifier2::ZERO, &vars, 65535)
            .await
            .unwrap();
        for _ in 0..100 {
            s.write_all(&[b'z'; 1000]).await.unwrap();
        }
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let mut dec = RequestDecoder::new(Limits::new());
    let head = read_request_head(&mut s, &mut buf, &mut dec)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        head.vars().unwrap().get(b"REQUEST_METHOD"),
        Some(&b"PUT"[..])
    );
    let mut n = 0;
    while let Some(chunk) = read_body_chunk(&mut s, &mut buf, &mut dec).await.unwrap() {
        assert!(chunk.iter().all(|&b| b == b'z'));
        n += chunk.len();
    }
    assert_eq!(n, 100_000);
    client.await.unwrap();
}

#[tokio::test]
async fn clean_eof_is_none_and_truncation_is_an_error() {
    let (mut a, b) = tokio::io::duplex(64);
    drop(b);
    let mut buf = BytesMut::new();
    assert!(
        read_request_head(&mut a, &mut buf, &mut RequestDecoder::default())
            .await
            .unwrap()
            .is_none()
    );

    let (mut a, mut b) = tokio::io::duplex(64);
    b.write_all(&[0, 10, 0, 0, 1, 0]).await.unwrap();
    drop(b);
    let err = read_request_head(&mut a, &mut BytesMut::new(), &mut RequestDecoder::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::UnexpectedEof {
                part: "packet",
                received: 6
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn protocol_errors_surface_typed() {
    let (mut a, mut b) = tokio::io::duplex(64);
    b.write_all(&[0, 0xff, 0xff, 0]).await.unwrap();
    let mut dec = RequestDecoder::new(Limits::new().max_block_size(4096));
    let err = read_request_head(&mut a, &mut BytesMut::new(), &mut dec)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ReadError::Protocol(Error::BlockTooLarge {
            size: 65535,
            limit: 4096
        })
    ));
    assert!(err.to_string().contains("invalid uwsgi packet"));
}

#[tokio::test]
async fn body_cut_short_is_an_error() {
    let (mut a, mut b) = tokio::io::duplex(1024);
    let vars = [("CONTENT_LENGTH", "10")];
    write_packet(&mut b, Modifier1::WSGI, Modifier2::ZERO, &vars, 65535)
        .await
        .unwrap();
    b.write_all(b"abc").await.unwrap();
    drop(b);
    let mut buf = BytesMut::new();
    let mut dec = RequestDecoder::default();
    read_request_head(&mut a, &mut buf, &mut dec)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_body_chunk(&mut a, &mut buf, &mut dec)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"abc"[..])
    );
    assert!(matches!(
        read_body_chunk(&mut a, &mut buf, &mut dec).await,
        Err(ReadError::UnexpectedEof { part: "body", .. })
    ));
}
