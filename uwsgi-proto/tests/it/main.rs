//! uwsgi-proto's integration tests, in one binary to save link time.

mod decoder;
mod fuzz_regressions;
mod io;
mod peers;
mod roundtrip;
