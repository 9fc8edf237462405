//! The mapped region: its checked views, the control lock, the table snapshot, and
//! liveness (sweeping for dead peers and reclaiming their slots).
//!
//! Control operations (join, leave, changing a MAC or a flag, reclaiming a dead peer) are
//! rare; they take the region's *control lock* (an OFD lock on one byte of the file, which
//! the kernel releases if its holder dies) and rewrite table entries between two
//! increments of the table version, a seqlock that senders check once per batch to know
//! when to refresh their cached view of the table. Data operations take no lock at all.
//!
//! **Liveness.** Every peer holds an OFD lock on its own byte of the region file for as
//! long as it lives, through an open file description of its own made from the region's
//! descriptor rather than its name ([`Region::reopen`]): locks taken in another network
//! that has since taken the name would say nothing about this one's peers. A periodic *sweep*, run by whichever peer or command gets to it first
//! (at most [`SWEEP_INTERVAL_NS`] apart across the whole network), probes the lock of
//! every used slot; a slot whose lock is free belongs to a dead process and is reclaimed:
//! frames it was halfway through writing are marked abandoned, the addresses learned
//! behind it are forgotten, and its MAC leaves the table so it stops attracting traffic.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, fence};

use crate::shm::layout::{
    self, FdbEntry, Header, LargeHeader, Layout, LayoutError, PeerEntry, RingControl, SlotHeader,
    status,
};
use crate::shm::{LockState, Mapping, RangeLock, Strided};
use crate::wire::MacAddress;

use super::error::{Error, Result, io_error};
use super::forward::PeerView;
use super::shm_ring::ShmRing;
use super::{counters, fdb, ring};

pub(crate) fn check_name(name: &str) -> Result<()> {
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
    pub fn open(dir: &Path, name: &str) -> Result<(Region, File)> {
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
                    io_error(format!("open {}", path.display()))(e)
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

    /// Counts unread frames discarded from a departed peer's ring as retired `peer_gone`
    /// receive drops.
    pub fn retire_discarded(&self, discarded: u64) {
        counters::retire_discarded(discarded, &self.header().retired);
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
