//! `wsgi.input`: readline/read interplay, iteration, read(0), CONTENT_LENGTH as the end,
//! chunked (terminated) bodies, and a large upload streamed through in pieces.

use std::time::Duration;

use crate::support::{head, host, send};
use wsgi_host::{BodyError, RequestBody};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readline_then_read_then_iteration_keeps_every_byte() {
    let h = host("lines", 1);
    let body = b"first line\nabcdefgh\nthird\nfourth\nlast-no-newline";
    // Arrives in awkward pieces, split inside lines.
    let (tx, rb) = RequestBody::channel(8);
    tokio::spawn(async move {
        for piece in body.chunks(3) {
            tx.send(Ok(piece.to_vec().into())).await.unwrap();
        }
    });
    let len = body.len().to_string();
    let r = send(&h, &head("POST", "/", &[("Content-Length", &len)]), rb).await;
    assert_eq!(
        r.text(),
        "(b'first line\\n', b'abcd', b'efg', [b'h\\n', b'third\\n', b'fourth\\n', b'last-no-newline'], b'')"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_past_content_length() {
    let h = host("read_all", 1);
    // The stream has more bytes than CONTENT_LENGTH announces: the app sees 5.
    let r = send(
        &h,
        &head("POST", "/", &[("Content-Length", "5")]),
        RequestBody::Full(b"helloEXTRA".to_vec().into()),
    )
    .await;
    assert_eq!(r.text(), "5 b'hello' b''");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_without_length_ends_at_the_last_chunk() {
    let h = host("read_all", 1);
    let (tx, rb) = RequestBody::channel(2);
    tokio::spawn(async move {
        for i in 0..10 {
            tx.send(Ok(format!("piece{i};").into_bytes().into()))
                .await
                .unwrap();
        }
    });
    let r = send(
        &h,
        &head("POST", "/", &[("Transfer-Encoding", "chunked")]),
        rb,
    )
    .await;
    assert_eq!(r.text(), "70 b'piece0;piece1;piece2' b''");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_through_in_pieces() {
    let h = host("digest", 2);
    let total: usize = 64 * 1024 * 1024;
    let (tx, rb) = RequestBody::channel(4);
    let producer = tokio::spawn(async move {
        let block = vec![0x5au8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            tx.send(Ok(block.clone().into())).await.unwrap();
            sent += block.len();
        }
    });
    let len = total.to_string();
    let r = send(&h, &head("POST", "/", &[("Content-Length", &len)]), rb).await;
    producer.await.unwrap();
    let expected = {
        // sha256 of 64 MiB of 0x5a, computed by Python once for this test.
        let out = std::process::Command::new(crate::support::python())
            .args([
                "-c",
                "import hashlib;print(hashlib.sha256(b'\\x5a'*(64*1024*1024)).hexdigest())",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(r.text(), format!("{total} {expected}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_is_an_oserror_in_the_app() {
    let h = host("digest", 1);
    let (tx, rb) = RequestBody::channel(1);
    tokio::spawn(async move {
        tx.send(Ok(b"partial".to_vec().into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(Err(BodyError("client went away".into())))
            .await
            .unwrap();
    });
    let r = send(&h, &head("POST", "/", &[("Content-Length", "1000")]), rb).await;
    assert_eq!(
        r.head.status, 400,
        "the read raised OSError in the app; the client gets 400"
    );
}
