//! The FastCGI application side over an arbitrary record stream, whole and split.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cgi_family::fuzzing::fuzz_fastcgi_stream(data));
