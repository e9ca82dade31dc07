//! Replays the gateway's fuzz targets' seeds and every input that ever crashed them
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), so stable CI keeps them fixed.

use std::path::Path;

/// Feeds every stored input of `target` to `check`; there must be some.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join(target)) else {
            continue;
        };
        for entry in entries {
            check(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no stored inputs for {target}");
}

#[test]
fn nginx_conf_corpus() {
    replay("nginx_conf", gateway::config::nginx::fuzz_parse);
}

#[test]
fn log_format_corpus() {
    replay("log_format", gateway::access::fuzz_format);
}
