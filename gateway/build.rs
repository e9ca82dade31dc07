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
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
