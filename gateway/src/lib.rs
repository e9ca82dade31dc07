//! **Not yet implemented.** This crate will hold the composable server and the `gateway`
//! binary: HTTP, uwsgi, FastCGI and SCGI listeners on TCP and unix sockets, nginx-style
//! routing, static files, upstream pools with load balancing, the master/worker process
//! model, and configuration from the command line, uWSGI ini files and nginx site configs.
#![forbid(unsafe_code)]
