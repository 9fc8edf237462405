//! The mapped region: its checked views, the control lock, the table snapshot, and
//! liveness (sweeping for dead peers and reclaiming their slots).
//!
//! Control operations (join, leave, changing a MAC or a flag, reclaiming a dead peer) are
//! rare; they take the region's *control lock* (an OFD lock on one byte of the file, which
//! the kernel releases if its holder dies) and rewrite table entries between two
//! increments of the table version, a seqlock that senders check once per batch to know
//! when to refresh their cached view of the table. Data operations take no lock at all.
//!
//! A holder that is stopped (SIGSTOP, a debugger) does not die, so the kernel keeps its
//! lock. Nobody waits for it unboundedly: a sweep run on the data path gives up after
//! [`Patience::DataPath`] and a command or control operation after [`Patience::Command`],
//! with [`Error::ControlLockBusy`] naming the holder when `/proc` shows it. A sweep that
//! gives up leaves the dead peers for the next one.
//!
//! **Liveness.** Every peer holds an OFD lock on its own byte of the region file for as
//! long as it lives, through an open file description of its own made from the region's
//! descriptor rather than its name ([`Region::reopen`]): locks taken in another network
//! that has since taken the name would say nothing about this one's peers. A periodic
//! *sweep*, run by whichever peer or command gets to it first (at most
//! [`SWEEP_INTERVAL_NS`] apart across the whole network, by the time of the last sweep
//! kept in the header), probes the lock of every used slot; a slot whose lock is free
//! belongs to a dead process and is reclaimed: frames it was halfway through writing are
//! marked abandoned, the addresses learned behind it are forgotten, and its MAC leaves the
//! table so it stops attracting traffic. A last-sweep time in the future can only be a
//! scribble (every peer of a host reads the same monotonic clock); it is swept over and
//! repaired rather than obeyed, or it would stop the periodic sweeps for good.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::TryLockError;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::shm::layout::{
    self, FdbEntry, Header, LargeHeader, Layout, LayoutError, PeerEntry, RingControl, SlotHeader,
    VlanEntry, status,
};
use crate::shm::{LockState, Mapping, RangeLock, Strided};
use crate::wire::MacAddress;

use super::counters::{self, DropReason};
use super::directory;
use super::error::{Error, Result, io_error};
use super::forward::PeerView;
use super::shm_ring::ShmRing;
use super::vlan::{VlanMembership, VlanSet};
use super::{fdb, ring};

/// Refuses a network name that is empty, longer than 64 bytes, starts with a dot or holds
/// anything but ASCII letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<()> {
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

/// The whole network sweeps for dead peers at most this often.
pub const SWEEP_INTERVAL_NS: u64 = 250_000_000;

/// How far ahead of our clock the last sweep's time may be before it counts as scribbled:
/// a sweeper that read the clock just before us may have stored a slightly later time.
const SWEEP_CLOCK_SLACK_NS: u64 = 1_000_000_000;

/// How long a caller waits for the control lock before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Patience {
    /// A sweep run by a sender or receiver on its way: a stopped holder may delay the
    /// others by at most 100 ms (DESIGN §4.7), and the next sweep tries again.
    DataPath,
    /// A command or a control operation (join, leave, MAC or flag change): about a
    /// second, after which the holder is looked for in `/proc` to name it.
    Command,
}

impl Patience {
    fn wait(self) -> Duration {
        match self {
            Patience::DataPath => Duration::from_millis(100),
            Patience::Command => Duration::from_secs(1),
        }
    }
}

/// Longest pause between two tries for a busy lock: short against the waits above, long
/// enough not to spin.
const LOCK_RETRY_MAX: Duration = Duration::from_millis(5);

/// A mapped region and its checked layout, shared by every handle of one process.
#[derive(Debug)]
pub(crate) struct Region {
    /// Serialises this process's control operations: OFD locks do not exclude two
    /// threads that use the same open file description.
    pub control_mutex: std::sync::Mutex<()>,
    pub name: String,
    pub path: PathBuf,
    /// The file this region was opened from. New peers open this very inode again through
    /// it ([`Region::reopen`]): by then the name may belong to another network.
    pub file: File,
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

    pub fn vlans(&self) -> Strided<'_, VlanEntry> {
        self.mapping
            .strided(
                self.layout.vlan_offset,
                layout::VLAN_ENTRY_SIZE,
                self.layout.geometry.max_peers as usize,
            )
            .expect("views_fit checked the VLAN table when the region was opened")
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

    /// Opens and maps a region file, checking its header against its size. Its directory
    /// is checked first (see `directory`), and no link is followed: a link under a
    /// network's name could lead anywhere.
    pub fn open(dir: &Path, name: &str) -> Result<(Region, File)> {
        check_name(name)?;
        directory::check(dir)?;
        let path = dir.join(name);
        let not_a_region = |what| Error::NotARegion {
            path: path.display().to_string(),
            what,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => Error::NotFound {
                    name: name.to_string(),
                    dir: dir.display().to_string(),
                },
                Some(libc::ELOOP) => not_a_region("a symbolic link"),
                _ => io_error(format!("open {}", path.display()))(e),
            })?;
        let metadata = file
            .metadata()
            .map_err(io_error(format!("stat {}", path.display())))?;
        let kind = metadata.file_type();
        if !kind.is_file() {
            return Err(not_a_region(if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device node"
            } else {
                "a special file"
            }));
        }
        let size = metadata.len();
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
        let own = file
            .try_clone()
            .map_err(io_error(format!("duplicate {}", path.display())))?;
        Ok((
            Region {
                control_mutex: std::sync::Mutex::new(()),
                name: name.to_string(),
                path,
                file: own,
                mapping,
                layout,
            },
            file,
        ))
    }

    /// Runs `f` under the control lock, between two increments of the table version,
    /// waiting for the lock as a command does ([`Patience::Command`]).
    pub fn with_control_lock<T>(&self, lock_file: &File, f: impl FnOnce() -> T) -> Result<T> {
        self.with_control_lock_within(lock_file, Patience::Command, f)
    }

    /// Runs `f` under the control lock, or fails with [`Error::ControlLockBusy`] if the
    /// lock stays taken for longer than `patience` allows.
    pub fn with_control_lock_within<T>(
        &self,
        lock_file: &File,
        patience: Patience,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        let deadline = Instant::now() + patience.wait();
        let mut pause = Duration::from_micros(50);
        // The mutex is tried too rather than waited for: another thread of ours may hold
        // it while it waits for the file lock itself, up to its own (maybe longer) limit.
        let _guard = loop {
            match self.control_mutex.try_lock() {
                Ok(guard) => break guard,
                // A poisoned mutex only means another thread panicked while holding it;
                // the table itself is protected by the seqlock repair below, so carry on.
                Err(TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
            if !pause_until(deadline, &mut pause) {
                return Err(self.control_lock_busy(patience, Some(std::process::id())));
            }
        };
        let byte = self.layout.control_lock_byte();
        while !RangeLock::try_lock(lock_file, byte, 1).map_err(io_error("take the control lock"))? {
            if !pause_until(deadline, &mut pause) {
                let holder = match patience {
                    Patience::Command => find_lock_holder(lock_file, byte),
                    // Not worth a walk through /proc every sweep while the holder stays put.
                    Patience::DataPath => None,
                };
                return Err(self.control_lock_busy(patience, holder));
            }
        }
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

    fn control_lock_busy(&self, patience: Patience, holder: Option<u32>) -> Error {
        Error::ControlLockBusy {
            name: self.name.clone(),
            waited_ms: patience.wait().as_millis() as u64,
            holder,
        }
    }

    /// Reads the table as a consistent snapshot of the peers that are up, and each one's
    /// VLANs (`vlans[i]` belongs to `out[i]`).
    pub fn snapshot(&self, out: &mut Vec<PeerView>, vlans: &mut Vec<VlanSet>) -> u64 {
        let header = self.header();
        let peers = self.peers();
        let maps = self.vlans();
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
            read_table(peers, maps, out, vlans);
            fence(Ordering::Acquire);
            if header.table_version.load(Ordering::Relaxed) == version {
                return version;
            }
        }
        read_table(peers, maps, out, vlans);
        // An odd version never equals a stable one, so the caller refreshes again soon.
        version | 1
    }

    /// Reclaims dead peers if this process wins the sweep for now; `force` ignores the
    /// interval (used by commands and joins, which also wait longer for the control
    /// lock). Returns the slots reclaimed.
    pub fn sweep(&self, lock_file: &File, own: Option<u16>, now_ns: u64, force: bool) -> Vec<u16> {
        let last = &self.header().last_sweep_ns;
        let previous = last.load(Ordering::Relaxed);
        let scribbled = previous > now_ns.saturating_add(SWEEP_CLOCK_SLACK_NS);
        if force {
            if scribbled {
                let _ =
                    last.compare_exchange(previous, now_ns, Ordering::Relaxed, Ordering::Relaxed);
            }
        } else {
            let due = scribbled || now_ns.saturating_sub(previous) >= SWEEP_INTERVAL_NS;
            if !due
                || last
                    .compare_exchange(previous, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return Vec::new();
            }
        }
        let patience = if force {
            Patience::Command
        } else {
            Patience::DataPath
        };
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
            match self.reclaim(lock_file, index, patience) {
                Ok(true) => reclaimed.push(index),
                Ok(false) => {}
                Err(error @ Error::ControlLockBusy { .. }) => {
                    // Every further reclaim would wait as long again; the next sweep
                    // tries again. Said once per command, not every round of a sender.
                    match patience {
                        Patience::Command => {
                            tracing::warn!("dead peers are not reclaimed this time: {error}")
                        }
                        Patience::DataPath => {
                            tracing::debug!("dead peers are not reclaimed this time: {error}")
                        }
                    }
                    break;
                }
                Err(_) => {}
            }
        }
        reclaimed
    }

    /// Clears slot `index` if its owner is dead (we can take its lock).
    fn reclaim(&self, lock_file: &File, index: u16, patience: Patience) -> Result<bool> {
        let byte = self.layout.peer_lock_byte(index as usize);
        if !RangeLock::try_lock(lock_file, byte, 1).map_err(io_error("lock a peer slot"))? {
            return Ok(false); // it lives, or someone else is reclaiming or joining it
        }
        let result = self.with_control_lock_within(lock_file, patience, || {
            let entry = self.peers().at(index as u64);
            if entry.status.load(Ordering::Relaxed) == status::FREE {
                return false;
            }
            self.clear_entry(index);
            true
        });
        if matches!(result, Ok(true)) {
            // The dead peer may have been halfway through frames in any ring. This happens
            // while we still hold its slot's lock: a joiner that took the index first would
            // have its own claims abandoned and its large buffers freed under it.
            // Rings of free slots are skipped: nobody reads them, the next joiner's reset
            // deals with what is left there, and a ring never joined has no memory behind
            // its large buffers, which must not be touched (a full /dev/shm would make
            // that a SIGBUS).
            let peers = self.peers();
            for ring in 0..self.layout.geometry.max_peers as u16 {
                if peers.at(u64::from(ring)).status.load(Ordering::Acquire) == status::UP {
                    ring::abandon_writer(&self.ring(ring), index);
                }
            }
            tracing::info!(network = %self.name, slot = index, "reclaimed a dead peer");
        }
        let _ = RangeLock::unlock(lock_file, byte, 1);
        result
    }

    /// Marks an entry free and forgets what was learned behind it; the frames still
    /// unread in its ring are discarded and counted, and its counters join the network's
    /// retired totals. Under the control lock, once the owner can no longer receive.
    pub fn clear_entry(&self, index: u16) {
        let entry = self.peers().at(index as u64);
        entry.status.store(status::FREE, Ordering::Relaxed);
        entry.mac.store(0, Ordering::Relaxed);
        entry.flags.store(0, Ordering::Relaxed);
        entry.pid.store(0, Ordering::Relaxed);
        fdb::forget_peer(self.fdb(), index);
        let (_, discarded) = ring::reset_ahead(&self.ring(index));
        counters::retire(entry, &self.header().retired);
        self.retire_discarded(discarded);
    }

    /// Counts what was discarded from a departed peer's ring on its behalf, in the retired
    /// totals: unread frames as `peer_gone`, slots still being written as `stalled` (their
    /// writers count them so when their publish fails).
    pub fn retire_discarded(&self, discarded: ring::Discarded) {
        let retired = &self.header().retired;
        counters::count_retired_rx(DropReason::PeerGone, discarded.unread, retired);
        counters::count_retired_rx(DropReason::Stalled, discarded.passed_over, retired);
    }
}

/// Sleeps a little before the next try for a busy lock, doubling the pause each time up to
/// [`LOCK_RETRY_MAX`] and never past `deadline`; false once the deadline has passed.
fn pause_until(deadline: Instant, pause: &mut Duration) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    std::thread::sleep((*pause).min(deadline - now));
    *pause = (*pause * 2).min(LOCK_RETRY_MAX);
    true
}

/// The process holding the OFD lock on `byte` of `file`, if `/proc` shows it.
///
/// `F_OFD_GETLK` cannot tell: an OFD lock belongs to an open file description, not to a
/// process, and the kernel reports its pid as -1. But `/proc/PID/fdinfo/FD` lists the
/// locks held through that descriptor, so the holder is the process one of whose
/// descriptors lists ours. Processes of other users are not readable, and a bound on the
/// time spent keeps a host with very many descriptors from stalling the caller.
fn find_lock_holder(file: &File, byte: u64) -> Option<u32> {
    const SEARCH_LIMIT: Duration = Duration::from_millis(200);
    let metadata = file.metadata().ok()?;
    let dev = metadata.dev();
    // The kernel prints the lock as "… OFDLCK ADVISORY WRITE -1 MAJ:MIN:INODE START END".
    let ours = format!(
        " {:02x}:{:02x}:{} {byte} {byte}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        metadata.ino()
    );
    let deadline = Instant::now() + SEARCH_LIMIT;
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(descriptors) = std::fs::read_dir(process.path().join("fdinfo")) else {
            continue;
        };
        for descriptor in descriptors.flatten() {
            if Instant::now() > deadline {
                return None;
            }
            let Ok(info) = std::fs::read_to_string(descriptor.path()) else {
                continue;
            };
            let holds_ours = info.lines().any(|line| {
                line.starts_with("lock:") && line.contains("OFDLCK") && line.ends_with(&ours)
            });
            if holds_ours {
                return Some(pid);
            }
        }
    }
    None
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
            .strided::<VlanEntry>(layout.vlan_offset, layout::VLAN_ENTRY_SIZE, peers)
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

fn read_table(
    peers: Strided<'_, PeerEntry>,
    maps: Strided<'_, VlanEntry>,
    out: &mut Vec<PeerView>,
    vlans: &mut Vec<VlanSet>,
) {
    out.clear();
    vlans.clear();
    for index in 0..peers.count() {
        let entry = peers.at(index);
        if entry.status.load(Ordering::Relaxed) != status::UP {
            continue;
        }
        let membership = VlanMembership::read(entry, maps.at(index));
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
            native: membership.native().unwrap_or(0),
            all_vlans: membership.members().is_all(),
        });
        vlans.push(*membership.members());
    }
}
impl Region {
    /// A new open file description of the region's own inode, for a peer's own locks (OFD
    /// locks belong to the description, so each peer needs one of its own).
    ///
    /// Not by name: the network may have been destroyed and a new one created under the
    /// same name since this region was mapped, and locks taken in that other file would
    /// be checked against this mapping's table, reclaiming its live peers and taking slots
    /// of the new network. `/proc/self/fd/N` opens the inode the region's own descriptor
    /// refers to, whatever its name is now; without `/proc`, the name is opened and
    /// refused if it leads to another inode.
    pub fn reopen(&self) -> Result<File> {
        let by_descriptor = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let reopened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(by_descriptor);
        match reopened {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.reopen_by_name(),
            Err(e) => Err(io_error(format!("reopen {}", self.path.display()))(e)),
        }
    }

    /// [`Region::reopen`] where `/proc` is not mounted: by name, checked to be our inode.
    fn reopen_by_name(&self) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(io_error(format!("open {}", self.path.display())))?;
        let identity = |file: &File| {
            file.metadata()
                .map(|m| (m.dev(), m.ino()))
                .map_err(io_error(format!("stat {}", self.path.display())))
        };
        if identity(&file)? != identity(&self.file)? {
            return Err(Error::Replaced {
                name: self.name.clone(),
                path: self.path.display().to_string(),
            });
        }
        Ok(file)
    }

    /// Takes the lock of the first free slot and returns its index. The slot is ours once
    /// its lock is: a sweep never reclaims a locked slot and a joiner never takes one.
    pub fn claim_slot(&self, lock_file: &File) -> Result<u16> {
        let peers = self.peers();
        for index in 0..self.layout.geometry.max_peers as u16 {
            if peers.at(index as u64).status.load(Ordering::Acquire) != status::FREE {
                continue;
            }
            let byte = self.layout.peer_lock_byte(index as usize);
            if RangeLock::try_lock(lock_file, byte, 1).map_err(io_error("lock a peer slot"))? {
                return Ok(index);
            }
        }
        Err(Error::Full(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{CreateOptions, Network};

    #[test]
    fn reopening_by_name_refuses_a_network_created_anew_under_that_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(Network::create(dir.path(), "lab", CreateOptions::default()).unwrap());
        let (region, _file) = Region::open(dir.path(), "lab").unwrap();
        assert!(region.reopen_by_name().is_ok());
        std::fs::remove_file(dir.path().join("lab")).unwrap();
        drop(Network::create(dir.path(), "lab", CreateOptions::default()).unwrap());
        assert!(matches!(
            region.reopen_by_name(),
            Err(Error::Replaced { name, .. }) if name == "lab"
        ));
        // Through the descriptor, the old inode is still there to be reopened.
        let reopened = region.reopen().unwrap();
        assert_eq!(
            reopened.metadata().unwrap().ino(),
            region.file.metadata().unwrap().ino()
        );
    }
}
