//! Holder crate for the workspace's examples (see the `[[example]]` entries of its
//! Cargo.toml); it has no library code of its own.
