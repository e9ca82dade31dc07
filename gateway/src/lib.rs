//! The composable server and the `gateway` binary: serves WSGI apps over HTTP and the
//! uwsgi protocol (FastCGI and SCGI listeners, static files, routing, upstream pools and
//! the master/worker model come next), configured with uWSGI's options and ini files.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let (options, warnings) = gateway::config::parse(["gateway", "--http", ":9001", "--wsgi-file", "app.py"])?;
//! for w in warnings { eprintln!("{w}"); }
//! gateway::run(options).await
//! # }
//! ```
#![deny(unsafe_code)] // allowed in one module (process::sys), each block proven sound
#![warn(missing_docs)]

pub mod config;
pub mod handler;
pub mod listen;
pub mod pass;
pub mod process;
pub mod proxy;
mod server;
pub mod site;
pub mod upstream;

pub use server::run;
