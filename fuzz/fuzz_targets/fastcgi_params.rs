//! FastCGI name-value pairs: parse, re-encode, parse again.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cgi_family::fuzzing::fuzz_fastcgi_params(data));
