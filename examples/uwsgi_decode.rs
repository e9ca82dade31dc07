//! Decodes a uwsgi packet and prints its header and vars.
//!
//! With no argument it decodes the packet Debian's nginx sent through `uwsgi_pass`
//! (stock `uwsgi_params`) that the test suite captured into
//! `uwsgi-proto/tests/data/nginx_get.bin`; with a path, that file instead.
//!
//! ```text
//! cargo run --example uwsgi_decode [-- FILE]
//! ```

use anyhow::{Context, bail};
use uwsgi_proto::{Limits, RequestDecoder};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../uwsgi-proto/tests/data/nginx_get.bin"
        )
        .to_owned()
    });
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut decoder = RequestDecoder::new(Limits::new());
    let Some(head) = decoder.decode_head(&mut buf)? else {
        bail!("{path}: {} bytes is not a whole uwsgi packet", bytes.len());
    };
    let h = head.header();
    println!(
        "{path}: modifier1={:?} datasize={} modifier2={}",
        h.modifier1, h.datasize, h.modifier2
    );
    match head.vars() {
        Some(vars) => {
            for (k, v) in vars {
                println!(
                    "  {} = {:?}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                );
            }
            println!(
                "{} vars, CONTENT_LENGTH {}",
                vars.len(),
                head.content_length()
            );
        }
        None => println!("  opaque payload of {} bytes", head.payload().len()),
    }
    let mut body = Vec::new();
    while let Some(chunk) = decoder.decode_body(&mut buf) {
        body.extend_from_slice(&chunk);
    }
    if !body.is_empty() {
        println!("body: {:?}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
