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

/// The same browser request as [`nginx_browser_vars`], as an HTTP head for the
/// `cgi-family` env builder (ten browser headers plus Host and Cookie).
pub fn browser_head() -> cgi_family::RequestHead {
    let mut head =
        cgi_family::RequestHead::new("GET", "/articles/archive/?page=2&sort=-created", "HTTP/1.1");
    for (k, v) in nginx_browser_vars() {
        if let Some(name) = k.strip_prefix("HTTP_") {
            if name == "HOST" {
                continue;
            }
            let name: String = name
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("-");
            head.push_header(name, v);
        }
    }
    head.push_header("Host", "example.com");
    head
}

/// The env nginx's stock params of `flavor` give for [`browser_head`].
pub fn browser_env(flavor: cgi_family::Flavor) -> cgi_family::Env {
    cgi_family::EnvBuilder::new(flavor)
        .peer("203.0.113.7:52814".parse().expect("addr"))
        .local("192.0.2.1:80".parse().expect("addr"))
        .server_name("example.com")
        .document_root("/usr/share/nginx/html")
        .build(&browser_head())
        .expect("valid head")
}
