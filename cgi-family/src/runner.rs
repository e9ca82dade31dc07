//! Running a CGI script per request (RFC 3875): env in, body on stdin, response on
//! stdout, stderr to the log; a timeout; the script is killed when the client goes away.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{Instant, timeout_at};

use crate::{CgiResponse, Env, HeadOptions, ResponseError, ResponseHeadDecoder};

/// Why a script run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The script could not be started.
    #[error("cannot start CGI script {path}")]
    Spawn {
        /// The script.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the script's output failed.
    #[error("reading the CGI script's output failed")]
    Io(#[from] std::io::Error),
    /// The script's response head is malformed.
    #[error("the CGI script sent a malformed response head")]
    BadHead(#[from] ResponseError),
    /// The script ended without sending a whole response head.
    #[error("the CGI script exited ({status}) without a response head")]
    NoHead {
        /// How it exited.
        status: ExitStatus,
    },
    /// The script ran past its time limit and was killed.
    #[error("the CGI script ran past {limit:?} and was killed")]
    Timeout {
        /// The limit.
        limit: Duration,
    },
}

/// A CGI script and how to run it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cgi_family::{CgiScript, Env};
/// let env: Env = [("REQUEST_METHOD", "GET"), ("QUERY_STRING", "")].into_iter().collect();
/// let mut out = CgiScript::new("/usr/lib/cgi-bin/hello.sh").run(&env, tokio::io::empty()).await?;
/// println!("{} {:?}", out.response.status, out.response.headers);
/// while let Some(chunk) = out.body.chunk().await? {
///     print!("{}", String::from_utf8_lossy(&chunk));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CgiScript {
    program: PathBuf,
    dir: Option<PathBuf>,
    timeout: Duration,
    head: HeadOptions,
}

/// A running script's answer: the parsed head and the body still streaming.
#[derive(Debug)]
pub struct CgiOutput {
    /// The response head.
    pub response: CgiResponse,
    /// The response body.
    pub body: CgiBody,
}

/// The rest of a script's stdout. Dropping it kills the script (the client went away).
#[derive(Debug)]
pub struct CgiBody {
    child: Child,
    stdout: ChildStdout,
    pending: Option<Bytes>,
    deadline: Instant,
    limit: Duration,
    done: bool,
}

impl CgiScript {
    /// A script at `program`, 60 s time limit, 64 KiB head limit.
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_path_buf(),
            dir: None,
            timeout: Duration::from_secs(60),
            head: HeadOptions::default(),
        }
    }

    /// The time limit for the whole run (head and body).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// The working directory (default: the script's directory, as Apache does).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Head parsing options.
    pub fn head_options(mut self, opts: HeadOptions) -> Self {
        self.head = opts;
        self
    }

    /// Starts the script with exactly `env` (plus `PATH`, when `env` has none) and
    /// `body` on stdin, and waits for its response head.
    pub async fn run<R>(&self, env: &Env, body: R) -> Result<CgiOutput, RunError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let deadline = Instant::now() + self.timeout;
        let mut cmd = Command::new(&self.program);
        cmd.env_clear();
        if !env.contains("PATH") {
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
        }
        for (k, v) in env.iter() {
            if !k.is_empty() && !k.contains(&b'=') && !k.contains(&0) && !v.contains(&0) {
                cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
            }
        }
        let dir = self
            .dir
            .clone()
            .or_else(|| self.program.parent().map(Path::to_path_buf))
            .filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            path: self.program.clone(),
            source,
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RunError::Io(std::io::Error::other("missing child pipes")));
        };
        // Feed the body concurrently, so a script that answers before reading all of it
        // cannot deadlock against us; a script that closes stdin early just ends it.
        tokio::spawn(async move {
            let mut body = body;
            let _ = tokio::io::copy(&mut body, &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
        let script = self.program.display().to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(target: "cgi", script = %script, "{line}");
            }
        });

        let mut buf = BytesMut::with_capacity(4096);
        let mut head = ResponseHeadDecoder::new(self.head);
        let limit = self.timeout;
        loop {
            if let Some((response, used)) = head.decode(&buf)? {
                let _ = buf.split_to(used);
                let pending = (!buf.is_empty()).then(|| buf.freeze());
                return Ok(CgiOutput {
                    response,
                    body: CgiBody {
                        child,
                        stdout,
                        pending,
                        deadline,
                        limit,
                        done: false,
                    },
                });
            }
            buf.reserve(4096);
            let read = timeout_at(deadline, stdout.read_buf(&mut buf)).await;
            match read {
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(RunError::Timeout { limit });
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => {
                    let status = child.wait().await?;
                    return Err(RunError::NoHead { status });
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

impl CgiBody {
    /// The next piece of the body; `Ok(None)` once the script closed stdout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, RunError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        if self.done {
            return Ok(None);
        }
        let mut buf = BytesMut::with_capacity(16 * 1024);
        match timeout_at(self.deadline, self.stdout.read_buf(&mut buf)).await {
            Err(_) => {
                let _ = self.child.kill().await;
                self.done = true;
                Err(RunError::Timeout { limit: self.limit })
            }
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(0)) => {
                self.done = true;
                Ok(None)
            }
            Ok(Ok(_)) => Ok(Some(buf.freeze())),
        }
    }

    /// Waits for the script to exit (after the body was read) and returns its status.
    pub async fn wait(mut self) -> Result<ExitStatus, RunError> {
        Ok(self.child.wait().await?)
    }

    /// The script's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
