//! The SCGI header, one-shot against incremental.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cgi_family::fuzzing::fuzz_scgi(data));
