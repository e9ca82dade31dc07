//! An nginx site: servers chosen by listen address and `server_name`, locations matched as
//! nginx matches them, and what they do (`root`/`alias` files with `index` and
//! `try_files`, `return`, `uwsgi_pass`/`scgi_pass` to an `upstream`), read from an nginx
//! configuration ([`Site::from_nginx`]).
//!
//! ```
//! use gateway::config::nginx::parse_str;
//! use gateway::site::Site;
//! let tree = parse_str(
//!     "upstream django { server 127.0.0.1:8001; }
//!      server {
//!          listen 8000;
//!          server_name example.com;
//!          location = /health { return 200 ok; }
//!          location /static { alias /srv/static; }
//!          location ~* \\.(png|jpg)$ { root /srv/images; }
//!          location / { uwsgi_pass django; uwsgi_param APP_ENV production; }
//!      }",
//!     "site.conf",
//! )?;
//! let (site, warnings) = Site::from_nginx(&tree)?;
//! assert!(warnings.is_empty(), "{warnings:?}");
//! assert_eq!(site.listens().len(), 1);
//! assert_eq!(site.location_for(0, Some("example.com"), "/static/app.css"), Some("/static"));
//! assert_eq!(site.location_for(0, None, "/static/logo.png"), Some("~* \\.(png|jpg)$"));
//! assert_eq!(site.location_for(0, None, "/health"), Some("= /health"));
//! # Ok::<(), gateway::config::nginx::NginxError>(())
//! ```

pub(crate) mod vars;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, StatusCode, header};

pub use vars::RequestVars;

use crate::config::nginx::{Directive, NginxError};
use crate::handler::Body;
use crate::listen::ListenAddr;
use crate::pass::{ConnInfo, Pass, Protocol, Timeouts};
use crate::upstream::{Policy, ServerSpec, Upstream, parse_duration};

/// How a location matches a path.
#[derive(Debug, Clone)]
enum Matcher {
    /// `location = /path`
    Exact(String),
    /// `location /prefix` (`stop`: `^~`, no regex is tried after it).
    Prefix { path: String, stop: bool },
    /// `location ~ re` / `~* re`.
    Regex(regex::Regex),
    /// `location @name` (only reached by `try_files`).
    Named(String),
}

/// Settings that locations inherit from their server (and the server from `http`).
#[derive(Debug, Clone)]
struct Settings {
    root: Option<PathBuf>,
    index: Vec<String>,
    try_files: Option<Vec<String>>,
    max_body: Option<u64>,
    charset: Option<String>,
    ret: Option<Return>,
    /// `default_type` (nginx's built-in default is `text/plain`).
    default_type: HeaderValue,
    /// `types {}`: extension to MIME type.
    types: Arc<HashMap<String, String>>,
    /// `access_log`: the logs of this level (`None`: the process's default logs).
    access: Option<crate::access::Logs>,
    /// `$server_name`: the first `server_name` of the enclosing server.
    server_name: String,
}

/// What the server or location that answered says of the response.
#[derive(Default)]
struct Picked<'a> {
    charset: Option<&'a str>,
    access: Option<&'a crate::access::Logs>,
    /// Whether `uri` is wanted (an access log may write `$uri`).
    logging: bool,
    uri: Option<String>,
}

impl<'a> Picked<'a> {
    fn take(&mut self, s: &'a Settings) {
        self.charset = s.charset.as_deref();
        self.access = s.access.as_ref();
    }

    /// Remembers the URI that answers, for the access log.
    fn uri(&mut self, uri: &str) {
        if self.logging {
            self.uri = Some(uri.to_owned());
        }
    }
}

/// Reads `types { type ext...; }` blocks.
fn read_types(block: &[Directive], into: &mut HashMap<String, String>) {
    for t in block {
        for ext in &t.args {
            into.insert(ext.to_ascii_lowercase(), t.name.clone());
        }
    }
}

/// The stock `mime.types` (for a site file whose main nginx.conf is not read).
fn stock_types() -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(text) = crate::config::nginx::stock_file("mime.types") {
        if let Ok(tree) = crate::config::nginx::parse_str(text, "mime.types") {
            for d in tree.iter().filter(|d| d.name == "types") {
                read_types(d.block.as_deref().unwrap_or_default(), &mut map);
            }
        }
    }
    map
}

impl Settings {
    /// The MIME type for a file, from `types`, else `default_type`.
    fn mime_for(&self, file: &std::path::Path) -> &str {
        let found = file.extension().and_then(|e| {
            let e = e.to_string_lossy();
            if e.bytes().any(|b| b.is_ascii_uppercase()) {
                self.types.get(&e.to_ascii_lowercase())
            } else {
                self.types.get(e.as_ref())
            }
        });
        found.map_or_else(
            || self.default_type.to_str().unwrap_or("text/plain"),
            String::as_str,
        )
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            root: None,
            index: vec!["index.html".into()],
            try_files: None,
            max_body: Some(1 << 20),
            charset: None,
            ret: None,
            default_type: HeaderValue::from_static("text/plain"),
            types: Arc::new(HashMap::new()),
            access: None,
            server_name: String::new(),
        }
    }
}

/// nginx's `return code [text|URL]`.
#[derive(Debug, Clone)]
struct Return {
    code: u16,
    arg: Option<Value>,
}

/// A `*_param` line of a pass, ready for requests.
#[derive(Debug, Clone)]
struct PassParam {
    name: Bytes,
    value: Value,
    /// `if_not_empty`: not sent when its value comes out empty.
    if_not_empty: bool,
}

/// A location's `*_param` lines: ready-made when none names a variable of the request
/// (the common case: the stock lines are left out, `$document_root` and `$server_name`
/// are the location's), else expanded for each request.
#[derive(Debug)]
enum PassParams {
    Fixed(Vec<(Bytes, Bytes)>),
    /// The params, and whether any names `$document_root` (written out per request only
    /// then).
    Templates(Vec<PassParam>, bool),
}

/// A directive's value: ready-made when it names no variable of the request, else
/// expanded for each request.
#[derive(Debug, Clone)]
enum Value {
    Fixed(Bytes),
    Template(vars::Template),
}

impl Value {
    fn new(text: String) -> Self {
        if text.contains('$') {
            Self::Template(vars::Template::new(&text))
        } else {
            Self::Fixed(Bytes::from(text))
        }
    }

    fn expand(&self, vars: &RequestVars<'_>) -> Bytes {
        self.expand_with(|t| vars.expand_template(t))
    }

    /// Whether it is a template naming variable `name`.
    fn names(&self, name: &str) -> bool {
        matches!(self, Self::Template(t) if t.names(name))
    }

    /// The value, a template written out by `expand` (not called for a fixed value).
    fn expand_with(&self, expand: impl FnOnce(&vars::Template) -> String) -> Bytes {
        match self {
            Self::Fixed(v) => v.clone(),
            Self::Template(t) => Bytes::from(expand(t)),
        }
    }
}

/// A location's own `*_param NAME VALUE` lines (values with nginx variables).
type Params = Vec<(String, String)>;

/// A location's `proxy_set_header` lines, ready for requests.
#[derive(Debug)]
struct ProxyHeaders {
    headers: Vec<(http::HeaderName, Value)>,
    /// Whether a value names `$document_root` (written out per request only then).
    uses_root: bool,
}

impl ProxyHeaders {
    /// The lines as written; a name that is no valid header name is left out (as the
    /// proxy left it out before).
    fn new(lines: Params) -> Self {
        let headers: Vec<(http::HeaderName, Value)> = lines
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    Value::new(v),
                ))
            })
            .collect();
        let uses_root = headers.iter().any(|(_, v)| v.names("document_root"));
        Self { headers, uses_root }
    }
}

#[derive(Debug)]
struct Location {
    label: String,
    matcher: Matcher,
    settings: Settings,
    alias: Option<PathBuf>,
    pass: Option<(Arc<Pass>, PassParams)>,
    /// `proxy_pass` and the location's `proxy_set_header` lines.
    proxy: Option<(Arc<crate::proxy::Proxy>, ProxyHeaders)>,
}

#[derive(Debug)]
enum ServerName {
    Exact(String),
    /// `*.example.com` (the suffix `.example.com`), `.example.com` also matches the bare
    /// name.
    Suffix {
        suffix: String,
        bare: bool,
    },
    /// `www.example.*` (the prefix `www.example.`).
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
struct VirtualServer {
    /// `ssl_certificate` and `ssl_certificate_key`, loaded.
    cert: Option<Arc<rustls::sign::CertifiedKey>>,
    listens: Vec<usize>,
    default_for: Vec<usize>,
    names: Vec<ServerName>,
    first_name: String,
    locations: Vec<Location>,
    base: Settings,
}

/// An nginx site configuration, ready to answer requests.
#[derive(Debug)]
pub struct Site {
    /// Every upstream group (for [`Site::start`]).
    upstreams: Vec<Arc<Upstream>>,
    /// Whether any `access_log` names a file.
    own_logs: bool,
    listens: Vec<ListenAddr>,
    servers: Vec<VirtualServer>,
    /// The TLS configuration of each `listen ... ssl` address.
    tls: HashMap<usize, Arc<rustls::ServerConfig>>,
}

/// Chooses a server's certificate by the SNI name, as nginx chooses the server.
#[derive(Debug)]
struct Certs {
    by_name: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
    default: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let found = name.and_then(|n| {
            self.by_name.iter().find_map(|(pattern, key)| {
                let hit = pattern == &n
                    || pattern
                        .strip_prefix('*')
                        .is_some_and(|suffix| n.ends_with(suffix))
                    || (pattern.starts_with('.')
                        && (n.ends_with(pattern.as_str()) || n == pattern[1..]));
                hit.then(|| key.clone())
            })
        });
        Some(found.unwrap_or_else(|| self.default.clone()))
    }
}

/// Loads a PEM certificate chain and key (nginx's `ssl_certificate`, `ssl_certificate_key`).
fn load_cert(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot load certificate \"{}\": {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot load certificate \"{}\": {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in \"{}\"", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot load certificate key \"{}\": {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unusable certificate key: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

fn err(d: &Directive, message: impl Into<String>) -> NginxError {
    NginxError {
        message: message.into(),
        file: d.file.to_path_buf(),
        line: d.line,
    }
}

/// Directives that change nothing the gateway does (performance knobs of nginx's own
/// design, or logging it does its own way): a warning, not an error.
const HARMLESS: &[&str] = &[
    "sendfile",
    // The gateway lingers as nginx does by default (`on`, 30 s, 5 s).
    "lingering_close",
    "lingering_time",
    "lingering_timeout",
    "tcp_nopush",
    "tcp_nodelay",
    "keepalive_timeout",
    "keepalive_requests",
    "types_hash_max_size",
    "server_names_hash_bucket_size",
    "server_tokens",
    "error_log",
    "gzip",
    "gzip_vary",
    "gzip_proxied",
    "gzip_comp_level",
    "gzip_buffers",
    "gzip_http_version",
    "gzip_types",
    "gzip_disable",
    "ssl_protocols",
    "ssl_prefer_server_ciphers",
    "client_body_buffer_size",
    "client_header_buffer_size",
    "large_client_header_buffers",
    "worker_processes",
    "worker_connections",
    "worker_rlimit_nofile",
    "multi_accept",
    "use",
    "pid",
    "user",
    "pcre_jit",
    "include",
    "expires",
    "error_page",
    "uwsgi_buffering",
    "uwsgi_buffers",
    "uwsgi_buffer_size",
    "uwsgi_busy_buffers_size",
    "uwsgi_temp_path",
    "uwsgi_cache",
];

fn parse_size(v: &str) -> Option<u64> {
    let (n, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1024),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    n.parse::<u64>().ok().map(|n| n * mult)
}

/// A flag directive's `on` or `off`.
fn on_off(d: &Directive) -> Result<bool, NginxError> {
    match one_arg(d)? {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(err(d, "invalid value, it must be \"on\" or \"off\"")),
    }
}

fn one_arg(d: &Directive) -> Result<&str, NginxError> {
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(err(
            d,
            format!("invalid number of arguments in \"{}\" directive", d.name),
        )),
    }
}

/// Reads the settings directives common to http, server and location levels.
fn setting(d: &Directive, s: &mut Settings) -> Result<bool, NginxError> {
    match d.name.as_str() {
        "root" => s.root = Some(PathBuf::from(one_arg(d)?)),
        "index" => s.index.clone_from(&d.args),
        "try_files" => {
            if d.args.len() < 2 {
                return Err(err(
                    d,
                    "invalid number of arguments in \"try_files\" directive",
                ));
            }
            s.try_files = Some(d.args.clone());
        }
        "client_max_body_size" => {
            let n = parse_size(one_arg(d)?).ok_or_else(|| err(d, "invalid value"))?;
            s.max_body = (n > 0).then_some(n);
        }
        "default_type" => {
            s.default_type =
                HeaderValue::from_str(one_arg(d)?).map_err(|_| err(d, "invalid value"))?;
        }
        "charset" => {
            let c = one_arg(d)?;
            s.charset = (c != "off").then(|| c.to_owned());
        }
        "return" => {
            let code = d
                .args
                .first()
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (100..1000).contains(c));
            let (code, arg) = match (code, d.args.as_slice()) {
                (Some(c), [_]) => (c, None),
                (Some(c), [_, text]) => (c, Some(text.clone())),
                (None, [url]) if url.starts_with("http") => (302, Some(url.clone())),
                _ => return Err(err(d, "invalid return code or arguments")),
            };
            s.ret = Some(Return {
                code,
                arg: arg.map(Value::new),
            });
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_listen(d: &Directive) -> Result<(ListenAddr, bool, bool), NginxError> {
    let Some(addr) = d.args.first() else {
        return Err(err(
            d,
            "invalid number of arguments in \"listen\" directive",
        ));
    };
    let spec = if addr.chars().all(|c| c.is_ascii_digit()) {
        format!(":{addr}")
    } else if let Some(port) = addr.strip_prefix("*:") {
        format!(":{port}")
    } else {
        addr.clone()
    };
    let parsed = ListenAddr::parse(&spec).map_err(|e| err(d, e.to_string()))?;
    let mut default = false;
    let mut ssl = false;
    for p in &d.args[1..] {
        match p.as_str() {
            "default_server" | "default" => default = true,
            "ssl" => ssl = true,
            "http2" | "reuseport" | "ipv6only=on" | "deferred" => {}
            p if p.starts_with("backlog=") => {}
            p => return Err(err(d, format!("invalid parameter \"{p}\""))),
        }
    }
    Ok((parsed, default, ssl))
}

fn parse_server_name(name: &str) -> Option<ServerName> {
    let name = name.to_ascii_lowercase();
    if let Some(re) = name.strip_prefix('~') {
        return regex::RegexBuilder::new(re)
            .case_insensitive(true)
            .build()
            .ok()
            .map(ServerName::Regex);
    }
    if let Some(rest) = name.strip_prefix("*.") {
        return Some(ServerName::Suffix {
            suffix: format!(".{rest}"),
            bare: false,
        });
    }
    if name.starts_with('.') {
        return Some(ServerName::Suffix {
            suffix: name,
            bare: true,
        });
    }
    if let Some(rest) = name.strip_suffix(".*") {
        return Some(ServerName::Prefix(format!("{rest}.")));
    }
    Some(ServerName::Exact(name))
}

struct Reader<'a> {
    upstreams: HashMap<String, Arc<Upstream>>,
    warnings: &'a mut Vec<String>,
    /// `log_format`s by name (`combined` is predefined).
    formats: HashMap<String, crate::access::Format>,
    /// Access logs already opened, by path and format name: each file is opened once.
    logs: HashMap<(PathBuf, String), Arc<crate::access::AccessLog>>,
    /// The http-level `resolver`.
    resolver: Option<crate::upstream::Resolver>,
}

impl Reader<'_> {
    /// `log_format NAME STRING...;` (the strings are joined, as nginx does).
    fn log_format(&mut self, d: &Directive) -> Result<(), NginxError> {
        // A name and at least one string.
        let [name, _, ..] = d.args.as_slice() else {
            return Err(err(
                d,
                "invalid number of arguments in \"log_format\" directive",
            ));
        };
        let parts = &d.args[1..];
        if self.formats.contains_key(name) {
            return Err(err(d, format!("duplicate \"log_format\" name \"{name}\"")));
        }
        let format =
            crate::access::Format::nginx(&parts.concat()).map_err(|e| err(d, e.to_string()))?;
        self.formats.insert(name.clone(), format);
        Ok(())
    }

    /// The `access_log`s of one level's block: `None` when it has none (the level above
    /// holds), else every one of them (`off` alone: none).
    fn access_logs<'d>(
        &mut self,
        block: impl IntoIterator<Item = &'d Directive>,
    ) -> Result<Option<crate::access::Logs>, NginxError> {
        let mut logs: Option<Vec<Arc<crate::access::AccessLog>>> = None;
        for d in block.into_iter().filter(|d| d.name == "access_log") {
            let list = logs.get_or_insert_with(Vec::new);
            let (path, rest) = match d.args.as_slice() {
                [off] if off == "off" => continue,
                [path, rest @ ..] => (path, rest),
                [] => {
                    return Err(err(
                        d,
                        "invalid number of arguments in \"access_log\" directive",
                    ));
                }
            };
            if path.starts_with("syslog:") {
                return Err(err(d, "access_log to syslog is not supported"));
            }
            let mut name = "combined";
            for (i, a) in rest.iter().enumerate() {
                if a.starts_with("if=") {
                    return Err(err(d, "access_log's \"if=\" is not supported"));
                } else if a.starts_with("buffer=")
                    || a.starts_with("flush=")
                    || a.starts_with("gzip")
                {
                    self.warnings.push(format!(
                        "{}: access_log's \"{a}\" is not used by the gateway (ignored)",
                        d.at()
                    ));
                } else if i == 0 {
                    name = a;
                } else {
                    return Err(err(d, format!("invalid parameter \"{a}\"")));
                }
            }
            let format = match name {
                "combined" => crate::access::Format::combined(),
                _ => self
                    .formats
                    .get(name)
                    .cloned()
                    .ok_or_else(|| err(d, format!("unknown log format \"{name}\"")))?,
            };
            // Relative paths are read from the configuration's directory.
            let path = d
                .file
                .parent()
                .map_or_else(|| PathBuf::from(path), |dir| dir.join(path));
            let key = (path.clone(), name.to_owned());
            let log = match self.logs.get(&key) {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(
                        crate::access::AccessLog::to_file(format, &path)
                            .map_err(|e| err(d, format!("access_log {}: {e}", path.display())))?,
                    );
                    self.logs.insert(key, l.clone());
                    l
                }
            };
            list.push(log);
        }
        Ok(logs.map(Into::into))
    }

    fn harmless(&mut self, d: &Directive) -> Result<(), NginxError> {
        match d.name.as_str() {
            "access_log" => return Ok(()), // read with its block by `access_logs`
            "log_format" => return Err(err(d, "\"log_format\" directive is not allowed here")),
            _ => {}
        }
        if HARMLESS.contains(&d.name.as_str()) || d.name.starts_with("gzip_") {
            self.warnings.push(format!(
                "{}: \"{}\" is not used by the gateway (ignored)",
                d.at(),
                d.name
            ));
            Ok(())
        } else {
            Err(err(
                d,
                format!("unknown or unsupported directive \"{}\"", d.name),
            ))
        }
    }

    fn upstream(&mut self, d: &Directive) -> Result<(), NginxError> {
        let name = one_arg(d)?.to_owned();
        let mut servers = Vec::new();
        let mut policy = Policy::RoundRobin;
        let mut keepalive = 0;
        let mut check: Option<crate::upstream::HealthCheck> = None;
        let (mut http_send, mut http_alive) = (None, None);
        for x in d.block.as_deref().unwrap_or_default() {
            match x.name.as_str() {
                "server" => {
                    let spec =
                        ServerSpec::parse(&x.args.join(" ")).map_err(|e| err(x, e.to_string()))?;
                    if spec.resolve.is_some() && self.resolver.is_none() {
                        return Err(err(
                            x,
                            format!("no resolver defined to resolve {}", spec.name),
                        ));
                    }
                    servers.push(spec);
                }
                "zone" => {} // shared memory: each process keeps its own state
                "check" => {
                    check = Some(
                        crate::upstream::HealthCheck::parse(&x.args)
                            .map_err(|e| err(x, e.to_string()))?,
                    );
                }
                "check_http_send" => http_send = Some(one_arg(x)?.to_owned()),
                "check_http_expect_alive" => {
                    let classes = x
                        .args
                        .iter()
                        .map(|a| {
                            a.strip_prefix("http_")
                                .and_then(|c| c.strip_suffix("xx"))
                                .and_then(|c| c.parse::<u16>().ok())
                                .filter(|c| (1..=5).contains(c))
                                .ok_or_else(|| err(x, format!("invalid value \"{a}\"")))
                        })
                        .collect::<Result<Vec<u16>, _>>()?;
                    http_alive = Some(classes);
                }
                "least_conn" => policy = Policy::LeastConn,
                "ip_hash" => policy = Policy::IpHash,
                "hash" => {
                    policy = match x.args.as_slice() {
                        [k] => Policy::Hash {
                            key: k.clone(),
                            consistent: false,
                        },
                        [k, c] if c == "consistent" => Policy::Hash {
                            key: k.clone(),
                            consistent: true,
                        },
                        _ => return Err(err(x, "invalid arguments in \"hash\" directive")),
                    }
                }
                "sticky" | "session_sticky" => {
                    let cookie = x
                        .args
                        .iter()
                        .find_map(|a| a.strip_prefix("cookie="))
                        .unwrap_or("route")
                        .to_owned();
                    policy = Policy::Sticky { cookie };
                }
                "keepalive" => {
                    keepalive = one_arg(x)?
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| err(x, "invalid value"))?;
                }
                _ => self.harmless(x)?,
            }
        }
        if servers.is_empty() {
            return Err(err(d, format!("no servers are inside upstream \"{name}\"")));
        }
        let mut up = Upstream::new(name.clone(), servers, policy).keepalive(keepalive);
        if let Some(r) = &self.resolver {
            up = up.resolver(r.clone());
        }
        if let Some(mut c) = check {
            if let crate::upstream::CheckKind::Http { send, alive } = &mut c.kind {
                if let Some(s) = http_send {
                    *send = s;
                }
                if let Some(a) = http_alive {
                    *alive = a;
                }
            }
            up = up.health_check(c);
        }
        self.upstreams.insert(name, Arc::new(up));
        Ok(())
    }

    fn pass(
        &mut self,
        d: &Directive,
        protocol: Protocol,
        timeouts: Timeouts,
        buffering: crate::spool::Buffering,
        keep_conn: bool,
    ) -> Result<Arc<Pass>, NginxError> {
        let target = one_arg(d)?;
        let pool = match self.upstreams.get(target) {
            Some(u) => u.clone(),
            None => {
                let spec = ServerSpec::parse(target.trim_start_matches("uwsgi://"))
                    .map_err(|e| err(d, format!("{e} (no upstream \"{target}\" either)")))?;
                Arc::new(Upstream::new(target, vec![spec], Policy::RoundRobin))
            }
        };
        Ok(Arc::new(
            Pass::new(pool, protocol)
                .timeouts(timeouts)
                .buffering(buffering)
                .keep_conn(keep_conn),
        ))
    }

    fn proxy(
        &mut self,
        d: &Directive,
        timeouts: Timeouts,
        buffering: crate::spool::Buffering,
    ) -> Result<Arc<crate::proxy::Proxy>, NginxError> {
        let target = one_arg(d)?;
        let Some(rest) = target.strip_prefix("http://") else {
            return Err(err(
                d,
                format!(
                    "\"proxy_pass {target}\": only http:// backends are supported by this version"
                ),
            ));
        };
        let (host, uri) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
            None => (rest, None),
        };
        let pool = match self.upstreams.get(host) {
            Some(u) => u.clone(),
            None => {
                let spec = ServerSpec::parse(host)
                    .map_err(|e| err(d, format!("{e} (no upstream \"{host}\" either)")))?;
                Arc::new(Upstream::new(host, vec![spec], Policy::RoundRobin))
            }
        };
        Ok(Arc::new(
            crate::proxy::Proxy::with_timeouts(pool, uri, timeouts).buffering(buffering),
        ))
    }

    fn location(&mut self, d: &Directive, inherited: &Settings) -> Result<Location, NginxError> {
        let (matcher, label) = match d.args.as_slice() {
            [m, p] if m == "=" => (Matcher::Exact(p.clone()), format!("= {p}")),
            [m, p] if m == "^~" => (
                Matcher::Prefix {
                    path: p.clone(),
                    stop: true,
                },
                format!("^~ {p}"),
            ),
            [m, re] if m == "~" || m == "~*" => {
                let r = regex::RegexBuilder::new(re)
                    .case_insensitive(m == "~*")
                    .build()
                    .map_err(|e| err(d, format!("invalid regex \"{re}\": {e}")))?;
                (Matcher::Regex(r), format!("{m} {re}"))
            }
            [p] if p.starts_with('@') => (Matcher::Named(p.clone()), p.clone()),
            [p] => (
                Matcher::Prefix {
                    path: p.clone(),
                    stop: false,
                },
                p.clone(),
            ),
            _ => return Err(err(d, "invalid location")),
        };
        let mut settings = inherited.clone();
        settings.try_files = None;
        settings.ret = None;
        if let Some(logs) = self.access_logs(d.block.as_deref().unwrap_or_default())? {
            settings.access = Some(logs);
        }
        let mut alias = None;
        let mut pass = None;
        let mut params = Vec::new();
        let mut timeouts = Timeouts::default();
        let mut buffering = crate::spool::Buffering::default();
        let mut keep_conn = false;
        let mut pass_directive = None;
        let mut proxy_directive = None;
        let mut proxy_headers = Vec::new();
        for x in d.block.as_deref().unwrap_or_default() {
            if setting(x, &mut settings)? {
                continue;
            }
            match x.name.as_str() {
                "alias" => alias = Some(PathBuf::from(one_arg(x)?)),
                "uwsgi_pass" => pass_directive = Some((x, Protocol::Uwsgi)),
                "scgi_pass" => pass_directive = Some((x, Protocol::Scgi)),
                "fastcgi_pass" => pass_directive = Some((x, Protocol::FastCgi)),
                "uwsgi_param" | "scgi_param" | "fastcgi_param" => match x.args.as_slice() {
                    [k, v] => params.push((k.clone(), v.clone(), false)),
                    [k, v, flag] if flag == "if_not_empty" => {
                        params.push((k.clone(), v.clone(), true));
                    }
                    [_, _, flag] => {
                        return Err(err(x, format!("invalid parameter \"{flag}\"")));
                    }
                    _ => return Err(err(x, "invalid number of arguments")),
                },
                "uwsgi_read_timeout" | "scgi_read_timeout" | "fastcgi_read_timeout" => {
                    timeouts.read =
                        parse_duration(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "uwsgi_send_timeout" | "scgi_send_timeout" | "fastcgi_send_timeout" => {
                    timeouts.send =
                        parse_duration(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "uwsgi_connect_timeout" | "scgi_connect_timeout" | "fastcgi_connect_timeout" => {
                    timeouts.connect =
                        parse_duration(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "location" => {
                    return Err(err(
                        x,
                        "nested locations are not supported by this version of the gateway yet",
                    ));
                }
                "proxy_pass" => proxy_directive = Some(x),
                "proxy_set_header" => match x.args.as_slice() {
                    [k, v] => proxy_headers.push((k.clone(), v.clone())),
                    _ => return Err(err(x, "invalid number of arguments")),
                },
                "proxy_read_timeout" => {
                    timeouts.read =
                        parse_duration(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "proxy_connect_timeout" => {
                    timeouts.connect =
                        parse_duration(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "proxy_buffering" | "uwsgi_buffering" | "scgi_buffering" | "fastcgi_buffering" => {
                    if !on_off(x)? {
                        buffering = crate::spool::Buffering::off();
                    }
                }
                "fastcgi_keep_conn" => keep_conn = on_off(x)?,
                "proxy_max_temp_file_size"
                | "uwsgi_max_temp_file_size"
                | "scgi_max_temp_file_size"
                | "fastcgi_max_temp_file_size" => {
                    buffering.max_temp_file =
                        parse_size(one_arg(x)?).ok_or_else(|| err(x, "invalid value"))?;
                }
                "proxy_http_version" | "proxy_redirect" => self.harmless(x)?,
                "grpc_pass" => {
                    return Err(err(
                        x,
                        format!(
                            "\"{}\" is not supported by this version of the gateway yet",
                            x.name
                        ),
                    ));
                }
                _ => self.harmless(x)?,
            }
        }
        if let Some((x, protocol)) = pass_directive {
            // The stock `*_params` lines are what the pass builds anyway (with the body's
            // length known after buffering it, as nginx's $content_length is): only the
            // site's own params are set on top.
            let stock = stock_params(protocol);
            // Except what only the site knows: its root and its first server_name.
            params.retain(|p| !stock.contains(p) || p.0 == "DOCUMENT_ROOT" || p.0 == "SERVER_NAME");
            // `$document_root` is the location's (alias or root): known now.
            let root = alias
                .as_ref()
                .or(settings.root.as_ref())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let params: Vec<PassParam> = params
                .into_iter()
                .map(|(k, v, if_not_empty)| PassParam {
                    name: Bytes::from(k),
                    value: match v.as_str() {
                        "$document_root" | "${document_root}" => {
                            Value::Fixed(Bytes::from(root.clone()))
                        }
                        "$server_name" | "${server_name}" => {
                            Value::Fixed(Bytes::from(settings.server_name.clone()))
                        }
                        _ => Value::new(v),
                    },
                    if_not_empty,
                })
                .collect();
            let fixed: Option<Vec<(Bytes, Bytes)>> = params
                .iter()
                .filter(|p| {
                    !(p.if_not_empty && matches!(&p.value, Value::Fixed(v) if v.is_empty()))
                })
                .map(|p| match &p.value {
                    Value::Fixed(v) => Some((p.name.clone(), v.clone())),
                    Value::Template(_) => None,
                })
                .collect();
            let params = match fixed {
                Some(list) => PassParams::Fixed(list),
                None => {
                    let root = params.iter().any(|p| p.value.names("document_root"));
                    PassParams::Templates(params, root)
                }
            };
            pass = Some((
                self.pass(x, protocol, timeouts, buffering, keep_conn)?,
                params,
            ));
        }
        let proxy = match proxy_directive {
            Some(x) => Some((
                self.proxy(x, timeouts, buffering)?,
                ProxyHeaders::new(proxy_headers),
            )),
            None => None,
        };
        if alias.is_some() && settings.root.is_some() && inherited.root != settings.root {
            return Err(err(d, "\"alias\" and \"root\" in the same location"));
        }
        Ok(Location {
            label,
            matcher,
            settings,
            alias,
            pass,
            proxy,
        })
    }
}

impl Site {
    /// Reads an nginx configuration tree (a whole `nginx.conf`, or a site file with only
    /// `upstream` and `server` blocks). Directives the gateway does not support are
    /// errors with file and line; harmless ones (`sendfile`, `access_log`, ...) are
    /// returned as warnings.
    pub fn from_nginx(tree: &[Directive]) -> Result<(Self, Vec<String>), NginxError> {
        let mut warnings = Vec::new();
        let mut reader = Reader {
            upstreams: HashMap::new(),
            warnings: &mut warnings,
            formats: HashMap::new(),
            logs: HashMap::new(),
            resolver: None,
        };
        // Where the http-level directives are: in `http {}`, or at the top of a site file.
        let mut http_level: Vec<&Directive> = Vec::new();
        for d in tree {
            match d.name.as_str() {
                "http" => http_level.extend(d.block.as_deref().unwrap_or_default()),
                // The main context: read into the options (`config::parse`).
                "worker_processes" | "worker_cpu_affinity" | "pid" | "user" | "error_log" => {}
                "events" => {
                    for x in d.block.as_deref().unwrap_or_default() {
                        reader.harmless(x)?;
                    }
                }
                "server" | "upstream" | "types" | "log_format" | "access_log" | "resolver"
                | "resolver_timeout" => http_level.push(d),
                _ if setting(d, &mut Settings::default())? => http_level.push(d),
                _ => reader.harmless(d)?,
            }
        }
        // The resolver, then upstreams: a pass may name one defined later.
        for d in http_level.iter().filter(|d| d.name == "resolver") {
            reader.resolver =
                Some(crate::upstream::Resolver::parse(&d.args).map_err(|e| err(d, e.to_string()))?);
        }
        if let Some(d) = http_level.iter().find(|d| d.name == "resolver_timeout") {
            let t = parse_duration(one_arg(d)?).ok_or_else(|| err(d, "invalid value"))?;
            if let Some(r) = &mut reader.resolver {
                r.timeout = t;
            }
        }
        for d in &http_level {
            if d.name == "upstream" {
                reader.upstream(d)?;
            }
        }
        let mut base = Settings::default();
        let mut types = HashMap::new();
        let mut listens: Vec<ListenAddr> = Vec::new();
        let mut tls_listens: Vec<(usize, Directive)> = Vec::new();
        let mut servers = Vec::new();
        for d in http_level.iter().filter(|d| d.name == "log_format") {
            reader.log_format(d)?;
        }
        base.access = reader.access_logs(http_level.iter().copied())?;
        for d in &http_level {
            if ["log_format", "resolver", "resolver_timeout"].contains(&d.name.as_str()) {
                continue;
            }
            if d.name == "types" {
                read_types(d.block.as_deref().unwrap_or_default(), &mut types);
                continue;
            }
            if d.name == "upstream" || d.name == "server" || setting(d, &mut base)? {
                continue;
            }
            reader.harmless(d)?;
        }
        // A site file without the main nginx.conf: the stock mime.types it would include.
        base.types = Arc::new(if types.is_empty() {
            stock_types()
        } else {
            types
        });
        for d in http_level.iter().filter(|d| d.name == "server") {
            let mut settings = base.clone();
            if let Some(logs) = reader.access_logs(d.block.as_deref().unwrap_or_default())? {
                settings.access = Some(logs);
            }
            let mut vs = VirtualServer {
                cert: None,
                listens: Vec::new(),
                default_for: Vec::new(),
                names: Vec::new(),
                first_name: String::new(),
                locations: Vec::new(),
                base: Settings::default(),
            };
            let block = d.block.as_deref().unwrap_or_default();
            let (mut cert, mut key) = (None, None);
            for x in block {
                match x.name.as_str() {
                    "listen" => {
                        let (addr, default, ssl) = parse_listen(x)?;
                        let i = listens.iter().position(|l| *l == addr).unwrap_or_else(|| {
                            listens.push(addr);
                            listens.len() - 1
                        });
                        vs.listens.push(i);
                        if default {
                            vs.default_for.push(i);
                        }
                        if ssl {
                            tls_listens.push((i, x.clone()));
                        }
                    }
                    "ssl_certificate" => cert = Some((x.clone(), one_arg(x)?.to_owned())),
                    "ssl_certificate_key" => key = Some((x.clone(), one_arg(x)?.to_owned())),
                    "ssl_session_cache"
                    | "ssl_session_timeout"
                    | "ssl_ciphers"
                    | "ssl_protocols"
                    | "ssl_prefer_server_ciphers"
                    | "http2" => {
                        reader.harmless(x)?;
                    }
                    "server_name" => {
                        for n in &x.args {
                            if vs.first_name.is_empty() {
                                vs.first_name.clone_from(n);
                            }
                            if let Some(sn) = parse_server_name(n) {
                                vs.names.push(sn);
                            }
                        }
                    }
                    "location" => {}
                    _ if setting(x, &mut settings)? => {}
                    _ => reader.harmless(x)?,
                }
            }
            settings.server_name.clone_from(&vs.first_name);
            for x in block.iter().filter(|x| x.name == "location") {
                vs.locations.push(reader.location(x, &settings)?);
            }
            if vs.listens.is_empty() {
                let addr = ListenAddr::parse(":80").map_err(|e| err(d, e.to_string()))?;
                let i = listens.iter().position(|l| *l == addr).unwrap_or_else(|| {
                    listens.push(addr);
                    listens.len() - 1
                });
                vs.listens.push(i);
            }
            match (cert, key) {
                (Some((cd, c)), Some((_, k))) => {
                    // Relative paths are read from the configuration's directory.
                    let dir = cd
                        .file
                        .parent()
                        .map(std::path::Path::to_path_buf)
                        .unwrap_or_default();
                    let loaded = load_cert(&dir.join(c), &dir.join(k)).map_err(|e| err(&cd, e))?;
                    vs.cert = Some(loaded);
                }
                (Some((cd, _)), None) => {
                    return Err(err(
                        &cd,
                        "\"ssl_certificate_key\" is not defined for this certificate",
                    ));
                }
                (None, Some((kd, _))) => {
                    return Err(err(&kd, "\"ssl_certificate\" is not defined for this key"));
                }
                (None, None) => {}
            }
            vs.base = settings;
            servers.push(vs);
        }
        if servers.is_empty() {
            return Err(NginxError {
                message: "no \"server\" block".into(),
                file: tree
                    .first()
                    .map(|d| d.file.to_path_buf())
                    .unwrap_or_default(),
                line: 1,
            });
        }
        let mut tls = HashMap::new();
        for (i, d) in tls_listens {
            if tls.contains_key(&i) {
                continue;
            }
            let on: Vec<&VirtualServer> =
                servers.iter().filter(|s| s.listens.contains(&i)).collect();
            let with_cert: Vec<&&VirtualServer> = on.iter().filter(|s| s.cert.is_some()).collect();
            let Some(default) = with_cert
                .iter()
                .find(|s| s.default_for.contains(&i))
                .or_else(|| with_cert.first())
                .and_then(|s| s.cert.clone())
            else {
                return Err(err(
                    &d,
                    "no \"ssl_certificate\" is defined for the listen ... ssl directive",
                ));
            };
            let mut by_name = Vec::new();
            for s in &with_cert {
                for n in &s.names {
                    let pattern = match n {
                        ServerName::Exact(e) => e.clone(),
                        ServerName::Suffix {
                            suffix,
                            bare: false,
                        } => format!("*{suffix}"),
                        ServerName::Suffix { suffix, bare: true } => suffix.clone(),
                        _ => continue,
                    };
                    by_name.push((pattern, s.cert.clone().unwrap_or_else(|| default.clone())));
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| err(&d, e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Certs { by_name, default }));
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tls.insert(i, Arc::new(config));
        }
        let upstreams = reader.upstreams.values().cloned().collect();
        let own_logs = !reader.logs.is_empty();
        Ok((
            Self {
                upstreams,
                own_logs,
                listens,
                servers,
                tls,
            },
            warnings,
        ))
    }

    /// Whether some server or location writes its own access log (`access_log PATH`).
    pub fn has_own_logs(&self) -> bool {
        self.own_logs
    }

    /// Starts the upstream groups' background work (DNS lookups of `resolve` servers,
    /// active health checks) on the current tokio runtime.
    pub fn start(&self) {
        for u in &self.upstreams {
            u.start();
        }
    }

    /// The TLS configuration of listener `listen` (`listen ... ssl`), HTTP/2 and HTTP/1.1
    /// offered by ALPN.
    pub fn tls(&self, listen: usize) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(&listen).cloned()
    }

    /// The addresses to listen on, in order (a request's listener is an index into this).
    pub fn listens(&self) -> &[ListenAddr] {
        &self.listens
    }

    fn server(&self, listen: usize, host: Option<&str>) -> &VirtualServer {
        let candidates = || self.servers.iter().filter(|s| s.listens.contains(&listen));
        let mut on_listen = candidates();
        let Some(first) = on_listen.next() else {
            return &self.servers[0];
        };
        if on_listen.next().is_none() {
            // The only server of this address answers every host.
            return first;
        }
        let fallback = candidates()
            .find(|s| s.default_for.contains(&listen))
            .unwrap_or(first);
        let Some(host) = host else {
            return fallback;
        };
        // Names are kept in lower case; the host is compared without case.
        let host = host.trim_end_matches('.').as_bytes();
        let ends_with = |suffix: &str| {
            host.len() >= suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        let exact = candidates().find(|s| {
            s.names.iter().any(
                |n| matches!(n, ServerName::Exact(e) if host.eq_ignore_ascii_case(e.as_bytes())),
            )
        });
        if let Some(s) = exact {
            return s;
        }
        let longest = |f: &dyn Fn(&ServerName) -> Option<usize>| {
            candidates()
                .filter_map(|s| s.names.iter().filter_map(f).max().map(|n| (n, s)))
                .max_by_key(|(n, _)| *n)
                .map(|(_, s)| s)
        };
        let suffix = longest(&|n| match n {
            ServerName::Suffix { suffix, bare } => (ends_with(suffix)
                || (*bare && host.eq_ignore_ascii_case(&suffix.as_bytes()[1..])))
            .then_some(suffix.len()),
            _ => None,
        });
        if let Some(s) = suffix {
            return s;
        }
        let prefix = longest(&|n| match n {
            ServerName::Prefix(p) => (host.len() >= p.len()
                && host[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
            .then_some(p.len()),
            _ => None,
        });
        if let Some(s) = prefix {
            return s;
        }
        let Ok(host) = std::str::from_utf8(host) else {
            return fallback;
        };
        candidates()
            .find(|s| {
                s.names
                    .iter()
                    .any(|n| matches!(n, ServerName::Regex(r) if r.is_match(host)))
            })
            .unwrap_or(fallback)
    }

    fn location<'a>(server: &'a VirtualServer, uri: &str) -> Option<&'a Location> {
        let ls = &server.locations;
        if let Some(l) = ls
            .iter()
            .find(|l| matches!(&l.matcher, Matcher::Exact(p) if p == uri))
        {
            return Some(l);
        }
        let prefix = ls
            .iter()
            .filter_map(|l| match &l.matcher {
                Matcher::Prefix { path, stop } if uri.starts_with(path.as_str()) => {
                    Some((path.len(), *stop, l))
                }
                _ => None,
            })
            .max_by_key(|(n, _, _)| *n);
        if let Some((_, true, l)) = prefix {
            return Some(l);
        }
        ls.iter()
            .find(|l| matches!(&l.matcher, Matcher::Regex(r) if r.is_match(uri)))
            .or(prefix.map(|(_, _, l)| l))
    }

    /// Which location answers `uri` on listener `listen` for `host`: its label as
    /// written (`= /x`, `^~ /x`, `~* re`, `/x`), or `None`.
    pub fn location_for(&self, listen: usize, host: Option<&str>, uri: &str) -> Option<&str> {
        Self::location(self.server(listen, host), uri).map(|l| l.label.as_str())
    }

    /// Answers a request that came on listener `listen`.
    pub fn handle<'a, B>(
        &'a self,
        req: http::Request<B>,
        listen: usize,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = http::Response<Body>> + 'a
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'a,
        B::Error: std::fmt::Display,
    {
        Self::serve(self, req, listen, conn)
    }

    /// [`Site::handle`] with the site and the connection given as any handles to them
    /// (`Arc`s, references), which the future keeps: with `Arc`s it borrows nothing, so
    /// a server can box it as it is instead of inside a future of its own that would hold
    /// the request a second time.
    ///
    /// The steps that need no waiting run before this returns: the server, the URI, the
    /// location, and the answers they settle (a `return`, a bad path, a body over the
    /// limit), which come back at once as [`Either::Left`], the request already dropped.
    /// hyper reads each request into a buffer that the request's head then shares, and
    /// takes a new buffer for its next read while the old one is shared: a request
    /// answered at once leaves it free.
    // A plain function returning an `async move` block, not an `async fn`: an async fn
    // copies its arguments into locals, so the request would be held twice in the future
    // (and once more in any async fn it is handed to).
    #[allow(clippy::manual_async_fn)]
    pub fn serve<'a, S, C, B>(
        site: S,
        mut req: http::Request<B>,
        listen: usize,
        conn: C,
    ) -> Either<
        std::future::Ready<http::Response<Body>>,
        impl Future<Output = http::Response<Body>> + 'a,
    >
    where
        S: std::ops::Deref<Target = Self> + Send + 'a,
        C: std::ops::Deref<Target = ConnInfo> + Send + 'a,
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'a,
        B::Error: std::fmt::Display,
    {
        let start = match site.first_steps(&mut req, listen, &conn) {
            Step::Answered(r) => return Either::Left(std::future::ready(r)),
            Step::Go(start) => start,
        };
        Either::Right(async move {
            let this: &Self = &site;
            let conn: &ConnInfo = &conn;
            let server = &this.servers[start.server];
            let mut picked = this.picked(server);
            // The request target stays readable after the request is handed on (a clone of
            // the URI shares its bytes).
            let target = req.uri().clone();
            let raw_path = target.path();
            let mut uri: std::borrow::Cow<'_, str> = match start.uri {
                Some(u) => u.into(),
                None => raw_path.into(),
            };
            let request_uri = target.path_and_query().map_or("/", |p| p.as_str());
            let args = target.query().unwrap_or("");
            let r = 'answer: {
                // try_files may redirect internally to another URI (or a named location):
                // the first round's location was found by the first steps.
                let mut location = start.location.map(|i| &server.locations[i]);
                for round in 0..10 {
                    if round > 0 {
                        location = Self::location(server, &uri);
                    }
                    let settings = location.map_or(&server.base, |l| &l.settings);
                    picked.take(settings);
                    picked.uri(&uri);
                    // (A request without a body has nothing to measure.)
                    if let Some(limit) = settings.max_body.filter(|_| !req.body().is_end_stream())
                        && crate::handler::declared_over(req.headers(), limit)
                    {
                        break 'answer error_page(StatusCode::PAYLOAD_TOO_LARGE);
                    }
                    // $document_root, written out only where a variable may ask for it.
                    let root_text = || document_root(location, settings);
                    // ... and only when one of the values at hand names it.
                    let root_if = |named: bool| {
                        if named {
                            root_text()
                        } else {
                            std::borrow::Cow::Borrowed("")
                        }
                    };
                    if let Some(ret) = &settings.ret {
                        // The variables are gathered only for a text that has some.
                        let expand = |t: &vars::Template| {
                            let root = root_text();
                            let vars =
                                this.vars(&req, conn, request_uri, &uri, args, server, &root);
                            vars.expand_template(t)
                        };
                        break 'answer returned(ret, expand, &settings.default_type);
                    }
                    if let Some(Location {
                        proxy: Some((proxy, headers)),
                        matcher,
                        ..
                    }) = location
                    {
                        // (The variables in a block of their own: not held while the proxy runs.)
                        let headers: Vec<(http::HeaderName, Bytes)> = {
                            let root = root_if(headers.uses_root);
                            let vars =
                                this.vars(&req, conn, request_uri, &uri, args, server, &root);
                            headers
                                .headers
                                .iter()
                                .map(|(k, v)| (k.clone(), v.expand(&vars)))
                                .collect()
                        };
                        let prefix = match matcher {
                            Matcher::Prefix { path, .. } => path.as_str(),
                            _ => "",
                        };
                        // Boxed (as below): large futures, which would make every request's
                        // future as large.
                        break 'answer Box::pin(proxy.handle_under(req, conn, &headers, prefix))
                            .await;
                    }
                    if let Some(Location {
                        pass: Some((pass, params)),
                        ..
                    }) = location
                    {
                        let extra: Vec<(Bytes, Bytes)>;
                        let extra = match params {
                            PassParams::Fixed(list) => list,
                            PassParams::Templates(params, uses_root) => {
                                let root = root_if(*uses_root);
                                let vars =
                                    this.vars(&req, conn, request_uri, &uri, args, server, &root);
                                extra = params
                                    .iter()
                                    .map(|p| (p, p.value.expand(&vars)))
                                    .filter(|(p, v)| !(p.if_not_empty && v.is_empty()))
                                    .map(|(p, v)| (p.name.clone(), v))
                                    .collect();
                                &extra
                            }
                        };
                        break 'answer Box::pin(pass.handle_with(req, conn, extra)).await;
                    }
                    // Files.
                    let Some(base_dir) = location
                        .and_then(|l| l.alias.as_ref())
                        .or(settings.root.as_ref())
                    else {
                        break 'answer error_page(StatusCode::NOT_FOUND);
                    };
                    let file_for = |u: &str| -> PathBuf {
                        let rel = match location {
                            Some(Location {
                                alias: Some(_),
                                matcher: Matcher::Prefix { path, .. },
                                ..
                            }) => u.strip_prefix(path.as_str()).unwrap_or(u),
                            _ => u,
                        };
                        base_dir.join(rel.trim_start_matches('/'))
                    };
                    let Some(try_files) = &settings.try_files else {
                        let r = this
                            .files(&req, &uri, &file_for(&uri), base_dir, settings)
                            .await;
                        break 'answer r;
                    };
                    let root = root_text();
                    let vars = this.vars(&req, conn, request_uri, &uri, args, server, &root);
                    let (last, tries) = try_files.split_last().unwrap_or((&try_files[0], &[]));
                    let mut found = None;
                    for t in tries {
                        let candidate = vars.expand(t);
                        let file = file_for(&candidate);
                        let is_dir = candidate.ends_with('/');
                        let ok = std::fs::metadata(&file)
                            .is_ok_and(|m| if is_dir { m.is_dir() } else { m.is_file() });
                        if ok {
                            found = Some((candidate, file));
                            break;
                        }
                    }
                    if let Some((candidate, file)) = found {
                        let r = this
                            .files(&req, &candidate, &file, base_dir, settings)
                            .await;
                        break 'answer r;
                    }
                    if let Some(code) = last.strip_prefix('=') {
                        let code = code.parse().unwrap_or(404);
                        break 'answer error_page(
                            StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND),
                        );
                    }
                    let next = vars.expand(last);
                    if let Some(named) = server
                        .locations
                        .iter()
                        .find(|l| matches!(&l.matcher, Matcher::Named(n) if *n == next))
                    {
                        if let Some((pass, _)) = &named.pass {
                            picked.take(&named.settings);
                            break 'answer Box::pin(pass.handle_with(req, conn, &[])).await;
                        }
                        break 'answer error_page(StatusCode::NOT_FOUND);
                    }
                    uri = next.split('?').next().unwrap_or("/").to_owned().into();
                }
                tracing::error!(
                    "rewrite or internal redirection cycle while processing {raw_path}"
                );
                error_page(StatusCode::INTERNAL_SERVER_ERROR)
            };
            finish(r, picked)
        })
    }

    /// What the access log and `charset` know before a location is chosen: `server`'s.
    fn picked<'s>(&self, server: &'s VirtualServer) -> Picked<'s> {
        let mut picked = Picked {
            logging: self.own_logs || crate::access::any_enabled(crate::access::default_logs()),
            ..Picked::default()
        };
        picked.take(&server.base);
        picked
    }

    /// The steps of [`Site::serve`] that need no waiting: the server for the request's
    /// host (HTTP/2's `:authority` written into `Host`, as nginx takes it), the normalized
    /// URI, its location, and the answer when these settle it.
    fn first_steps<B>(&self, req: &mut http::Request<B>, listen: usize, conn: &ConnInfo) -> Step
    where
        B: http_body::Body<Data = Bytes>,
    {
        let server = match req.headers().get(header::HOST) {
            Some(h) => self.server(listen, h.to_str().ok().map(vars::without_port)),
            None => {
                // HTTP/2 carries the host in :authority: it is the Host header, as for
                // nginx.
                let authority = req.uri().authority().map(|a| a.as_str().to_owned());
                let host = authority.and_then(|a| HeaderValue::from_str(&a).ok());
                let server = self.server(
                    listen,
                    host.as_ref()
                        .and_then(|h| h.to_str().ok())
                        .map(vars::without_port),
                );
                if let Some(v) = host {
                    req.headers_mut().insert(header::HOST, v);
                }
                server
            }
        };
        let req: &http::Request<B> = req;
        let mut picked = self.picked(server);
        let raw_path = req.uri().path();
        let Ok(path) = cgi_family::normalize_path(raw_path.as_bytes()) else {
            return Step::Answered(finish(error_page(StatusCode::BAD_REQUEST), picked));
        };
        // A path already normal is the raw path itself, text already; a rebuilt one is
        // checked (`from_utf8` first: quicker than the lossy walk).
        let uri: std::borrow::Cow<'_, str> = match path {
            std::borrow::Cow::Borrowed(p) if p.len() == raw_path.len() => raw_path.into(),
            std::borrow::Cow::Borrowed(p) => String::from_utf8_lossy(p),
            std::borrow::Cow::Owned(p) => match String::from_utf8(p) {
                Ok(p) => p.into(),
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
            },
        };
        picked.uri(&uri);
        let request_uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let args = req.uri().query().unwrap_or("");
        if let Some(ret) = &server.base.ret {
            let expand = |t: &vars::Template| {
                let vars = self.vars(req, conn, request_uri, &uri, args, server, "");
                vars.expand_template(t)
            };
            let r = returned(ret, expand, &server.base.default_type);
            return Step::Answered(finish(r, picked));
        }
        let location = Self::location(server, &uri);
        let settings = location.map_or(&server.base, |l| &l.settings);
        picked.take(settings);
        // (A request without a body has nothing to measure.)
        if let Some(limit) = settings.max_body.filter(|_| !req.body().is_end_stream())
            && crate::handler::declared_over(req.headers(), limit)
        {
            return Step::Answered(finish(error_page(StatusCode::PAYLOAD_TOO_LARGE), picked));
        }
        if let Some(ret) = &settings.ret {
            // The variables are gathered only for a text that has some.
            let expand = |t: &vars::Template| {
                let root = document_root(location, settings);
                let vars = self.vars(req, conn, request_uri, &uri, args, server, &root);
                vars.expand_template(t)
            };
            let r = returned(ret, expand, &settings.default_type);
            return Step::Answered(finish(r, picked));
        }
        let unchanged = matches!(&uri, std::borrow::Cow::Borrowed(u) if u.len() == raw_path.len());
        Step::Go(Start {
            server: self
                .servers
                .iter()
                .position(|s| std::ptr::eq(s, server))
                .unwrap_or(0),
            location: location
                .and_then(|l| server.locations.iter().position(|x| std::ptr::eq(x, l))),
            uri: (!unchanged).then(|| uri.into_owned()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn vars<'a, B>(
        &'a self,
        req: &'a http::Request<B>,
        conn: &ConnInfo,
        request_uri: &'a str,
        uri: &'a str,
        args: &'a str,
        server: &'a VirtualServer,
        root: &'a str,
    ) -> RequestVars<'a> {
        RequestVars {
            method: req.method().as_str(),
            request_uri,
            uri,
            args,
            headers: req.headers(),
            peer: conn.peer(),
            local: conn.local(),
            scheme: if conn.https() { "https" } else { "http" },
            server_name: &server.first_name,
            document_root: root,
            protocol: match req.version() {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
        }
    }

    /// The static handler: index files for a directory URI, a redirect adding the
    /// slash for a directory without one, else the file.
    async fn files<B>(
        &self,
        req: &http::Request<B>,
        uri: &str,
        file: &std::path::Path,
        base: &std::path::Path,
        settings: &Settings,
    ) -> http::Response<Body> {
        use crate::handler::static_files::{FileMiss, try_serve_file};
        if uri.ends_with('/') {
            for index in &settings.index {
                let candidate = file.join(index);
                let mime = settings.mime_for(&candidate);
                match try_serve_file(req.method(), req.headers(), &candidate, base, Some(mime))
                    .await
                {
                    Ok(mut r) => {
                        // nginx's index is an internal redirect: $uri names the file.
                        r.extensions_mut()
                            .insert(crate::access::Uri(format!("{uri}{index}")));
                        return r;
                    }
                    Err(FileMiss::Directory | FileMiss::Missing) => {}
                }
            }
            return if std::fs::metadata(file).is_ok_and(|m| m.is_dir()) {
                error_page(StatusCode::FORBIDDEN)
            } else {
                error_page(StatusCode::NOT_FOUND)
            };
        }
        // Opened, checked and read inline (nginx does the same on a local file system).
        let mime = settings.mime_for(file);
        match try_serve_file(req.method(), req.headers(), file, base, Some(mime)).await {
            Ok(r) => r,
            Err(FileMiss::Directory) => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let mut r = error_page(StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&format!("http://{host}{uri}/")) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Err(FileMiss::Missing) => error_page(StatusCode::NOT_FOUND),
        }
    }
}

/// The (name, value) lines of the stock params file for `protocol`.
fn stock_params(protocol: Protocol) -> Vec<(String, String, bool)> {
    let name = match protocol {
        Protocol::Uwsgi => "uwsgi_params",
        Protocol::Scgi => "scgi_params",
        Protocol::FastCgi => "fastcgi_params",
    };
    crate::config::nginx::stock_file(name)
        .and_then(|t| crate::config::nginx::parse_str(t, name).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| match d.args.as_slice() {
            [k, v] => Some((k.clone(), v.clone(), false)),
            [k, v, flag] => Some((k.clone(), v.clone(), flag == "if_not_empty")),
            _ => None,
        })
        .collect()
}

/// `$document_root` where `location` (or, without one, the server's `settings`) answers:
/// its `alias` or `root`, empty when it has neither.
fn document_root<'s>(
    location: Option<&'s Location>,
    settings: &'s Settings,
) -> std::borrow::Cow<'s, str> {
    location
        .and_then(|l| l.alias.as_ref())
        .or(settings.root.as_ref())
        .map(|p| p.to_string_lossy())
        .unwrap_or_default()
}

/// A site's answer made ready to go: nginx's `charset` of the server or location that
/// answered, error pages included (but not 301 and 302, which nginx leaves alone), its own
/// access logs when it names some, and `$uri` for the access log.
fn finish(mut r: http::Response<Body>, picked: Picked<'_>) -> http::Response<Body> {
    let redirect = matches!(r.status().as_u16(), 301 | 302);
    if let (Some(cs), false) = (picked.charset, redirect) {
        add_charset(&mut r, cs);
    }
    if let Some(logs) = picked.access {
        r.extensions_mut()
            .insert(crate::access::Route(logs.clone()));
    }
    // The normalized URI that answered (unless a handler named another).
    if let Some(uri) = picked.uri
        && r.extensions().get::<crate::access::Uri>().is_none()
    {
        r.extensions_mut().insert(crate::access::Uri(uri));
    }
    r
}

/// Where [`Site::serve`]'s first steps leave a request.
enum Step {
    /// Answered without waiting.
    Answered(http::Response<Body>),
    /// To be served by a future, from here.
    Go(Start),
}

/// Where a request's future starts.
struct Start {
    /// Its server, an index into the site's.
    server: usize,
    /// The location of its URI, an index into the server's.
    location: Option<usize>,
    /// Its URI when normalizing changed the request's path.
    uri: Option<String>,
}

/// nginx's `return code [text|URL]`.
/// `expand` writes out a text with variables (called only for such a text).
fn returned(
    ret: &Return,
    expand: impl FnOnce(&vars::Template) -> String,
    default_type: &HeaderValue,
) -> http::Response<Body> {
    let status = StatusCode::from_u16(ret.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let redirect = matches!(ret.code, 301 | 302 | 303 | 307 | 308);
    match &ret.arg {
        Some(a) if redirect => {
            let mut r = error_page(status);
            if let Ok(v) = HeaderValue::from_maybe_shared(a.expand_with(expand)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Some(text) => {
            let mut r = http::Response::new(Body::full(text.expand_with(expand)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, default_type.clone());
            r
        }
        None => error_page(status),
    }
}

/// A small HTML error page, as nginx sends.
fn error_page(status: StatusCode) -> http::Response<Body> {
    let text = format!(
        "<html>\r\n<head><title>{0} {1}</title></head>\r\n<body>\r\n<center><h1>{0} {1}</h1></center>\r\n<hr><center>gateway</center>\r\n</body>\r\n</html>\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = http::Response::new(Body::full(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// nginx's `charset`: added to text types that do not name one.
fn add_charset(r: &mut http::Response<Body>, charset: &str) {
    let Some(ct) = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let lower = ct.to_ascii_lowercase();
    let texty = [
        "text/html",
        "text/xml",
        "text/plain",
        "text/vnd.wap.wml",
        "application/javascript",
        "application/rss+xml",
    ]
    .iter()
    .any(|t| lower.starts_with(t));
    if texty && !lower.contains("charset") {
        if let Ok(v) = HeaderValue::from_str(&format!("{ct}; charset={charset}")) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    /// A request body that tells when it is dropped.
    struct Watched(Arc<AtomicBool>, Option<Bytes>);

    impl Drop for Watched {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl http_body::Body for Watched {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.1.take().map(|b| Ok(http_body::Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.1.is_none()
        }
    }

    fn request(
        path: &str,
        body: Option<&'static str>,
    ) -> (http::Request<Watched>, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut req = http::Request::builder()
            .uri(path)
            .header(header::HOST, "example.com");
        if let Some(b) = body {
            req = req.header(header::CONTENT_LENGTH, b.len());
        }
        let body = Watched(dropped.clone(), body.map(Bytes::from));
        (req.body(body).unwrap(), dropped)
    }

    #[test]
    fn settled_answers_come_at_once_with_the_request_dropped() {
        let tree = crate::config::nginx::parse_str(
            "server {
                 listen 127.0.0.1:8000;
                 client_max_body_size 4;
                 location = /r { return 200 ok; }
                 location /p { uwsgi_pass 127.0.0.1:9; }
                 location /files { root /nonexistent; }
             }",
            "site.conf",
        )
        .unwrap();
        let (site, _) = Site::from_nginx(&tree).unwrap();
        let conn = ConnInfo::default();
        for (path, body, status) in [
            ("/r", None, 200),
            ("/../x", None, 400),
            ("/p", Some("too long"), 413),
        ] {
            let (req, dropped) = request(path, body);
            match Site::serve(&site, req, 0, &conn) {
                Either::Left(now) => {
                    assert!(
                        dropped.load(Ordering::SeqCst),
                        "{path}: the request is held"
                    );
                    assert_eq!(now.into_inner().status(), status, "{path}");
                }
                Either::Right(_) => panic!("{path}: answered by a future"),
            }
        }
        // A pass and a file are answered by a future, which holds the request.
        for path in ["/p", "/files/x"] {
            let (req, dropped) = request(path, None);
            let answer = Site::serve(&site, req, 0, &conn);
            assert!(
                matches!(answer, Either::Right(_)),
                "{path}: answered at once"
            );
            assert!(!dropped.load(Ordering::SeqCst), "{path}");
            drop(answer);
            assert!(dropped.load(Ordering::SeqCst), "{path}");
        }
    }

    #[tokio::test]
    async fn a_future_starts_where_the_first_steps_stopped() {
        // A rewritten path and a location found by the first steps: the future serves
        // that location with that URI (here: the file under the root, then try_files'
        // fallback after an internal redirect).
        let dir = testkit::temp_dir();
        std::fs::create_dir_all(dir.path().join("files")).unwrap();
        std::fs::write(dir.path().join("files/a"), "file").unwrap();
        let conf = format!(
            "server {{
                 listen 127.0.0.1:8000;
                 location /files {{ root {0}; }}
                 location /try {{ root {0}; try_files $uri /files/a; }}
             }}",
            dir.path().display()
        );
        let tree = crate::config::nginx::parse_str(&conf, "site.conf").unwrap();
        let (site, _) = Site::from_nginx(&tree).unwrap();
        let conn = ConnInfo::default();
        for (path, status) in [
            ("/files/./a", 200),
            ("/files//x/../%61", 200),
            ("/files/nothing", 404),
            ("/try/nothing", 200),
        ] {
            let (req, _) = request(path, None);
            let answer = Site::serve(&site, req, 0, &conn).await;
            assert_eq!(answer.status(), status, "{path}");
        }
    }
}
