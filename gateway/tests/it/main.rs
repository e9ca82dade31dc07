//! gateway's integration tests: the binary started as users start it, with real peers.

mod front;
mod process;
mod serve;
