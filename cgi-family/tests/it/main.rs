//! cgi-family's integration tests, in one binary to save link time.

mod env_nginx;
mod fastcgi_peers;
mod fuzz_regressions;
mod props;
mod runner;
mod scgi_peers;
mod support;
