//! A connection's view of the process's stop signal, cheap to poll.
//!
//! Every connection waits for the stop (a shared [`CancellationToken`]) beside its own
//! I/O. Polling the token's `cancelled()` future on every wake-up of a connection takes the
//! token's mutex, one mutex shared by all connections of all runtime threads, several
//! times per request. Here the token's future is polled once to register, then again only
//! when the token itself woke it; other wake-ups cost an atomic swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Waits for one [`CancellationToken`], for one connection task.
pub(crate) struct StopWatch {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    signal: Arc<Signal>,
    stopped: bool,
}

/// The waker the token's future is given: notes that it fired and wakes the task.
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::SeqCst);
        self.task.wake();
    }
}

impl StopWatch {
    /// Watches `token`.
    pub(crate) fn new(token: &CancellationToken) -> Self {
        Self {
            cancelled: Box::pin(token.clone().cancelled_owned()),
            signal: Arc::new(Signal {
                fired: AtomicBool::new(true), // the first poll registers
                task: AtomicWaker::new(),
            }),
            stopped: false,
        }
    }

    /// Ready once the token is cancelled (and from then on).
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopped {
            return Poll::Ready(());
        }
        // Register before looking at the flag: a wake in between is not lost.
        self.signal.task.register(cx.waker());
        if self.signal.fired.swap(false, Ordering::SeqCst) {
            let waker = Waker::from(self.signal.clone());
            if self
                .cancelled
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                self.stopped = true;
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Resolves once the token is cancelled.
    pub(crate) async fn stopped(&mut self) {
        std::future::poll_fn(|cx| self.poll_stopped(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn resolves_on_cancel_and_not_before() {
        let token = CancellationToken::new();
        let mut watch = StopWatch::new(&token);
        let waited = tokio::time::timeout(Duration::from_millis(50), watch.stopped()).await;
        assert!(waited.is_err(), "not cancelled yet");
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            t.cancel();
        });
        tokio::time::timeout(Duration::from_secs(5), watch.stopped())
            .await
            .expect("woken by the cancel");
        watch.stopped().await; // and stays ready
        // A watch made after the cancel is ready at once.
        tokio::time::timeout(Duration::from_secs(1), StopWatch::new(&token).stopped())
            .await
            .expect("already cancelled");
    }
}
