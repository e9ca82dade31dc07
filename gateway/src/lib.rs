//! The composable server and the `gateway` binary: serves WSGI apps over HTTP and the
//! uwsgi, FastCGI and SCGI protocols (with static files, routing, upstream pools, the
//! access log and the master/worker model), configured with uWSGI's options, ini files
//! and nginx site configs.
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

pub mod access;
pub mod alloc;
pub mod config;
pub mod handler;
pub mod listen;
pub mod pass;
pub mod process;
pub mod proxy;
mod server;
pub mod site;
pub mod spool;
pub mod upstream;

pub use server::{build_runtime, run, single_process_runtime};
