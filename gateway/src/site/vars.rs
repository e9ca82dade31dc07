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
        let mut out = String::new();
        self.write(name, &mut out);
        out
    }

    /// Appends the value of variable `name` to `out` (no allocation of its own).
    fn write(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        let header = |h: http::header::HeaderName| {
            self.headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        match name {
            "uri" | "document_uri" => out.push_str(self.uri),
            "request_uri" => out.push_str(self.request_uri),
            "args" | "query_string" => out.push_str(self.args),
            "is_args" => out.push_str(if self.args.is_empty() { "" } else { "?" }),
            "request_method" => out.push_str(self.method),
            "scheme" => out.push_str(self.scheme),
            "https" => out.push_str(if self.scheme == "https" { "on" } else { "" }),
            "host" => {
                let h = without_port(header(http::header::HOST));
                if h.is_empty() {
                    out.push_str(self.server_name);
                } else {
                    let start = out.len();
                    out.push_str(h);
                    out[start..].make_ascii_lowercase();
                }
            }
            "http_host" => out.push_str(header(http::header::HOST)),
            "server_name" => out.push_str(self.server_name),
            "server_port" => {
                if let Some(l) = self.local {
                    let _ = write!(out, "{}", l.port());
                }
            }
            "server_addr" => {
                if let Some(l) = self.local {
                    let _ = write!(out, "{}", l.ip());
                }
            }
            "remote_addr" | "binary_remote_addr" => {
                if let Some(p) = self.peer {
                    let _ = write!(out, "{}", p.ip());
                }
            }
            "remote_port" => {
                if let Some(p) = self.peer {
                    let _ = write!(out, "{}", p.port());
                }
            }
            "server_protocol" => out.push_str(self.protocol),
            "content_type" => out.push_str(header(http::header::CONTENT_TYPE)),
            "content_length" => out.push_str(header(http::header::CONTENT_LENGTH)),
            "document_root" => out.push_str(self.document_root),
            "pid" => {
                let _ = write!(out, "{}", std::process::id());
            }
            "proxy_add_x_forwarded_for" => {
                let prev = header(http::header::HeaderName::from_static("x-forwarded-for"));
                if !prev.is_empty() {
                    out.push_str(prev);
                    out.push_str(", ");
                }
                if let Some(p) = self.peer {
                    let _ = write!(out, "{}", p.ip());
                }
            }
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    if let Ok(h) = http::header::HeaderName::try_from(h.replace('_', "-")) {
                        out.push_str(header(h));
                    }
                } else if let Some(c) = name.strip_prefix("cookie_") {
                    let found = self
                        .headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(';'))
                        .find_map(|kv| {
                            let (k, v) = kv.trim().split_once('=')?;
                            (k == c).then_some(v)
                        });
                    out.push_str(found.unwrap_or(""));
                } else if let Some(a) = name.strip_prefix("arg_") {
                    let found = self.args.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == a).then_some(v)
                    });
                    out.push_str(found.unwrap_or(""));
                }
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
        scan(template, |piece| match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => self.write(name, &mut out),
        });
        out
    }

    /// Writes out a template split beforehand (see [`Template`]).
    pub(crate) fn expand_template(&self, template: &Template) -> String {
        let mut out = String::with_capacity(template.len);
        for piece in &template.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(name) => self.write(name, &mut out),
            }
        }
        out
    }
}

/// A piece of a template: text as written, or a variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<S> {
    Text(S),
    Var(S),
}

/// Splits `template` into text and `$name` / `${name}` variables, in order (a `$` that
/// starts no name is text).
fn scan<'t>(template: &'t str, mut each: impl FnMut(Piece<&'t str>)) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            each(Piece::Text(&rest[..i]));
        }
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
            each(Piece::Text("$"));
            rest = after;
            continue;
        }
        each(Piece::Var(name));
        rest = &after[used..];
    }
    if !rest.is_empty() {
        each(Piece::Text(rest));
    }
}

/// A template split once, when the configuration is read, so that a request only writes
/// it out (no scanning for `$` and names per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece<String>>,
    /// The template's length: the first guess at its value's.
    len: usize,
}

impl Template {
    /// Splits `template`.
    pub(crate) fn new(template: &str) -> Self {
        let mut pieces = Vec::new();
        scan(template, |piece| {
            pieces.push(match piece {
                Piece::Text(t) => Piece::Text(t.to_owned()),
                Piece::Var(n) => Piece::Var(n.to_owned()),
            });
        });
        Self {
            pieces,
            len: template.len(),
        }
    }

    /// Whether it names variable `name`.
    pub(crate) fn names(&self, name: &str) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(n) if n == name))
    }
}

/// A Host header without its port (`example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`), as nginx reads it for `$host` and server names.
pub(crate) fn without_port(host: &str) -> &str {
    // The cut is at an ASCII `:`, so the rest is still UTF-8.
    &host[..bytes_without_port(host.as_bytes()).len()]
}

/// [`without_port`] on the header's bytes (a Host value need not be UTF-8).
pub(crate) fn bytes_without_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host[i..].contains(&b']') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars(headers: &http::HeaderMap) -> RequestVars<'_> {
        RequestVars {
            method: "POST",
            request_uri: "/a/b?x=1&y=two",
            uri: "/a/b",
            args: "x=1&y=two",
            headers,
            peer: Some(SocketAddr::from(([127, 0, 0, 9], 4242))),
            local: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            scheme: "https",
            server_name: "example.org",
            document_root: "/srv/www",
            protocol: "HTTP/1.1",
        }
    }

    #[test]
    fn a_split_template_writes_out_as_the_text_does() {
        let headers = http::HeaderMap::from_iter([
            (http::header::HOST, "Example.COM:8443".parse().unwrap()),
            (http::header::COOKIE, "a=1; sid=xyz".parse().unwrap()),
        ]);
        let v = vars(&headers);
        for (t, want) in [
            ("$host", "example.com"),
            ("tutorial-$host", "tutorial-example.com"),
            (
                "${document_root}/app$is_args$args",
                "/srv/www/app?x=1&y=two",
            ),
            (
                "$cookie_sid|$arg_y|$http_host|$",
                "xyz|two|Example.COM:8443|$",
            ),
            ("${nope} x $-$", " x $-$"),
            ("${unclosed x", "${unclosed x"),
        ] {
            assert_eq!(v.expand(t), want, "{t}");
            assert_eq!(v.expand_template(&Template::new(t)), want, "{t}");
        }
        assert!(Template::new("$document_root/x").names("document_root"));
        assert!(Template::new("${document_root}").names("document_root"));
        assert!(!Template::new("$document_rooted $host").names("document_root"));
    }

    proptest! {
        /// Split once or scanned each time, any template writes out the same.
        #[test]
        fn split_and_scanned_templates_agree(t in "[$a-z_{}/ -]{0,40}") {
            let headers = http::HeaderMap::from_iter([
                (http::header::HOST, "h.example:81".parse().unwrap()),
            ]);
            let v = vars(&headers);
            prop_assert_eq!(v.expand_template(&Template::new(&t)), v.expand(&t));
        }
    }
}
