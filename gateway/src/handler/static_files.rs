//! Static files (uWSGI's `--static-map /url=DIR`): MIME types, ETag and Last-Modified with
//! 304, single byte ranges (206/416), HEAD, `index.html`, and no way out of the mapped
//! directory (`..`, encoded `%2e%2e`, symlinks out of the root are refused).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::{Body, file_cache};

/// How long an opened root directory is used before it is opened again by its path: a
/// root that is a symlink switched to a new release (or a directory recreated) is
/// followed within this time, and a request costs two system calls fewer meanwhile.
const ROOT_VALID: std::time::Duration = std::time::Duration::from_secs(1);

/// A root directory opened with `O_PATH`.
type RootFd = std::sync::Arc<std::os::fd::OwnedFd>;

/// The roots opened lately, by path.
type RootCache = std::collections::HashMap<PathBuf, (std::time::Instant, RootFd)>;

static ROOTS: std::sync::Mutex<Option<RootCache>> = std::sync::Mutex::new(None);

/// `root` opened as an `O_PATH` directory, from the cache while it is fresh.
fn root_fd(root: &std::path::Path) -> Option<RootFd> {
    use nix::fcntl::OFlag;
    let now = std::time::Instant::now();
    {
        let cache = ROOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, fd)) = cache.as_ref().and_then(|c| c.get(root)) {
            if now.duration_since(*at) < ROOT_VALID {
                return Some(fd.clone());
            }
        }
    }
    let fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let fd = std::sync::Arc::new(fd);
    let mut cache = ROOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache.get_or_insert_with(RootCache::new);
    if cache.len() >= 256 {
        cache.clear(); // roots come from the configuration: this is never reached in use
    }
    cache.insert(root.to_path_buf(), (now, fd.clone()));
    Some(fd)
}

/// nginx's ETag: `"MTIME-SIZE"` in hex (without the formatting machinery: every static
/// request makes one).
fn etag(secs: u64, size: u64) -> String {
    fn hex(out: &mut String, n: u64) {
        let digits = if n == 0 {
            1
        } else {
            (64 - n.leading_zeros()).div_ceil(4)
        };
        for i in (0..digits).rev() {
            out.push(char::from(
                b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize],
            ));
        }
    }
    let mut tag = String::with_capacity(36);
    tag.push('"');
    hex(&mut tag, secs);
    tag.push('-');
    hex(&mut tag, size);
    tag.push('"');
    tag
}

/// The HTTP date of `secs`, kept per thread for the last time asked (most requests ask for
/// the same few files).
fn http_date(secs: u64) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((_, v)) = last.as_ref().filter(|(at, _)| *at == secs) {
            return v.clone();
        }
        let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .unwrap_or(HeaderValue::from_static(""));
        *last = Some((secs, v.clone()));
        v
    })
}

/// What opening a file under a root gave.
enum Opened {
    File(std::fs::File, std::fs::Metadata),
    Missing,
    Directory,
    /// A symlink (or `..`) leads out of the root: the path it leads to, when known.
    Outside(PathBuf),
}

/// `file` relative to `root` when it is written under it (a byte comparison: the paths
/// are made by joining, and component-wise comparison costs more than the open).
fn beneath<'a>(root: &std::path::Path, file: &'a std::path::Path) -> Option<&'a std::path::Path> {
    use std::os::unix::ffi::OsStrExt;
    let (root, file) = (root.as_os_str().as_bytes(), file.as_os_str().as_bytes());
    let root = match root {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        r => r,
    };
    let rest = file.strip_prefix(root)?;
    let rel = match rest {
        [] => rest,
        [b'/', rel @ ..] => rel,
        _ if root == b"/" => rest,
        _ => return None,
    };
    Some(std::path::Path::new(std::ffi::OsStr::from_bytes(rel)))
}

/// Opens `file` (a path under `root`) for reading without leaving `root`: one `openat2`
/// with `RESOLVE_BENEATH` from the root (Linux 5.6+), so neither `..` nor a symlink can
/// lead out; on older kernels, the canonical paths are compared. A directory is reported
/// as one (for an index file or a redirect), anything else that is not a file as missing.
/// `under` is `file`'s path under `root` as [`beneath`] gives it, with `root` opened.
fn open_beneath(
    root: &std::path::Path,
    file: &std::path::Path,
    under: Option<&(&std::path::Path, Option<RootFd>)>,
) -> Opened {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let regular = |f: std::fs::File| match f.metadata() {
        Ok(m) if m.is_file() => Opened::File(f, m),
        Ok(m) if m.is_dir() => Opened::Directory,
        _ => Opened::Missing,
    };
    if let Some(&(rel, ref dir)) = under {
        let Some(dir) = dir else {
            return Opened::Missing;
        };
        let rel = if rel.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match nix::fcntl::openat2(&**dir, rel, how) {
            Ok(fd) => return regular(std::fs::File::from(fd)),
            Err(nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP) => {
                return Opened::Outside(
                    std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf()),
                );
            }
            Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => {} // no openat2
            Err(_) => return Opened::Missing,
        }
    }
    let (Ok(real), Ok(root)) = (std::fs::canonicalize(file), std::fs::canonicalize(root)) else {
        return Opened::Missing;
    };
    if !real.starts_with(&root) {
        return Opened::Outside(real);
    }
    std::fs::File::open(&real).map_or(Opened::Missing, regular)
}

/// One mapping: URL prefix to directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMap {
    /// The URL prefix, without a trailing `/`.
    pub prefix: String,
    /// The directory.
    pub root: PathBuf,
}

impl StaticMap {
    /// Parses uWSGI's `/url=DIR`.
    ///
    /// ```
    /// let m = gateway::handler::StaticMap::parse("/static=/srv/app/static").unwrap();
    /// assert_eq!((m.prefix.as_str(), m.root.to_str().unwrap()), ("/static", "/srv/app/static"));
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((url, dir)) = s.split_once('=') else {
            return Err(format!("--static-map {s:?}: expected /url=DIR"));
        };
        if !url.starts_with('/') || dir.is_empty() {
            return Err(format!("--static-map {s:?}: expected /url=DIR"));
        }
        Ok(Self {
            prefix: url.trim_end_matches('/').to_owned(),
            root: PathBuf::from(dir),
        })
    }
}

/// The static maps of a server.
#[derive(Debug, Clone, Default)]
pub struct StaticFiles {
    maps: Vec<StaticMap>,
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("{status}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A single satisfiable range, `Err(())` for an unsatisfiable one, `None` to ignore.
fn parse_range(v: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: answered with the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        if start >= size || (!b.is_empty() && b.parse::<u64>().ok()? < start) {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

impl StaticFiles {
    /// Static maps, longest prefix first.
    pub fn new(mut maps: Vec<StaticMap>) -> Self {
        maps.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Self { maps }
    }

    /// Whether there is no map.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Answers `path` (the raw request path, before `?`) if a map covers it and the file
    /// exists; `None` lets the request go on to the app (as uWSGI does for a missing file).
    pub async fn serve(
        &self,
        method: &Method,
        raw_path: &str,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        if self.maps.is_empty() {
            return None;
        }
        let Ok(path) = cgi_family::normalize_path(raw_path.as_bytes()) else {
            // `..` above the root, a NUL, a bad escape: refused, as nginx does.
            let under_a_map = self.maps.iter().any(|m| raw_path.starts_with(&m.prefix));
            return under_a_map.then(|| plain(StatusCode::BAD_REQUEST));
        };
        let map = self.maps.iter().find(|m| {
            path.starts_with(m.prefix.as_bytes())
                && matches!(path.get(m.prefix.len()), None | Some(b'/'))
        })?;
        let rest = &path[map.prefix.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        let file = map.root.join(std::ffi::OsStr::from_bytes(rest));
        match try_serve_file(method, headers, &file, &map.root, None).await {
            Ok(r) => Some(r),
            Err(FileMiss::Directory) => {
                try_serve_file(method, headers, &file.join("index.html"), &map.root, None)
                    .await
                    .ok()
            }
            Err(FileMiss::Missing) => None,
        }
    }
}

/// Files up to this size are read in one go with the lookup and sent from memory.
const SMALL_FILE: u64 = 128 * 1024;

/// Where an answer's bytes come from.
enum Source {
    /// Read already (a small file).
    Memory(bytes::Bytes),
    /// Read in blocks as the client takes them.
    File(std::fs::File),
}

/// The 405 for a method other than GET or HEAD.
fn not_allowed() -> Response<Body> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// The Content-Type of `file`: the type given, else the one its extension suggests.
fn type_of(file: &std::path::Path, given: Option<&str>) -> HeaderValue {
    let value = match given {
        Some(t) => HeaderValue::from_str(t).ok(),
        None => {
            HeaderValue::from_str(mime_guess::from_path(file).first_or_octet_stream().as_ref()).ok()
        }
    };
    value.unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Why [`try_serve_file`] served nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMiss {
    /// No such file (or not one that can be read).
    Missing,
    /// A directory.
    Directory,
}

/// Answers a request for `file` (which must lie inside `root`, symlinks resolved): 403 if
/// it leads out, 405 for methods other than GET and HEAD, else the file with its MIME type,
/// ETag and Last-Modified (304 for a matching conditional request), a single byte range
/// (206, or 416), and no body for HEAD. `content_type` overrides the type guessed from
/// the extension.
pub async fn serve_file(
    method: &Method,
    headers: &HeaderMap,
    file: &std::path::Path,
    root: &std::path::Path,
    content_type: Option<&str>,
) -> Response<Body> {
    try_serve_file(method, headers, file, root, content_type)
        .await
        .unwrap_or_else(|_| plain(StatusCode::NOT_FOUND))
}

/// [`serve_file`], saying why nothing was served for a missing file or a directory (for
/// a caller with its own 404 page or a redirect to `dir/`).
pub async fn try_serve_file(
    method: &Method,
    headers: &HeaderMap,
    file: &std::path::Path,
    root: &std::path::Path,
    content_type: Option<&str>,
) -> Result<Response<Body>, FileMiss> {
    // Opened, checked and (when small) read right here, as nginx does: on a local file
    // system these are page-cache operations of a few µs, cheaper than a trip to a
    // blocking thread. Larger files are read in blocks as the client takes them
    // ([`Body::file`]). A small file read before comes from memory while it is unchanged
    // (`file_cache`).
    let plain_get = method == Method::GET
        && ![
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
        ]
        .iter()
        .any(|h| headers.contains_key(h));
    let under = beneath(root, file).map(|rel| (rel, root_fd(root)));
    let kept = match &under {
        Some((rel, Some(dir))) if !rel.as_os_str().is_empty() => {
            file_cache::lookup(dir, root, file, rel)
        }
        _ => None,
    };
    let (source, size, secs, etag, last_modified, content_type) = match kept {
        Some(e) => {
            let content_type = match (content_type, &e.content_type) {
                (given, (value, kept_as)) if given == kept_as.as_deref() => value.clone(),
                (given, _) => type_of(file, given),
            };
            (
                Source::Memory(e.body.clone()),
                e.size(),
                e.secs,
                e.etag.clone(),
                e.last_modified.clone(),
                content_type,
            )
        }
        None => {
            let (meta, opened_file, small) = match open_beneath(root, file, under.as_ref()) {
                Opened::Missing => return Err(FileMiss::Missing),
                Opened::Directory => return Err(FileMiss::Directory),
                Opened::Outside(real) => {
                    // No way out of the root through symlinks.
                    tracing::warn!(
                        "static file {} leads out of {}: refused",
                        real.display(),
                        root.display()
                    );
                    return Ok(plain(StatusCode::FORBIDDEN));
                }
                Opened::File(f, meta) => {
                    let small = if plain_get && meta.len() <= SMALL_FILE {
                        // One read of the size fstat gave (a file that changed meanwhile
                        // is read in blocks below instead, and ends short if it shrank).
                        let mut buf = Vec::with_capacity(meta.len() as usize);
                        match rustix::io::pread(&f, rustix::buffer::spare_capacity(&mut buf), 0) {
                            Ok(n) if n as u64 == meta.len() => Some(bytes::Bytes::from(buf)),
                            _ => None,
                        }
                    } else {
                        None
                    };
                    (meta, f, small)
                }
            };
            let size = meta.len();
            let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
            let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let etag =
                HeaderValue::from_str(&etag(secs, size)).unwrap_or(HeaderValue::from_static(""));
            let last_modified = http_date(secs);
            let ctype = type_of(file, content_type);
            let source = match small {
                Some(b) => {
                    file_cache::keep(
                        file,
                        file_cache::Entry::new(
                            root,
                            &meta,
                            b.clone(),
                            secs,
                            etag.clone(),
                            last_modified.clone(),
                            (ctype.clone(), content_type.map(Box::from)),
                        ),
                    );
                    Source::Memory(b)
                }
                None => Source::File(opened_file),
            };
            (source, size, secs, etag, last_modified, ctype)
        }
    };
    // The file exists (a missing one went on above): other methods than GET and HEAD are
    // refused. (Only a GET reads a file into memory, so nothing was kept for them.)
    if method != Method::GET && method != Method::HEAD {
        return Ok(not_allowed());
    }
    let mut common = HeaderMap::new();
    common.insert(header::CONTENT_TYPE, content_type);
    common.insert(header::LAST_MODIFIED, last_modified.clone());
    common.insert(header::ETAG, etag.clone());
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let etag = etag.to_str().unwrap_or("");

    // Conditional requests: If-None-Match first, else If-Modified-Since.
    let not_modified = match headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        Some(inm) => inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
        }),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since: SystemTime| {
                since >= UNIX_EPOCH + std::time::Duration::from_secs(secs)
            }),
    };
    if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        common.remove(header::CONTENT_TYPE);
        common.remove(header::ACCEPT_RANGES);
        *r.headers_mut() = common;
        return Ok(r);
    }
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag || v.as_bytes() == last_modified.as_bytes());
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok)
        .and_then(|v| parse_range(v, size));
    let (status, start, len) = match range {
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Some(Err(())) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .unwrap_or(HeaderValue::from_static("")),
            );
            return Ok(r);
        }
        None => (StatusCode::OK, 0, size),
    };
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        match source {
            Source::Memory(b) if start == 0 && len == b.len() as u64 => Body::full(b),
            Source::Memory(b) => match usize::try_from(start)
                .ok()
                .zip(usize::try_from(start + len).ok())
                .and_then(|(a, z)| b.get(a..z).map(|_| b.slice(a..z)))
            {
                Some(part) => Body::full(part),
                None => return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR)),
            },
            Source::File(f) => Body::file(f, start, len),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        common.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
                .unwrap_or(HeaderValue::from_static("")),
        );
    }
    *r.headers_mut() = common;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_dates() {
        for (secs, size) in [(0, 0), (1, 15), (0x6553_f100, 4096), (u64::MAX, 1 << 40)] {
            assert_eq!(etag(secs, size), format!("\"{secs:x}-{size:x}\""));
        }
        for secs in [0, 1_700_000_000, 1_700_000_000, 1_700_000_001] {
            let want = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            assert_eq!(http_date(secs).to_str().unwrap(), want);
        }
    }

    #[test]
    fn beneath_is_the_path_under_the_root() {
        use std::path::Path;
        let b = |r: &str, f: &str| {
            beneath(Path::new(r), Path::new(f)).map(|p| p.to_str().unwrap().to_owned())
        };
        assert_eq!(
            b("/srv/www", "/srv/www/a/b.css").as_deref(),
            Some("a/b.css")
        );
        assert_eq!(b("/srv/www/", "/srv/www/a").as_deref(), Some("a"));
        assert_eq!(b("/srv/www", "/srv/www").as_deref(), Some(""));
        assert_eq!(b("/srv/www", "/srv/wwwx/a"), None);
        assert_eq!(b("/srv/www", "/srv/other"), None);
        assert_eq!(b("/", "/etc/hosts").as_deref(), Some("etc/hosts"));
        assert_eq!(b("www", "www/a").as_deref(), Some("a"));
    }

    /// An answer's status, and its body's length and byte (when all are the same).
    async fn get(
        file: &std::path::Path,
        root: &std::path::Path,
        hdrs: &[(&str, &str)],
    ) -> (u16, usize, Option<u8>) {
        use http_body_util::BodyExt;
        let mut h = HeaderMap::new();
        for (k, v) in hdrs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let r = serve_file(&Method::GET, &h, file, root, None).await;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let same = body
            .first()
            .copied()
            .filter(|b| body.iter().all(|c| c == b));
        (status, body.len(), same)
    }

    fn hits() -> u64 {
        file_cache::tests::HITS.with(|h| h.get())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_kept_file_is_served_from_memory_until_it_changes_in_any_way() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir(&root).unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, b"S".repeat(4096)).unwrap();
        let file = root.join("a.css");
        let write = |byte: u8| std::fs::write(&file, vec![byte; 4096]).unwrap();
        write(b'a');
        // Just written: read afresh each time, not kept.
        let before = hits();
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'a')));
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'a')));
        assert_eq!(hits(), before);
        // Settled: kept by the next read, then served from memory.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'a')));
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'a')));
        assert_eq!(hits(), before + 1);
        // A range of the kept copy.
        let part = get(&file, &root, &[("range", "bytes=10-19")]).await;
        assert_eq!(part, (206, 10, Some(b'a')));
        assert_eq!(hits(), before + 2);
        // Rewritten in place with the same size, within the same second: seen at once.
        write(b'b');
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'b')));
        // Its times set back to what they were (as `cp -p` does): the change time still
        // tells.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'b')));
        let old = std::fs::metadata(&file).unwrap().modified().unwrap();
        write(b'c');
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'c')));
        // Replaced by a symlink out of the root (to a file of the same size): refused.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(get(&file, &root, &[]).await, (200, 4096, Some(b'c')));
        let hit = hits();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&outside, &file).unwrap();
        assert_eq!(get(&file, &root, &[]).await.0, 403);
        assert_eq!(hits(), hit);
        // Gone: not found.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(get(&file, &root, &[]).await.0, 404);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=9-3", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
