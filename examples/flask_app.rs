//! A Flask app served by the gateway, as the Flask + uWSGI tutorials do it:
//!
//! ```sh
//! pip install Flask
//! cargo run --example flask_app -- --port 9002     # then open http://127.0.0.1:9002/
//! ```
//!
//! The same as `gateway --http 127.0.0.1:9002 --wsgi-file app.py --callable app --master
//! --processes 2` in `examples/flask_app/`.

use std::path::Path;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut port = 9002u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().context("--port needs a number")?.parse()?;
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("flask_app");
    let (options, _) = gateway::config::parse([
        "flask_app".to_owned(),
        format!("--http=127.0.0.1:{port}"),
        format!("--chdir={}", dir.display()),
        "--wsgi-file=app.py".to_owned(),
        "--callable=app".to_owned(),
        "--master".to_owned(),
        "--processes=2".to_owned(),
    ])?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    eprintln!("flask_app: open http://127.0.0.1:{port}/ (Ctrl-C stops)");
    gateway::process::run_master(&options)
}
