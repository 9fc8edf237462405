//! What a port's control path reports when it fails.

use std::io;

use crate::network::{IoError, io_error_as};
use std::path::PathBuf;

/// Errors of a socket port's control path.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Another program is listening on the path.
    #[error("{0} is in use: another program is listening on it")]
    InUse(PathBuf),
    /// The path exists and is not a socket; we will not remove it.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The network refused an operation.
    #[error(transparent)]
    Network(#[from] crate::network::Error),
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PortError {
    io_error_as(context)
}
