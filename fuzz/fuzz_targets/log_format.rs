//! Access-log formats (nginx's `$var`, uWSGI's `%(var)`): never a panic; text without
//! variables renders as written.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::access::fuzz_format(data));
