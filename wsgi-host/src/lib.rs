//! A **PEP 3333 bridge** into embedded CPython, the way uWSGI's python plugin runs
//! Django, Flask or any WSGI callable inside the server process.
//!
//! It takes a CGI env ([`cgi_family::Env`]) and a body, and gives back a status, headers
//! and a body stream; it knows nothing of sockets or wire formats.
//!
//! ```text
//!  WsgiRequest{env, body} ──call()──▶ [queue] ──▶ Python thread 1..N
//!                                                 environ (interned keys, latin-1)
//!                                                 app(environ, start_response)
//!  WsgiResponse{head, body} ◀── head at the first non-empty block ◀┘ blocks, file_wrapper
//! ```
//!
//! - [`AppSpec`]: uWSGI's `wsgi-file`, `module`, `callable`, `chdir`, `pythonpath`,
//!   `home`, `env`; a failing import is reported by [`WsgiHost::start`] with its traceback.
//! - [`WsgiHost`]: N Python threads; every wait (for work, for the request body, for room
//!   in the response channel) happens with the GIL released.
//! - `wsgi.input` streams the body ([`RequestBody::Stream`]), `wsgi.errors` goes to the
//!   log with the request id, `wsgi.file_wrapper` hands real files to the server
//!   ([`BodyChunk::File`]).
//! - [`WsgiService`]: a `tower::Service` so hyper or axum can mount an app at a path.
//!
//! Building against another Python: set `PYO3_PYTHON=/path/to/python3` when building;
//! the build scripts embed that interpreter's library directory as an rpath.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod environ;
mod error;
mod input;
mod interpreter;
mod respond;
mod service;
mod types;
mod worker;

pub use error::{AbortError, BodyError, HostError, LoadError};
pub use input::WsgiInput;
pub use interpreter::{AppSpec, freeze_for_fork};
pub use respond::{ErrorStream, FileWrapper, StartResponse};
pub use service::{DEFAULT_POST_BUFFERING, READ_AHEAD_PATIENCE, ResponseBody, WsgiService};
pub use types::{
    BodyChunk, BodyStream, HostOptions, HostStats, RequestBody, ResponseHead, WsgiRequest,
    WsgiResponse,
};
pub use worker::WsgiHost;
