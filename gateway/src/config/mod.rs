//! Configuration: uWSGI's command line and ini files (nginx site configs come later).

pub mod cli;
pub mod ini;
pub mod nginx;

use clap::{ArgAction, CommandFactory, Parser};

pub use cli::Options;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The command line is wrong (unknown option, bad value...); the message says which.
    #[error("{0}")]
    Args(String),
    /// An ini file cannot be read.
    #[error(transparent)]
    Ini(#[from] ini::IniError),
}

struct Known {
    /// (long name or alias, canonical long name, is a flag)
    names: Vec<(String, String, bool)>,
}

impl Known {
    fn new() -> Self {
        let cmd = Options::command();
        let mut names = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = matches!(arg.get_action(), ArgAction::SetTrue);
            names.push((long.to_owned(), long.to_owned(), flag));
            for alias in arg.get_all_aliases().unwrap_or_default() {
                names.push((alias.to_owned(), long.to_owned(), flag));
            }
        }
        Self { names }
    }

    /// The option a key names: exact, else an unambiguous prefix (with a note), else none.
    fn resolve(&self, key: &str) -> Result<(&str, bool, bool), Vec<&str>> {
        if let Some((_, long, flag)) = self.names.iter().find(|(n, _, _)| n == key) {
            return Ok((long, *flag, false));
        }
        let mut matches: Vec<&(String, String, bool)> = self
            .names
            .iter()
            .filter(|(n, _, _)| n.starts_with(key))
            .collect();
        matches.dedup_by(|a, b| a.1 == b.1);
        match matches.as_slice() {
            [(_, long, flag)] => Ok((long, *flag, true)),
            [] => Err(Vec::new()),
            many => Err(many.iter().map(|(n, _, _)| n.as_str()).collect()),
        }
    }

    fn nearest(&self, key: &str) -> Option<&str> {
        self.names
            .iter()
            .map(|(n, _, _)| (strsim::jaro_winkler(n, key), n.as_str()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(similarity, _)| *similarity >= 0.8)
            .map(|(_, n)| n)
    }
}

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" | "y" | "t" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// Turns the `[uwsgi]` entries of an ini file into command-line arguments, with a warning
/// for each key read as a prefix of an option and each key that is not an option (uWSGI
/// ignores those silently, so a tutorial's `process = 4` gives one worker there).
fn ini_args(
    path: &std::path::Path,
    known: &Known,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let mut args = Vec::new();
    for e in ini::read_ini(path, None)? {
        let key = e.key.replace('_', "-");
        let at = format!("{}:{}", path.display(), e.line);
        match known.resolve(&key) {
            Ok((long, flag, prefix)) => {
                if prefix {
                    warnings.push(format!("{at}: `{}` read as `{long}`", e.key));
                }
                if long == "ini" {
                    warnings.push(format!("{at}: nested ini files are not read"));
                    continue;
                }
                if flag {
                    match truthy(&e.value) {
                        Some(true) => args.push(format!("--{long}")),
                        Some(false) => {}
                        None => warnings.push(format!(
                            "{at}: `{}` takes true or false, not {:?}",
                            e.key, e.value
                        )),
                    }
                } else {
                    args.push(format!("--{long}={}", e.value));
                }
            }
            Err(ambiguous) if !ambiguous.is_empty() => warnings.push(format!(
                "{at}: `{}` is ambiguous ({}), ignored",
                e.key,
                ambiguous.join(", ")
            )),
            Err(_) => warnings.push(match known.nearest(&key) {
                Some(n) => format!(
                    "{at}: unknown option `{}` ignored (did you mean `{n}`?)",
                    e.key
                ),
                None => format!("{at}: unknown option `{}` ignored", e.key),
            }),
        }
    }
    Ok(args)
}

/// Parses the command line (`args` includes the program name); `--ini FILE` options are
/// replaced in place by the file's options, so later options override earlier ones as
/// with uWSGI. Returns the options and the warnings to log.
///
/// ```
/// let (opts, warnings) = gateway::config::parse(["gateway", "--http", ":9001", "--wsgi-file", "app.py", "--process", "4"])?;
/// assert_eq!(opts.processes, Some(4)); // an unambiguous prefix, as with uWSGI's getopt
/// assert!(warnings.is_empty());
/// # Ok::<(), gateway::config::ConfigError>(())
/// ```
pub fn parse<I, S>(args: I) -> Result<(Options, Vec<String>), ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let known = Known::new();
    let mut warnings = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut it = args.into_iter().map(Into::into).peekable();
    if let Some(prog) = it.next() {
        out.push(prog);
    }
    while let Some(arg) = it.next() {
        if arg == "--ini" {
            let Some(path) = it.next() else {
                return Err(ConfigError::Args("--ini needs a file".into()));
            };
            out.extend(ini_args(
                std::path::Path::new(&path),
                &known,
                &mut warnings,
            )?);
        } else if let Some(path) = arg.strip_prefix("--ini=") {
            out.extend(ini_args(std::path::Path::new(path), &known, &mut warnings)?);
        } else if !arg.starts_with('-')
            && arg.ends_with(".ini")
            && out.len() == 1
            && it.peek().is_none()
        {
            // `uwsgi app.ini` runs an ini file too.
            out.extend(ini_args(std::path::Path::new(&arg), &known, &mut warnings)?);
        } else {
            out.push(arg);
        }
    }
    let mut opts = Options::try_parse_from(out).map_err(|e| ConfigError::Args(e.to_string()))?;
    nginx_main(&mut opts, &mut warnings);
    Ok((opts, warnings))
}

/// An nginx.conf's main context, for what the command line did not say: `worker_processes`
/// (`--processes`; `auto` is one per core), `worker_cpu_affinity auto` (`--cpu-affinity 1`),
/// `pid` (`--pidfile`), `user USER [GROUP]`
/// (`--uid`/`--gid`) and `error_log FILE` (`--logto`; `stderr` keeps the log there).
/// A file that cannot be read is reported later, with the rest of the site.
fn nginx_main(o: &mut Options, warnings: &mut Vec<String>) {
    let Some(path) = &o.nginx_conf else { return };
    let Ok(tree) = nginx::load(path, None) else {
        return;
    };
    for d in &tree {
        let arg = d.args.first().map(String::as_str);
        match (d.name.as_str(), arg) {
            ("worker_processes", Some(n)) if o.processes.is_none() => {
                let n = match n {
                    "auto" => std::thread::available_parallelism().map_or(1, usize::from),
                    n => match n.parse() {
                        Ok(n) => n,
                        Err(_) => {
                            warnings.push(format!("{}: invalid worker_processes \"{n}\"", d.at()));
                            continue;
                        }
                    },
                };
                o.processes = Some(n);
            }
            ("worker_cpu_affinity", Some(a)) if o.cpu_affinity.is_none() => {
                if a == "auto" && d.args.len() == 1 {
                    o.cpu_affinity = Some(1);
                } else {
                    warnings.push(format!(
                        "{}: worker_cpu_affinity with CPU masks is not supported (ignored): \
                         \"auto\" is, or --cpu-affinity N",
                        d.at()
                    ));
                }
            }
            ("pid", Some(p)) if o.pidfile.is_none() && p != "off" => o.pidfile = Some(p.into()),
            ("user", Some(u)) if o.uid.is_none() => {
                o.uid = Some(u.to_owned());
                if o.gid.is_none() {
                    o.gid = Some(d.args.get(1).cloned().unwrap_or_else(|| u.to_owned()));
                }
            }
            ("error_log", Some(f))
                if o.logto.is_none()
                    && !matches!(f, "stderr" | "/dev/stderr")
                    && !f.starts_with("syslog:") =>
            {
                o.logto = Some(f.into());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_command_lines() {
        let (o, _) = parse([
            "gateway",
            "--http",
            ":9005",
            "--chdir",
            "/srv",
            "--wsgi-file",
            "proj/wsgi.py",
            "--master",
            "--process",
            "4",
            "--threads",
            "2",
            "--static-map",
            "/static=/srv/static",
        ])
        .unwrap();
        assert_eq!((o.processes, o.threads, o.master), (Some(4), Some(2), true));
        assert_eq!(o.static_map, ["/static=/srv/static"]);
        let (o, _) = parse([
            "gateway",
            "--socket",
            "mysite.sock",
            "--module",
            "mysite.wsgi",
            "--chmod-socket=664",
        ])
        .unwrap();
        assert_eq!(o.chmod_socket.as_deref(), Some("664"));
        let (o, _) = parse([
            "gateway",
            "-s",
            ":8001",
            "--wsgi-file",
            "test.py",
            "--chmod-socket",
        ])
        .unwrap();
        assert_eq!(
            (o.socket.as_slice(), o.chmod_socket.as_deref()),
            (&[":8001".to_owned()][..], Some("666"))
        );
    }

    #[test]
    fn unknown_options_are_errors_naming_them() {
        let err = parse(["gateway", "--htpp", ":9000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--htpp"), "{err}");
    }

    #[test]
    fn ini_files_with_prefixes_unknown_keys_and_references() {
        let dir = std::env::temp_dir().join(format!("gw-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("django.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nproject = mysite\nchdir = %d\nmodule = %(project).wsgi:application\nmaster = true\n\
             process = 4\nthreads = 2\nsocket = /tmp/%n.sock\nsocket = :9009\nchmod-socket = 666\nvacuum = true\n\
             harakiri_typo = 30\nenable-threads\n",
        )
        .unwrap();
        let (o, warnings) = parse([
            "gateway".to_owned(),
            "--ini".to_owned(),
            ini.display().to_string(),
            "--threads".to_owned(),
            "8".to_owned(),
        ])
        .unwrap();
        assert_eq!(o.module.as_deref(), Some("mysite.wsgi:application"));
        assert_eq!(
            o.chdir.as_deref(),
            Some(std::path::Path::new(&format!("{}/", dir.display())))
        );
        assert_eq!(o.processes, Some(4));
        assert_eq!(o.threads, Some(8), "the command line after --ini wins");
        assert_eq!(o.socket, ["/tmp/django.sock", ":9009"]);
        assert!(o.master && o.vacuum && o.enable_threads);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(":6: `process` read as `processes`")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains(
                ":12: unknown option `harakiri_typo` ignored (did you mean `harakiri`?)"
            )),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("`project`")),
            "project is not an option: {warnings:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn post_read_ahead_is_its_own_option() {
        let (o, _) = parse([
            "gateway",
            "--http-socket",
            ":9000",
            "--post-buffering",
            "4096",
        ])
        .unwrap();
        assert_eq!((o.post_buffering, o.post_read_ahead), (4096, None));
        let (o, _) = parse([
            "gateway",
            "--http-socket",
            ":9000",
            "--post-read-ahead",
            "0",
        ])
        .unwrap();
        assert_eq!(
            (o.post_buffering, o.post_read_ahead),
            (wsgi_host::DEFAULT_POST_BUFFERING, Some(0))
        );
    }

    #[test]
    fn cpu_affinity_from_the_command_line_an_ini_file_and_nginx_conf() {
        let dir = std::env::temp_dir().join(format!("gw-affinity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (o, _) = parse(["gateway", "--http-socket", ":9000", "--cpu-affinity", "2"]).unwrap();
        assert_eq!(o.cpu_affinity, Some(2));
        let ini = dir.join("app.ini");
        std::fs::write(&ini, "[uwsgi]\nhttp-socket = :9000\ncpu-affinity = 1\n").unwrap();
        let (o, _) = parse(["gateway", "--ini", ini.to_str().unwrap()]).unwrap();
        assert_eq!(o.cpu_affinity, Some(1));

        let conf = dir.join("nginx.conf");
        let site = "http { server { listen 127.0.0.1:9000; return 200; } }\n";
        std::fs::write(
            &conf,
            format!("worker_processes 2;\nworker_cpu_affinity auto;\n{site}"),
        )
        .unwrap();
        let (o, warnings) = parse(["gateway", "--nginx-conf", conf.to_str().unwrap()]).unwrap();
        assert_eq!(
            (o.processes, o.cpu_affinity),
            (Some(2), Some(1)),
            "{warnings:?}"
        );
        // The command line wins.
        let args = [
            "gateway",
            "--nginx-conf",
            conf.to_str().unwrap(),
            "--cpu-affinity",
            "0",
        ];
        let (o, _) = parse(args).unwrap();
        assert_eq!(o.cpu_affinity, Some(0));
        // Masks: a warning naming the line, not a binding.
        std::fs::write(
            &conf,
            format!("worker_processes 2;\nworker_cpu_affinity 01 10;\n{site}"),
        )
        .unwrap();
        let (o, warnings) = parse(["gateway", "--nginx-conf", conf.to_str().unwrap()]).unwrap();
        assert_eq!(o.cpu_affinity, None);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("nginx.conf:2: worker_cpu_affinity with CPU masks")),
            "{warnings:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
