//! Request handlers: static files (the WSGI handler is `wsgi_host::WsgiService`).

pub mod body;
mod file_cache;
pub mod static_files;

pub use body::Body;
pub use static_files::{FileMiss, StaticFiles, StaticMap, serve_file, try_serve_file};

/// Whether a request's Content-Length declares more than `limit` bytes (`--limit-post`,
/// `client_max_body_size`): such a request is refused before its body is read.
pub(crate) fn declared_over(headers: &http::HeaderMap, limit: u64) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
}
