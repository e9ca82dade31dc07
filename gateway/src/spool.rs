//! Response buffering, as nginx's `proxy_buffering`/`uwsgi_buffering`: a backend's answer
//! is read as fast as the backend sends it, kept in memory up to a limit and past it in an
//! unlinked temporary file, and handed to the client at the client's pace. A slow client
//! then holds a file descriptor and some disk, not a backend worker.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! // 4 bytes in memory, the rest on disk.
//! let (tx, mut rx) = gateway::spool::channel(4, 1 << 20);
//! for part in ["he", "llo ", "wor", "ld"] {
//!     tx.send(Ok(Bytes::from(part))).await.unwrap(); // never waits for the reader here
//! }
//! drop(tx);
//! let mut all = Vec::new();
//! while let Some(b) = rx.recv().await {
//!     all.extend_from_slice(&b.unwrap());
//! }
//! assert_eq!(all, b"hello world");
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

/// The largest block read back from the file at once.
const BLOCK: u64 = 256 * 1024;

/// How a backend's answer is buffered (nginx's `*_buffering`, `*_buffers` and
/// `*_max_temp_file_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffering {
    /// Bytes kept in memory ahead of the client (default 1 MiB).
    pub memory: usize,
    /// Bytes kept in a temporary file past that (default 1 GiB, nginx's default; 0: none).
    pub max_temp_file: u64,
}

impl Default for Buffering {
    fn default() -> Self {
        Self {
            memory: 1 << 20,
            max_temp_file: 1 << 30,
        }
    }
}

impl Buffering {
    /// `*_buffering off`: the answer goes to the client as it comes, with a small read-ahead
    /// and no file.
    pub fn off() -> Self {
        Self {
            memory: 64 * 1024,
            max_temp_file: 0,
        }
    }

    /// A channel with these limits (see [`channel`]).
    pub fn channel(self) -> (SpoolSender, mpsc::Receiver<std::io::Result<Bytes>>) {
        channel(self.memory, self.max_temp_file)
    }
}

/// The reader is gone: nothing more needs sending.
#[derive(Debug, thiserror::Error)]
#[error("the reader is gone")]
pub struct Closed;

#[derive(Default)]
struct State {
    mem: VecDeque<Bytes>,
    mem_bytes: usize,
    file: Option<Arc<std::fs::File>>,
    /// Bytes written to the file, and read back from it.
    written: u64,
    read: u64,
    /// The writer is done (with an error to pass on, if any).
    ended: bool,
    error: Option<std::io::Error>,
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the forwarding task: data or the end.
    data: Notify,
    /// Wakes the writer: the file has room again, or the reader is gone.
    room: Notify,
    mem_limit: usize,
    file_limit: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing end: see [`channel`].
#[allow(missing_debug_implementations)]
pub struct SpoolSender {
    shared: Arc<Shared>,
}

/// A channel whose sender never waits for the receiver while the unread bytes fit in
/// `mem_limit` bytes of memory plus `file_limit` bytes of an unlinked temporary file
/// (past that it waits, as nginx streams once `proxy_max_temp_file_size` is reached). The
/// receiver gets the bytes in order, in blocks of at most 256 KiB from the file.
pub fn channel(
    mem_limit: usize,
    file_limit: u64,
) -> (SpoolSender, mpsc::Receiver<std::io::Result<Bytes>>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        data: Notify::new(),
        room: Notify::new(),
        mem_limit,
        file_limit,
    });
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(forward(shared.clone(), tx));
    (SpoolSender { shared }, rx)
}

impl SpoolSender {
    /// Queues `item` (an error ends the stream after the bytes before it).
    pub async fn send(&self, item: std::io::Result<Bytes>) -> Result<(), Closed> {
        let b = match item {
            Ok(b) => b,
            Err(e) => {
                let mut s = self.shared.lock();
                s.error = Some(e);
                s.ended = true;
                drop(s);
                self.shared.data.notify_one();
                return Ok(());
            }
        };
        if b.is_empty() {
            return Ok(());
        }
        loop {
            let target = {
                let mut s = self.shared.lock();
                if s.reader_gone {
                    return Err(Closed);
                }
                if s.file.is_none() && s.mem_bytes + b.len() <= self.shared.mem_limit {
                    s.mem_bytes += b.len();
                    s.mem.push_back(b);
                    drop(s);
                    self.shared.data.notify_one();
                    return Ok(());
                }
                let full = s.written - s.read + b.len() as u64 > self.shared.file_limit
                    && s.written > s.read;
                if full {
                    None
                } else {
                    if s.file.is_none() {
                        match tempfile::tempfile() {
                            Ok(f) => s.file = Some(Arc::new(f)),
                            Err(e) => {
                                tracing::warn!("buffering a response: no temporary file: {e}");
                                // Without a file, memory holds it.
                                s.mem_bytes += b.len();
                                s.mem.push_back(b);
                                drop(s);
                                self.shared.data.notify_one();
                                return Ok(());
                            }
                        }
                    }
                    s.file.clone().map(|f| (f, s.written))
                }
            };
            let Some((file, at)) = target else {
                self.shared.room.notified().await;
                continue;
            };
            let data = b.clone();
            let wrote = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&data, at)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let mut s = self.shared.lock();
            match wrote {
                Ok(()) => s.written += b.len() as u64,
                Err(e) => {
                    s.error = Some(std::io::Error::new(
                        e.kind(),
                        format!("buffering a response on disk: {e}"),
                    ));
                    s.ended = true;
                }
            }
            drop(s);
            self.shared.data.notify_one();
            return Ok(());
        }
    }
}

impl Drop for SpoolSender {
    fn drop(&mut self) {
        self.shared.lock().ended = true;
        self.shared.data.notify_one();
    }
}

/// What the forwarding task does next.
enum Next {
    Send(Bytes),
    Read(Arc<std::fs::File>, u64, u64),
    Fail(std::io::Error),
    End,
    Wait,
}

/// Moves the spooled bytes to the receiver at its pace.
async fn forward(shared: Arc<Shared>, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    let gone = |shared: &Shared| {
        shared.lock().reader_gone = true;
        shared.room.notify_one();
    };
    loop {
        let next = {
            let mut s = shared.lock();
            if let Some(b) = s.mem.pop_front() {
                s.mem_bytes -= b.len();
                Next::Send(b)
            } else if s.read < s.written {
                let file = s.file.clone();
                let (at, n) = (s.read, (s.written - s.read).min(BLOCK));
                file.map_or(Next::Wait, |f| Next::Read(f, at, n))
            } else if let Some(e) = s.error.take() {
                Next::Fail(e)
            } else if s.ended {
                Next::End
            } else {
                Next::Wait
            }
        };
        match next {
            Next::Send(b) => {
                if tx.send(Ok(b)).await.is_err() {
                    return gone(&shared);
                }
            }
            Next::Read(file, at, n) => {
                let block = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match block {
                    Ok(b) => {
                        shared.lock().read += n;
                        shared.room.notify_one();
                        if tx.send(Ok(b)).await.is_err() {
                            return gone(&shared);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return gone(&shared);
                    }
                }
            }
            Next::Fail(e) => {
                let _ = tx.send(Err(e)).await;
                return gone(&shared);
            }
            Next::End => return,
            Next::Wait => shared.data.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn collect(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> (Vec<u8>, Option<String>) {
        let mut all = Vec::new();
        while let Some(b) = rx.recv().await {
            match b {
                Ok(b) => all.extend_from_slice(&b),
                Err(e) => return (all, Some(e.to_string())),
            }
        }
        (all, None)
    }

    #[tokio::test]
    async fn the_writer_does_not_wait_for_a_reader_that_has_not_started() {
        let (tx, rx) = channel(64 * 1024, 1 << 30);
        let block = Bytes::from(vec![7u8; 64 * 1024]);
        // 8 MiB sent with nobody reading: memory then the file.
        let sent = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            for _ in 0..128 {
                tx.send(Ok(block.clone())).await.unwrap();
            }
        })
        .await;
        assert!(sent.is_ok(), "the writer waited for the reader");
        assert!(tx.shared.lock().mem_bytes <= 64 * 1024);
        assert!(tx.shared.lock().written >= 7 << 20);
        drop(tx);
        let (all, err) = collect(rx).await;
        assert_eq!(all.len(), 8 << 20);
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn past_the_file_limit_the_writer_waits_for_the_reader() {
        let (tx, mut rx) = channel(1024, 4096);
        for _ in 0..5 {
            tx.send(Ok(Bytes::from(vec![1u8; 1024]))).await.unwrap();
        }
        // Memory and file fill up (the forwarding task holds up to three blocks more).
        let mut waited = false;
        for _ in 0..64 {
            if tokio::time::timeout(
                std::time::Duration::from_millis(200),
                tx.send(Ok(Bytes::from(vec![2u8; 1024]))),
            )
            .await
            .is_err()
            {
                waited = true;
                break;
            }
        }
        assert!(waited, "the writer should wait once the file is full");
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first[0], 1);
        // The reader gone: the writer learns it.
        drop(rx);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if tx.send(Ok(Bytes::from(vec![3u8; 1024]))).await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(r.is_ok(), "a gone reader ends the writer's waits");
    }

    #[tokio::test]
    async fn an_error_comes_after_the_bytes_before_it() {
        let (tx, rx) = channel(4, 1 << 20);
        tx.send(Ok(Bytes::from_static(b"abcdefgh"))).await.unwrap();
        tx.send(Err(std::io::Error::other("backend closed")))
            .await
            .unwrap();
        let (all, err) = collect(rx).await;
        assert_eq!(all, b"abcdefgh");
        assert_eq!(err.as_deref(), Some("backend closed"));
    }

    proptest! {
        /// Whatever the limits and the pieces, the reader gets the bytes in order.
        #[test]
        fn bytes_come_out_in_order(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..40),
            mem in 1usize..8192,
            file in 1u64..20_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let want: Vec<u8> = pieces.concat();
            let (got, err) = rt.block_on(async move {
                let (tx, rx) = channel(mem, file);
                let reader = tokio::spawn(collect(rx));
                for p in pieces {
                    tx.send(Ok(Bytes::from(p))).await.unwrap();
                }
                drop(tx);
                reader.await.unwrap()
            });
            prop_assert!(err.is_none());
            prop_assert_eq!(got, want);
        }
    }
}
