//! uWSGI ini files: the `[uwsgi]` section, with uWSGI's rules.

use std::path::Path;

/// One `key = value` line of the `[uwsgi]` section, after `%(...)` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    /// The key as written.
    pub key: String,
    /// The value, expanded.
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// Why an ini file cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IniError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line in the section that is not `key = value`.
    #[error("{path}:{line}: expected `key = value`")]
    Syntax {
        /// The file.
        path: String,
        /// The line.
        line: usize,
    },
}

/// Reads the `[uwsgi]` section of `path` (or of `text` when given), in order, with
/// repeated keys kept, `;` and `#` comments, and uWSGI's `%` expansions: `%(key)` (a
/// value set above; any other `%(name)` is kept as written), `%d` (the file's directory, with a trailing `/`), `%n` (its name
/// without extension), `%s` (its name), `%p` (its absolute path), `%%`.
///
/// ```
/// use gateway::config::ini::read_ini;
/// let text = "[uwsgi]\nbase = /srv/app\nchdir = %(base)\nmodule = mysite.wsgi\n[other]\nx = 1\n";
/// let entries = read_ini(std::path::Path::new("/etc/app.ini"), Some(text))?;
/// assert_eq!(entries[1].key, "chdir");
/// assert_eq!(entries[1].value, "/srv/app");
/// assert_eq!(entries.len(), 3);
/// # Ok::<(), gateway::config::ini::IniError>(())
/// ```
pub fn read_ini(path: &Path, text: Option<&str>) -> Result<Vec<IniEntry>, IniError> {
    let shown = path.display().to_string();
    let owned;
    let text = match text {
        Some(t) => t,
        None => {
            owned = std::fs::read_to_string(path).map_err(|source| IniError::Read {
                path: shown.clone(),
                source,
            })?;
            &owned
        }
    };
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs
        .parent()
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_default();
    let file = abs
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = abs
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut in_section = false;
    let mut out: Vec<IniEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = section.trim() == "uwsgi";
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((key, raw_value)) = line.split_once('=') else {
            // uWSGI reads a bare key as a flag set to true.
            if line
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                out.push(IniEntry {
                    key: line.to_owned(),
                    value: "true".into(),
                    line: line_no,
                });
                continue;
            }
            return Err(IniError::Syntax {
                path: shown,
                line: line_no,
            });
        };
        let key = key.trim().to_owned();
        let mut value = String::new();
        let mut chars = value_chars(value_str(raw_value));
        while let Some(c) = chars.next() {
            if c != '%' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('(') => {
                    let name: String = chars.by_ref().take_while(|&c| c != ')').collect();
                    let found = out
                        .iter()
                        .rev()
                        .find(|e| e.key == name)
                        .map(|e| e.value.clone());
                    match found {
                        Some(v) => value.push_str(&v),
                        // Not an option set above: kept as written, as uWSGI does
                        // (`logformat = %(addr) ...` names the log's variables).
                        None => {
                            value.push_str("%(");
                            value.push_str(&name);
                            value.push(')');
                        }
                    }
                }
                Some('d') => value.push_str(&dir),
                Some('n') => value.push_str(&stem),
                Some('s') => value.push_str(&file),
                Some('p') => value.push_str(&abs.display().to_string()),
                Some('%') => value.push('%'),
                Some(other) => {
                    value.push('%');
                    value.push(other);
                }
                None => value.push('%'),
            }
        }
        out.push(IniEntry {
            key,
            value,
            line: line_no,
        });
    }
    Ok(out)
}

fn value_str(v: &str) -> &str {
    let v = v.trim();
    // Quotes around a value are removed, as uWSGI's ini reader does.
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn value_chars(v: &str) -> std::vec::IntoIter<char> {
    v.chars().collect::<Vec<_>>().into_iter()
}
