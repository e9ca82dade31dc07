//! The one-shot uwsgi parsers (packet, vars block, array) on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uwsgi_proto::fuzzing::fuzz_parse(data));
