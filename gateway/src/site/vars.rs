//! nginx variables (`$uri`, `$host`, `$request_uri`, `$http_NAME`, ...) for `return`,
//! `*_param` values and `hash` keys.

use std::net::SocketAddr;

/// What a request offers its variables.
#[derive(Debug, Clone, Copy)]
pub struct RequestVars<'a> {
    /// The method.
    pub method: &'a str,
    /// The request target as sent (`$request_uri`).
    pub request_uri: &'a str,
    /// The normalized, decoded path (`$uri`, `$document_uri`).
    pub uri: &'a str,
    /// The query string without `?` (`$args`, `$query_string`).
    pub args: &'a str,
    /// The headers.
    pub headers: &'a http::HeaderMap,
    /// The client.
    pub peer: Option<SocketAddr>,
    /// Our address.
    pub local: Option<SocketAddr>,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The server's first `server_name`.
    pub server_name: &'a str,
    /// `root` in effect.
    pub document_root: &'a str,
    /// `HTTP/1.1` ...
    pub protocol: &'a str,
}

impl RequestVars<'_> {
    /// The value of variable `name` (without `$`); unknown names are empty.
    pub fn get(&self, name: &str) -> String {
        let header = |h: &str| {
            self.headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        match name {
            "uri" | "document_uri" => self.uri.to_owned(),
            "request_uri" => self.request_uri.to_owned(),
            "args" | "query_string" => self.args.to_owned(),
            "is_args" => if self.args.is_empty() { "" } else { "?" }.to_owned(),
            "request_method" => self.method.to_owned(),
            "scheme" => self.scheme.to_owned(),
            "https" => if self.scheme == "https" { "on" } else { "" }.to_owned(),
            "host" => {
                let h = without_port(&header("host")).to_owned();
                if h.is_empty() {
                    self.server_name.to_owned()
                } else {
                    h.to_ascii_lowercase()
                }
            }
            "http_host" => header("host"),
            "server_name" => self.server_name.to_owned(),
            "server_port" => self.local.map(|l| l.port().to_string()).unwrap_or_default(),
            "server_addr" => self.local.map(|l| l.ip().to_string()).unwrap_or_default(),
            "remote_addr" => self.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            "remote_port" => self.peer.map(|p| p.port().to_string()).unwrap_or_default(),
            "binary_remote_addr" => self.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            "server_protocol" => self.protocol.to_owned(),
            "content_type" => header("content-type"),
            "content_length" => header("content-length"),
            "document_root" => self.document_root.to_owned(),
            "pid" => std::process::id().to_string(),
            "proxy_add_x_forwarded_for" => {
                let ip = self.peer.map(|p| p.ip().to_string()).unwrap_or_default();
                match header("x-forwarded-for") {
                    prev if prev.is_empty() => ip,
                    prev => format!("{prev}, {ip}"),
                }
            }
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    return header(&h.replace('_', "-"));
                }
                if let Some(c) = name.strip_prefix("cookie_") {
                    return self
                        .headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(';'))
                        .find_map(|kv| {
                            let (k, v) = kv.trim().split_once('=')?;
                            (k == c).then(|| v.to_owned())
                        })
                        .unwrap_or_default();
                }
                if let Some(a) = name.strip_prefix("arg_") {
                    return self
                        .args
                        .split('&')
                        .find_map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                            (k == a).then(|| v.to_owned())
                        })
                        .unwrap_or_default();
                }
                String::new()
            }
        }
    }

    /// Expands `$name` and `${name}` in `template`.
    ///
    /// ```
    /// use gateway::site::RequestVars;
    /// let headers = http::HeaderMap::from_iter([(http::header::HOST, "Example.com:8000".parse().unwrap())]);
    /// let v = RequestVars { method: "GET", request_uri: "/a?b=1", uri: "/a", args: "b=1",
    ///     headers: &headers, peer: None, local: None, scheme: "http", server_name: "_",
    ///     document_root: "", protocol: "HTTP/1.1" };
    /// assert_eq!(v.expand("https://$host$request_uri"), "https://example.com/a?b=1");
    /// assert_eq!(v.expand("${arg_b}x $nope."), "1x .");
    /// ```
    pub fn expand(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, used) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            if name.is_empty() {
                out.push('$');
                rest = after;
                continue;
            }
            out.push_str(&self.get(name));
            rest = &after[used..];
        }
        out.push_str(rest);
        out
    }
}

/// A Host header without its port (`example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`), as nginx reads it for `$host` and server names.
pub(crate) fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}
