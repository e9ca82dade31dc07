//! wsgi-host's integration tests, in one binary (one interpreter) to save link time.

mod bridge;
mod frameworks;
mod input;
mod loading;
mod misbehaving;
mod service;
mod support;
