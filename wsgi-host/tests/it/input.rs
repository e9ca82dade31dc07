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

/// `wsgi.input` against a model of Python's file objects.
mod reads {
    use super::*;
    use proptest::collection;
    use proptest::prelude::*;

    /// One call the `reads` app makes on `wsgi.input`.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Read(Option<usize>),
        Readline(Option<usize>),
    }

    impl Op {
        fn query(ops: &[Self]) -> String {
            let op = |o: &Self| match *o {
                Self::Read(n) => format!("r{}", n.map_or(String::new(), |n| n.to_string())),
                Self::Readline(n) => format!("l{}", n.map_or(String::new(), |n| n.to_string())),
            };
            ops.iter().map(op).collect::<Vec<_>>().join(",")
        }

        /// What Python's file objects return for `ops` on `body`, in the app's answer form.
        fn model(body: &[u8], ops: &[Self]) -> String {
            let mut at = 0;
            let mut out = Vec::new();
            for o in ops {
                let rest = &body[at..];
                let n = match *o {
                    Self::Read(n) => n.unwrap_or(rest.len()).min(rest.len()),
                    Self::Readline(n) => {
                        let line = rest
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(rest.len(), |i| i + 1);
                        n.unwrap_or(line).min(line)
                    }
                };
                out.push(
                    rest[..n]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                );
                at += n;
            }
            out.join("|")
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![Just(None), (0usize..40).prop_map(Some)];
        prop_oneof![size.clone().prop_map(Op::Read), size.prop_map(Op::Readline)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A body held whole in one piece, held in the pieces it came in, or streamed in
        /// those pieces: any sequence of `read(n)`, `read()`, `readline(n)`, `readline()`
        /// returns what Python's file objects return, and never a byte past CONTENT_LENGTH.
        #[test]
        fn any_reads_of_a_body_in_any_pieces_give_what_a_file_gives(
            body in collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..120),
            cuts in collection::vec(0usize..120, 0..6),
            ops in collection::vec(op(), 1..8),
            short in 0usize..4,
        ) {
            static HOST: std::sync::OnceLock<wsgi_host::WsgiHost> = std::sync::OnceLock::new();
            let h = HOST.get_or_init(|| host("reads", 1));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // CONTENT_LENGTH at most the body: `short` bytes of it are extra, never read.
            let length = body.len().saturating_sub(short);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.extend([0, body.len()]);
            cuts.sort_unstable();
            cuts.dedup();
            let pieces: Vec<bytes::Bytes> = cuts
                .windows(2)
                .map(|w| bytes::Bytes::copy_from_slice(&body[w[0]..w[1]]))
                .collect();
            let target = format!("/?{}", Op::query(&ops));
            let want = Op::model(&body[..length], &ops);
            let len = length.to_string();
            let headers = [("Content-Length", len.as_str())];
            let whole = RequestBody::Full(bytes::Bytes::copy_from_slice(&body));
            let held = RequestBody::Pieces(pieces.clone());
            let (tx, streamed) = RequestBody::channel(2);
            let feed = pieces.clone();
            rt.block_on(async {
                tokio::spawn(async move {
                    for p in feed {
                        if tx.send(Ok(p)).await.is_err() {
                            return;
                        }
                    }
                });
                for (kind, b) in [("whole", whole), ("pieces", held), ("stream", streamed)] {
                    let r = send(h, &head("POST", &target, &headers), b).await;
                    prop_assert_eq!(r.head.status, 200);
                    prop_assert_eq!(r.text(), want.clone(), "{} {:?}", kind, pieces);
                }
                Ok(())
            })?;
        }
    }
}
