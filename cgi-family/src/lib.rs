//! The common currency of the gateway protocols: the **CGI environment** (meta-variables
//! plus a body, answered by a CGI-style response), and the wire formats that carry it
//! besides uwsgi: **FastCGI** and **SCGI**, for both the application side and the
//! web-server side. Also a parser for CGI response heads and a CGI script runner.
//!
//! ```text
//!  HTTP request head ──EnvBuilder──▶ Env ──▶ uwsgi vars   (uwsgi-proto)
//!                                      ├──▶ FastCGI PARAMS (fastcgi)
//!                                      ├──▶ SCGI netstring (scgi)
//!                                      └──▶ process env    (CgiScript)
//!  CGI response head ◀── parse_response_head ◀── STDOUT / stdout / raw reply
//! ```
//!
//! Every codec is sans-IO: bytes in, values out, with a typed error for each way the
//! input can be wrong and `Ok(None)` for "need more bytes".
//!
//! # Example
//!
//! ```
//! use cgi_family::{EnvBuilder, Flavor, RequestHead, fastcgi, scgi};
//!
//! let head = RequestHead::new("POST", "/submit?x=1", "HTTP/1.1")
//!     .header("Host", "example.com")
//!     .header("Content-Type", "text/plain")
//!     .header("Content-Length", "5");
//! let env = EnvBuilder::new(Flavor::Scgi)
//!     .peer("127.0.0.1:40000".parse().unwrap())
//!     .local("127.0.0.1:8080".parse().unwrap())
//!     .server_name("example.com")
//!     .build(&head)?;
//! assert_eq!(env.iter().next(), Some((&b"CONTENT_LENGTH"[..], &b"5"[..])));
//!
//! let mut wire = Vec::new();
//! scgi::encode_request(&env, &mut wire)?;
//! let (parsed, _) = scgi::parse_header(&wire, &scgi::ScgiLimits::default())?.unwrap();
//! assert_eq!(parsed.get(b"QUERY_STRING"), Some(&b"x=1"[..]));
//!
//! let mut records = Vec::new();
//! fastcgi::encode_request(1, false, &env, b"hello", &mut records)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod env;
pub mod fastcgi;
pub mod fuzzing;
mod response;
#[cfg(feature = "runner")]
mod runner;
pub mod scgi;

pub use env::{
    AddrText, Env, EnvBuilder, EnvSink, Flavor, HeadSource, PathError, Piece, RequestHead,
    WriteError, names, normalize_path,
};
pub use response::{
    CgiResponse, HeadOptions, ResponseError, ResponseHeadDecoder, ResponseKind, StatusLine,
    parse_response_head,
};
#[cfg(feature = "runner")]
pub use runner::{CgiBody, CgiOutput, CgiScript, RunError};
