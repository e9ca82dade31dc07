//! nginx's configuration syntax: directives and blocks, with `include` resolved as nginx
//! resolves it. This is the syntax layer; what the directives mean is read from the tree.
//!
//! ```
//! use gateway::config::nginx::parse_str;
//! let conf = parse_str(
//!     "upstream django { server 127.0.0.1:8001; }\n\
//!      server {\n  listen 8000;  # the front\n  location /static { alias \"/srv/my site/static\"; }\n}\n",
//!     "mysite_nginx.conf",
//! )?;
//! assert_eq!(conf[0].name, "upstream");
//! assert_eq!(conf[0].args, ["django"]);
//! let location = &conf[1].block.as_ref().unwrap()[1];
//! assert_eq!((location.name.as_str(), location.line), ("location", 4));
//! assert_eq!(location.block.as_ref().unwrap()[0].args, ["/srv/my site/static"]);
//! # Ok::<(), gateway::config::nginx::NginxError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The directive's name.
    pub name: String,
    /// Its arguments, unquoted (variables such as `$uri` are kept as written).
    pub args: Vec<String>,
    /// The block's directives, for a block directive.
    pub block: Option<Vec<Self>>,
    /// The file it was read from.
    pub file: Arc<PathBuf>,
    /// Its 1-based line.
    pub line: usize,
}

impl Directive {
    /// `file:line`, for messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A configuration that cannot be read, with nginx's wording, file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} in {}:{line}", file.display())]
pub struct NginxError {
    /// What is wrong.
    pub message: String,
    /// The file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    file: &'a Path,
}

impl Lexer<'_> {
    fn err(&self, message: impl Into<String>) -> NginxError {
        NginxError {
            message: message.into(),
            file: self.file.to_path_buf(),
            line: self.line,
        }
    }

    /// The next token and the line it starts on; `None` at the end.
    fn next(&mut self) -> Result<Option<(Token, usize)>, NginxError> {
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Ok(None);
            };
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'#' => {
                    while self.src.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let line = self.line;
        let b = self.src[self.pos];
        let token = match b {
            b';' => {
                self.pos += 1;
                Token::Semicolon
            }
            b'{' => {
                self.pos += 1;
                Token::Open
            }
            b'}' => {
                self.pos += 1;
                Token::Close
            }
            b'"' | b'\'' => Token::Word(self.quoted(b)?),
            _ => Token::Word(self.word()),
        };
        Ok(Some((token, line)))
    }

    fn quoted(&mut self, quote: u8) -> Result<String, NginxError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.err("unexpected end of file, expecting closing quote"));
            };
            self.pos += 1;
            match b {
                b if b == quote => break,
                b'\\' => match self.src.get(self.pos) {
                    Some(&c) if c == quote || c == b'\\' => {
                        out.push(c);
                        self.pos += 1;
                    }
                    Some(b'n') => {
                        out.push(b'\n');
                        self.pos += 1;
                    }
                    Some(b't') => {
                        out.push(b'\t');
                        self.pos += 1;
                    }
                    Some(b'r') => {
                        out.push(b'\r');
                        self.pos += 1;
                    }
                    _ => out.push(b'\\'),
                },
                b'\n' => {
                    self.line += 1;
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
        // nginx requires a separator after a closing quote.
        if let Some(&c) = self.src.get(self.pos) {
            if !matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}') {
                return Err(self.err(format!("unexpected \"{}\"", String::from_utf8_lossy(&[c]))));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        let mut braces = 0usize;
        while let Some(&c) = self.src.get(self.pos) {
            match c {
                // `${var}` keeps its braces inside a word.
                b'{' if self.pos > start && self.src[self.pos - 1] == b'$' => braces += 1,
                b'}' if braces > 0 => braces -= 1,
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' => break,
                b'\\' if self.pos + 1 < self.src.len() => self.pos += 1,
                _ => {}
            }
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.src[start..self.pos]).into_owned()
    }
}

/// Parses configuration text (no `include` resolution); `file` names it in errors.
pub fn parse_str(text: &str, file: impl AsRef<Path>) -> Result<Vec<Directive>, NginxError> {
    let file = file.as_ref();
    let shared = Arc::new(file.to_path_buf());
    let mut lexer = Lexer {
        src: text.as_bytes(),
        pos: 0,
        line: 1,
        file,
    };
    let (list, end) = parse_block(&mut lexer, &shared, 0)?;
    match end {
        None => Ok(list),
        Some(line) => Err(NginxError {
            message: "unexpected \"}\"".into(),
            file: file.to_path_buf(),
            line,
        }),
    }
}

/// Reads directives up to the end of the input (`None`) or a `}` (its line).
fn parse_block(
    lx: &mut Lexer<'_>,
    file: &Arc<PathBuf>,
    depth: usize,
) -> Result<(Vec<Directive>, Option<usize>), NginxError> {
    if depth > 64 {
        return Err(lx.err("blocks nested too deeply"));
    }
    let mut out = Vec::new();
    loop {
        let Some((token, line)) = lx.next()? else {
            return if depth == 0 {
                Ok((out, None))
            } else {
                Err(lx.err("unexpected end of file, expecting \"}\""))
            };
        };
        let name = match token {
            Token::Word(w) => w,
            Token::Close if depth > 0 => return Ok((out, Some(line))),
            Token::Close => return Ok((out, Some(line))),
            Token::Semicolon => return Err(lx.err("unexpected \";\"")),
            Token::Open => return Err(lx.err("unexpected \"{\"")),
        };
        let mut args = Vec::new();
        loop {
            match lx.next()? {
                None => {
                    return Err(lx.err("unexpected end of file, expecting \";\" or \"}\""));
                }
                Some((Token::Word(w), _)) => args.push(w),
                Some((Token::Semicolon, _)) => {
                    out.push(Directive {
                        name,
                        args,
                        block: None,
                        file: file.clone(),
                        line,
                    });
                    break;
                }
                Some((Token::Open, _)) => {
                    let (block, end) = parse_block(lx, file, depth + 1)?;
                    if end.is_none() {
                        return Err(lx.err("unexpected end of file, expecting \"}\""));
                    }
                    out.push(Directive {
                        name,
                        args,
                        block: Some(block),
                        file: file.clone(),
                        line,
                    });
                    break;
                }
                Some((Token::Close, _)) => return Err(lx.err("unexpected \"}\"")),
            }
        }
    }
}

/// The stock files nginx users `include`, as Debian's nginx ships them, for machines
/// without nginx.
pub fn stock_file(name: &str) -> Option<&'static str> {
    match name {
        "uwsgi_params" => Some(include_str!("nginx/uwsgi_params")),
        "fastcgi_params" => Some(include_str!("nginx/fastcgi_params")),
        "scgi_params" => Some(include_str!("nginx/scgi_params")),
        "mime.types" => Some(include_str!("nginx/mime.types")),
        _ => None,
    }
}

/// Reads `path` and every file it `include`s (globs allowed), resolved as nginx does:
/// a relative path against the configuration prefix (`prefix`, by default the main
/// file's directory), then `/etc/nginx`, then the stock copies ([`stock_file`]).
pub fn load(path: &Path, prefix: Option<&Path>) -> Result<Vec<Directive>, NginxError> {
    let prefix = prefix
        .map(Path::to_path_buf)
        .or_else(|| path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| NginxError {
        message: format!("cannot read: {e}"),
        file: path.to_path_buf(),
        line: 0,
    })?;
    let tree = parse_str(&text, path)?;
    expand(tree, &prefix, 0)
}

fn expand(list: Vec<Directive>, prefix: &Path, depth: usize) -> Result<Vec<Directive>, NginxError> {
    let mut out = Vec::new();
    for mut d in list {
        if d.name == "include" {
            let err = |message: String| NginxError {
                message,
                file: d.file.to_path_buf(),
                line: d.line,
            };
            if depth > 16 {
                return Err(err("include nested too deeply".into()));
            }
            let [pattern] = d.args.as_slice() else {
                return Err(err(
                    "invalid number of arguments in \"include\" directive".into()
                ));
            };
            for (file, text) in resolve_include(pattern, prefix).map_err(err)? {
                let tree = parse_str(&text, &file)?;
                out.extend(expand(tree, prefix, depth + 1)?);
            }
            continue;
        }
        if let Some(block) = d.block.take() {
            d.block = Some(expand(block, prefix, depth)?);
        }
        out.push(d);
    }
    Ok(out)
}

fn resolve_include(pattern: &str, prefix: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let candidates: Vec<PathBuf> = if Path::new(pattern).is_absolute() {
        vec![PathBuf::from(pattern)]
    } else {
        vec![prefix.join(pattern), Path::new("/etc/nginx").join(pattern)]
    };
    for c in &candidates {
        let text = c.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            let mut files: Vec<PathBuf> = glob_files(c)?;
            files.sort();
            if !files.is_empty() || c == &candidates[candidates.len() - 1] {
                // nginx: a glob that matches nothing is fine.
                return files
                    .into_iter()
                    .map(|f| {
                        std::fs::read_to_string(&f)
                            .map(|t| (f.clone(), t))
                            .map_err(|e| format!("cannot read {}: {e}", f.display()))
                    })
                    .collect();
            }
        } else if let Ok(t) = std::fs::read_to_string(c) {
            return Ok(vec![(c.clone(), t)]);
        }
    }
    match stock_file(pattern) {
        Some(t) => Ok(vec![(
            PathBuf::from(format!("(stock) {pattern}")),
            t.to_owned(),
        )]),
        None => Err(format!(
            "open() \"{}\" failed (No such file or directory)",
            candidates[0].display()
        )),
    }
}

/// The files matching a glob whose wildcards are in the last path component.
fn glob_files(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.to_string_lossy().contains(['*', '?', '[']) {
        return Err(format!(
            "wildcards only in the file name are supported: {}",
            pattern.display()
        ));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .filter(|e| e.path().is_file())
        .map(|e| e.path())
        .collect())
}

/// `*` and `?` matching (enough for `sites-enabled/*` and `conf.d/*.conf`).
fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    // Hidden files are not matched by `*`, as with the shell's glob.
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

impl fmt::Display for Directive {
    /// Writes the directive back in nginx syntax (every argument quoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", quote(&self.name))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        match &self.block {
            None => write!(f, ";"),
            Some(b) => {
                writeln!(f, " {{")?;
                for d in b {
                    writeln!(f, "{d}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The fuzz target's property: any text is a tree or an error, never a panic; a tree
/// written back and read again is the same tree.
pub fn fuzz_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tree) = parse_str(text, "fuzz") else {
        return;
    };
    let written: String = tree.iter().map(|d| format!("{d}\n")).collect();
    let back = parse_str(&written, "fuzz").expect("a written tree parses");
    assert_eq!(
        renumber(&back),
        renumber(&tree),
        "the tree changed when written back"
    );
}

/// The tree with every line number zeroed (to compare trees read from different text).
fn renumber(list: &[Directive]) -> Vec<Directive> {
    list.iter()
        .map(|d| Directive {
            line: 0,
            block: d.block.as_ref().map(|b| renumber(b)),
            ..d.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(list: &[Directive]) -> Vec<(String, Vec<String>, Option<usize>)> {
        list.iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.args.clone(),
                    d.block.as_ref().map(Vec::len),
                )
            })
            .collect()
    }

    #[test]
    fn the_uwsgi_tutorial_site() {
        let conf = "# mysite_nginx.conf\n\
            upstream django {\n    # server unix:///path/to/your/mysite/mysite.sock;\n    server 127.0.0.1:8001;\n}\n\
            server {\n    listen      8000;\n    server_name example.com;\n    charset     utf-8;\n\
                client_max_body_size 75M;\n    location /media  {\n        alias /path/to/your/mysite/media;\n    }\n\
                location / {\n        uwsgi_pass  django;\n        include     /path/to/your/mysite/uwsgi_params;\n    }\n}\n";
        let tree = parse_str(conf, "mysite_nginx.conf").unwrap();
        assert_eq!(
            shape(&tree),
            [
                ("upstream".into(), vec!["django".into()], Some(1)),
                ("server".into(), vec![], Some(6)),
            ]
        );
        let server = tree[1].block.as_ref().unwrap();
        assert_eq!(server[3].args, ["75M"]);
        assert_eq!((server[5].name.as_str(), server[5].line), ("location", 14));
        assert_eq!(tree[0].block.as_ref().unwrap()[0].line, 4);
    }

    #[test]
    fn quotes_variables_and_regexes() {
        let tree = parse_str(
            r#"log_format main '$remote_addr - "$request" ${status}x';
location ~* \.(css|js)$ { return 200 "a \"b\"\n"; }
rewrite ^/(.*)$ /x/$1 break;"#,
            "t.conf",
        )
        .unwrap();
        assert_eq!(
            tree[0].args,
            ["main", "$remote_addr - \"$request\" ${status}x"]
        );
        assert_eq!(tree[1].args, ["~*", "\\.(css|js)$"]);
        assert_eq!(
            tree[1].block.as_ref().unwrap()[0].args,
            ["200", "a \"b\"\n"]
        );
        assert_eq!(tree[2].args, ["^/(.*)$", "/x/$1", "break"]);
        let t = parse_str("set $a ${b}c;", "t").unwrap();
        assert_eq!(t[0].args, ["$a", "${b}c"]);
    }

    #[test]
    fn errors_say_what_and_where_as_nginx_does() {
        let e = parse_str("server {\n listen 80;\n", "a.conf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected end of file, expecting \"}\" in a.conf:3"
        );
        let e = parse_str("listen 80;\n}\n", "a.conf").unwrap_err();
        assert_eq!(e.to_string(), "unexpected \"}\" in a.conf:2");
        let e = parse_str("server {\n listen 80\n}\n", "a.conf").unwrap_err();
        assert_eq!(e.to_string(), "unexpected \"}\" in a.conf:3");
        let e = parse_str("listen \"80", "a.conf").unwrap_err();
        assert!(e.to_string().starts_with("unexpected end of file"), "{e}");
        let e = parse_str("a \"b\"c;", "a.conf").unwrap_err();
        assert_eq!(e.to_string(), "unexpected \"c\" in a.conf:1");
        let e = parse_str("worker_processes 1", "a.conf").unwrap_err();
        assert!(e.to_string().contains("expecting \";\" or \"}\""), "{e}");
        let deep = "a {".repeat(100);
        assert!(parse_str(&deep, "d").is_err());
    }

    #[test]
    fn includes_resolve_against_the_prefix_then_the_stock_copies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sites-enabled")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http {\n include mime.types;\n include sites-enabled/*;\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sites-enabled/b.conf"),
            "server { location / { include uwsgi_params; uwsgi_pass 127.0.0.1:1; } }",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sites-enabled/a.conf"),
            "upstream a { server 127.0.0.1:2; }",
        )
        .unwrap();
        std::fs::write(dir.path().join("sites-enabled/.hidden"), "broken {").unwrap();
        let tree = load(&dir.path().join("nginx.conf"), None).unwrap();
        let http = tree[0].block.as_ref().unwrap();
        // mime.types (stock: a types block), then a.conf before b.conf.
        assert_eq!(http[0].name, "types");
        assert_eq!(
            (http[1].name.as_str(), http[2].name.as_str()),
            ("upstream", "server")
        );
        let location = &http[2].block.as_ref().unwrap()[0];
        let inner = location.block.as_ref().unwrap();
        assert!(
            inner
                .iter()
                .any(|d| d.name == "uwsgi_param" && d.args[0] == "QUERY_STRING")
        );
        assert_eq!(inner.last().unwrap().name, "uwsgi_pass");
        // A missing file names itself and where it was included.
        std::fs::write(dir.path().join("bad.conf"), "\ninclude nope.conf;\n").unwrap();
        let e = load(&dir.path().join("bad.conf"), None).unwrap_err();
        assert!(e.to_string().contains("nope.conf") && e.line == 2, "{e}");
    }

    #[test]
    fn stock_params_match_the_installed_nginx() {
        for name in [
            "uwsgi_params",
            "fastcgi_params",
            "scgi_params",
            "mime.types",
        ] {
            let Ok(installed) = std::fs::read_to_string(Path::new("/etc/nginx").join(name)) else {
                continue; // no nginx here: nothing to compare with
            };
            assert_eq!(stock_file(name), Some(installed.as_str()), "{name}");
        }
        assert!(parse_str(stock_file("mime.types").unwrap(), "mime.types").is_ok());
    }

    fn directive() -> impl Strategy<Value = Directive> {
        let word = "[a-z_$/.~*^()\\\\\"' {};#-]{1,8}";
        let leaf =
            (word, proptest::collection::vec(word, 0..3)).prop_map(|(name, args)| Directive {
                name,
                args,
                block: None,
                file: Arc::new(PathBuf::from("p")),
                line: 1,
            });
        leaf.prop_recursive(3, 16, 4, move |inner| {
            (
                word,
                proptest::collection::vec(word, 0..2),
                proptest::collection::vec(inner, 0..4),
            )
                .prop_map(|(name, args, block)| Directive {
                    name,
                    args,
                    block: Some(block),
                    file: Arc::new(PathBuf::from("p")),
                    line: 1,
                })
        })
    }

    proptest! {
        /// Written back (quoted) and read again, a tree is the same.
        #[test]
        fn round_trip(tree in proptest::collection::vec(directive(), 0..5)) {
            let text: String = tree.iter().map(|d| format!("{d}\n")).collect();
            let back = parse_str(&text, "p").unwrap();
            prop_assert_eq!(renumber(&back), renumber(&tree));
        }

        /// Any bytes give a tree or an error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,200}") {
            let _ = parse_str(&text, "p");
        }

        /// Any text made of config-ish pieces either parses or names a line inside it.
        #[test]
        fn errors_point_inside_the_input(pieces in proptest::collection::vec(
            prop_oneof![Just("a"), Just(" "), Just(";"), Just("{"), Just("}"), Just("\n"), Just("\""), Just("#")], 0..40)) {
            let text: String = pieces.concat();
            if let Err(e) = parse_str(&text, "p") {
                prop_assert!(e.line >= 1 && e.line <= text.matches('\n').count() + 1);
            }
        }
    }
}
