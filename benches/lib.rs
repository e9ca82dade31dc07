//! Shared inputs for the criterion benches: realistic packets built the way nginx builds
//! them, so every bench measures the same bytes.

/// The vars nginx sends through `uwsgi_pass` with Debian's stock `uwsgi_params` for a
/// browser's `GET`, plus ten typical browser headers (about 800 bytes on the wire).
pub fn nginx_browser_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("QUERY_STRING", "page=2&sort=-created"),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("REQUEST_URI", "/articles/archive/?page=2&sort=-created"),
        ("PATH_INFO", "/articles/archive/"),
        ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "203.0.113.7"),
        ("REMOTE_PORT", "52814"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "example.com"),
        ("HTTP_HOST", "example.com"),
        ("HTTP_HOST", "example.com"),
        (
            "HTTP_USER_AGENT",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "HTTP_ACCEPT",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("HTTP_ACCEPT_LANGUAGE", "en-GB,en;q=0.7,fr;q=0.3"),
        ("HTTP_ACCEPT_ENCODING", "gzip, deflate, br, zstd"),
        ("HTTP_REFERER", "https://example.com/articles/"),
        ("HTTP_CONNECTION", "keep-alive"),
        (
            "HTTP_COOKIE",
            "csrftoken=Xq3v9mT2rL8pK1wZ7yB4nC6dF0gH5jQe; sessionid=8f2k3l9x7c4v1b6n0m5q2w8e3r7t1y4u",
        ),
        ("HTTP_UPGRADE_INSECURE_REQUESTS", "1"),
        ("HTTP_SEC_FETCH_DEST", "document"),
        ("HTTP_SEC_FETCH_MODE", "navigate"),
        ("HTTP_SEC_FETCH_SITE", "same-origin"),
    ]
}
