//! Misbehaving apps get their documented outcome, and the host keeps serving.

use std::time::{Duration, Instant};

use crate::support::{get, host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_has_its_outcome() {
    let h = host("misbehave", 2);
    for (path, status) in [
        ("/str", 500),
        ("/none", 500),
        ("/raise-first", 500),
        ("/no-start", 500),
        ("/twice", 500),
        ("/raise", 500),
        ("/bad-status", 500),
        ("/bytes-header", 500),
        ("/hop", 500),
        ("/crlf", 500),
        ("/tuple-headers", 500),
    ] {
        let r = get(&h, path).await;
        assert_eq!(r.head.status, status, "{path}: {}", r.text());
        assert!(
            !r.text().contains("Traceback"),
            "{path}: no traceback in the page"
        );
        assert!(r.aborted.is_none(), "{path}");
        // ... and the next request is served.
        let ok = get(&h, "/fine").await;
        assert_eq!(
            (ok.head.status, ok.text().as_str()),
            (200, "ok"),
            "after {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_checked_as_one_part_of_the_head_is_checked_again_as_another() {
    // One thread, so every request meets the strings the previous ones left checked.
    let h = host("misbehave", 1);
    for _ in 0..4 {
        let r = get(&h, "/spaced-value").await;
        assert_eq!(r.head.status, 299);
        assert_eq!(&r.head.reason[..], b"Tr\xe8s bien", "the reason as latin-1");
        assert_eq!(r.head.header("X-Spaced"), Some(&b"two words"[..]));
    }
    for path in ["/spaced-name", "/spaced-status", "/spaced-name"] {
        let r = get(&h, path).await;
        assert_eq!(r.head.status, 500, "{path}");
    }
    assert_eq!(get(&h, "/spaced-value").await.head.status, 299);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_after_the_headers_abort_and_close_runs_once() {
    let h = host("misbehave", 1);
    let before: u32 = get(&h, "/closed").await.text().parse().unwrap();
    // Raises on the third block: the head (200) and the first blocks went out, then the
    // body is cut short.
    let r = get(&h, "/raise-later").await;
    assert_eq!(r.head.status, 200);
    assert_eq!(r.body, b"aaaaaaaaaab");
    assert!(r.aborted.is_some(), "the response is cut, not completed");
    // close() raising after a complete body: logged, the response stands.
    let r = get(&h, "/raise-close").await;
    assert_eq!((r.head.status, r.text().as_str()), (200, "complete"));
    assert!(r.aborted.is_none());
    let _ = get(&h, "/raise-first").await;
    let after: u32 = get(&h, "/closed").await.text().parse().unwrap();
    assert_eq!(
        after - before,
        3,
        "close() called exactly once per response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_request_does_not_block_the_other_threads() {
    let h = host("misbehave", 2);
    served_beside(&h, "/sleep?1.5", "slept").await;
    // Two threads really serve: both names show up.
    let mut names = std::collections::HashSet::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let _ = get(&h, "/sleep?0.05").await;
            get(&h, "/threads").await.text()
        }));
    }
    for t in tasks {
        names.insert(t.await.unwrap());
    }
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("wsgi-") || n.starts_with("Dummy")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cpu_bound_request_does_not_hold_the_other_threads_back() {
    // A thread starts a request beside a running one only when that one waits, or has
    // run for a while: a request that computes for seconds must not starve the rest.
    let h = host("misbehave", 2);
    served_beside(&h, "/spin?1.5", "spun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_requests_sleep_side_by_side_on_as_many_threads() {
    // A request queued while the others' threads are all in requests must still be
    // seen by the idle thread left (a burst wakes one watcher, not one thread each).
    let h = host("misbehave", 3);
    let _ = get(&h, "/fine").await;
    let start = Instant::now();
    let sleep = |h: &wsgi_host::WsgiHost| {
        let h = h.clone();
        tokio::spawn(async move { get(&h, "/sleep?1.0").await.text() })
    };
    let first = sleep(&h);
    // The first thread sleeps; two more requests come at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (second, third) = (sleep(&h), sleep(&h));
    for t in [first, second, third] {
        assert_eq!(t.await.unwrap(), "slept");
    }
    assert!(
        start.elapsed() < Duration::from_millis(1600),
        "three 1 s sleeps on three threads took {:?}",
        start.elapsed()
    );
}

/// Five quick requests are served within a second while `slow` (1.5 s) runs on the
/// other thread, which then answers `answer`.
async fn served_beside(h: &wsgi_host::WsgiHost, slow: &'static str, answer: &str) {
    let running = {
        let h = h.clone();
        tokio::spawn(async move { get(&h, slow).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(h, "/fine").await.text(), "ok");
    }
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "served beside {slow}: {:?}",
        start.elapsed()
    );
    assert_eq!(running.await.unwrap().text(), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_stops_the_iteration_and_close_runs() {
    let h = host("misbehave", 1);
    let before: u32 = get(&h, "/closed").await.text().parse().unwrap();
    let env = cgi_family::EnvBuilder::new(cgi_family::Flavor::Wsgi)
        .build(&crate::support::head("GET", "/long", &[]))
        .unwrap();
    let mut r = h.call(wsgi_host::WsgiRequest::new(env)).await.unwrap();
    assert!(r.body.recv().await.is_some(), "the first block arrives");
    drop(r); // the client went away after one of 10,000 blocks
    let start = Instant::now();
    loop {
        let now: u32 = get(&h, "/closed").await.text().parse().unwrap();
        if now == before + 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "close() was not called"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harakiri_answers_504_from_rust_while_the_other_threads_serve() {
    let h = crate::support::host_with(
        "misbehave",
        wsgi_host::HostOptions {
            threads: 3,
            harakiri: Some(Duration::from_millis(800)),
            ..Default::default()
        },
    );
    // One thread sleeps (GIL released), one spins in Python (GIL held but switched).
    let started = Instant::now();
    let sleeper = {
        let h = h.clone();
        tokio::spawn(async move { (get(&h, "/sleep?30").await, started.elapsed()) })
    };
    let spinner = {
        let h = h.clone();
        tokio::spawn(async move { (get(&h, "/spin?3").await, started.elapsed()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.stats().busy, 2);
    // The third thread serves short requests meanwhile.
    for _ in 0..3 {
        assert_eq!(get(&h, "/fine").await.text(), "ok");
    }
    for (task, what) in [(sleeper, "sleep"), (spinner, "spin")] {
        let (r, took) = task.await.unwrap();
        assert_eq!(r.head.status, 504, "{what}: {}", r.text());
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
            "{what}: answered after {took:?}"
        );
    }
    // Counted once each stack is logged.
    let stats = wait_harakiri(&h, 2).await;
    assert!(stats.requests >= 3, "{stats:?}");
    // After the headers went out, the response is cut instead.
    let r = get(&h, "/stream-sleep?5").await;
    assert_eq!((r.head.status, r.text().as_str()), (200, "first"));
    assert!(r.aborted.is_some(), "cut short by harakiri");
    wait_harakiri(&h, 3).await;
}

async fn wait_harakiri(h: &wsgi_host::WsgiHost, n: u64) -> wsgi_host::HostStats {
    let start = Instant::now();
    loop {
        let stats = h.stats();
        if stats.harakiri >= n {
            assert_eq!(stats.harakiri, n);
            return stats;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Rust function that panics, for the `panics` app (a bug of ours, as the app sees it).
#[pyo3::pyfunction]
fn rust_panic() {
    panic!("a panic for the test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_bridge_is_a_500_and_the_thread_serves_on() {
    use pyo3::prelude::*;
    // One thread: if the panic killed it, the requests after it would wait for ever.
    let h = host("panics", 1);
    Python::attach(|py| -> PyResult<()> {
        let f = wrap_pyfunction!(rust_panic, py)?;
        py.import("builtins")?.setattr("rust_panic", f)
    })
    .unwrap();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(10), get(&h, "/"))
            .await
            .expect("answered");
        assert_eq!(r.head.status, 500);
        let r = tokio::time::timeout(Duration::from_secs(10), get(&h, "/?late"))
            .await
            .expect("answered");
        assert_eq!((r.head.status, &r.body[..]), (200, &b"first"[..]));
        assert!(r.aborted.is_some(), "the response is cut, not completed");
    }
}
