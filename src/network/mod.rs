//! The network: a named region, its peer table, and the control operations on it.
//!
//! [`Network`] creates, opens, lists and destroys regions, and reports their state.
//! [`Peer`] is one member of a network: it sends, receives and sleeps.
//!
//! Control operations (join, leave, changing a MAC or a flag, reclaiming a dead peer) are
//! rare; they take the region's *control lock* (an OFD lock on one byte of the file, which
//! the kernel releases if its holder dies) and rewrite table entries between two
//! increments of the table version, a seqlock that senders check once per batch to know
//! when to refresh their cached view of the table. Data operations take no lock at all.
//!
//! **Liveness.** Every peer holds an OFD lock on its own byte of the region file for as
//! long as it lives. A periodic *sweep*, run by whichever peer or command gets to it first
//! (at most [`SWEEP_INTERVAL_NS`] apart across the whole network), probes the lock of
//! every used slot; a slot whose lock is free belongs to a dead process and is reclaimed:
//! frames it was halfway through writing are marked abandoned, the addresses learned
//! behind it are forgotten, and its MAC leaves the table so it stops attracting traffic.

pub mod check;
pub mod counters;
pub mod fdb;
pub mod forward;
pub mod peer;
pub mod ring;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use serde::Serialize;

use crate::shm::layout::{
    self, FdbEntry, Geometry, Header, LargeHeader, Layout, LayoutError, PeerEntry, RingControl,
    SlotHeader, status,
};
use crate::shm::{LockState, Mapping, RangeLock, Strided};
use crate::wire::MacAddress;
use counters::PeerCounters;
use forward::PeerView;
use ring::{SlotMemory, SlotMeta};

pub use peer::{Control, JoinOptions, Peer, Receiver, Sender, Sent, offloads};

/// The whole network sweeps for dead peers at most this often.
pub const SWEEP_INTERVAL_NS: u64 = 250_000_000;

/// Environment variable naming the directory that holds the regions.
pub const DIR_ENV: &str = "GUESTNET_DIR";
/// Default directory of the regions.
pub const DEFAULT_DIR: &str = "/dev/shm/guestnet";

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
    /// The MAC cannot be published.
    #[error("MAC {0} cannot be published: it must be unicast and not all zeros")]
    BadMac(MacAddress),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Result of the control path.
pub type Result<T> = std::result::Result<T, Error>;

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// What kind of port a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// A process using the library.
    Process,
    /// A `-netdev stream` connection.
    Stream,
    /// A `-netdev dgram` sender.
    Dgram,
    /// A pcap capture.
    Capture,
    /// A TAP device.
    Tap,
    /// A vhost-user VM.
    VhostUser,
    /// A VXLAN tunnel.
    Vxlan,
    /// A benchmark process.
    Bench,
    /// A value this version does not know.
    Unknown,
}

impl PortKind {
    /// Stored code.
    pub const fn code(self) -> u32 {
        match self {
            PortKind::Process => 1,
            PortKind::Stream => 2,
            PortKind::Dgram => 3,
            PortKind::Capture => 4,
            PortKind::Tap => 5,
            PortKind::VhostUser => 6,
            PortKind::Vxlan => 7,
            PortKind::Bench => 8,
            PortKind::Unknown => 0,
        }
    }

    /// Decodes a stored code.
    pub const fn from_code(code: u32) -> PortKind {
        match code {
            1 => PortKind::Process,
            2 => PortKind::Stream,
            3 => PortKind::Dgram,
            4 => PortKind::Capture,
            5 => PortKind::Tap,
            6 => PortKind::VhostUser,
            7 => PortKind::Vxlan,
            8 => PortKind::Bench,
            _ => PortKind::Unknown,
        }
    }

    /// Name shown in `status`.
    pub const fn name(self) -> &'static str {
        match self {
            PortKind::Process => "process",
            PortKind::Stream => "stream",
            PortKind::Dgram => "dgram",
            PortKind::Capture => "capture",
            PortKind::Tap => "tap",
            PortKind::VhostUser => "vhost-user",
            PortKind::Vxlan => "vxlan",
            PortKind::Bench => "bench",
            PortKind::Unknown => "unknown",
        }
    }
}

/// Options for [`Network::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// Geometry.
    pub geometry: Geometry,
    /// Drop unknown unicast instead of flooding it.
    pub drop_unknown_unicast: bool,
    /// File mode of the region (0o600 by default: only the creating user may join).
    pub mode: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            geometry: Geometry::default(),
            drop_unknown_unicast: false,
            mode: 0o600,
        }
    }
}

/// Monotonic time in nanoseconds (the same clock in every process of the host).
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The directory regions live in: `$GUESTNET_DIR`, else [`DEFAULT_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

/// A mapped region and its checked layout, shared by every handle of one process.
#[derive(Debug)]
pub(crate) struct Region {
    /// Serialises this process's control operations: OFD locks do not exclude two
    /// threads that use the same open file description.
    pub control_mutex: std::sync::Mutex<()>,
    pub name: String,
    pub path: PathBuf,
    pub mapping: Mapping,
    pub layout: Layout,
}

impl Region {
    pub fn header(&self) -> &Header {
        // The layout was computed from this very header, so offset 0 is in bounds; a
        // failure here would mean the mapping shrank, which Mapping does not allow.
        self.mapping
            .get::<Header>(0)
            .expect("views_fit checked the header when the region was opened")
    }

    pub fn peers(&self) -> Strided<'_, PeerEntry> {
        self.mapping
            .strided(
                self.layout.peer_table_offset,
                layout::PEER_ENTRY_SIZE,
                self.layout.geometry.max_peers as usize,
            )
            .expect("views_fit checked the peer table when the region was opened")
    }

    pub fn fdb(&self) -> Strided<'_, FdbEntry> {
        self.mapping
            .strided(
                self.layout.fdb_offset,
                std::mem::size_of::<FdbEntry>(),
                layout::FDB_ENTRIES,
            )
            .expect("views_fit checked the learned table when the region was opened")
    }

    #[inline]
    pub fn ring(&self, index: u16) -> ShmRing<'_> {
        let layout = &self.layout;
        let base = layout.ring_offset(index as usize);
        let control = self
            .mapping
            .strided::<RingControl>(
                layout.rings_offset,
                layout.ring_stride,
                layout.geometry.max_peers as usize,
            )
            .expect("views_fit checked the rings when the region was opened")
            .at(index as u64);
        let slots = self
            .mapping
            .strided::<SlotHeader>(
                base + layout::RING_CONTROL_SIZE,
                layout.slot_size,
                layout.geometry.ring_slots as usize,
            )
            .expect("views_fit checked the last ring's slots when the region was opened");
        // A network without large buffers gets an empty view.
        let large = self.mapping.strided::<LargeHeader>(
            base + layout.large_offset_in_ring,
            layout::LARGE_STRIDE,
            layout.geometry.gso_buffers as usize,
        );
        ShmRing {
            mapping: &self.mapping,
            control,
            slots,
            large,
            max_frame: layout.max_frame,
        }
    }

    pub fn network_tag(&self) -> u16 {
        self.header().network_tag.load(Ordering::Relaxed) as u16
    }

    pub fn drop_unknown_unicast(&self) -> bool {
        self.header().options.load(Ordering::Relaxed) & layout::OPTION_DROP_UNKNOWN_UNICAST != 0
    }

    /// Opens and maps a region file, checking its header against its size.
    fn open(dir: &Path, name: &str) -> Result<(Region, File)> {
        check_name(name)?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::NotFound {
                        name: name.to_string(),
                        dir: dir.display().to_string(),
                    }
                } else {
                    Error::Io {
                        context: format!("open {}", path.display()),
                        source: e,
                    }
                }
            })?;
        let size = file
            .metadata()
            .map_err(io_error(format!("stat {}", path.display())))?
            .len();
        let layout_error = |source| Error::Layout {
            name: name.to_string(),
            source,
        };
        if size < layout::HEADER_SIZE as u64 {
            return Err(layout_error(LayoutError::Size {
                found: size,
                expected: layout::HEADER_SIZE as u64,
            }));
        }
        let len = usize::try_from(size).map_err(|_| {
            layout_error(LayoutError::Size {
                found: size,
                expected: 0,
            })
        })?;
        let mapping = Mapping::map(std::os::fd::AsFd::as_fd(&file), len)
            .map_err(io_error(format!("map {}", path.display())))?;
        let header = mapping
            .get::<Header>(0)
            .ok_or_else(|| layout_error(LayoutError::Magic(0)))?;
        let layout = Layout::from_header(header, size).map_err(layout_error)?;
        if !views_fit(&mapping, &layout) {
            return Err(layout_error(LayoutError::Size {
                found: size,
                expected: layout.total_size as u64,
            }));
        }
        Ok((
            Region {
                control_mutex: std::sync::Mutex::new(()),
                name: name.to_string(),
                path,
                mapping,
                layout,
            },
            file,
        ))
    }

    /// Runs `f` under the control lock, between two increments of the table version.
    pub fn with_control_lock<T>(&self, lock_file: &File, f: impl FnOnce() -> T) -> Result<T> {
        // A poisoned mutex only means another thread panicked while holding it; the
        // table itself is protected by the seqlock repair below, so carry on.
        let _guard = self
            .control_mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let byte = self.layout.control_lock_byte();
        RangeLock::lock(lock_file, byte, 1).map_err(io_error("take the control lock"))?;
        let version = &self.header().table_version;
        // A holder that died mid-update left the version odd; `| 1` keeps it odd while we
        // work and the final store makes it even again.
        let start = version.load(Ordering::Relaxed) | 1;
        version.store(start, Ordering::Relaxed);
        // Readers that see the new entries must also see the odd version before them.
        fence(Ordering::Release);
        let result = f();
        version.store(start.wrapping_add(1), Ordering::Release);
        let _ = RangeLock::unlock(lock_file, byte, 1);
        Ok(result)
    }

    /// Reads the table as a consistent snapshot of the peers that are up.
    pub fn snapshot(&self, out: &mut Vec<PeerView>) -> u64 {
        let header = self.header();
        let peers = self.peers();
        let mut version = 0;
        // Bounded: a writer that died mid-update leaves an odd version until the next
        // control operation, and we must not wait for that. After the tries we use what
        // we read: each entry is validated on its own and the next batch looks again.
        for _ in 0..64 {
            version = header.table_version.load(Ordering::Acquire);
            if version & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            read_table(peers, out);
            fence(Ordering::Acquire);
            if header.table_version.load(Ordering::Relaxed) == version {
                return version;
            }
        }
        read_table(peers, out);
        // An odd version never equals a stable one, so the caller refreshes again soon.
        version | 1
    }

    /// Reclaims dead peers if this process wins the sweep for now; `force` ignores the
    /// interval (used by commands). Returns the slots reclaimed.
    pub fn sweep(&self, lock_file: &File, own: Option<u16>, now_ns: u64, force: bool) -> Vec<u16> {
        let last = &self.header().last_sweep_ns;
        let previous = last.load(Ordering::Relaxed);
        if !force
            && (now_ns.saturating_sub(previous) < SWEEP_INTERVAL_NS
                || last
                    .compare_exchange(previous, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return Vec::new();
        }
        let peers = self.peers();
        let mut reclaimed = Vec::new();
        for index in 0..self.layout.geometry.max_peers as u16 {
            if Some(index) == own
                || peers.at(index as u64).status.load(Ordering::Acquire) == status::FREE
            {
                continue;
            }
            let byte = self.layout.peer_lock_byte(index as usize);
            if RangeLock::probe(lock_file, byte, 1).ok() != Some(LockState::Free) {
                continue;
            }
            if self.reclaim(lock_file, index).unwrap_or(false) {
                reclaimed.push(index);
            }
        }
        reclaimed
    }

    /// Clears slot `index` if its owner is dead (we can take its lock).
    fn reclaim(&self, lock_file: &File, index: u16) -> Result<bool> {
        let byte = self.layout.peer_lock_byte(index as usize);
        if !RangeLock::try_lock(lock_file, byte, 1).map_err(io_error("lock a peer slot"))? {
            return Ok(false); // it lives, or someone else is reclaiming or joining it
        }
        let result = self.with_control_lock(lock_file, || {
            let entry = self.peers().at(index as u64);
            if entry.status.load(Ordering::Relaxed) == status::FREE {
                return false;
            }
            self.clear_entry(index);
            true
        });
        let _ = RangeLock::unlock(lock_file, byte, 1);
        let cleared = result?;
        if cleared {
            // The dead peer may have been halfway through frames in any ring.
            for ring in 0..self.layout.geometry.max_peers as u16 {
                ring::abandon_writer(&self.ring(ring), index);
            }
            tracing::info!(network = %self.name, slot = index, "reclaimed a dead peer");
        }
        Ok(cleared)
    }

    /// Marks an entry free and forgets what was learned behind it. Under the control lock.
    fn clear_entry(&self, index: u16) {
        let entry = self.peers().at(index as u64);
        entry.status.store(status::FREE, Ordering::Relaxed);
        entry.mac.store(0, Ordering::Relaxed);
        entry.flags.store(0, Ordering::Relaxed);
        entry.pid.store(0, Ordering::Relaxed);
        fdb::forget_peer(self.fdb(), index);
    }
}

/// Whether every view the region hands out lies inside the mapping. `Layout::from_header`
/// already ties the geometry to the file's size; this checks the views themselves once,
/// so that the accessors of [`Region`] (whose offsets come from the same layout and whose
/// mapping never changes length) cannot fail afterwards.
fn views_fit(mapping: &Mapping, layout: &Layout) -> bool {
    let peers = layout.geometry.max_peers as usize;
    let last = layout.geometry.max_peers.saturating_sub(1) as usize;
    mapping.get::<Header>(0).is_some()
        && mapping
            .strided::<PeerEntry>(layout.peer_table_offset, layout::PEER_ENTRY_SIZE, peers)
            .is_some()
        && mapping
            .strided::<FdbEntry>(
                layout.fdb_offset,
                std::mem::size_of::<FdbEntry>(),
                layout::FDB_ENTRIES,
            )
            .is_some()
        && mapping
            .strided::<RingControl>(layout.rings_offset, layout.ring_stride, peers)
            .is_some()
        && mapping
            .strided::<SlotHeader>(
                layout.ring_offset(last) + layout::RING_CONTROL_SIZE,
                layout.slot_size,
                layout.geometry.ring_slots as usize,
            )
            .is_some()
        && (layout.geometry.gso_buffers == 0
            || mapping
                .strided::<LargeHeader>(
                    layout.ring_offset(last) + layout.large_offset_in_ring,
                    layout::LARGE_STRIDE,
                    layout.geometry.gso_buffers as usize,
                )
                .is_some())
}

fn read_table(peers: Strided<'_, PeerEntry>, out: &mut Vec<PeerView>) {
    out.clear();
    for index in 0..peers.count() {
        let entry = peers.at(index);
        if entry.status.load(Ordering::Relaxed) != status::UP {
            continue;
        }
        let mac = MacAddress::from_u64(entry.mac.load(Ordering::Relaxed));
        // A scribbled entry with a multicast or zero MAC could never be a unicast owner;
        // keep the peer (it still gets broadcasts) but never match it by address.
        let mac = if mac.is_multicast() || mac.is_zero() {
            MacAddress::ZERO
        } else {
            mac
        };
        out.push(PeerView {
            index: index as u16,
            generation: entry.generation.load(Ordering::Relaxed),
            mac,
            flags: entry.flags.load(Ordering::Relaxed),
            multicast_filter: entry.multicast_filter.load(Ordering::Relaxed),
            offloads: entry.offloads.load(Ordering::Relaxed),
        });
    }
}

/// A ring in the region, as [`ring`]'s algorithm sees it.
pub(crate) struct ShmRing<'a> {
    mapping: &'a Mapping,
    control: &'a RingControl,
    slots: Strided<'a, SlotHeader>,
    large: Option<Strided<'a, LargeHeader>>,
    max_frame: usize,
}

impl<'a> ShmRing<'a> {
    pub fn control(&self) -> &'a RingControl {
        self.control
    }
}

impl SlotMemory for ShmRing<'_> {
    type Word = std::sync::atomic::AtomicU64;

    #[inline]
    fn slot_count(&self) -> u64 {
        self.slots.count()
    }

    #[inline]
    fn reserve(&self) -> &Self::Word {
        &self.control.reserve
    }

    #[inline]
    fn state(&self, index: u64) -> &Self::Word {
        &self.slots.at(index).state
    }

    #[inline]
    fn consumed_hint(&self) -> Option<u64> {
        Some(self.control.consumed.load(Ordering::Relaxed))
    }

    #[inline]
    fn slot_capacity(&self) -> usize {
        self.max_frame
    }

    #[inline]
    fn write_frame(&self, index: u64, meta: SlotMeta, bytes: &[u8]) {
        let header = self.slots.at(index);
        let data = self.slots.offset_of(index) + layout::SLOT_HEADER_SIZE;
        let len = bytes.len().min(self.max_frame);
        // In bounds by construction: the slot holds max_frame bytes after its header.
        let _ = self.mapping.write_bytes(data, &bytes[..len]);
        header.len.store(meta.len, Ordering::Relaxed);
        header.generation.store(meta.generation, Ordering::Relaxed);
        for (word, value) in header.offload.iter().zip(meta.offload) {
            word.store(value, Ordering::Relaxed);
        }
        header.offload[3].store(meta.large, Ordering::Relaxed);
    }

    #[inline]
    fn read_meta(&self, index: u64) -> SlotMeta {
        let header = self.slots.at(index);
        let word = |i: usize| header.offload[i].load(Ordering::Relaxed);
        SlotMeta {
            len: header.len.load(Ordering::Relaxed),
            generation: header.generation.load(Ordering::Relaxed),
            offload: [word(0), word(1), word(2)],
            large: word(3),
        }
    }

    #[inline]
    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]) {
        // The length is the writer's claim: clamp before using it to size a copy.
        let len = len.min(self.max_frame).min(out.len());
        let data = self.slots.offset_of(index) + layout::SLOT_HEADER_SIZE;
        let _ = self.mapping.read_bytes(data, &mut out[..len]);
    }

    fn large_count(&self) -> u64 {
        self.large.map_or(0, |large| large.count())
    }

    fn large_capacity(&self) -> usize {
        if self.large.is_some() {
            layout::LARGE_FRAME
        } else {
            0
        }
    }

    fn large_hint(&self) -> &Self::Word {
        &self.control.large_hint
    }

    fn large_owner(&self, index: u64) -> &Self::Word {
        match self.large {
            Some(large) => &large.at(index).owner,
            // Unreachable: callers only ask for index < large_count() == 0.
            None => &self.control.large_hint,
        }
    }

    fn write_large(&self, index: u64, frame: &[u8]) {
        if let Some(large) = self.large {
            let len = frame.len().min(layout::LARGE_FRAME);
            let data = large.offset_of(index) + std::mem::size_of::<LargeHeader>();
            let _ = self.mapping.write_bytes(data, &frame[..len]);
        }
    }

    fn read_large(&self, index: u64, len: usize, out: &mut [u8]) {
        if let Some(large) = self.large {
            let len = len.min(layout::LARGE_FRAME).min(out.len());
            let data = large.offset_of(index) + std::mem::size_of::<LargeHeader>();
            let _ = self.mapping.read_bytes(data, &mut out[..len]);
        }
    }
}

/// A handle on a network, for control operations and for joining it.
#[derive(Debug)]
pub struct Network {
    region: Arc<Region>,
    /// Our own open file description, for probing and taking locks.
    lock_file: File,
    dir: PathBuf,
}

/// One peer as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Slot index.
    pub slot: u16,
    /// Published MAC.
    pub mac: MacAddress,
    /// Port kind.
    pub kind: PortKind,
    /// Owner process.
    pub pid: u32,
    /// Label (socket path, interface…).
    pub label: String,
    /// Join generation.
    pub generation: u32,
    /// Promiscuous flag.
    pub promiscuous: bool,
    /// All-multicast flag.
    pub all_multicast: bool,
    /// Link down flag.
    pub link_down: bool,
    /// Quarantined flag.
    pub quarantined: bool,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Copies delivered into receivers' rings.
    pub tx_deliveries: u64,
    /// Receiver wake-ups.
    pub wakeups: u64,
    /// Frames waiting in its ring.
    pub rx_queued: u64,
    /// Drops by reason (`tx_ring_full`, `rx_stale`, …), non-zero only.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// A learned address as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LearnedStatus {
    /// Address.
    pub mac: MacAddress,
    /// Slot it is behind.
    pub slot: u16,
    /// Seconds since last seen.
    pub age_seconds: f64,
}

/// A whole network as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkStatus {
    /// Name.
    pub name: String,
    /// Region file.
    pub path: String,
    /// MTU.
    pub mtu: u32,
    /// Peer slots.
    pub max_peers: u32,
    /// Slots per ring.
    pub ring_slots: u32,
    /// "flood" or "drop".
    pub unknown_unicast: &'static str,
    /// Region size in bytes.
    pub size_bytes: u64,
    /// Memory the region really uses: the file is sparse, and only slots that have
    /// carried frames take pages.
    pub resident_bytes: u64,
    /// Peers that are up.
    pub peers: Vec<PeerStatus>,
    /// Learned addresses.
    pub learned: Vec<LearnedStatus>,
    /// Slots reclaimed by this status call.
    pub reclaimed: Vec<u16>,
}

fn read_label(entry: &PeerEntry) -> String {
    let mut bytes = Vec::with_capacity(32);
    for word in &entry.label {
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub(crate) fn write_label(entry: &PeerEntry, label: &str) {
    let mut bytes = [0u8; 32];
    // Cut at a character boundary so the label stays valid UTF-8.
    let mut end = label.len().min(32);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    bytes[..end].copy_from_slice(&label.as_bytes()[..end]);
    for (word, chunk) in entry.label.iter().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        word.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

impl Network {
    /// Creates a network in `dir` (made if missing). The file appears under its name only
    /// once fully initialised, so nobody ever opens a half-written header.
    pub fn create(dir: &Path, name: &str, options: CreateOptions) -> Result<Network> {
        check_name(name)?;
        let layout = Layout::new(options.geometry).map_err(|source| Error::Layout {
            name: name.to_string(),
            source,
        })?;
        std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
        let path = dir.join(name);
        if path.exists() {
            return Err(Error::Exists(name.to_string()));
        }
        let temp = dir.join(format!(".{name}.{}.creating", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(options.mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(io_error(format!("create {}", temp.display())))?;
        // The umask may have narrowed the mode; the caller's choice wins.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(options.mode));
        let result = Self::initialise(&file, &temp, layout, options).and_then(|()| {
            // link + unlink instead of rename: link fails if the name appeared meanwhile,
            // so a concurrent create never replaces a network in use.
            std::fs::hard_link(&temp, &path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::Exists(name.to_string())
                } else {
                    Error::Io {
                        context: format!("publish {}", path.display()),
                        source: e,
                    }
                }
            })
        });
        let _ = std::fs::remove_file(&temp);
        result?;
        drop(file);
        Network::open(dir, name)
    }

    fn initialise(file: &File, temp: &Path, layout: Layout, options: CreateOptions) -> Result<()> {
        file.set_len(layout.total_size as u64)
            .map_err(io_error(format!("size {}", temp.display())))?;
        let mapping = Mapping::map(std::os::fd::AsFd::as_fd(file), layout.total_size)
            .map_err(io_error(format!("map {}", temp.display())))?;
        let header = mapping.get::<Header>(0).ok_or_else(|| Error::Io {
            context: "map header".into(),
            source: io::Error::other("region too small"),
        })?;
        let g = layout.geometry;
        header.version.store(layout::VERSION, Ordering::Relaxed);
        header.max_peers.store(g.max_peers, Ordering::Relaxed);
        header.ring_slots.store(g.ring_slots, Ordering::Relaxed);
        header
            .slot_size
            .store(layout.slot_size as u32, Ordering::Relaxed);
        header.mtu.store(g.mtu, Ordering::Relaxed);
        header.gso_buffers.store(g.gso_buffers, Ordering::Relaxed);
        let options_bits = if options.drop_unknown_unicast {
            layout::OPTION_DROP_UNKNOWN_UNICAST
        } else {
            0
        };
        header.options.store(options_bits, Ordering::Relaxed);
        let created = unix_ns();
        header.network_tag.store(
            ((created ^ (created >> 17) ^ std::process::id() as u64) & 0xffff) as u32,
            Ordering::Relaxed,
        );
        header
            .total_size
            .store(layout.total_size as u64, Ordering::Relaxed);
        header.created_unix_ns.store(created, Ordering::Relaxed);
        let region = Region {
            control_mutex: std::sync::Mutex::new(()),
            name: String::new(),
            path: temp.to_path_buf(),
            mapping,
            layout,
        };
        for index in 0..g.max_peers as u16 {
            ring::reset(&region.ring(index));
        }
        // Magic last: a reader that sees it sees everything before it.
        region
            .header()
            .magic
            .store(layout::MAGIC, Ordering::Release);
        Ok(())
    }

    /// Opens an existing network.
    pub fn open(dir: &Path, name: &str) -> Result<Network> {
        let (region, file) = Region::open(dir, name)?;
        Ok(Network {
            region: Arc::new(region),
            lock_file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// Removes a network's file. Peers that have it mapped keep working until they leave.
    pub fn destroy(dir: &Path, name: &str) -> Result<()> {
        check_name(name)?;
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound {
                    name: name.to_string(),
                    dir: dir.display().to_string(),
                }
            } else {
                Error::Io {
                    context: format!("remove {}", path.display()),
                    source: e,
                }
            }
        })
    }

    /// Names of the networks in `dir`, sorted.
    pub fn list(dir: &Path) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("read {}", dir.display()))(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.region.name
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its geometry.
    pub fn geometry(&self) -> Geometry {
        self.region.layout.geometry
    }

    /// The largest frame it carries: MTU + 14, or + 18 with an 802.1Q tag.
    pub fn max_frame_len(&self) -> usize {
        crate::wire::ethernet::max_frame_len(self.region.layout.geometry.mtu as usize, true)
    }

    /// Joins the network as a new peer.
    pub fn join(&self, options: JoinOptions) -> Result<Peer> {
        Peer::join(Arc::clone(&self.region), options)
    }

    /// Reclaims dead peers now, whatever the sweep interval; returns their slots.
    pub fn sweep(&self) -> Vec<u16> {
        self.region
            .sweep(&self.lock_file, None, monotonic_ns(), true)
    }

    /// A peer's counters, if the slot is up.
    pub fn counters(&self, slot: u16) -> Option<PeerCounters> {
        if slot as u32 >= self.region.layout.geometry.max_peers {
            return None;
        }
        let entry = self.region.peers().at(slot as u64);
        (entry.status.load(Ordering::Acquire) == status::UP).then(|| PeerCounters::read(entry))
    }

    /// Everything `guestnet status` shows. Reclaims dead peers first.
    pub fn status(&self) -> NetworkStatus {
        let reclaimed = self.sweep();
        let region = &self.region;
        let peers = region.peers();
        let mut list = Vec::new();
        for index in 0..peers.count() {
            let entry = peers.at(index);
            if entry.status.load(Ordering::Acquire) != status::UP {
                continue;
            }
            let counters = PeerCounters::read(entry);
            let flags = entry.flags.load(Ordering::Relaxed);
            let ring = region.ring(index as u16);
            let queued = ring
                .control()
                .reserve
                .load(Ordering::Relaxed)
                .wrapping_sub(ring.control().consumed.load(Ordering::Relaxed))
                & ((1 << ring::POSITION_BITS) - 1);
            list.push(PeerStatus {
                slot: index as u16,
                mac: MacAddress::from_u64(entry.mac.load(Ordering::Relaxed)),
                kind: PortKind::from_code(entry.kind.load(Ordering::Relaxed)),
                pid: entry.pid.load(Ordering::Relaxed),
                label: read_label(entry),
                generation: entry.generation.load(Ordering::Relaxed),
                promiscuous: flags & layout::flags::PROMISCUOUS != 0,
                all_multicast: flags & layout::flags::ALL_MULTICAST != 0,
                link_down: flags & layout::flags::LINK_DOWN != 0,
                quarantined: flags & layout::flags::QUARANTINED != 0,
                rx_packets: counters.rx_packets,
                rx_bytes: counters.rx_bytes,
                tx_packets: counters.tx_packets,
                tx_bytes: counters.tx_bytes,
                tx_deliveries: counters.tx_deliveries,
                wakeups: counters.wakeups,
                rx_queued: queued.min(region.layout.geometry.ring_slots as u64),
                drops: counters.drops_by_name(),
            });
        }
        let now_ms = monotonic_ns() / 1_000_000;
        let learned = fdb::entries(region.fdb(), now_ms)
            .into_iter()
            .map(|e| LearnedStatus {
                mac: e.mac,
                slot: e.peer,
                age_seconds: e.age_ms as f64 / 1000.0,
            })
            .collect();
        let g = region.layout.geometry;
        NetworkStatus {
            name: region.name.clone(),
            path: region.path.display().to_string(),
            mtu: g.mtu,
            max_peers: g.max_peers,
            ring_slots: g.ring_slots,
            unknown_unicast: if region.drop_unknown_unicast() {
                "drop"
            } else {
                "flood"
            },
            size_bytes: region.layout.total_size as u64,
            resident_bytes: std::fs::metadata(&region.path)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m).saturating_mul(512))
                .unwrap_or(0),
            peers: list,
            learned,
            reclaimed,
        }
    }
}
