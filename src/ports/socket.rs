//! What the two socket ports share: claiming a socket path, being told to stop, carrying
//! a batch of frames between threads, and learning a guest's MAC from its traffic.
//!
//! QEMU's `-netdev stream` and `-netdev dgram` reach guestnet through unix sockets that a
//! port binds at a path the user names. A path left behind by a port that crashed must
//! not keep the next one from starting, yet a path some live program is listening on must
//! never be taken from it: [`SocketPath`] tells the two apart by connecting to it before
//! removing anything, and removes the file on exit only if it is still the one we bound.
//!
//! A port serves until a [`Doorbell`] rings: a self-pipe that a signal handler, another
//! thread or a test can ring, and that a `poll` loop waits on beside its sockets, so an idle
//! port sleeps in the kernel instead of waking up to check a flag.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::network::Control;
use crate::wire::{EthernetFrame, MacAddress};

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
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The network refused an operation.
    #[error(transparent)]
    Network(#[from] crate::network::Error),
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PortError {
    let context = context.into();
    move |source| PortError::Io { context, source }
}

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

/// Refuses, before any client comes, a `--mac` that no peer could publish.
pub(crate) fn check_mac(mac: Option<MacAddress>) -> Result<(), PortError> {
    match mac {
        Some(mac) if mac.is_multicast() || mac.is_zero() => {
            Err(crate::network::Error::BadMac(mac).into())
        }
        _ => Ok(()),
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

/// A self-pipe: any thread, or a signal handler, rings it; a `poll` loop wakes on it.
///
/// Ringing writes one byte; the byte stays until [`drain`](Doorbell::drain), so a bell
/// used to stop a port stays rung and every loop that looks sees it.
#[derive(Debug)]
pub struct Doorbell {
    read: OwnedFd,
    write: OwnedFd,
}

impl Doorbell {
    /// A new, silent doorbell.
    pub fn new() -> io::Result<Doorbell> {
        use rustix::pipe::PipeFlags;
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Doorbell { read, write })
    }

    /// Rings the bell. Never blocks: if the pipe is full, it is rung already.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.write, &[1]);
    }

    /// Rings the bell whenever one of `signals` arrives (for example `SIGINT`, `SIGTERM`).
    pub fn ring_on_signals(&self, signals: &[i32]) -> io::Result<()> {
        for &signal in signals {
            let write = self.write.try_clone()?;
            signal_hook::low_level::pipe::register(signal, write)?;
        }
        Ok(())
    }

    /// Whether the bell has been rung (and not drained since).
    pub fn is_rung(&self) -> bool {
        self.wait(Duration::ZERO)
    }

    /// Waits up to `timeout` for the bell; returns whether it has been rung.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.read,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
    }

    /// Silences the bell.
    pub fn drain(&self) {
        let mut buffer = [0u8; 64];
        // Bounded: the pipe holds at most its capacity, and it is non-blocking.
        while matches!(rustix::io::read(&self.read, &mut buffer), Ok(n) if n > 0) {}
    }
}

/// The end to poll for readability.
impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// Frames copied out of a decoder or a ring, stored back to back so that a batch costs
/// no allocation once warmed up.
#[derive(Debug, Default)]
pub(crate) struct FrameBatch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FrameBatch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ends.push(self.bytes.len());
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// One datagram of a round: who sent it and where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Received<A> {
    /// The sender, as the port wants to know it.
    pub from: A,
    start: usize,
    end: usize,
    /// Longer than its slot: the socket cut it short.
    pub oversize: bool,
}

/// The datagrams a port takes from its socket in one round, each in its own slot of one
/// buffer, so that a round costs no allocation and its frames can go into the network as
/// one batch.
#[derive(Debug)]
pub(crate) struct DatagramBatch<A> {
    buffer: Vec<u8>,
    slot: usize,
    datagrams: Vec<Received<A>>,
}

impl<A> DatagramBatch<A> {
    /// Room for `slots` datagrams of up to `slot` bytes each.
    pub fn new(slots: usize, slot: usize) -> Self {
        DatagramBatch {
            buffer: vec![0; slots * slot],
            slot,
            datagrams: Vec::with_capacity(slots),
        }
    }

    /// Replaces the round with the datagrams waiting on `socket`, without waiting for
    /// more: at most one attempt per slot, whatever each attempt turns out to be.
    /// `sender` turns the source address into what the port wants to know, or `None` to
    /// drop the datagram (the caller counts it if it can). `MSG_TRUNC` reports a
    /// datagram's real length, so one longer than a slot is kept, flagged `oversize`.
    pub fn receive(
        &mut self,
        socket: impl AsFd,
        mut sender: impl FnMut(Option<rustix::net::SocketAddrAny>) -> Option<A>,
    ) {
        use rustix::io::Errno;
        use rustix::net::RecvFlags;
        self.datagrams.clear();
        let slots = self.buffer.len() / self.slot.max(1);
        for _ in 0..slots {
            let start = self.datagrams.len() * self.slot;
            let Some(space) = self.buffer.get_mut(start..start + self.slot) else {
                break;
            };
            match rustix::net::recvfrom(&socket, space, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
                Ok((stored, announced, from)) => {
                    if let Some(from) = sender(from) {
                        self.datagrams.push(Received {
                            from,
                            start,
                            end: start + stored,
                            oversize: announced > stored,
                        });
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    if e != Errno::AGAIN {
                        tracing::warn!(error = %e, "receiving a datagram failed");
                    }
                    break;
                }
            }
        }
    }

    /// The round's datagrams, in the order they arrived.
    pub fn datagrams(&self) -> &[Received<A>] {
        &self.datagrams
    }

    /// The bytes of one of the round's datagrams (at most a slot).
    pub fn bytes(&self, datagram: &Received<A>) -> &[u8] {
        &self.buffer[datagram.start..datagram.end]
    }
}

/// Publishes a guest's MAC, taken from the source address of its first frame.
///
/// Under QEMU the port is never told the guest's MAC (it stays in QEMU), so without
/// `--mac` the peer starts with the network's default address and the guest's own address
/// is only learned behind it. Publishing it makes the table show the guest as it is and
/// lets unicast reach it without depending on learning and ageing. One attempt only:
/// a guest that changes addresses later is still reached through learning.
#[derive(Debug)]
pub(crate) struct MacLearner {
    done: bool,
}

impl MacLearner {
    /// `fixed`: the MAC was given on the command line; learn nothing.
    pub fn new(fixed: bool) -> MacLearner {
        MacLearner { done: fixed }
    }

    /// Looks at a frame about to be sent; on the first usable one, publishes its source.
    pub fn observe(&mut self, control: impl FnOnce() -> Control, frame: &[u8], label: &str) {
        if self.done {
            return;
        }
        let Ok(view) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let source = view.source();
        // A multicast or zero source is refused by the network anyway; wait for a real one.
        if source.is_multicast() || source.is_zero() {
            return;
        }
        self.done = true;
        let control = control();
        if control.mac() == source {
            return;
        }
        match control.set_mac_address(source) {
            Ok(()) => tracing::info!(port = label, mac = %source, "published the guest's MAC"),
            Err(e) => tracing::warn!(
                port = label,
                mac = %source,
                kept = %control.mac(),
                error = %e,
                "cannot publish the guest's MAC; keeping the default (the guest is still reached by learning)"
            ),
        }
    }
}

/// A label for `status` (which keeps 32 bytes): `prefix` and as much of the end of
/// `detail` as fits, since the end of a path (the file name) tells sockets apart.
pub(crate) fn label(prefix: &str, detail: &str) -> String {
    const LIMIT: usize = 32;
    let room = LIMIT.saturating_sub(prefix.len());
    if detail.len() <= room {
        return format!("{prefix}{detail}");
    }
    let mut start = detail.len() - room.saturating_sub(2);
    while !detail.is_char_boundary(start) {
        start += 1;
    }
    format!("{prefix}..{}", &detail[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener};

    #[test]
    fn label_keeps_the_end_of_a_long_path() {
        assert_eq!(label("stream#1 ", "/tmp/a.sock"), "stream#1 /tmp/a.sock");
        let long = label("stream#12 ", "/tmp/.tmpAbCdEf/some/deep/dir/vm0.sock");
        assert_eq!(long.len(), 32);
        assert!(long.starts_with("stream#12 .."));
        assert!(long.ends_with("vm0.sock"));
    }

    #[test]
    fn batch_hands_back_the_frames_it_was_given() {
        let mut batch = FrameBatch::default();
        assert!(batch.is_empty());
        batch.push(b"first");
        batch.push(b"");
        batch.push(b"third!");
        let frames: Vec<&[u8]> = batch.iter().collect();
        assert_eq!(frames, vec![&b"first"[..], b"", b"third!"]);
        batch.clear();
        assert_eq!(batch.iter().count(), 0);
    }

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

    #[test]
    fn doorbell_stays_rung_until_drained() {
        let bell = Doorbell::new().unwrap();
        assert!(!bell.is_rung());
        bell.ring();
        bell.ring();
        assert!(bell.is_rung());
        assert!(bell.is_rung());
        bell.drain();
        assert!(!bell.is_rung());
        assert!(!bell.wait(Duration::from_millis(1)));
    }

    #[test]
    fn a_mac_no_peer_could_publish_is_refused_up_front() {
        assert!(check_mac(None).is_ok());
        assert!(check_mac(Some(MacAddress([0x52, 0x54, 0, 0, 0, 1]))).is_ok());
        assert!(check_mac(Some(MacAddress::BROADCAST)).is_err());
        assert!(check_mac(Some(MacAddress::ZERO)).is_err());
    }
}
