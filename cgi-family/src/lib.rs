//! **Not yet implemented.** This crate will hold the CGI environment that every gateway
//! protocol carries (an ordered, byte-exact env built from an HTTP request head the way
//! nginx's stock `*_params` files build it), the FastCGI and SCGI codecs for both the
//! application and the web-server side, the CGI response-head parser and a CGI script
//! runner. It depends on `uwsgi-proto` only.
#![forbid(unsafe_code)]
