//! Names of the CGI meta-variables (RFC 3875 section 4.1) and the de-facto extensions
//! nginx's stock params files send.

macro_rules! names {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        $( $(#[$doc])* pub const $name: &str = stringify!($name); )*
    };
}

names! {
    /// RFC 3875 4.1.1: the authentication scheme (`Basic`, ...).
    AUTH_TYPE,
    /// RFC 3875 4.1.2: the body length after removing transfer-codings.
    CONTENT_LENGTH,
    /// RFC 3875 4.1.3: the body's media type.
    CONTENT_TYPE,
    /// RFC 3875 4.1.4: `CGI/1.1`.
    GATEWAY_INTERFACE,
    /// RFC 3875 4.1.5: the decoded path after SCRIPT_NAME.
    PATH_INFO,
    /// RFC 3875 4.1.6: PATH_INFO mapped through the document root.
    PATH_TRANSLATED,
    /// RFC 3875 4.1.7: the query, still URL-encoded; `""` when none.
    QUERY_STRING,
    /// RFC 3875 4.1.8: the client's address.
    REMOTE_ADDR,
    /// RFC 3875 4.1.9: the client's host name.
    REMOTE_HOST,
    /// RFC 3875 4.1.11: the authenticated user.
    REMOTE_USER,
    /// RFC 3875 4.1.12: the request method.
    REQUEST_METHOD,
    /// RFC 3875 4.1.13: the decoded path of the script (the mount point).
    SCRIPT_NAME,
    /// RFC 3875 4.1.14: the server's configured name.
    SERVER_NAME,
    /// RFC 3875 4.1.15: the port the request arrived on.
    SERVER_PORT,
    /// RFC 3875 4.1.16: `HTTP/1.1`, ...
    SERVER_PROTOCOL,
    /// RFC 3875 4.1.17: `product/version`.
    SERVER_SOFTWARE,
    /// nginx: the raw request target, query included.
    REQUEST_URI,
    /// nginx: the decoded, normalised path (`$document_uri`).
    DOCUMENT_URI,
    /// nginx: the configured root.
    DOCUMENT_ROOT,
    /// nginx: `http` or `https`.
    REQUEST_SCHEME,
    /// nginx: `on` for TLS connections, absent otherwise.
    HTTPS,
    /// nginx: the client's port.
    REMOTE_PORT,
    /// nginx: the address the request arrived on.
    SERVER_ADDR,
    /// nginx (fastcgi_params, for PHP): `200`.
    REDIRECT_STATUS,
    /// The `Host` the request was for.
    HTTP_HOST,
    /// SCGI: always `1`.
    SCGI,
}
