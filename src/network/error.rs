//! Errors of the control path: creating, opening, joining and changing a network.
//!
//! The data path never returns these: a frame that cannot be delivered is counted under a
//! [`DropReason`](super::counters::DropReason) instead.

use std::io;

use crate::shm::layout::LayoutError;
use crate::wire::MacAddress;

/// Errors of the control path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not usable as a file name.
    #[error("invalid network name {0:?}: use letters, digits, '-', '_' and '.' (at most 64)")]
    BadName(String),
    /// A network of that name exists.
    #[error("network {0:?} already exists")]
    Exists(String),
    /// No network of that name.
    #[error("no network named {name:?} in {dir}")]
    NotFound {
        /// Name asked for.
        name: String,
        /// Directory searched.
        dir: String,
    },
    /// The region is not a valid guestnet region.
    #[error("network {name:?} is unusable: {source}")]
    Layout {
        /// Name.
        name: String,
        /// What is wrong.
        #[source]
        source: LayoutError,
    },
    /// Every peer slot is taken.
    #[error("network {0:?} is full: every peer slot is taken")]
    Full(String),
    /// The MAC is held by another peer.
    #[error("MAC {mac} is already used by peer {slot}")]
    MacInUse {
        /// Address.
        mac: MacAddress,
        /// Slot holding it.
        slot: u16,
    },
    /// The MAC was learned behind another peer a moment ago: publishing it on a guest's
    /// behalf would take that host's unicast.
    #[error("MAC {mac} is in use behind peer {slot} (learned from its traffic)")]
    MacLearnedElsewhere {
        /// Address.
        mac: MacAddress,
        /// Slot it was learned behind.
        slot: u16,
    },
    /// The MAC cannot be published.
    #[error("MAC {0} cannot be published: it must be unicast and not all zeros")]
    BadMac(MacAddress),
    /// The file system cannot give the region the memory it needs up front.
    #[error(
        "cannot reserve {} ({needed_bytes} bytes) for network {name:?} in {dir}: {source}; \
         free some space there or create a smaller network (--max-peers, --ring-slots, --mtu)",
        mebibytes(*needed_bytes)
    )]
    Reserve {
        /// Name of the network being created.
        name: String,
        /// Directory it was created in.
        dir: String,
        /// Bytes it needs reserved: header, tables, and every ring's slots.
        needed_bytes: u64,
        /// Why the file system refused (`ENOSPC` for a full one).
        #[source]
        source: io::Error,
    },
    /// The file system cannot give a joining peer's ring the memory of its large buffers
    /// (the buffers senders write offload super-frames into).
    #[error(
        "cannot reserve {} ({needed_bytes} bytes) for the large buffers of peer slot {slot} of \
         network {name:?}: {source}; free some space in its directory, or create the network \
         with --gso-buffers 0",
        mebibytes(*needed_bytes)
    )]
    ReserveRing {
        /// Network name.
        name: String,
        /// The slot being joined.
        slot: u16,
        /// Bytes of its large buffers.
        needed_bytes: u64,
        /// Why the file system refused (`ENOSPC` for a full one).
        #[source]
        source: io::Error,
    },
    /// The network was destroyed and another one created under its name since this
    /// handle opened it.
    #[error(
        "network {name:?} was destroyed and created anew since this handle opened it; \
         open {path} again to join the new one"
    )]
    Replaced {
        /// Name.
        name: String,
        /// The path that now leads to another network.
        path: String,
    },
    /// Peers are still on the network, and removing it was not forced.
    #[error(
        "network {name:?} still has {} live peer{}: {}; stop {} first, or remove the file \
         anyway with guestnet destroy --force (live peers keep running on it until they \
         leave)",
        peers.len(),
        if peers.len() == 1 { "" } else { "s" },
        list(peers),
        if peers.len() == 1 { "it" } else { "them" }
    )]
    InUse {
        /// Name.
        name: String,
        /// The peers found alive.
        peers: Vec<LivePeer>,
    },
    /// The control lock stayed taken for longer than the caller may wait: its holder is
    /// stopped, hung, or extremely slow.
    #[error(
        "the control lock of network {name:?} has been held by {} for over {waited_ms} ms \
         (a stopped or hung process?); resume or end it, or try again",
        holder.map_or("another process".to_string(), |pid| format!("pid {pid}"))
    )]
    ControlLockBusy {
        /// Name.
        name: String,
        /// How long the caller waited, in milliseconds.
        waited_ms: u64,
        /// The holder's process, when `/proc` shows it.
        holder: Option<u32>,
    },
    /// The directory of the networks is not one to trust (see `directory`).
    #[error(
        "refusing to keep networks in {dir}: {problem}; use --dir DIR or set GUESTNET_DIR \
         to a directory of your own"
    )]
    UntrustedDirectory {
        /// The directory.
        dir: String,
        /// What is wrong with it.
        problem: DirectoryProblem,
    },
    /// The user may not create files in the directory of the networks.
    #[error(
        "cannot create networks in {dir}: it belongs to uid {owner} with mode {mode:04o}, \
         and you (uid {user}) may not write to it; use --dir DIR or set GUESTNET_DIR to a \
         directory of your own"
    )]
    DirectoryNotWritable {
        /// The directory.
        dir: String,
        /// Its owner.
        owner: u32,
        /// Its mode bits.
        mode: u32,
        /// Our effective uid.
        user: u32,
    },
    /// Something other than a regular file sits under a network's name.
    #[error(
        "{path} is {what}, not a network: guestnet opens no links or special files under a \
         network's name, since one could lead peers to a file of someone else's choosing"
    )]
    NotARegion {
        /// The path.
        path: String,
        /// What it is instead ("a symbolic link", "a FIFO"…).
        what: &'static str,
    },
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A system call that failed, and what was being done: the one shape of the `Io` variant
/// of every error type of the crate's control paths (the network's, the ports').
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    /// What was being done (`open /dev/shm/guestnet/lab`).
    pub context: String,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// Wraps an I/O error with what was being done, for any error type with an `Io` variant:
/// `.map_err(io_error("open the socket"))`. Each layer names its own type in a one-line
/// wrapper, so that `?` knows what to convert to.
pub(crate) fn io_error_as<E: From<IoError>>(
    context: impl Into<String>,
) -> impl FnOnce(io::Error) -> E {
    let context = context.into();
    move |source| E::from(IoError { context, source })
}

/// Why a directory is not trusted with networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryProblem {
    /// It is not a directory.
    #[error("it is not a directory")]
    NotADirectory,
    /// Another user owns it, and so may replace the networks in it.
    #[error(
        "it belongs to uid {owner}, not to you (uid {user}) or root, and its owner could \
         replace the networks in it"
    )]
    Owner {
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        user: u32,
    },
    /// Others may write to it and it is not sticky, so they may replace the networks in it.
    #[error(
        "its mode {mode:04o} lets others write to it without the sticky bit, so they could \
         replace the networks in it (chmod +t or go-w would stop that)"
    )]
    WritableByOthers {
        /// Its mode bits.
        mode: u32,
    },
}

/// A peer found alive on a network, as an error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePeer {
    /// Slot index.
    pub slot: u16,
    /// What kind of port it is, as `status` names it (`tap`, `vhost-user`…).
    pub kind: &'static str,
    /// Its process, as it published it.
    pub pid: u32,
    /// Its label (socket path, interface…), possibly empty.
    pub label: String,
}

impl std::fmt::Display for LivePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {} ({}, pid {}", self.slot, self.kind, self.pid)?;
        if !self.label.is_empty() {
            write!(f, ", {:?}", self.label)?;
        }
        write!(f, ")")
    }
}

fn list(peers: &[LivePeer]) -> String {
    peers
        .iter()
        .map(LivePeer::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result of the control path.
pub type Result<T> = std::result::Result<T, Error>;

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    io_error_as(context)
}
