//! Every path through the bridge, with apps wrapped in `wsgiref.validate.validator`: a
//! validator assertion is a 500 here, so each test fails on it.

use crate::support::{get, head, host, post, send};
use wsgi_host::RequestBody;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_get_has_a_content_length() {
    let r = get(&host("hello", 1), "/").await;
    assert_eq!((r.head.status, r.text().as_str()), (200, "Hello World"));
    // Unwrapped (the validator hides the list), a single block gets a Content-Length.
    let r = get(&host("hello_plain", 1), "/").await;
    assert_eq!(r.text(), "Hello World");
    assert_eq!(
        r.head.content_length,
        Some(11),
        "a single block gets a Content-Length"
    );
    assert_eq!(r.head.header("content-type"), Some(&b"text/plain"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_echo_with_environ_facts() {
    let h = host("echo", 1);
    let body: Vec<u8> = (0..100_000).map(|i| (i % 256) as u8).collect();
    let len = body.len().to_string();
    let req = head(
        "POST",
        "/caf%C3%A9/x?a=1&b=%20",
        &[
            ("Content-Length", &len),
            ("Content-Type", "application/octet-stream"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
        ],
    );
    let r = send(&h, &req, RequestBody::Full(body.clone().into())).await;
    assert_eq!(r.head.status, 200, "{}", r.text());
    let nl = r.body.iter().position(|&b| b == b'\n').unwrap();
    // PATH_INFO is latin-1-decoded UTF-8 bytes: 'cafÃ©' in Python, the raw bytes again here.
    assert_eq!(
        &r.body[..nl],
        "POST||/caf\u{c3}\u{a9}/x|a=1&b=%20|http|a=1; b=2"
            .chars()
            .map(|c| c as u32 as u8)
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert_eq!(&r.body[nl + 1..], &body[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_sets_the_status_late() {
    let r = get(&host("stream", 1), "/").await;
    assert_eq!(r.head.status, 201);
    assert_eq!(r.text(), "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n");
    assert_eq!(r.head.content_length, None, "a streamed body has no length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_callable_then_iterable() {
    let r = get(&host("writer", 1), "/").await;
    assert_eq!(
        (r.head.status, r.text().as_str()),
        (200, "written;returned")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blocks_arrive_whole_after_the_app_dropped_them() {
    // Blocks from 8 KiB up reach the server without a copy, holding the Python object;
    // the app drops each one (and makes the next) while the body is still on its way.
    let h = host("big_blocks", 1);
    let mut want = vec![1u8; 100_000];
    for i in 2..8u8 {
        want.extend(std::iter::repeat_n(i, 50_000 + usize::from(i)));
    }
    for _ in 0..3 {
        let r = get(&h, "/").await;
        assert_eq!(r.head.status, 200);
        assert!(r.body == want, "the streamed blocks came out changed");
    }
    let h = host("big_single", 2);
    for n in 1..5u8 {
        let r = get(&h, &format!("/?{n}")).await;
        assert_eq!(r.head.content_length, Some(300_000));
        assert!(r.body.iter().all(|&b| b == n) && r.body.len() == 300_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exc_info_replaces_the_status_before_headers_go_out() {
    let r = get(&host("exc_info", 1), "/").await;
    assert_eq!((r.head.status, r.text().as_str()), (500, "handled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stream_and_environ() {
    let r = get(&host("errors", 1), "/").await;
    assert_eq!((r.head.status, r.text().as_str()), (200, "logged"));
    let r = get(&host("environ_dump", 3), "/p?q=1").await;
    assert_eq!(r.head.status, 200, "{}", r.text());
    let t = r.text();
    for line in [
        "REQUEST_METHOD=GET",
        "SCRIPT_NAME=\n",
        "PATH_INFO=/p",
        "QUERY_STRING=q=1",
        "SERVER_NAME=testserver",
        "SERVER_PORT=80",
        "SERVER_PROTOCOL=HTTP/1.1",
        "REMOTE_ADDR=127.0.0.1",
        "HTTP_HOST=testserver",
        "version=(1, 0) multithread=True multiprocess=False run_once=False terminated=True",
    ] {
        assert!(t.contains(line), "{line:?} missing from\n{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_wrapper_hands_the_file_over() {
    let dir = testkit::temp_dir();
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let target = format!("/?{}", path.display());
    // Through the validator the wrapper is iterated (the validator hides it).
    let r = send(
        &host("file_wrapper", 1),
        &head("GET", &target, &[]),
        RequestBody::Empty,
    )
    .await;
    assert_eq!(r.head.status, 200, "{}", r.text());
    assert!(r.body == data, "the whole file");
    let h = host("file_wrapper_plain", 1);
    let r = send(
        &h,
        &head("GET", &target, &[("X-Skip", "1000")]),
        RequestBody::Empty,
    )
    .await;
    assert_eq!(r.head.status, 200, "{}", r.text());
    assert!(
        r.had_file,
        "a real file is sent as a file, not through Python"
    );
    assert_eq!(r.head.content_length, Some(299_000));
    assert!(
        r.body == data[1000..],
        "from the file's position to its end"
    );
    // A file-like object without a descriptor is iterated in blocks.
    let r = get(&host("file_wrapper_iter", 1), "/").await;
    assert!(!r.had_file);
    assert_eq!(r.body, vec![b'x'; 10000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_a_streamed_body() {
    let h = host("echo", 1);
    let (tx, body) = RequestBody::channel(2);
    tokio::spawn(async move {
        for piece in [&b"hello "[..], b"streamed ", b"world"] {
            tx.send(Ok(piece.to_vec().into())).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let r = send(&h, &head("POST", "/s", &[("Content-Length", "20")]), body).await;
    assert!(r.text().ends_with("\nhello streamed world"), "{}", r.text());
    let r = post(&h, "/again", b"").await;
    assert_eq!(r.head.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_environs_share_nothing_stale() {
    // One thread: every request starts from the same template, which keeps the previous
    // request's values of the CGI variables. A request lacking them must not see them,
    // and an app's changes to its environ must not reach the next request.
    let h = host("environ_mutate", 1);
    let full = head(
        "POST",
        "/f?a=1",
        &[("Content-Type", "text/x"), ("Content-Length", "3")],
    );
    let first = send(&h, &full, RequestBody::Full("abc".into())).await;
    assert_eq!(first.head.status, 200, "{}", first.text());
    for line in [
        "CONTENT_LENGTH=3\n",
        "CONTENT_TYPE=text/x\n",
        "QUERY_STRING=a=1\n",
        "REQUEST_METHOD=POST\n",
        "REMOTE_ADDR=127.0.0.1\n",
    ] {
        assert!(first.text().contains(line), "{line:?} in\n{}", first.text());
    }
    let mut bare = cgi_family::Env::with_capacity(5);
    for (k, v) in [
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/m"),
        ("SERVER_NAME", "s"),
        ("SERVER_PORT", "81"),
        ("SERVER_PROTOCOL", "HTTP/1.0"),
    ] {
        bare.push(k, v);
    }
    let mut r = h
        .call(wsgi_host::WsgiRequest::new(bare))
        .await
        .expect("taken");
    let mut second = Vec::new();
    while let Some(Ok(wsgi_host::BodyChunk::Data(d))) = r.body.recv().await {
        second.extend_from_slice(&d);
    }
    let second = String::from_utf8(second).unwrap();
    assert_eq!(
        second,
        "CONTENT_LENGTH=\nCONTENT_TYPE=\nDOCUMENT_ROOT=\nPATH_INFO=/m\nQUERY_STRING=\n\
         REMOTE_ADDR=\nREMOTE_PORT=\nREQUEST_METHOD=GET\nREQUEST_SCHEME=\nREQUEST_URI=\n\
         SCRIPT_NAME=\nSERVER_NAME=s\nSERVER_PORT=81\nSERVER_PROTOCOL=HTTP/1.0\n",
        "nothing of the first request, nothing the app changed"
    );
    let third = send(&h, &full, RequestBody::Full("abc".into())).await;
    assert_eq!(
        third.text(),
        first.text(),
        "the first request's values again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_that_sleep_without_spinning_first_serve_every_request() {
    // `spin: false`: a thread that finds the queue empty goes to sleep at once, so every
    // request after a pause must wake one.
    let h = crate::support::host_with(
        "hello",
        wsgi_host::HostOptions {
            threads: 2,
            spin: false,
            ..Default::default()
        },
    );
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { get(&h, "/").await })
        })
        .collect();
    for task in burst {
        assert_eq!(task.await.unwrap().head.status, 200);
    }
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), get(&h, "/"))
            .await
            .expect("a sleeping thread was woken");
        assert_eq!(r.head.status, 200);
    }
    // A thread counts its request once the answer is handed over: a moment after the
    // client may have it.
    let counted = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h.stats().requests < 220 && std::time::Instant::now() < counted {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(h.stats().requests, 220);
}
