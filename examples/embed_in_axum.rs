//! A WSGI app mounted at a path inside an axum server, through `wsgi_host::WsgiService`
//! (a `tower::Service`): `/` is answered by Rust, `/wsgi/...` by Python.
//!
//! ```text
//! cargo run --example embed_in_axum [-- APP.py [CALLABLE]]   # then open http://127.0.0.1:8000/wsgi/
//! ```
//! Without an argument it serves the tutorials' hello-world app. `PORT` sets the port.

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiService};

const HELLO: &str = "def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [('Hello from Python at SCRIPT_NAME=%r PATH_INFO=%r\\n' % \
    (environ['SCRIPT_NAME'], environ['PATH_INFO'])).encode()]\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (file, callable) = match args.next() {
        Some(f) => (std::path::PathBuf::from(f), args.next()),
        None => {
            let f = std::env::temp_dir().join(format!("embed_in_axum_{}.py", std::process::id()));
            std::fs::write(&f, HELLO).context("writing the hello app")?;
            (f, None)
        }
    };
    let mut spec = AppSpec::wsgi_file(&file);
    if let Some(c) = callable {
        spec = spec.callable(c);
    }
    let host = WsgiHost::start(
        &spec,
        HostOptions {
            threads: 4,
            ..HostOptions::default()
        },
    )?;
    let wsgi = WsgiService::new(host).mount("/wsgi");
    let app = Router::new()
        .route(
            "/",
            get(|| async { "Hello from Rust; the WSGI app is under /wsgi/\n" }),
        )
        .route_service("/wsgi", wsgi.clone())
        .route_service("/wsgi/{*path}", wsgi);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "serving on http://{}/ (WSGI app at /wsgi/)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
