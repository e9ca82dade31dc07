//! The command line, with uWSGI's option names and meaning.

use std::path::PathBuf;

use clap::Parser;

/// `gateway`: serves WSGI apps over HTTP, uwsgi, FastCGI and SCGI, configured with the
/// uWSGI options (and ini files) you already have. As with uWSGI (getopt), an unambiguous
/// prefix of a long option works (`--process 4` is `--processes 4`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(
    name = "gateway",
    version,
    infer_long_args = true,
    disable_help_subcommand = true,
    args_override_self = true
)]
pub struct Options {
    /// HTTP/1.1 front (serves the app and the static maps).
    #[arg(long, value_name = "ADDR")]
    pub http: Vec<String>,
    /// Make `--http` a front that passes requests over the uwsgi protocol to this backend
    /// (several: round robin), as uWSGI's HTTP router does.
    #[arg(long, value_name = "ADDR")]
    pub http_to: Vec<String>,
    /// Run the servers of an nginx configuration (a whole nginx.conf or a site file with
    /// `upstream` and `server` blocks) as the front.
    #[arg(long, value_name = "FILE")]
    pub nginx_conf: Option<PathBuf>,
    /// HTTP/1.1 straight to the workers.
    #[arg(long, value_name = "ADDR")]
    pub http_socket: Vec<String>,
    /// uwsgi protocol (what nginx's `uwsgi_pass` talks to).
    #[arg(long, short = 's', value_name = "ADDR")]
    pub socket: Vec<String>,
    /// FastCGI (what nginx's `fastcgi_pass` talks to).
    #[arg(long, value_name = "ADDR")]
    pub fastcgi_socket: Vec<String>,
    /// SCGI (what nginx's `scgi_pass` talks to).
    #[arg(long, value_name = "ADDR")]
    pub scgi_socket: Vec<String>,

    /// Load the WSGI app from this file.
    #[arg(long, visible_alias = "file", value_name = "FILE")]
    pub wsgi_file: Option<PathBuf>,
    /// The callable's name (default `application`).
    #[arg(long, value_name = "NAME")]
    pub callable: Option<String>,
    /// Load the WSGI app from a module: `pkg.mod` or `pkg.mod:callable`.
    #[arg(long, visible_alias = "wsgi", value_name = "MODULE")]
    pub module: Option<String>,
    /// chdir before loading the app.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// Add a directory to sys.path (several allowed).
    #[arg(long, visible_alias = "pp", value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,
    /// The virtualenv to import from.
    #[arg(long, short = 'H', visible_aliases = ["virtualenv", "venv", "pyhome"], value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE, several allowed).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Run a master process that supervises the workers (implied by --processes above 1,
    /// --harakiri, --max-requests, --reload-on-rss, --py-autoreload and --stats).
    #[arg(long, short = 'M')]
    pub master: bool,
    /// Worker processes.
    #[arg(long, short = 'p', visible_alias = "workers", value_name = "N")]
    pub processes: Option<usize>,
    /// Python threads per worker.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Recycle a worker after N requests.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Kill requests that run longer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub harakiri: Option<u64>,
    /// Recycle a worker whose resident memory passes this many MB.
    #[arg(long, value_name = "MB")]
    pub reload_on_rss: Option<u64>,
    /// Give the first `max-requests` recycle of worker N an extra N*DELTA requests, so
    /// workers do not recycle together.
    #[arg(long, value_name = "DELTA")]
    pub max_requests_delta: Option<u64>,
    /// Seconds a stopping or recycled worker may take to finish its requests.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub worker_reload_mercy: u64,
    /// Load the app in each worker instead of the master.
    #[arg(long)]
    pub lazy_apps: bool,
    /// Accepted for uWSGI compatibility (the gateway never has a thundering herd).
    #[arg(long)]
    pub thunder_lock: bool,
    /// Accepted for uWSGI compatibility (Python threads are always enabled).
    #[arg(long)]
    pub enable_threads: bool,
    /// Bind each worker to N cores, taken in turn as uWSGI does (0: never bind). Without
    /// it, a worker that runs Python is bound to one core when the workers cannot have two
    /// cores each.
    #[arg(long, value_name = "N")]
    pub cpu_affinity: Option<usize>,

    /// The largest uwsgi vars block accepted (default 65535, the protocol's maximum).
    #[arg(long, short = 'b', value_name = "BYTES", default_value_t = 65535)]
    pub buffer_size: usize,
    /// The largest request body accepted (413 above it).
    #[arg(long, value_name = "BYTES")]
    pub limit_post: Option<u64>,
    /// HTTP bodies with a Content-Length up to this size are read whole before the app is
    /// called, so slow uploads never hold a Python thread (uWSGI's default is 0).
    #[arg(long, value_name = "BYTES", default_value_t = wsgi_host::DEFAULT_POST_BUFFERING)]
    pub post_buffering: u64,
    /// How many requests whose body --post-buffering read may wait for a Python thread at
    /// a time; further uploads wait with their body left in the socket, as with uWSGI
    /// (default 4 per thread plus 4; 0: no bound).
    #[arg(long, value_name = "N")]
    pub post_read_ahead: Option<usize>,
    /// Seconds a peer may take to send a whole request head, and an HTTP client to start its
    /// next request on a kept-alive connection (slowloris).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub socket_timeout: u64,
    /// Serve a directory at a URL prefix: /url=DIR (several allowed).
    #[arg(long, value_name = "/URL=DIR")]
    pub static_map: Vec<String>,
    /// chmod unix sockets (default 666 when given without a value).
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "666", require_equals = true)]
    pub chmod_socket: Option<String>,
    /// Remove unix sockets and the pid file on exit.
    #[arg(long)]
    pub vacuum: bool,
    /// Write the master's pid here.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Log to this file.
    #[arg(long, value_name = "FILE")]
    pub logto: Option<PathBuf>,
    /// Detach and log to this file.
    #[arg(long, value_name = "FILE")]
    pub daemonize: Option<PathBuf>,
    /// Drop to this user after binding.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,
    /// Drop to this group after binding.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,
    /// Reload when an imported module's file changes (check every N seconds).
    #[arg(long, value_name = "N")]
    pub py_autoreload: Option<u64>,
    /// Stats server address: every connection gets a JSON document (master, workers).
    #[arg(long, value_name = "ADDR")]
    pub stats: Option<String>,
    /// Prefix the stats server's JSON with an HTTP response head (for curl and browsers).
    #[arg(long)]
    pub stats_http: bool,
    /// Read options from the `[uwsgi]` section of an ini file (several allowed).
    #[arg(long, value_name = "FILE")]
    pub ini: Vec<PathBuf>,
    /// Disable the access log.
    #[arg(long)]
    pub disable_logging: bool,
    /// The access log's line: uWSGI's `%(var)` syntax, or `combined` (nginx's), or
    /// `uwsgi` (the default, uWSGI's style).
    #[arg(long, visible_alias = "log-format", value_name = "FORMAT")]
    pub logformat: Option<String>,
    /// Where access-log lines go: `file:PATH` or `file:logfile=PATH` (appended), or
    /// `stdio` (the server's log, the default).
    #[arg(long, visible_alias = "logger-req", value_name = "file:PATH")]
    pub req_logger: Option<String>,
}
