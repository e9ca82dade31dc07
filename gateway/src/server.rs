//! Putting the pieces together for the binary.

use std::sync::Arc;

use anyhow::{Context, bail};
use uwsgi_proto::Limits;
use wsgi_host::{AppSpec, HostOptions, WsgiHost, WsgiService};

use crate::config::Options;
use crate::handler::{StaticFiles, StaticMap};
use crate::listen::http::HttpApp;
use crate::listen::{self, ListenAddr, Listener};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http,
    Uwsgi,
    FastCgi,
    Scgi,
}

fn app_spec(o: &Options) -> anyhow::Result<AppSpec> {
    let mut spec = AppSpec {
        wsgi_file: o.wsgi_file.clone(),
        module: o.module.clone(),
        callable: o.callable.clone(),
        chdir: o.chdir.clone(),
        pythonpath: o.pythonpath.clone(),
        home: o.home.clone(),
        env: Vec::new(),
    };
    for kv in &o.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected KEY=VALUE");
        };
        spec.env.push((k.to_owned(), v.to_owned()));
    }
    Ok(spec)
}

/// Options this version parses but does not act on yet: said at start-up, never silently
/// ignored.
fn not_yet(o: &Options) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut say = |on: bool, name: &'static str| {
        if on {
            v.push(name);
        }
    };
    say(
        o.processes.is_some_and(|p| p > 1),
        "--processes above 1 (one process serves, with --threads threads)",
    );
    say(o.max_requests.is_some(), "--max-requests");
    say(o.harakiri.is_some(), "--harakiri");
    say(o.reload_on_rss.is_some(), "--reload-on-rss");
    say(o.lazy_apps, "--lazy-apps");
    say(o.daemonize.is_some(), "--daemonize");
    say(o.uid.is_some() || o.gid.is_some(), "--uid/--gid");
    say(o.py_autoreload.is_some_and(|n| n > 0), "--py-autoreload");
    say(o.stats.is_some(), "--stats");
    v
}

/// Loads the app, binds every listener, and serves until SIGINT/SIGTERM.
pub async fn run(o: Options) -> anyhow::Result<()> {
    for name in not_yet(&o) {
        tracing::warn!("{name} is accepted but not implemented by this version yet");
    }
    let mut addrs = Vec::new();
    for (list, proto) in [
        (&o.http, Proto::Http),
        (&o.http_socket, Proto::Http),
        (&o.socket, Proto::Uwsgi),
        (&o.fastcgi_socket, Proto::FastCgi),
        (&o.scgi_socket, Proto::Scgi),
    ] {
        for a in list {
            addrs.push((ListenAddr::parse(a)?, proto));
        }
    }
    if addrs.is_empty() {
        bail!(
            "nothing to serve: give --http, --http-socket, --socket, --fastcgi-socket or --scgi-socket"
        );
    }
    // Bind first (clear errors before the app loads), then load the app.
    let mut listeners = Vec::new();
    for (addr, proto) in &addrs {
        let l = listen::bind(addr, o.chmod_socket.as_deref())
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!("{proto:?} listening on {addr}");
        listeners.push((l, *proto));
    }
    let spec = app_spec(&o)?;
    let host = tokio::task::spawn_blocking(move || {
        WsgiHost::start(
            &spec,
            HostOptions {
                threads: o.threads.unwrap_or(1).max(1),
                multiprocess: o.processes.unwrap_or(1) > 1,
                ..HostOptions::default()
            },
        )
    })
    .await??;
    tracing::info!("WSGI app ready");
    let limits = Limits::new()
        .max_block_size(o.buffer_size)
        .max_body(o.limit_post);
    let statics = o
        .static_map
        .iter()
        .map(|m| StaticMap::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let app = Arc::new(HttpApp {
        wsgi: WsgiService::new(host.clone()).post_buffering(o.post_buffering),
        statics: Arc::new(StaticFiles::new(statics)),
        limit_post: o.limit_post,
    });
    let settings = Settings {
        limits,
        buffer_size: o.buffer_size,
        limit_post: o.limit_post,
        head_timeout: std::time::Duration::from_secs(o.socket_timeout.max(1)),
    };
    let mut unix_paths = Vec::new();
    for (l, proto) in listeners {
        let (host, app) = (host.clone(), app.clone());
        if let Listener::Unix(_, p) = &l {
            unix_paths.push(p.clone());
        }
        tokio::spawn(async move {
            loop {
                let accepted = match &l {
                    Listener::Tcp(t) => t.accept().await.map(|(s, peer)| Conn::Tcp(s, peer)),
                    Listener::Unix(u, _) => u.accept().await.map(|(s, _)| Conn::Unix(s)),
                };
                let conn = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (host, app) = (host.clone(), app.clone());
                tokio::spawn(async move {
                    match conn {
                        Conn::Tcp(s, peer) => {
                            let _ = s.set_nodelay(true);
                            serve(s, Some(peer), proto, &settings, &host, &app).await;
                        }
                        Conn::Unix(s) => serve(s, None, proto, &settings, &host, &app).await,
                    }
                });
            }
        });
    }
    if let Some(pidfile) = &o.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pidfile.display()))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    if o.vacuum {
        for p in unix_paths {
            let _ = std::fs::remove_file(p);
        }
        if let Some(pidfile) = &o.pidfile {
            let _ = std::fs::remove_file(pidfile);
        }
    }
    Ok(())
}

/// What every connection of a listener is served with.
#[derive(Clone, Copy)]
struct Settings {
    limits: Limits,
    buffer_size: usize,
    limit_post: Option<u64>,
    head_timeout: std::time::Duration,
}

/// Serves one accepted connection (TCP or unix) with its listener's protocol.
async fn serve<S>(
    s: S,
    peer: Option<std::net::SocketAddr>,
    proto: Proto,
    c: &Settings,
    host: &WsgiHost,
    app: &HttpApp,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match proto {
        Proto::Http => listen::http::serve_connection(s, peer, app).await,
        Proto::Uwsgi => listen::uwsgi::serve_connection(s, c.limits, c.head_timeout, host).await,
        Proto::FastCgi => listen::fastcgi::serve_connection(s, c.limit_post, host).await,
        Proto::Scgi => {
            listen::scgi::serve_connection(s, c.buffer_size, c.limit_post, c.head_timeout, host)
                .await
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}
