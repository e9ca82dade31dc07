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
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
