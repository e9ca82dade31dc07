//! Errors of the host.

use std::path::PathBuf;

/// Why the application could not be loaded (reported at start-up, never on a request).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Neither `wsgi-file` nor `module` was given.
    #[error("no application: give a wsgi-file or a module")]
    NoApp,
    /// `chdir` failed.
    #[error("cannot chdir to {path}")]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Python raised while setting up the path or importing the application.
    #[error("{what} failed:\n{traceback}")]
    Python {
        /// What was being done.
        what: String,
        /// The formatted Python traceback.
        traceback: String,
    },
    /// The module has no such attribute, or it is not callable.
    #[error("{module} has no callable named {callable:?}")]
    NotCallable {
        /// Where it was looked up.
        module: String,
        /// The name looked up.
        callable: String,
    },
}

/// Why a request could not be handed to the application.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Every thread is busy and the queue is full: answer 503.
    #[error("all WSGI threads are busy and the queue is full")]
    Overloaded,
    /// The host was shut down.
    #[error("the WSGI host is shut down")]
    Closed,
}

/// A request body that could not be read (the client went away mid-upload, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("request body: {0}")]
pub struct BodyError(pub String);

/// A response that was aborted after its headers went out (the app raised while
/// iterating); the connection must be cut so the client sees an incomplete response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("response aborted: {0}")]
pub struct AbortError(pub String);
