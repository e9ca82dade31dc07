//! Request handlers: static files (the WSGI handler is `wsgi_host::WsgiService`).

pub mod body;
pub mod static_files;

pub use body::Body;
pub use static_files::{FileMiss, StaticFiles, StaticMap, serve_file, try_serve_file};
