//! The gateway as the front of a FastCGI app (here flup's server, started by the example),
//! composed from library pieces: an nginx-style site ([`gateway::site::Site`]) answering
//! on a hyper listener ([`gateway::listen::http`]), with `fastcgi_pass` to a unix socket.
//!
//! ```sh
//! pip install flup
//! cargo run --example fastcgi_backend -- --port 9003   # then open http://127.0.0.1:9003/
//! ```

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gateway::listen::http::{Backend, HttpApp, serve_connection_until};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = 9003u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().context("--port needs a number")?.parse()?;
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // The FastCGI application, on a unix socket.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fastcgi_backend");
    let sock = std::env::temp_dir().join(format!("fastcgi_backend-{}.sock", std::process::id()));
    let mut app = tokio::process::Command::new("python3")
        .arg(dir.join("app.py"))
        .arg(&sock)
        .kill_on_drop(true)
        .spawn()
        .context("starting the flup FastCGI app (pip install flup)")?;
    // The front, as nginx users write it.
    let conf = format!(
        "server {{\n  listen 127.0.0.1:{port};\n  location / {{\n    fastcgi_pass unix:{};\n    include fastcgi_params;\n  }}\n}}\n",
        sock.display()
    );
    let (site, warnings) =
        gateway::site::Site::from_nginx(&gateway::config::nginx::parse_str(&conf, "front.conf")?)?;
    for w in warnings {
        eprintln!("{w}");
    }
    let front = Arc::new(HttpApp {
        backend: Backend::Site {
            site: Arc::new(site),
            listen: 0,
        },
        statics: Arc::new(gateway::handler::StaticFiles::new(Vec::new())),
        limit_post: None,
        head_timeout: std::time::Duration::from_secs(30),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    eprintln!("fastcgi_backend: open http://127.0.0.1:{port}/ (Ctrl-C stops)");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let (front, shutdown) = (front.clone(), shutdown.clone());
                let local = stream.local_addr().ok();
                tokio::spawn(async move {
                    serve_connection_until(stream, Some(peer), local, &front, &shutdown).await;
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    shutdown.cancel();
    let _ = app.kill().await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
