//! Claiming a unix socket path.
//!
//! QEMU's `-netdev stream` and `-netdev dgram` reach guestnet through unix sockets that a
//! port binds at a path the user names. A path left behind by a port that crashed must
//! not keep the next one from starting, yet a path some live program is listening on must
//! never be taken from it: [`SocketPath`] tells the two apart by connecting to it before
//! removing anything, and removes the file on exit only if it is still the one we bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

// What lived here before the split, still reachable by its old path for the code that
// imports it from here.
pub(crate) use super::batch::{DatagramBatch, FrameBatch};
pub use super::doorbell::Doorbell;
pub use super::error::PortError;
pub(crate) use super::error::io_error;
pub(crate) use super::label::label;
pub(crate) use super::mac::check_mac;

/// How a socket path is probed for a live listener before a port binds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
}

/// Connects to `path` to learn whether anyone listens there.
fn probe(path: &Path, socket_type: SocketType) -> io::Result<()> {
    match socket_type {
        SocketType::Stream => std::os::unix::net::UnixStream::connect(path).map(drop),
        SocketType::Datagram => {
            std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path))
        }
    }
}

/// A unix socket path a port has bound. Dropping it removes the file, if the file is still
/// the socket we bound (a successor may have replaced it).
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    socket_type: SocketType,
    /// Device and inode of the socket we bound.
    identity: Option<(u64, u64)>,
}

impl SocketPath {
    /// Makes `path` free to bind: nothing there, or a stale socket nobody listens on
    /// (which is removed). Fails if a live program listens there or the file is not a
    /// socket.
    pub(crate) fn clear_stale(path: &Path, socket_type: SocketType) -> Result<(), PortError> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(format!("stat {}", path.display()))(e)),
        };
        if !metadata.file_type().is_socket() {
            return Err(PortError::NotASocket(path.to_path_buf()));
        }
        match probe(path, socket_type) {
            // Only "connection refused" proves that nobody is bound there any more. Any
            // other answer (accepted, wrong socket type, permission denied) means the
            // path belongs to someone, or may: leave it alone.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale socket");
                std::fs::remove_file(path)
                    .map_err(io_error(format!("remove stale socket {}", path.display())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(()) => Err(PortError::InUse(path.to_path_buf())),
            Err(e) => Err(io_error(format!("probe {}", path.display()))(e)),
        }
    }

    /// Records the socket just bound at `path`, to remove it on drop.
    pub(crate) fn bound(path: &Path, socket_type: SocketType) -> SocketPath {
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        SocketPath {
            path: path.to_path_buf(),
            socket_type,
            identity,
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        // Ours if it is the same file and nobody listens on it (our own socket is closed
        // by now). The inode check alone is not enough: a successor's socket may get the
        // inode number ours just freed.
        let found = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if found.is_some()
            && found == self.identity
            && probe(&self.path, self.socket_type)
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener};

    #[test]
    fn stale_socket_is_removed_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A listener that is gone leaves its file behind.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        SocketPath::clear_stale(&path, SocketType::Stream).unwrap();
        assert!(!path.exists());
        // A live listener keeps its path.
        let live = UnixListener::bind(&path).unwrap();
        assert!(matches!(
            SocketPath::clear_stale(&path, SocketType::Stream),
            Err(PortError::InUse(_))
        ));
        assert!(path.exists());
        drop(live);
        std::fs::remove_file(&path).unwrap();
        // The same for datagram sockets.
        let live = UnixDatagram::bind(&path).unwrap();
        assert!(matches!(
            SocketPath::clear_stale(&path, SocketType::Datagram),
            Err(PortError::InUse(_))
        ));
        drop(live);
        SocketPath::clear_stale(&path, SocketType::Datagram).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            SocketPath::clear_stale(&path, SocketType::Stream),
            Err(PortError::NotASocket(_))
        ));
        assert!(path.exists());
    }

    #[test]
    fn drop_removes_only_the_socket_we_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = UnixListener::bind(&path).unwrap();
        let claim = SocketPath::bound(&path, SocketType::Stream);
        // Someone else replaced the file meanwhile: it is theirs now.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = UnixListener::bind(&path).unwrap();
        drop(claim);
        assert!(path.exists());
        let claim = SocketPath::bound(&path, SocketType::Stream);
        drop(second);
        drop(claim);
        assert!(!path.exists());
    }
}
