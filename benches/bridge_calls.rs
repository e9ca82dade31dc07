//! Runs N requests through the WSGI bridge on this thread and exits: a fixed workload for
//! `valgrind --tool=callgrind`, whose instruction counts do not drift with the machine's
//! load the way timings do.
//!
//! ```text
//! cargo build --release -p benches --bin bridge_calls
//! valgrind --tool=callgrind target/release/bridge_calls 2000 0   # hello env
//! ```

use cgi_family::{EnvBuilder, Flavor, RequestHead};
use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiRequest};

/// The allocator the `gateway` binary ships with, so the counts are the binary's.
#[global_allocator]
static ALLOCATOR: gateway::alloc::Allocator = gateway::alloc::Allocator;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let extra: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("bridge-calls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("hello.py");
    std::fs::write(
        &file,
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'Hello World']\n",
    )
    .expect("app");
    let host = WsgiHost::start(&AppSpec::wsgi_file(&file), HostOptions::default()).expect("load");
    let mut head = RequestHead::new("GET", "/hello?x=1", "HTTP/1.1");
    head.push_header("Host", "example.com");
    for i in 0..extra {
        head.push_header(format!("X-Bench-Header-{i}"), format!("value number {i}"));
    }
    let env = EnvBuilder::new(Flavor::Uwsgi)
        .peer("127.0.0.1:40000".parse().expect("addr"))
        .local("127.0.0.1:80".parse().expect("addr"))
        .server_name("example.com")
        .build(&head)
        .expect("env");
    let mut ok = 0;
    for _ in 0..n {
        let (h, _) = host
            .call_blocking(WsgiRequest::new(env.clone()))
            .expect("response");
        ok += usize::from(h.status == 200);
    }
    println!("{ok} of {n} answered 200");
    let _ = std::fs::remove_dir_all(&dir);
}
