//! The incremental uwsgi decoder, fed in several split patterns, against the one-shot parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uwsgi_proto::fuzzing::fuzz_decoder(data));
