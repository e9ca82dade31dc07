//! Replays the fuzz targets' seed corpus and every input a fuzzer ever crashed on
//! (`fuzz/regressions/<target>/`), so stable CI keeps them fixed.

use std::path::Path;

use uwsgi_proto::fuzzing::{fuzz_decoder, fuzz_parse};

fn replay(dir: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn uwsgi_parse_corpus() {
    assert!(
        replay("uwsgi_parse", fuzz_parse) > 0,
        "the seed corpus is present"
    );
}

#[test]
fn uwsgi_decoder_corpus() {
    assert!(
        replay("uwsgi_decoder", fuzz_decoder) > 0,
        "the seed corpus is present"
    );
}
