//! Embeds the path of the Python this crate was built against (its shared libpython) as
//! an rpath in this package's test and example binaries, so they load that libpython and
//! not another one on the system library path (Debian's, which sees none of pip's
//! packages). Binaries of other packages that link this crate do the same in their own
//! build scripts.
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // Relative relocations packed (DT_RELR): the binary stays position-independent, but
    // its half a megabyte of relocation records, read at every start and then resident in
    // each process, shrinks to a few kilobytes.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions the common jobs run (scripts/link-order.sh lists them, in call-graph
    // order) laid out together at the start of the code: a process maps about 1.5 MB of
    // the binary's code instead of the ~3.8 MB those functions touch when scattered (the
    // kernel maps 64 KiB around every page touched). lld's option, so only where rustc
    // links with its own lld (x86_64 Linux since Rust 1.90) and no linker is chosen in
    // RUSTFLAGS; GATEWAY_LINK_ORDER=0 turns it off. Names the file has that the build
    // lacks (a stale list) are skipped.
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link-order.txt");
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("GATEWAY_LINK_ORDER").as_deref() != Ok("0")
        && links_with_rust_lld()
        && order.is_file()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=GATEWAY_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}

/// Whether rustc links this build with its bundled lld: the default for
/// x86_64-unknown-linux-gnu from Rust 1.90, unless RUSTFLAGS name a linker of their own.
fn links_with_rust_lld() -> bool {
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
