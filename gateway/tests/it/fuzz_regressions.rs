//! Replays the `nginx_conf` fuzz target's seeds and every input that ever crashed it
//! (`fuzz/seeds/nginx_conf/`, `fuzz/regressions/nginx_conf/`), so stable CI keeps them fixed.

use std::path::Path;

#[test]
fn nginx_conf_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join("nginx_conf")) else {
            continue;
        };
        for entry in entries {
            gateway::config::nginx::fuzz_parse(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0);
}

/// Replays the `log_format` fuzz target's seeds and crashes.
#[test]
fn log_format_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join("log_format")) else {
            continue;
        };
        for entry in entries {
            gateway::access::fuzz_format(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0);
}
