//! criterion benches for the WSGI bridge alone (no sockets, no thread hand-off): env in,
//! the app called, the body collected; against the Python floor measured in the same run
//! (the same app called from Python with a prepared environ dict).

use std::ffi::CString;
use std::hint::black_box;

/// The allocator the `gateway` binary ships with, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: gateway::alloc::Allocator = gateway::alloc::Allocator;

use cgi_family::{Env, EnvBuilder, Flavor, RequestHead};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiRequest};

const APP: &str = "\
def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [b'Hello World']\n";

fn env(extra_headers: usize) -> Env {
    let mut head = RequestHead::new("GET", "/hello?x=1", "HTTP/1.1");
    head.push_header("Host", "example.com");
    for i in 0..extra_headers {
        head.push_header(format!("X-Bench-Header-{i}"), format!("value number {i}"));
    }
    EnvBuilder::new(Flavor::Uwsgi)
        .peer("127.0.0.1:40000".parse().expect("addr"))
        .local("127.0.0.1:80".parse().expect("addr"))
        .server_name("example.com")
        .build(&head)
        .expect("env")
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("wsgi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("hello.py");
    std::fs::write(&file, APP).expect("write app");
    let host = WsgiHost::start(&AppSpec::wsgi_file(&file), HostOptions::default()).expect("load");

    let mut g = c.benchmark_group("wsgi");
    for (name, headers) in [
        ("hello (uwsgi_params + Host, 16 vars)", 0),
        ("30-header environ", 29),
    ] {
        let env = env(headers);
        g.bench_function(format!("env clone + drop only: {name}"), |b| {
            b.iter(|| black_box(black_box(&env).clone()))
        });
        g.bench_function(format!("bridge: {name}"), |b| {
            // The env is cloned outside the timed part: a server moves it in.
            b.iter_batched(
                || env.clone(),
                |env| {
                    let (head, body) = host.call_blocking(WsgiRequest::new(env)).expect("response");
                    black_box((head.status, body.len()))
                },
                BatchSize::SmallInput,
            )
        });
        // The floor: the same app called from Python with a prepared dict.
        Python::attach(|py| {
            let code = CString::new(format!(
                "{APP}\nimport io, sys\n\
                 def run(environ, n):\n    \
                     sr = lambda status, headers, exc_info=None: None\n    \
                     app = application\n    \
                     for _ in range(n):\n        b''.join(app(environ, sr))\n"
            ))
            .expect("code");
            let module =
                PyModule::from_code(py, &code, c"floor.py", c"floor").expect("floor module");
            let environ = PyDict::new(py);
            for (k, v) in env.iter() {
                let k: String = k.iter().map(|&b| char::from(b)).collect();
                let v: String = v.iter().map(|&b| char::from(b)).collect();
                environ.set_item(k, v).expect("set");
            }
            environ.set_item("wsgi.version", (1, 0)).expect("set");
            environ.set_item("wsgi.url_scheme", "http").expect("set");
            let run = module.getattr("run").expect("run").unbind();
            let environ = environ.unbind();
            g.bench_function(format!("python floor: {name}"), |b| {
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    run.bind(py).call1((environ.bind(py), iters)).expect("run");
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
