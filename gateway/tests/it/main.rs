//! gateway's integration tests: the binary started as users start it, with real peers.

mod front;
mod fuzz_regressions;
mod process;
mod serve;
