//! **Not yet implemented.** This crate will hold the PEP 3333 bridge into embedded
//! CPython (through pyo3): loading apps the way uWSGI's `wsgi-file`/`module` options do,
//! building `environ` from a `cgi-family` env, `start_response`, a streaming
//! `wsgi.input`, streamed response bodies and a pool of Python threads.
#![forbid(unsafe_code)]
