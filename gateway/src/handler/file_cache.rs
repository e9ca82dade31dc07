//! Small static files kept in memory, with the headers their answers carry, and checked
//! against the file system on every use.
//!
//! A hit costs one `fstatat` from the root's descriptor instead of the `openat2`,
//! `fstat`, `pread` and `close` of a file read afresh. The entry is used only if that
//! `fstatat` finds the very file it was read from, unchanged: the same device, inode,
//! size, modification and change times (nanoseconds). Any write, truncation, rename over
//! it, new hard link or `chmod` changes the change time, so a changed file is read again
//! by the next request: there is no window of staleness, unlike nginx's
//! `open_file_cache_valid`. A file changed within the last second is not kept at all, as
//! two writes within one tick of the file system's clock can leave the same times.
//!
//! The entry was read through `openat2(RESOLVE_BENEATH)` from the same root, so its
//! content is a file inside the root; a later hit is the same inode, unchanged.
//!
//! Bounded: files up to [`MAX_FILE`] bytes, [`MAX_BYTES`] in all per process (entries
//! are dropped in no particular order to make room).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

/// The largest file kept.
const MAX_FILE: u64 = 64 * 1024;
/// The bytes kept in all (file contents), per process.
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// A file whose modification or change time is this close to now is not kept.
const SETTLED: Duration = Duration::from_secs(1);

/// What identifies one state of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    /// The identity of an opened file's metadata.
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    // The field types of `struct stat` differ between targets: some casts are no-ops here.
    #[allow(clippy::unnecessary_cast)]
    fn of_stat(s: &nix::sys::stat::FileStat) -> Self {
        Self {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            size: s.st_size as u64,
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as i64),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as i64),
        }
    }

    /// Whether the file was last touched long enough ago (by the clock of `now`).
    fn settled(&self, now: SystemTime) -> bool {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.saturating_sub(SETTLED).as_secs() as i64);
        self.mtime.0 < now && self.ctime.0 < now
    }
}

/// One kept file: its content and the headers every answer with it carries.
#[derive(Debug)]
pub(crate) struct Entry {
    root: PathBuf,
    id: Identity,
    /// The content.
    pub(crate) body: Bytes,
    /// The modification time, in whole seconds (ETag, Last-Modified, If-Modified-Since).
    pub(crate) secs: u64,
    /// The ETag.
    pub(crate) etag: HeaderValue,
    /// The Last-Modified date.
    pub(crate) last_modified: HeaderValue,
    /// The Content-Type, and the type the caller gave for it (`None`: guessed).
    pub(crate) content_type: (HeaderValue, Option<Box<str>>),
}

impl Entry {
    /// The entry for `body`, a file's whole content read under `root` with `meta` taken
    /// before the read, and the headers its answers carry.
    pub(crate) fn new(
        root: &Path,
        meta: &std::fs::Metadata,
        body: Bytes,
        secs: u64,
        etag: HeaderValue,
        last_modified: HeaderValue,
        content_type: (HeaderValue, Option<Box<str>>),
    ) -> Self {
        Self {
            root: root.to_path_buf(),
            id: Identity::of(meta),
            body,
            secs,
            etag,
            last_modified,
            content_type,
        }
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.id.size
    }
}

/// The kept files by path, and the bytes they hold.
#[derive(Debug)]
pub(crate) struct Cache {
    files: HashMap<PathBuf, Arc<Entry>>,
    bytes: usize,
    max_bytes: usize,
}

impl Cache {
    /// An empty cache holding up to `max_bytes` of content.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            files: HashMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn get(&self, file: &Path, root: &Path) -> Option<Arc<Entry>> {
        self.files.get(file).filter(|e| e.root == root).cloned()
    }

    fn remove(&mut self, file: &Path) {
        if let Some(e) = self.files.remove(file) {
            self.bytes -= e.body.len();
        }
    }

    fn insert(&mut self, file: PathBuf, entry: Arc<Entry>) {
        let len = entry.body.len();
        if len > self.max_bytes {
            return;
        }
        self.remove(&file);
        while self.bytes + len > self.max_bytes {
            let Some(victim) = self.files.keys().next().cloned() else {
                break;
            };
            self.remove(&victim);
        }
        self.bytes += len;
        self.files.insert(file, entry);
    }
}

static CACHE: RwLock<Option<Cache>> = RwLock::new(None);

/// The entry for `file` under `root` if one is kept and the file is still the one it was
/// read from. `dir` is `root` opened, `rel` the path of `file` under it.
pub(crate) fn lookup(
    dir: &std::os::fd::OwnedFd,
    root: &Path,
    file: &Path,
    rel: &Path,
) -> Option<Arc<Entry>> {
    let entry = CACHE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()?
        .get(file, root)?;
    let now = nix::sys::stat::fstatat(dir, rel, nix::fcntl::AtFlags::empty())
        .ok()
        .map(|s| Identity::of_stat(&s));
    if now == Some(entry.id) {
        #[cfg(test)]
        tests::HITS.with(|h| h.set(h.get() + 1));
        return Some(entry);
    }
    if let Some(c) = CACHE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        c.remove(file);
    }
    None
}

/// Keeps `entry` for `file` if the file is small, was read whole, and has not changed
/// lately.
pub(crate) fn keep(file: &Path, entry: Entry) {
    let id = entry.id;
    if id.size > MAX_FILE || entry.body.len() as u64 != id.size || !id.settled(SystemTime::now()) {
        return;
    }
    CACHE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(|| Cache::new(MAX_BYTES))
        .insert(file.to_path_buf(), Arc::new(entry));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Hits on this thread.
        pub(crate) static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn entry(len: usize) -> Arc<Entry> {
        Arc::new(Entry {
            root: PathBuf::from("/r"),
            id: Identity {
                dev: 1,
                ino: 2,
                size: len as u64,
                mtime: (0, 0),
                ctime: (0, 0),
            },
            body: Bytes::from(vec![0; len]),
            secs: 0,
            etag: HeaderValue::from_static("x"),
            last_modified: HeaderValue::from_static("x"),
            content_type: (HeaderValue::from_static("x"), None),
        })
    }

    #[test]
    fn the_cache_holds_no_more_than_its_bytes() {
        let mut c = Cache::new(10_000);
        for i in 0..100 {
            c.insert(PathBuf::from(format!("/r/{i}")), entry(1000 + i));
            assert!(c.bytes <= 10_000, "{} bytes kept", c.bytes);
            let sum: usize = c.files.values().map(|e| e.body.len()).sum();
            assert_eq!(sum, c.bytes);
            assert!(
                c.get(Path::new(&format!("/r/{i}")), Path::new("/r"))
                    .is_some()
            );
        }
        // The same path again replaces, without counting twice.
        c.insert(PathBuf::from("/r/99"), entry(10));
        let sum: usize = c.files.values().map(|e| e.body.len()).sum();
        assert_eq!(sum, c.bytes);
        // Larger than everything: not kept, nothing dropped for it.
        let before = c.files.len();
        c.insert(PathBuf::from("/r/big"), entry(10_001));
        assert_eq!(c.files.len(), before);
        // An entry is found only under the root it was read from.
        assert!(c.get(Path::new("/r/99"), Path::new("/other")).is_none());
    }

    #[test]
    fn a_file_changed_within_the_second_is_not_settled() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let id = |m: i64, c: i64| Identity {
            dev: 0,
            ino: 0,
            size: 0,
            mtime: (m, 0),
            ctime: (c, 0),
        };
        assert!(id(999_998, 999_998).settled(now));
        assert!(!id(999_999, 999_998).settled(now));
        assert!(!id(999_998, 1_000_000).settled(now));
        assert!(!id(2_000_000, 0).settled(now));
    }
}
