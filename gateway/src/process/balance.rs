//! Spreading connections evenly over the workers that share a listening socket.
//!
//! Each worker's accept thread blocks in `accept` on the one socket all workers share;
//! the kernel wakes one waiter per connection. Left alone, a burst of connections (a
//! client opening its keep-alive pool) lands unevenly: a woken thread loops back and
//! takes the next connection before the other workers' threads have run. Connections
//! are long-lived, so that unevenness stays, and a worker with twice the connections
//! answers with twice the latency. Here every worker counts its open connections in a
//! page shared by all of them (mapped by the master before it forks), and a worker
//! whose count is above the lowest among the accepting workers waits before it accepts
//! again, so connections go round the workers in turn.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Set in a seat's word while its worker accepts; the low bits count its connections.
const ACCEPTING: u32 = 1 << 31;

/// The shared counters, one seat per worker process (a retiring worker and its
/// replacement have a seat each).
#[derive(Debug)]
pub(crate) struct Balance {
    seats: &'static [AtomicU32],
}

impl Balance {
    /// Maps `seats` zeroed counters shared with every process forked afterwards.
    pub(crate) fn new(seats: usize) -> std::io::Result<Self> {
        Ok(Self {
            seats: super::sys::shared_counters(seats.max(1))?,
        })
    }

    /// How many seats there are.
    pub(crate) fn len(&self) -> usize {
        self.seats.len()
    }

    /// Empties seat `n` for a new worker (or after its worker is gone).
    pub(crate) fn clear(&self, n: usize) {
        if let Some(s) = self.seats.get(n) {
            s.store(0, Ordering::SeqCst);
        }
    }

    /// Seat `n`, for the worker given it.
    pub(crate) fn seat(&self, n: usize) -> Option<Seat> {
        self.seats.get(n).map(|_| Seat {
            seats: self.seats,
            me: n,
        })
    }
}

/// One worker's seat: its connection count and whether it accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seat {
    seats: &'static [AtomicU32],
    me: usize,
}

impl Seat {
    fn word(&self) -> &'static AtomicU32 {
        &self.seats[self.me]
    }

    /// The worker accepts (or, `false`, stopped accepting: it is left out of the
    /// comparison while it finishes its connections).
    pub(crate) fn accepting(&self, on: bool) {
        if on {
            self.word().fetch_or(ACCEPTING, Ordering::SeqCst);
        } else {
            self.word().fetch_and(!ACCEPTING, Ordering::SeqCst);
        }
    }

    /// A connection was accepted; its guard counts it out when dropped.
    pub(crate) fn opened(self) -> Opened {
        self.word().fetch_add(1, Ordering::SeqCst);
        Opened(self)
    }

    /// Whether this worker has no more connections than the least busy accepting one.
    pub(crate) fn may_accept(&self) -> bool {
        let mine = self.word().load(Ordering::SeqCst) & !ACCEPTING;
        self.seats
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .filter(|w| w & ACCEPTING != 0)
            .all(|w| mine <= w & !ACCEPTING)
    }

    /// Waits (sleeping, from 50 µs up to 2 ms between looks) until [`Seat::may_accept`]
    /// or `stop()`.
    pub(crate) fn wait_turn(&self, stop: impl Fn() -> bool) {
        let mut pause = Duration::from_micros(50);
        while !self.may_accept() && !stop() {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

/// An open connection counted in its worker's seat.
#[derive(Debug)]
pub(crate) struct Opened(Seat);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.word().fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_busy_accepting_worker_accepts_next() {
        let b = Balance::new(3).unwrap();
        let (a, c, d) = (b.seat(0).unwrap(), b.seat(1).unwrap(), b.seat(2).unwrap());
        assert!(b.seat(3).is_none());
        a.accepting(true);
        c.accepting(true);
        let a1 = a.opened();
        assert!(!a.may_accept(), "one connection more than the other");
        assert!(c.may_accept());
        let c1 = c.opened();
        assert!(a.may_accept() && c.may_accept(), "level");
        // A worker that does not accept (not started, or retiring) is left out.
        let _d = (d.opened(), d.opened());
        assert!(a.may_accept() && c.may_accept());
        d.accepting(true);
        assert!(!d.may_accept());
        d.accepting(false);
        drop(a1);
        assert!(
            !c.may_accept() && a.may_accept(),
            "a closed one is counted out"
        );
        drop(c1);
        b.clear(0);
        assert!(c.may_accept(), "a cleared seat is out of the comparison");
    }
}
