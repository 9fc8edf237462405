//! The network: a named region, its peer table, and the operations on it.
//!
//! [`Network`] is the handle on one region: it creates, opens, lists and destroys
//! regions, lets peers join, and reports their state. A frame's way through this module
//! visits each file once:
//!
//! | file | deals with |
//! | --- | --- |
//! | `region` | the mapped region: checked views, the control lock, the table snapshot, liveness sweeps and reclaim |
//! | `membership` | what a member declares ([`JoinOptions`], [`PortKind`]), joining (claiming a slot, taking over its ring, publishing the entry), leaving, and [`Control`] operations |
//! | [`send`] | the [`Sender`]: checking, learning, resolving and copying frames into receivers' rings, in batches |
//! | [`receive`] | the [`Receiver`]: draining the own ring NAPI-style, checking each frame, sleeping and waking |
//! | [`peer`] | [`Peer`], a member's two halves together |
//! | [`ring`], `shm_ring` | the multi-producer ring algorithm, and the region memory it runs on |
//! | [`forward`], [`fdb`] | the delivery rules as one pure function, and the learned table |
//! | [`vlan`] | 802.1Q: a peer's VLANs ([`VlanMembership`]), how its frames are classified on the way in and tagged on the way out |
//! | [`offloads`] | the offload work peers take, and how its header rides in a slot |
//! | [`counters`], [`check`], [`status`] | accounting, integrity checks, and what `status` shows |
//! | `directory` | where networks live, and the checks before that directory is trusted |
//! | `error` | errors of the control path |

pub mod check;
mod clock;
pub mod counters;
mod directory;
mod error;
pub mod fdb;
pub mod forward;
mod membership;
pub mod offloads;
pub mod peer;
pub mod rate;
pub mod receive;
mod region;
pub mod ring;
pub mod send;
mod shm_ring;
pub mod status;
pub mod vlan;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::shm::layout::{self, Geometry, Header, Layout, status as entry_status};
use crate::shm::{LockState, Mapping, RangeLock};
use counters::PeerCounters;
use membership::read_label;
use region::Region;

pub use clock::{monotonic_ns, timespec, unix_ns};
pub use directory::{DEFAULT_DIR, DIR_ENV, default_dir};
pub use error::{DirectoryProblem, Error, IoError, LivePeer, Result};
pub(crate) use error::{io_error, io_error_as};
pub use membership::{Control, JoinOptions, PortKind};
pub use peer::Peer;
pub use receive::{Receiver, RingWatch};
pub use region::{SWEEP_INTERVAL_NS, check_name};
pub use send::{Sender, Sent};
pub use shm_ring::ShmRing;
pub use status::{LearnedStatus, NetworkStatus, PeerStatus, RetiredStatus};
pub use vlan::{VlanMembership, VlanMode, VlanSet};

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

/// Options for [`Network::destroy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestroyOptions {
    /// Remove the network even while peers are on it. They keep working on the removed
    /// file until they leave, cut off from anyone who joins by name afterwards.
    pub force: bool,
}

/// The byte ranges of a new region that get memory before it is mapped: the header, the
/// tables and lock bytes, and each ring's control block and slots, which is everything
/// members write without asking for more. The rest of each ring, its large buffers for
/// offload frames, is left out: those are reserved as peers come to use them, so a network
/// with idle slots stays small.
fn reserved_ranges(layout: &Layout) -> impl Iterator<Item = (u64, u64)> + '_ {
    const PAGE: usize = 4096;
    // Rings start on page boundaries; rounding the slot area up to whole pages stays
    // inside the ring, whose stride is itself a whole number of pages.
    let per_ring = layout
        .large_offset_in_ring
        .next_multiple_of(PAGE)
        .min(layout.ring_stride) as u64;
    std::iter::once((0, layout.rings_offset as u64)).chain(
        (0..layout.geometry.max_peers as usize)
            .map(move |ring| (layout.ring_offset(ring) as u64, per_ring)),
    )
}

/// Sizes a new region file and gives the [`reserved_ranges`] their memory.
///
/// A file on tmpfs is sparse: a page gets memory when it is first written, and a write
/// through a mapping that the file system cannot back is a SIGBUS, not an error. Reserving
/// with `fallocate` first turns a full `/dev/shm` into a clean `ENOSPC` at creation instead
/// of a crash at creation or, later, in whichever peer first touches a page.
fn reserve(file: &File, layout: &Layout) -> io::Result<()> {
    file.set_len(layout.total_size as u64)?;
    for (offset, len) in reserved_ranges(layout) {
        reserve_range(file, offset, len)?;
    }
    Ok(())
}

/// Gives `len` bytes of the region file at `offset` their memory now.
pub(crate) fn reserve_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        // A file system without fallocate still allocates on write, and a plain write
        // reports a full file system as an error as well.
        Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(file, offset, len),
        Err(errno) => Err(errno.into()),
    }
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = [0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let chunk = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..chunk], offset + done)?;
        done += chunk as u64;
    }
    Ok(())
}

/// Unlinks a region file.
fn remove_region(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::remove_file(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                name: name.to_string(),
                dir: dir.display().to_string(),
            }
        } else {
            io_error(format!("remove {}", path.display()))(e)
        }
    })
}

/// A handle on a network, for control operations and for joining it.
#[derive(Debug)]
pub struct Network {
    region: Arc<Region>,
    /// Our own open file description, for probing and taking locks.
    lock_file: File,
    dir: PathBuf,
}
impl Network {
    /// Creates a network in `dir` (made if missing, and checked: see `directory`). The
    /// file appears under its name only once fully initialised, so nobody ever opens a
    /// half-written header.
    pub fn create(dir: &Path, name: &str, options: CreateOptions) -> Result<Network> {
        check_name(name)?;
        let layout = Layout::new(options.geometry).map_err(|source| Error::Layout {
            name: name.to_string(),
            source,
        })?;
        directory::prepare(dir)?;
        let path = dir.join(name);
        // Not `exists()`, which follows links: a dangling link holds the name too.
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::Exists(name.to_string()));
        }
        let temp = dir.join(format!(".{name}.{}.creating", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(options.mode)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| directory::not_writable(dir, e, format!("create {}", temp.display())))?;
        // The umask may have narrowed the mode; the caller's choice wins.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(options.mode));
        let result = reserve(&file, &layout)
            .map_err(|source| Error::Reserve {
                name: name.to_string(),
                dir: dir.display().to_string(),
                needed_bytes: reserved_ranges(&layout).map(|(_, len)| len).sum(),
                source,
            })
            .and_then(|()| Self::initialise(&file, &temp, layout, options))
            .and_then(|()| {
                // link + unlink instead of rename: link fails if the name appeared meanwhile,
                // so a concurrent create never replaces a network in use.
                std::fs::hard_link(&temp, &path).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Error::Exists(name.to_string())
                    } else {
                        io_error(format!("publish {}", path.display()))(e)
                    }
                })
            });
        let _ = std::fs::remove_file(&temp);
        result?;
        drop(file);
        Network::open(dir, name)
    }

    /// Writes the header and sets up the rings of a file [`reserve`] has given memory.
    fn initialise(file: &File, temp: &Path, layout: Layout, options: CreateOptions) -> Result<()> {
        let mapping = Mapping::map(std::os::fd::AsFd::as_fd(file), layout.total_size)
            .map_err(io_error(format!("map {}", temp.display())))?;
        let header = mapping
            .get::<Header>(0)
            .ok_or_else(|| io_error("map header")(io::Error::other("region too small")))?;
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
            file: file
                .try_clone()
                .map_err(io_error(format!("duplicate {}", temp.display())))?,
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

    /// Removes a network's file, refusing ([`Error::InUse`]) while live peers are on it
    /// unless `options.force` says so. A region too damaged to open is removed either way:
    /// it has no table to ask, and nobody can join it.
    pub fn destroy(dir: &Path, name: &str, options: DestroyOptions) -> Result<()> {
        check_name(name)?;
        directory::check(dir)?;
        if !options.force {
            match Network::open(dir, name) {
                Ok(network) => return network.remove_unless_in_use(),
                Err(Error::Layout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        remove_region(dir, name)
    }

    /// Removes the region's file if no live peer is on it. Under the control lock, so
    /// that a peer joining meanwhile is either seen here or finds the name gone.
    fn remove_unless_in_use(&self) -> Result<()> {
        self.region.with_control_lock(&self.lock_file, || {
            let live = self.live_peers();
            if live.is_empty() {
                remove_region(&self.dir, self.name())
            } else {
                Err(Error::InUse {
                    name: self.name().to_string(),
                    peers: live,
                })
            }
        })?
    }

    /// The peers that are up and whose process still holds their slot's lock. Entries of
    /// dead processes, not reclaimed yet, are not among them.
    fn live_peers(&self) -> Vec<LivePeer> {
        let peers = self.region.peers();
        (0..self.region.layout.geometry.max_peers as u16)
            .filter(|&slot| {
                let byte = self.region.layout.peer_lock_byte(slot as usize);
                peers.at(slot as u64).status.load(Ordering::Acquire) == entry_status::UP
                    && RangeLock::probe(&self.lock_file, byte, 1).ok() == Some(LockState::Held)
            })
            .map(|slot| {
                let entry = peers.at(slot as u64);
                LivePeer {
                    slot,
                    kind: PortKind::from_code(entry.kind.load(Ordering::Relaxed)).name(),
                    pid: entry.pid.load(Ordering::Relaxed),
                    label: read_label(entry),
                }
            })
            .collect()
    }

    /// Names of the networks in `dir`, sorted.
    pub fn list(dir: &Path) -> Result<Vec<String>> {
        directory::check(dir)?;
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

    /// The receive ring of peer slot `index`, as the [`ring`] algorithm sees it: for
    /// tools and tests that inspect a ring or play a writer's part. Any member can write
    /// any byte of the region anyway; this only spares them the offsets.
    pub fn ring_memory(&self, index: u16) -> Option<ShmRing<'_>> {
        (u32::from(index) < self.region.layout.geometry.max_peers).then(|| self.region.ring(index))
    }

    /// Reclaims dead peers now, whatever the sweep interval; returns their slots. If the
    /// control lock stays taken for about a second (a stopped holder), it stops there and
    /// leaves the rest to a later sweep, with a warning.
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
        (entry.status.load(Ordering::Acquire) == entry_status::UP)
            .then(|| PeerCounters::read(entry))
    }

    /// Everything `guestnet status` shows. Reclaims dead peers first, as far as the
    /// control lock allows; what it shows is read without that lock.
    pub fn status(&self) -> NetworkStatus {
        let reclaimed = self.sweep();
        status::collect(&self.region, reclaimed)
    }
}
