//! cgi-family integration tests.
