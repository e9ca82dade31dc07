//! nginx configuration syntax: never a panic; a tree written back reads the same.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::config::nginx::fuzz_parse(data));
