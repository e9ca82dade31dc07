//! The timer hyper uses for an HTTP/1 connection's head-read timeout, one per connection.
//!
//! hyper arms the timeout for every request head and drops it once the head is parsed:
//! with tokio's timer that is an allocation of a timer entry, an insertion into the timer
//! wheel and a removal, per request (about 1,000 instructions of a 12,000-instruction
//! `return 200`). Here a connection keeps one tokio sleep for its whole life and moves it
//! lazily: arming a later deadline only records it, and when the sleep fires before the
//! deadline that is current, it is pushed to that deadline instead of reporting a
//! timeout. The wheel sees about one operation per timeout period per connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::rt::{Sleep, Timer};

/// A [`Timer`] for one connection (make one per connection's builder).
#[derive(Clone, Default)]
pub(crate) struct ConnTimer {
    sleep: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl std::fmt::Debug for ConnTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTimer").finish_non_exhaustive()
    }
}

impl Timer for ConnTimer {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std() // tokio's clock, as the sleeps use
    }

    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(LazySleep {
            deadline: deadline.into(),
            shared: self.sleep.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LazySleep>() {
            Some(mut s) => s.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One armed timeout: its deadline, and the connection's shared tokio sleep.
struct LazySleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Sleep for LazySleep {}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut slot = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline); // an earlier deadline than the one waited for
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
                // It fired for an older, earlier deadline: wait on for this one.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn poll_once(s: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        s.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_waited_for_and_an_earlier_one_fires_first() {
        let t = ConnTimer::default();
        let start = t.now();
        // The first head: armed for 10 s, then parsed (dropped) at once.
        let mut first = t.sleep_until(start + Duration::from_secs(10));
        assert!(poll_once(&mut first).is_pending());
        drop(first);
        // The next head is armed for 20 s from a later moment: not done at 10 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = t.sleep(Duration::from_secs(20));
        let waited = tokio::time::Instant::now();
        second.await;
        assert_eq!(waited.elapsed(), Duration::from_secs(20));
        // An earlier deadline than the shared sleep's: it fires at its own time.
        let mut long = t.sleep(Duration::from_secs(60));
        assert!(poll_once(&mut long).is_pending());
        let short = t.sleep(Duration::from_secs(3));
        let waited = tokio::time::Instant::now();
        short.await;
        assert_eq!(waited.elapsed(), Duration::from_secs(3));
        // reset moves an armed timeout.
        let mut s = t.sleep(Duration::from_secs(1));
        t.reset(&mut s, t.now() + Duration::from_secs(7));
        let waited = tokio::time::Instant::now();
        s.await;
        assert_eq!(waited.elapsed(), Duration::from_secs(7));
    }
}
