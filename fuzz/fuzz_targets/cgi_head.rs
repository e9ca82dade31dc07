//! The CGI response head, one-shot against incremental.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cgi_family::fuzzing::fuzz_cgi_head(data));
