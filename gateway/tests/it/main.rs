//! gateway's integration tests: the binary started as users start it, with real peers.

mod front;
mod fuzz_regressions;
mod nginx_site;
mod process;
mod serve;
