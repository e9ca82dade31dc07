//! The whole Nginx + uWSGI + Django deployment in one command:
//!
//! ```sh
//! cargo run --release --example django_stack            # then open http://127.0.0.1:8000/
//! cargo run --release --example django_stack -- --port 9000
//! ```
//!
//! A front (what nginx does in the tutorials: static and media files, everything else over
//! the uwsgi protocol on a unix socket) and an app server (what uWSGI does: a master with
//! 2 worker processes of 2 threads running the bundled Django site), assembled from the
//! gateway's pieces. The first run creates a virtual environment under
//! `examples/django_stack/.venv`, installs `requirements.txt` into it, generates a secret
//! key, migrates the SQLite database, creates an `admin` user with a random password
//! (printed) and collects the static files; later runs start in seconds. The equivalent
//! `nginx.conf` site and `uwsgi.ini` are written to `examples/django_stack/run/`:
//! `gateway --nginx-conf run/nginx.conf --ini run/uwsgi.ini` runs the same stack.
//! Ctrl-C stops it gracefully.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn say(what: &str) {
    eprintln!("django_stack: {what}");
}

/// Runs a command, failing with its output if it fails.
fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    say(what);
    let out = cmd.output().with_context(|| format!("{what}: {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The one-time (and idempotent) preparation of the site; returns the admin password.
fn prepare(site: &Path) -> anyhow::Result<String> {
    let venv = site.join(".venv");
    let python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(site.join("requirements.txt"))?;
    let marker = venv.join(".installed-requirements");
    if !python.exists() {
        run(
            "creating the virtual environment .venv (first run only)",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        )?;
    }
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(requirements.as_str()) {
        // pip's own progress is shown (on stderr, where these messages go).
        say("installing requirements.txt into .venv with pip (first run only; about a minute)");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(site.join("requirements.txt"))
            .stdout(std::process::Stdio::from(
                std::io::stderr().as_fd().try_clone_to_owned()?,
            ))
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!("pip install failed ({status}): see its messages above");
        }
        std::fs::write(&marker, &requirements)?;
    }
    let key = site.join("secret_key.txt");
    if !key.exists() {
        say("generating a secret key in secret_key.txt (kept out of git)");
        std::fs::write(&key, random_hex(40)?)?;
    }
    let manage = |args: &[&str]| {
        let mut c = Command::new(&python);
        c.arg("manage.py").args(args).current_dir(site);
        c
    };
    let run_dir = site.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let password_file = run_dir.join("admin_password.txt");
    if !site.join("db.sqlite3").exists() {
        run(
            "migrating the SQLite database",
            &mut manage(&["migrate", "--noinput"]),
        )?;
        let password = random_hex(8)?;
        run(
            "creating the admin user",
            manage(&["createsuperuser", "--noinput"])
                .env("DJANGO_SUPERUSER_USERNAME", "admin")
                .env("DJANGO_SUPERUSER_EMAIL", "admin@example.com")
                .env("DJANGO_SUPERUSER_PASSWORD", &password),
        )?;
        std::fs::write(&password_file, &password)?;
    }
    if !site.join("staticfiles").exists() {
        run(
            "collecting the static files into staticfiles/",
            &mut manage(&["collectstatic", "--noinput"]),
        )?;
    }
    std::fs::create_dir_all(site.join("media"))?;
    Ok(std::fs::read_to_string(&password_file)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// The same stack as nginx and uWSGI users write it.
fn write_configs(site: &Path, port: u16, socket: &Path) -> anyhow::Result<()> {
    let d = site.display();
    let s = socket.display();
    std::fs::write(
        site.join("run/nginx.conf"),
        format!(
            "# The front, as an nginx site: `gateway --nginx-conf run/nginx.conf --ini run/uwsgi.ini`\n\
             upstream django {{ server unix:{s}; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    server_name localhost 127.0.0.1;\n    charset utf-8;\n\
             \x20   client_max_body_size 10M;\n    location /static/ {{ alias {d}/staticfiles/; }}\n\
             \x20   location /media/ {{ alias {d}/media/; }}\n\
             \x20   location / {{ uwsgi_pass django; include uwsgi_params; }}\n}}\n"
        ),
    )?;
    std::fs::write(
        site.join("run/uwsgi.ini"),
        format!(
            "; The app server, as a uWSGI ini file.\n[uwsgi]\nchdir = {d}\nmodule = mysite.wsgi\n\
             home = {d}/.venv\nmaster = true\nprocesses = 2\nthreads = 2\nsocket = {s}\n\
             chmod-socket = 660\nvacuum = true\nharakiri = 60\nmax-requests = 5000\n"
        ),
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut port: u16 = 8000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().context("--port needs a number")?.parse()?,
            other => bail!("unknown argument {other:?} (only --port N)"),
        }
    }
    let site: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("django_stack");
    let password = prepare(&site)?;
    let socket = site.join("run/app.sock");
    write_configs(&site, port, &socket)?;

    // The stack, piece by piece, as gateway options (the same as run/*.conf, *.ini):
    let d = site.display();
    let sock = format!("unix:{}", socket.display());
    let (options, _) = gateway::config::parse([
        "django_stack".to_owned(),
        // Front (nginx's job): HTTP, static and media files, the rest over uwsgi.
        format!("--http=127.0.0.1:{port}"),
        format!("--static-map=/static={d}/staticfiles"),
        format!("--static-map=/media={d}/media"),
        format!("--http-to={sock}"),
        // App server (uWSGI's job): a master, 2 workers x 2 threads, Django.
        format!("--socket={}", socket.display()),
        format!("--chdir={d}"),
        format!("--home={d}/.venv"),
        "--module=mysite.wsgi".to_owned(),
        "--master".to_owned(),
        "--processes=2".to_owned(),
        "--threads=2".to_owned(),
        "--chmod-socket=660".to_owned(),
        "--harakiri=60".to_owned(),
        "--vacuum".to_owned(),
    ])?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    say(&format!(
        "open http://127.0.0.1:{port}/  (admin: http://127.0.0.1:{port}/admin/ as admin / {password}); Ctrl-C stops"
    ));
    gateway::process::run_master(&options)
}
