//! The access log: one line per request, written when its response has been sent (so the
//! line holds the bytes really sent and the whole time taken), in uWSGI's style, nginx's
//! `combined` format, or any format written with nginx's `$variables` (`log_format`) or
//! uWSGI's `%(variables)` (`--logformat`).
//!
//! ```
//! use gateway::access::{AccessLog, Format, Record};
//!
//! let format = Format::nginx(r#"$remote_addr "$request" $status $body_bytes_sent "$http_user_agent""#)?;
//! let mut record = Record::new("GET", "/hello?x=1", "HTTP/1.1");
//! record.remote = Some("127.0.0.1".parse()?);
//! record.headers.insert("user-agent", "curl/8".parse()?);
//! record.status = 200;
//! record.sent = 12;
//! assert_eq!(format.render(&record), r#"127.0.0.1 "GET /hello?x=1 HTTP/1.1" 200 12 "curl/8""#);
//! let _to_the_log = AccessLog::to_log(format);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

/// A log format that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// A variable the gateway does not know.
    #[error("unknown \"{0}\" variable in the log format")]
    UnknownVariable(String),
    /// `${` without its `}`, or `%(` without its `)`.
    #[error("unclosed variable in the log format: {0:?}")]
    Unclosed(String),
}

/// What a format line is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Ctime,
    UnixTime,
    Msec,
    Request,
    Method,
    RequestUri,
    Uri,
    Args,
    Protocol,
    Scheme,
    Status,
    BodyBytes,
    RequestTime,
    Msecs,
    Micros,
    Host,
    Header(http::HeaderName),
    Pid,
    Worker,
    Requests,
    UpstreamAddr,
}

impl Var {
    /// nginx's name for it (`$name`).
    fn nginx(name: &str) -> Option<Self> {
        Some(match name {
            "remote_addr" => Self::RemoteAddr,
            "remote_user" => Self::RemoteUser,
            "time_local" => Self::TimeLocal,
            "time_iso8601" => Self::TimeIso8601,
            "msec" => Self::Msec,
            "request" => Self::Request,
            "request_method" => Self::Method,
            "request_uri" => Self::RequestUri,
            "uri" | "document_uri" => Self::Uri,
            "args" | "query_string" => Self::Args,
            "server_protocol" => Self::Protocol,
            "scheme" => Self::Scheme,
            "status" => Self::Status,
            "body_bytes_sent" => Self::BodyBytes,
            "request_time" => Self::RequestTime,
            "host" => Self::Host,
            "pid" => Self::Pid,
            "upstream_addr" => {
                UPSTREAM_WANTED.store(true, Ordering::Relaxed);
                Self::UpstreamAddr
            }
            _ => Self::Header(header(name.strip_prefix("http_")?)?),
        })
    }

    /// uWSGI's name for it (`%(name)`).
    fn uwsgi(name: &str) -> Option<Self> {
        Some(match name {
            "addr" => Self::RemoteAddr,
            "user" => Self::RemoteUser,
            "ltime" => Self::TimeLocal,
            "ctime" => Self::Ctime,
            "time" | "epoch" => Self::UnixTime,
            "method" => Self::Method,
            "uri" => Self::RequestUri,
            "proto" => Self::Protocol,
            "status" => Self::Status,
            "size" => Self::BodyBytes,
            "msecs" => Self::Msecs,
            "micros" => Self::Micros,
            "host" => Self::Host,
            "referer" => Self::Header(http::header::REFERER),
            "uagent" => Self::Header(http::header::USER_AGENT),
            "pid" => Self::Pid,
            "wid" => Self::Worker,
            "reqs" => Self::Requests,
            "cl" => Self::Header(http::header::CONTENT_LENGTH),
            "tmsecs" => Self::Msec,
            _ => match name.strip_prefix("var.")? {
                "REMOTE_ADDR" => Self::RemoteAddr,
                "REQUEST_METHOD" => Self::Method,
                "REQUEST_URI" => Self::RequestUri,
                "PATH_INFO" => Self::Uri,
                "QUERY_STRING" => Self::Args,
                "SERVER_PROTOCOL" => Self::Protocol,
                "CONTENT_LENGTH" => Self::Header(http::header::CONTENT_LENGTH),
                "CONTENT_TYPE" => Self::Header(http::header::CONTENT_TYPE),
                cgi => Self::Header(header(&cgi.strip_prefix("HTTP_")?.to_ascii_lowercase())?),
            },
        })
    }
}

/// `$http_x_forwarded_for` names the header `x-forwarded-for`.
fn header(var: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(var.replace('_', "-").as_bytes()).ok()
}

/// A log line's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
    /// nginx's default escaping of variable values: `"`, `\` and bytes outside
    /// printable ASCII are written as `\xHH`.
    escape: bool,
}

/// nginx's predefined `combined` format.
pub const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;

/// The gateway's uWSGI-style line (uWSGI's default request log, less the parts that only
/// uWSGI's own structures know: vars count, header bytes, switches, core).
const UWSGI_STYLE: &str = "[pid: %(pid)|worker: %(wid)|req: %(reqs)] %(addr) (%(user)) [%(ctime)] %(method) %(uri) => generated %(size) bytes in %(msecs) msecs (%(proto) %(status))";

impl Format {
    /// A format in nginx's `log_format` syntax: `$name` or `${name}`, every other byte
    /// as written. Variables: `remote_addr`, `remote_user`, `time_local`,
    /// `time_iso8601`, `msec`, `request`, `request_method`, `request_uri`, `uri`,
    /// `args`, `server_protocol`, `scheme`, `status`, `body_bytes_sent`, `request_time`,
    /// `host`, `pid`, `upstream_addr` and `http_NAME` for any request header.
    pub fn nginx(template: &str) -> Result<Self, FormatError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| FormatError::Unclosed(template.to_owned()))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                text.push('$');
            } else {
                let var = Var::nginx(name)
                    .ok_or_else(|| FormatError::UnknownVariable(name.to_owned()))?;
                flush(&mut parts, &mut text);
                parts.push(Part::Var(var));
            }
            rest = after;
        }
        text.push_str(rest);
        flush(&mut parts, &mut text);
        Ok(Self {
            parts,
            escape: true,
        })
    }

    /// A format in uWSGI's `--logformat` syntax: `%(name)`. Variables: `addr`, `user`,
    /// `ltime`, `ctime`, `time`/`epoch`, `tmsecs`, `method`, `uri`, `proto`, `status`,
    /// `size`, `msecs`, `micros`, `host`, `referer`, `uagent`, `cl`, `pid`, `wid`,
    /// `var.NAME` (`HTTP_*` headers and the request line's CGI variables), and `reqs`
    /// (the process's request count); the words `combined` and `uwsgi` name the two
    /// presets.
    pub fn uwsgi(template: &str) -> Result<Self, FormatError> {
        match template {
            "combined" => return Self::nginx(COMBINED),
            "uwsgi" | "default" => return Ok(Self::uwsgi_style()),
            _ => {}
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(at) = rest.find("%(") {
            text.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find(')')
                .ok_or_else(|| FormatError::Unclosed(template.to_owned()))?;
            let name = &after[..end];
            let var =
                Var::uwsgi(name).ok_or_else(|| FormatError::UnknownVariable(name.to_owned()))?;
            flush(&mut parts, &mut text);
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        flush(&mut parts, &mut text);
        Ok(Self {
            parts,
            escape: false,
        })
    }

    /// nginx's `combined` format.
    pub fn combined() -> Self {
        Self::nginx(COMBINED).unwrap_or_else(|_| unreachable!("the preset parses"))
    }

    /// The default: a line in the style of uWSGI's request log.
    pub fn uwsgi_style() -> Self {
        Self::uwsgi(UWSGI_STYLE).unwrap_or_else(|_| unreachable!("the preset parses"))
    }

    /// The line for one request.
    pub fn render(&self, r: &Record) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(128);
        let mut value = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) if self.escape => {
                    value.clear();
                    r.var(v, &mut value);
                    for b in value.bytes() {
                        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                            let _ = write!(out, "\\x{b:02X}");
                        } else {
                            out.push(char::from(b));
                        }
                    }
                }
                Part::Var(v) => r.var(v, &mut out),
            }
        }
        out
    }
}

fn flush(parts: &mut Vec<Part>, text: &mut String) {
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
}

/// What is known of one request when its line is written.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client's address.
    pub remote: Option<IpAddr>,
    /// The method.
    pub method: String,
    /// The request target as the client sent it (path and query).
    pub target: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub protocol: String,
    /// `https` or `http`.
    pub https: bool,
    /// The request's headers (those a format may name).
    pub headers: http::HeaderMap,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub sent: u64,
    /// The backend that answered (`$upstream_addr`).
    pub upstream: Option<String>,
    /// The normalized URI that answered (`$uri`), when a handler said; else the path of
    /// `target`.
    pub uri: Option<String>,
    /// When the request arrived.
    pub started: SystemTime,
    /// The same, for durations.
    pub start: Instant,
}

impl Record {
    /// A record for a request arriving now.
    pub fn new(method: &str, target: &str, protocol: &str) -> Self {
        Self {
            remote: None,
            method: method.to_owned(),
            target: target.to_owned(),
            protocol: protocol.to_owned(),
            https: false,
            headers: http::HeaderMap::new(),
            status: 0,
            sent: 0,
            upstream: None,
            uri: None,
            started: SystemTime::now(),
            start: Instant::now(),
        }
    }

    /// A record from an HTTP request.
    pub fn from_request<B>(req: &http::Request<B>, remote: Option<IpAddr>, https: bool) -> Self {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned());
        let mut r = Self::new(
            req.method().as_str(),
            &target,
            &format!("{:?}", req.version()),
        );
        r.remote = remote;
        r.https = https;
        r.headers = req.headers().clone();
        r
    }

    /// A record from a CGI environment (what nginx sent over uwsgi, FastCGI or SCGI).
    pub fn from_env<'a>(vars: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut r = Self::new("-", "-", "-");
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        for (k, v) in vars {
            match k {
                b"REQUEST_METHOD" => r.method = text(v),
                b"REQUEST_URI" => r.target = text(v),
                b"SERVER_PROTOCOL" => r.protocol = text(v),
                b"REMOTE_ADDR" => {
                    r.remote = std::str::from_utf8(v).ok().and_then(|a| a.parse().ok())
                }
                b"HTTPS" => r.https = v.eq_ignore_ascii_case(b"on"),
                b"REQUEST_SCHEME" => r.https = v == b"https",
                _ => {
                    if let Some(name) = k.strip_prefix(b"HTTP_") {
                        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                        if let (Some(n), Ok(v)) = (header(&name), http::HeaderValue::from_bytes(v))
                        {
                            r.headers.append(n, v);
                        }
                    }
                }
            }
        }
        r
    }

    fn var(&self, v: &Var, out: &mut String) {
        use std::fmt::Write as _;
        let elapsed = self.start.elapsed();
        let dash = |s: &str, out: &mut String| out.push_str(if s.is_empty() { "-" } else { s });
        let _ = match v {
            Var::RemoteAddr => match self.remote {
                Some(a) => write!(out, "{a}"),
                None => write!(out, "-"),
            },
            Var::RemoteUser => write!(out, "-"),
            Var::TimeLocal | Var::TimeIso8601 | Var::Ctime => {
                out.push_str(&clock(self.started, v));
                Ok(())
            }
            Var::UnixTime => write!(out, "{}", unix(self.started).as_secs()),
            Var::Msec => {
                let t = unix(self.started + elapsed);
                write!(out, "{}.{:03}", t.as_secs(), t.subsec_millis())
            }
            Var::Request => write!(out, "{} {} {}", self.method, self.target, self.protocol),
            Var::Method => write!(out, "{}", self.method),
            Var::RequestUri => write!(out, "{}", self.target),
            Var::Uri => {
                let uri = match &self.uri {
                    Some(u) => u.as_str(),
                    None => self.target.split('?').next().unwrap_or_default(),
                };
                dash(uri, out);
                Ok(())
            }
            Var::Args => {
                dash(self.target.split_once('?').map_or("", |(_, q)| q), out);
                Ok(())
            }
            Var::Protocol => write!(out, "{}", self.protocol),
            Var::Scheme => write!(out, "{}", if self.https { "https" } else { "http" }),
            Var::Status => write!(out, "{}", self.status),
            Var::BodyBytes => write!(out, "{}", self.sent),
            Var::RequestTime => write!(out, "{}.{:03}", elapsed.as_secs(), elapsed.subsec_millis()),
            Var::Msecs => write!(out, "{}", elapsed.as_millis()),
            Var::Micros => write!(out, "{}", elapsed.as_micros()),
            Var::Host => {
                let host = self
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default();
                // Without the port, lower-case, as nginx's $host.
                dash(
                    &crate::site::vars::without_port(host).to_ascii_lowercase(),
                    out,
                );
                Ok(())
            }
            Var::Header(name) => {
                let values: Vec<_> = self
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect();
                dash(&values.join(", "), out);
                Ok(())
            }
            Var::Pid => write!(out, "{}", std::process::id()),
            Var::Worker => write!(out, "{}", WORKER.load(Ordering::Relaxed)),
            Var::Requests => write!(out, "{}", REQUESTS.load(Ordering::Relaxed)),
            Var::UpstreamAddr => {
                dash(self.upstream.as_deref().unwrap_or_default(), out);
                Ok(())
            }
        };
    }
}

fn unix(t: SystemTime) -> std::time::Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// The request's arrival time, in UTC, as `$time_local` (`29/Nov/2026:19:00:00 +0000`),
/// `$time_iso8601` or uWSGI's ctime style (`Sun Nov 29 19:00:00 2026`).
fn clock(t: SystemTime, v: &Var) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let secs = unix(t).as_secs();
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let (y, mo, d) = civil(days);
    let month = MONTHS[(mo - 1) as usize];
    match v {
        Var::TimeIso8601 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}+00:00"),
        Var::Ctime => format!(
            "{} {month} {d:2} {h:02}:{m:02}:{s:02} {y}",
            DAYS[(days % 7) as usize]
        ),
        _ => format!("{d:02}/{month}/{y:04}:{h:02}:{m:02}:{s:02} +0000"),
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

/// Where lines go.
#[derive(Debug)]
enum Sink {
    /// The server's log (`--logto`, stderr), as the `access` target: `--disable-logging`
    /// turns it off.
    Log,
    /// A file, appended to (one `write` per line, so the lines of several workers do not
    /// interleave).
    File(std::fs::File, String),
}

/// A format and where its lines go.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    sink: Sink,
}

impl AccessLog {
    /// Lines to the server's log (target `access`).
    pub fn to_log(format: Format) -> Self {
        Self {
            format,
            sink: Sink::Log,
        }
    }

    /// Lines appended to `path` (created if missing).
    pub fn to_file(format: Format, path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            format,
            sink: Sink::File(file, path.display().to_string()),
        })
    }

    /// Whether a line would be written (the log's `access` target may be off).
    pub fn enabled(&self) -> bool {
        match self.sink {
            Sink::Log => tracing::enabled!(target: "access", tracing::Level::INFO),
            Sink::File(..) => true,
        }
    }

    /// Writes the line for `r`.
    pub fn write(&self, r: &Record) {
        let line = self.format.render(r);
        match &self.sink {
            Sink::Log => tracing::info!(target: "access", "{line}"),
            Sink::File(f, path) => {
                let mut line = line.into_bytes();
                line.push(b'\n');
                if let Err(e) = (&*f).write_all(&line) {
                    tracing::warn!("access log {path}: {e}");
                }
            }
        }
    }
}

/// The logs one request's line goes to (nginx allows several `access_log`s; none is
/// `access_log off`).
pub type Logs = Arc<[Arc<AccessLog>]>;

/// Set on a response by a handler that chose the request's logs (a site's server or
/// location with its own `access_log`): they replace the process's default.
#[derive(Clone, Debug)]
pub struct Route(pub Logs);

/// The normalized URI that answered (nginx's `$uri`), set on a response by a handler
/// that knows it (a site: after decoding, dot segments and internal redirects).
#[derive(Clone, Debug)]
pub struct Uri(pub String);

/// The backend that answered, set on a response by the pass and proxy handlers when a
/// log format of the process names `$upstream_addr` ([`upstream_wanted`]).
#[derive(Clone, Debug)]
pub struct Upstream(pub crate::listen::ListenAddr);

/// Set once any log format names `$upstream_addr`.
static UPSTREAM_WANTED: AtomicBool = AtomicBool::new(false);

/// Whether a log format of this process names `$upstream_addr` (formats are read before
/// the first request): only then do responses carry an [`Upstream`], which costs an
/// allocation per request.
pub fn upstream_wanted() -> bool {
    UPSTREAM_WANTED.load(Ordering::Relaxed)
}

static DEFAULT: OnceLock<Logs> = OnceLock::new();
static WORKER: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Installs the process's default logs (`--logformat`, `--req-logger`); the first call
/// wins. Without it, lines go to the server's log in uWSGI's style.
pub fn install(logs: Vec<AccessLog>) {
    let _ = DEFAULT.set(logs.into_iter().map(Arc::new).collect());
}

/// The process's default logs (borrowed: a request clones them only when it has a line
/// to write).
pub fn default_logs() -> &'static Logs {
    DEFAULT.get_or_init(|| Arc::new([Arc::new(AccessLog::to_log(Format::uwsgi_style()))]))
}

/// Names this process's worker number (`%(wid)`).
pub fn set_worker(id: usize) {
    WORKER.store(id, Ordering::Relaxed);
}

/// Whether any of `logs` would write a line.
pub fn any_enabled(logs: &[Arc<AccessLog>]) -> bool {
    logs.iter().any(|l| l.enabled())
}

/// A request whose line is written when this is dropped: when its response body has
/// been sent (or abandoned).
#[derive(Debug)]
pub struct Pending {
    logs: Logs,
    /// What the line tells; `sent` grows as the body goes out.
    pub record: Record,
}

impl Pending {
    /// A line for `record` to `logs` when dropped.
    pub fn new(logs: Logs, record: Record) -> Self {
        Self { logs, record }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        for l in self.logs.iter() {
            l.write(&self.record);
        }
    }
}

/// Wraps `response`'s body so that its line is written to `logs` (or to the logs a
/// handler chose with [`Route`]) once the body has been sent.
pub fn attach(
    response: http::Response<crate::handler::Body>,
    logs: Logs,
    mut record: Record,
) -> http::Response<crate::handler::Body> {
    let (mut head, body) = response.into_parts();
    let logs = head.extensions.remove::<Route>().map_or(logs, |r| r.0);
    if logs.is_empty() {
        return http::Response::from_parts(head, body);
    }
    record.status = head.status.as_u16();
    record.upstream = head
        .extensions
        .remove::<Upstream>()
        .map(|u| u.0.to_string());
    if let Some(u) = head.extensions.remove::<Uri>() {
        record.uri = Some(u.0);
    }
    let pending = Box::new(Pending::new(logs, record));
    http::Response::from_parts(head, crate::handler::Body::Logged(Box::new(body), pending))
}

/// A pending line to the process's default logs for a request that came with a CGI
/// environment (uwsgi, FastCGI, SCGI), or `None` when no line would be written.
pub fn for_env(env: &cgi_family::Env) -> Option<Pending> {
    let logs = default_logs();
    any_enabled(logs).then(|| Pending::new(logs.clone(), Record::from_env(env.iter())))
}

/// The access logs `--disable-logging`, `--logformat` and `--req-logger` ask for.
pub fn from_options(o: &crate::config::Options) -> anyhow::Result<Vec<AccessLog>> {
    if o.disable_logging {
        return Ok(Vec::new());
    }
    let format = match &o.logformat {
        Some(f) => Format::uwsgi(f).map_err(|e| anyhow::anyhow!("--logformat: {e}"))?,
        None => Format::uwsgi_style(),
    };
    Ok(vec![match o.req_logger.as_deref() {
        None | Some("stdio") => AccessLog::to_log(format),
        Some(spec) => {
            // uWSGI's logfile plugin: `file:PATH` or `file:logfile=PATH[,option=...]`.
            let path = spec
                .strip_prefix("file:")
                .map(|p| {
                    p.strip_prefix("logfile=")
                        .map_or(p, |p| p.split(',').next().unwrap_or(p))
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("--req-logger {spec}: only file:PATH and stdio are supported")
                })?;
            AccessLog::to_file(format, Path::new(path))
                .map_err(|e| anyhow::anyhow!("--req-logger {path}: {e}"))?
        }
    }])
}

/// For the fuzzer: parses `data` as both syntaxes and renders the formats that parse
/// with a sample record, checking that text without variables comes out as written.
///
/// # Panics
/// When that does not hold (a bug).
pub fn fuzz_format(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut r = Record::new("GET", "/a?b=c", "HTTP/1.1");
    r.remote = Some(IpAddr::from([127, 0, 0, 1]));
    r.headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("fuzz"),
    );
    if let Ok(f) = Format::nginx(text) {
        let _ = f.render(&r);
    }
    if let Ok(f) = Format::uwsgi(text) {
        let _ = f.render(&r);
    }
    let plain = text.replace(['$', '%'], "");
    let rendered = Format::nginx(&plain).map(|f| f.render(&r));
    assert_eq!(
        rendered.as_deref(),
        Ok(plain.as_str()),
        "plain text renders as written"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> Record {
        let mut r = Record::new("GET", "/a/b?x=1&y=2", "HTTP/1.1");
        r.remote = Some("10.0.0.7".parse().unwrap());
        r.headers
            .insert(http::header::HOST, "Example.COM:8080".parse().unwrap());
        r.headers
            .append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        r.headers
            .append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        r.headers
            .insert("user-agent", "a \"q\" \\ é".parse().unwrap());
        r.status = 404;
        r.sent = 153;
        r
    }

    #[test]
    fn nginx_variables() {
        let f = Format::nginx(
            "$remote_addr $remote_user \"$request\" $status ${body_bytes_sent}B $uri $args $host \
             $http_x_forwarded_for $http_referer $upstream_addr $scheme $$ $ end $http_user_agent",
        )
        .unwrap();
        assert_eq!(
            f.render(&record()),
            "10.0.0.7 - \"GET /a/b?x=1&y=2 HTTP/1.1\" 404 153B /a/b x=1&y=2 example.com \
             1.1.1.1, 2.2.2.2 - - http $$ $ end a \\x22q\\x22 \\x5C \\xC3\\xA9"
        );
    }

    #[test]
    fn uwsgi_variables() {
        set_worker(3);
        let f = Format::uwsgi(
            "%(addr) %(method) %(uri) %(proto) %(status) %(size) %(wid) %(host) %(var.HTTP_X_FORWARDED_FOR) %(cl)",
        )
        .unwrap();
        assert_eq!(
            f.render(&record()),
            "10.0.0.7 GET /a/b?x=1&y=2 HTTP/1.1 404 153 3 example.com 1.1.1.1, 2.2.2.2 -"
        );
        assert_eq!(Format::uwsgi("combined").unwrap(), Format::combined());
        let line = Format::uwsgi_style().render(&record());
        assert!(
            line.contains("|worker: 3|")
                && line
                    .ends_with("GET /a/b?x=1&y=2 => generated 153 bytes in 0 msecs (HTTP/1.1 404)"),
            "{line}"
        );
    }

    #[test]
    fn bad_formats_are_errors() {
        assert_eq!(
            Format::nginx("$remote_addr $nope"),
            Err(FormatError::UnknownVariable("nope".into()))
        );
        assert!(matches!(
            Format::nginx("${status"),
            Err(FormatError::Unclosed(_))
        ));
        assert_eq!(
            Format::uwsgi("%(addr) %(vszM)"),
            Err(FormatError::UnknownVariable("vszM".into()))
        );
        assert!(matches!(
            Format::uwsgi("%(addr"),
            Err(FormatError::Unclosed(_))
        ));
    }

    #[test]
    fn records_from_a_cgi_environment() {
        let env: Vec<(&[u8], &[u8])> = vec![
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/f?q"),
            (b"SERVER_PROTOCOL", b"HTTP/1.0"),
            (b"REMOTE_ADDR", b"::1"),
            (b"HTTP_USER_AGENT", b"curl/8"),
            (b"HTTP_X_FORWARDED_FOR", b"9.9.9.9"),
            (b"HTTPS", b"on"),
        ];
        let r = Record::from_env(env);
        let f =
            Format::nginx("$remote_addr|$request|$http_user_agent|$http_x_forwarded_for|$scheme")
                .unwrap();
        assert_eq!(f.render(&r), "::1|POST /f?q HTTP/1.0|curl/8|9.9.9.9|https");
    }

    proptest! {
        /// The clock's fields agree with an HTTP date of the same instant.
        #[test]
        fn clock_agrees_with_http_dates(secs in 0u64..8_000_000_000) {
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            // "Sun, 29 Nov 2026 19:00:00 GMT"
            let http = httpdate::fmt_http_date(t);
            let w: Vec<&str> = http.split([' ', ',']).filter(|s| !s.is_empty()).collect();
            let ctime = clock(t, &Var::Ctime);
            let c: Vec<&str> = ctime.split_whitespace().collect();
            prop_assert_eq!(c[0], w[0]);
            prop_assert_eq!(c[1], w[2]);
            prop_assert_eq!(c[2].parse::<u32>().unwrap(), w[1].parse::<u32>().unwrap());
            prop_assert_eq!(c[3], w[4]);
            prop_assert_eq!(c[4], w[3]);
            let local = clock(t, &Var::TimeLocal);
            prop_assert_eq!(local, format!("{}/{}/{}:{} +0000", w[1], w[2], w[3], w[4]));
        }

        /// Any template parses or is refused without a panic; text without variables
        /// renders as written.
        #[test]
        fn any_template_is_safe(t in ".{0,80}") {
            let r = record();
            if let Ok(f) = Format::nginx(&t) { let _ = f.render(&r); }
            if let Ok(f) = Format::uwsgi(&t) { let _ = f.render(&r); }
            let plain = t.replace(['$', '%'], "");
            prop_assert_eq!(Format::nginx(&plain).unwrap().render(&r), plain.as_str());
            if !matches!(plain.as_str(), "combined" | "uwsgi" | "default") {
                prop_assert_eq!(Format::uwsgi(&plain).unwrap().render(&r), plain.as_str());
            }
        }
    }
}
