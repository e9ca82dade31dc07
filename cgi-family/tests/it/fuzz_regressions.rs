//! Replays the cgi-family fuzz targets' seeds and every input that ever crashed one
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), so stable CI keeps them fixed.

use std::path::Path;

use cgi_family::fuzzing::{fuzz_cgi_head, fuzz_fastcgi_params, fuzz_fastcgi_stream, fuzz_scgi};

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join(target)) else {
            continue;
        };
        for entry in entries {
            f(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn fastcgi_stream_corpus() {
    assert!(replay("fastcgi_stream", fuzz_fastcgi_stream) > 0);
}

#[test]
fn fastcgi_params_corpus() {
    assert!(replay("fastcgi_params", fuzz_fastcgi_params) > 0);
}

#[test]
fn scgi_header_corpus() {
    assert!(replay("scgi_header", fuzz_scgi) > 0);
}

#[test]
fn cgi_head_corpus() {
    assert!(replay("cgi_head", fuzz_cgi_head) > 0);
}
