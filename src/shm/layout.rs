//! The layout of a network region, byte for byte.
//!
//! ```text
//! offset 0            Header            (one 4 KiB page: identity, geometry, table version)
//! peer_table_offset   PeerEntry × max_peers          (512 bytes each)
//! vlan_offset         VlanEntry × max_peers          (each peer's VLANs, a 4096-bit map)
//! fdb_offset          FdbEntry × FDB_ENTRIES         ((VLAN, MAC) → peer, 16 bytes each)
//! lock_offset         one byte per peer + one control byte, never read: OFD lock targets
//! rings_offset        per peer: RingControl (192 bytes) + ring_slots × slot_size
//!                               + gso_buffers × LARGE_STRIDE (frames too big for a slot)
//! ```
//!
//! Only the geometry (max peers, ring slots, MTU, slot size) is stored; every offset is
//! derived from it by [`Layout::new`], so a header cannot point readers outside the file:
//! opening a region recomputes the layout and refuses a file whose size disagrees.
//!
//! Every structure here is made only of atomics, because other processes write them while
//! we read; which fields are written by whom, and with which ordering, is said at each.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::wire::ethernet::{HEADER_LEN, VLAN_TAG_LEN};

/// "GUESTNET" in ASCII, read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GUESTNET");
/// Layout version; bumped on any incompatible change to this file.
pub const VERSION: u32 = 4;
/// Bytes reserved for the header.
pub const HEADER_SIZE: usize = 4096;
/// Bytes per peer table entry.
pub const PEER_ENTRY_SIZE: usize = 512;
/// Bytes of a ring's control block.
pub const RING_CONTROL_SIZE: usize = 192;
/// Bytes of the header in front of every slot's frame data.
pub const SLOT_HEADER_SIZE: usize = 32;
/// Entries of the learned forwarding table (a power of two).
pub const FDB_ENTRIES: usize = 4096;
/// Smallest and largest geometry accepted.
pub const MIN_PEERS: u32 = 2;
/// Largest number of peers (the writer field of a slot state has 13 bits).
pub const MAX_PEERS: u32 = 1024;
/// Smallest ring.
pub const MIN_RING_SLOTS: u32 = 8;
/// Largest ring.
pub const MAX_RING_SLOTS: u32 = 65536;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU (jumbo frames).
pub const MAX_MTU: u32 = 9000;

/// Largest frame a large buffer holds: a 64 KiB IP packet, an Ethernet header and one
/// 802.1Q tag, rounded up to a cache line.
pub const LARGE_FRAME: usize = 65_600;
/// Bytes per large buffer, its header included.
pub const LARGE_STRIDE: usize = 64 + LARGE_FRAME;
/// Most large buffers a ring may have.
pub const MAX_GSO_BUFFERS: u32 = 256;

/// Number of per-reason drop counters kept for each direction.
pub const DROP_REASONS: usize = 14;
/// Number of owner-written counters before the transmit drop counters.
pub const OWNER_COUNTERS: usize = 8;

/// The region header. Written once by the creator before the file becomes visible under
/// its name, except `table_version` and `last_sweep_ns`.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// Peers the table holds.
    pub max_peers: AtomicU32,
    /// Slots in each receive ring (a power of two).
    pub ring_slots: AtomicU32,
    /// Bytes per ring slot, slot header included.
    pub slot_size: AtomicU32,
    /// Largest Ethernet payload.
    pub mtu: AtomicU32,
    /// Network options ([`OPTION_DROP_UNKNOWN_UNICAST`]).
    pub options: AtomicU32,
    /// A random tag that makes the default MACs of two networks differ.
    pub network_tag: AtomicU32,
    /// Large buffers per ring (0: the network carries no segmentation offload).
    pub gso_buffers: AtomicU32,
    /// Total file size the geometry implies.
    pub total_size: AtomicU64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: AtomicU64,
    /// Padding to the next cache line.
    pub pad0: [AtomicU64; 1],
    /// Seqlock over the peer table: odd while a control operation rewrites an entry.
    /// Senders compare it once per batch to know when to refresh their cached view.
    pub table_version: AtomicU64,
    /// Monotonic time of the last liveness sweep, so that the whole network sweeps a few
    /// times a second in total, however many peers it has.
    pub last_sweep_ns: AtomicU64,
    /// Counters of peers that left or were reclaimed, added up when their slot was cleared
    /// (the same order as a peer's `owner_counters` then `rx_drops`), so that the
    /// network's accounting still adds up after its members come and go.
    pub retired: [AtomicU64; OWNER_COUNTERS + 2 * DROP_REASONS],
}

/// Header option: drop unicast frames to unknown destinations instead of flooding them.
pub const OPTION_DROP_UNKNOWN_UNICAST: u32 = 1;

/// Peer status values.
pub mod status {
    /// Slot unused.
    pub const FREE: u32 = 0;
    /// Slot owned and published.
    pub const UP: u32 = 1;
}

/// Peer flag bits.
pub mod flags {
    /// Receives a copy of every frame.
    pub const PROMISCUOUS: u32 = 1 << 0;
    /// Receives every multicast frame.
    pub const ALL_MULTICAST: u32 = 1 << 1;
    /// Fronts other hosts or many MACs (a TAP to a bridge, a VXLAN tunnel).
    pub const UPLINK: u32 = 1 << 2;
    /// Link is down: frames to this peer are dropped (and counted) at the sender.
    pub const LINK_DOWN: u32 = 1 << 3;
    /// Quarantined for misbehaviour: its frames are not taken.
    pub const QUARANTINED: u32 = 1 << 4;
    /// Source locked: frames whose source is not the published MAC are refused
    /// (`spoofed`).
    pub const LOCK_MAC: u32 = 1 << 5;
    /// Isolated: exchanges frames with non-isolated peers only.
    pub const ISOLATED: u32 = 1 << 6;
}

/// One peer's entry. Identity fields are written only under the control lock, between two
/// increments of [`Header::table_version`]; counters are written by the owner (tx and rx
/// delivered) or by any sender (rx drops it caused), always with `fetch_add`/`store`.
#[repr(C, align(64))]
pub struct PeerEntry {
    /// [`status`] value.
    pub status: AtomicU32,
    /// Bumped on every join, so frames and learned entries of a previous occupant are
    /// recognised as stale.
    pub generation: AtomicU32,
    /// Published MAC in the low 48 bits (0: none).
    pub mac: AtomicU64,
    /// [`flags`] bits.
    pub flags: AtomicU32,
    /// What kind of port this peer is (see `network::PortKind`).
    pub kind: AtomicU32,
    /// Owner's process id, for display (liveness comes from the slot lock, not from this).
    pub pid: AtomicU32,
    /// Offloads the peer accepts (reserved for TAP and vhost-user ports).
    pub offloads: AtomicU32,
    /// 64-bit hash filter of subscribed multicast groups.
    pub multicast_filter: AtomicU64,
    /// Join time, nanoseconds since the Unix epoch.
    pub joined_unix_ns: AtomicU64,
    /// A short UTF-8 label (socket path, interface name), NUL-padded.
    pub label: [AtomicU64; 4],
    /// Rate limit on what the peer sends, bits per second (0: none); see `network::rate`.
    pub rate_bps: AtomicU64,
    /// Burst of that rate limit, bytes.
    pub burst_bytes: AtomicU64,
    /// How the peer carries its VLANs: 0 trunk, 1 access (see `network::vlan`).
    pub vlan_mode: AtomicU32,
    /// The VLAN of its untagged frames, 1..=4094 (0: none; untagged frames are dropped).
    pub vlan_native: AtomicU32,
    /// Padding to the counters' cache line.
    pub pad0: [AtomicU64; 2],
    /// Counters written by the owner only: see `network::counters`.
    pub owner_counters: [AtomicU64; OWNER_COUNTERS + DROP_REASONS],
    /// Padding: receive drops live on their own cache line.
    pub pad1: [AtomicU64; 3],
    /// Receive-side drops, added with `fetch_add` by the senders that caused them (ring
    /// full) and by the owner (invalid, stale, abandoned).
    pub rx_drops: [AtomicU64; DROP_REASONS],
    /// Padding to [`PEER_ENTRY_SIZE`].
    pub pad2: [AtomicU64; 10],
}

/// A ring's control block: the producers' reservation cursor on its own cache line, then
/// the consumer's cursor and its sleep/wake words.
#[repr(C, align(64))]
pub struct RingControl {
    /// Next position producers try to claim (a hint: the slot states are the truth).
    pub reserve: AtomicU64,
    /// Padding.
    pub pad0: [AtomicU64; 7],
    /// Next position the consumer reads (stored once per batch; recovered on join).
    pub consumed: AtomicU64,
    /// Futex word: producers bump it to wake the consumer.
    pub wake: AtomicU32,
    /// Non-zero while the consumer sleeps or is about to.
    pub sleeping: AtomicU32,
    /// Producers bump it each time they publish a frame the consumer passed over late.
    pub late_published: AtomicU64,
    /// The consumer's copy of `late_published` when it last looked at its late slots:
    /// while the two differ, a late frame may wait (a sleeping consumer wakes for it).
    pub late_seen: AtomicU64,
    /// Padding.
    pub pad1: [AtomicU64; 4],
    /// Where producers start looking for a free large buffer (a hint).
    pub large_hint: AtomicU64,
    /// Reserved for multiqueue.
    pub pad2: [AtomicU64; 7],
}

/// The header of a large buffer, a frame too big for a ring slot (a GSO super-frame).
/// `owner` says who holds it: free, a writer filling it, or the ring position whose slot
/// refers to it (see `network::ring`).
#[repr(C, align(64))]
pub struct LargeHeader {
    /// Ownership word.
    pub owner: AtomicU64,
    /// Padding to a cache line.
    pub pad: [AtomicU64; 7],
}

/// The header in front of each slot's frame bytes.
#[repr(C)]
pub struct SlotHeader {
    /// Position, writer and state, see `network::ring`.
    pub state: AtomicU64,
    /// Frame length in bytes.
    pub len: AtomicU32,
    /// Generation of the receiver the frame was meant for.
    pub generation: AtomicU32,
    /// Offload metadata: a 12-byte virtio-net header in the first three words, and in the
    /// fourth the large buffer holding the frame, plus one (0: the frame is in the slot).
    pub offload: [AtomicU32; 4],
}

/// A learned address: `key` holds the MAC in its low 48 bits, the VLAN in the next 12 and
/// a set top bit (0 means empty); `owner_seen` holds the peer index + 1 in its top 16 bits
/// (0: nobody) and, below, the monotonic millisecond it was last confirmed, so that the
/// owner and its freshness change together in one store (see `network::fdb`).
#[repr(C)]
pub struct FdbEntry {
    /// VLAN and MAC, see above.
    pub key: AtomicU64,
    /// Owner and time, see above.
    pub owner_seen: AtomicU64,
}

/// One peer's VLANs: bit `v` of the map (word `v / 64`, bit `v % 64`) says it is in VLAN
/// `v`. Written at join under the control lock, before the peer is up; bits 0 and 4095 are
/// never set and are ignored when read.
#[repr(C, align(64))]
pub struct VlanEntry {
    /// The map.
    pub bits: [AtomicU64; 64],
}

/// Bytes per VLAN table entry.
pub const VLAN_ENTRY_SIZE: usize = 512;

/// The geometry chosen at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Peers the table holds.
    pub max_peers: u32,
    /// Slots per receive ring (power of two).
    pub ring_slots: u32,
    /// Largest Ethernet payload.
    pub mtu: u32,
    /// Large buffers per ring, for segmentation-offload frames (0: no offload).
    pub gso_buffers: u32,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            max_peers: 64,
            ring_slots: 256,
            mtu: 1500,
            gso_buffers: 32,
        }
    }
}

/// Why a geometry or a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Max peers outside the supported range.
    #[error("max peers must be between {MIN_PEERS} and {MAX_PEERS}, not {0}")]
    MaxPeers(u32),
    /// Ring slots not a power of two or out of range.
    #[error(
        "ring slots must be a power of two between {MIN_RING_SLOTS} and {MAX_RING_SLOTS}, not {0}"
    )]
    RingSlots(u32),
    /// MTU out of range.
    #[error("MTU must be between {MIN_MTU} and {MAX_MTU}, not {0}")]
    Mtu(u32),
    /// Too many large buffers.
    #[error("GSO buffers must be at most {MAX_GSO_BUFFERS}, not {0}")]
    GsoBuffers(u32),
    /// Not a guestnet region.
    #[error("not a guestnet region (bad magic {0:#018x})")]
    Magic(u64),
    /// Another layout version.
    #[error(
        "region layout version {found} is not supported (this guestnet speaks version {VERSION})"
    )]
    Version {
        /// Version in the file.
        found: u32,
    },
    /// Slot size disagrees with the MTU.
    #[error("slot size {found} does not match MTU {mtu} (expected {expected})")]
    SlotSize {
        /// Stored.
        found: u32,
        /// Implied by the MTU.
        expected: u32,
        /// Stored MTU.
        mtu: u32,
    },
    /// File size disagrees with the geometry.
    #[error("region is {found} bytes but its geometry needs {expected}")]
    Size {
        /// Actual or stored size.
        found: u64,
        /// Size the geometry implies.
        expected: u64,
    },
}

/// Offsets derived from a [`Geometry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The geometry.
    pub geometry: Geometry,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Largest frame a slot holds (untagged MTU + 14, plus 4 for one VLAN tag).
    pub max_frame: usize,
    /// Peer table start.
    pub peer_table_offset: usize,
    /// VLAN table start.
    pub vlan_offset: usize,
    /// Learned table start.
    pub fdb_offset: usize,
    /// Lock bytes start: byte `i` locks peer `i`; byte `max_peers` is the control lock.
    pub lock_offset: usize,
    /// First ring.
    pub rings_offset: usize,
    /// Bytes per ring.
    pub ring_stride: usize,
    /// Offset of the large buffers inside a ring.
    pub large_offset_in_ring: usize,
    /// Whole file.
    pub total_size: usize,
}

const fn round_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

/// Bytes per slot for an MTU: slot header and the largest (tagged) frame, cache-line aligned.
pub const fn slot_size_for(mtu: u32) -> usize {
    round_up(
        SLOT_HEADER_SIZE + HEADER_LEN + VLAN_TAG_LEN + mtu as usize,
        64,
    )
}

impl Layout {
    /// Checks a geometry and derives its offsets.
    pub fn new(geometry: Geometry) -> Result<Layout, LayoutError> {
        let Geometry {
            max_peers,
            ring_slots,
            mtu,
            gso_buffers,
        } = geometry;
        if !(MIN_PEERS..=MAX_PEERS).contains(&max_peers) {
            return Err(LayoutError::MaxPeers(max_peers));
        }
        if !ring_slots.is_power_of_two() || !(MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&ring_slots)
        {
            return Err(LayoutError::RingSlots(ring_slots));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(LayoutError::Mtu(mtu));
        }
        if gso_buffers > MAX_GSO_BUFFERS {
            return Err(LayoutError::GsoBuffers(gso_buffers));
        }
        // With the bounds above none of this can overflow on a 64-bit host:
        // 1024 peers × (65536 slots × 9088 bytes + 256 × 65664 bytes) ≈ 627 GB < 2^64.
        let peers = max_peers as usize;
        let slot_size = slot_size_for(mtu);
        let peer_table_offset = HEADER_SIZE;
        let vlan_offset = peer_table_offset + peers * PEER_ENTRY_SIZE;
        let fdb_offset = vlan_offset + peers * VLAN_ENTRY_SIZE;
        let lock_offset = fdb_offset + FDB_ENTRIES * std::mem::size_of::<FdbEntry>();
        let rings_offset = round_up(lock_offset + peers + 1, 4096);
        let large_offset_in_ring =
            round_up(RING_CONTROL_SIZE + ring_slots as usize * slot_size, 64);
        let ring_stride = round_up(
            large_offset_in_ring + gso_buffers as usize * LARGE_STRIDE,
            4096,
        );
        let total_size = rings_offset + peers * ring_stride;
        Ok(Layout {
            geometry,
            slot_size,
            max_frame: slot_size - SLOT_HEADER_SIZE,
            peer_table_offset,
            vlan_offset,
            fdb_offset,
            lock_offset,
            rings_offset,
            ring_stride,
            large_offset_in_ring,
            total_size,
        })
    }

    /// Offset of peer `index`'s table entry.
    pub fn peer_offset(&self, index: usize) -> usize {
        self.peer_table_offset + index * PEER_ENTRY_SIZE
    }

    /// Offset of peer `index`'s VLAN map.
    pub fn vlan_entry_offset(&self, index: usize) -> usize {
        self.vlan_offset + index * VLAN_ENTRY_SIZE
    }

    /// Offset of learned-table entry `index`.
    pub fn fdb_entry_offset(&self, index: usize) -> usize {
        self.fdb_offset + index * std::mem::size_of::<FdbEntry>()
    }

    /// Offset of peer `index`'s ring control block.
    pub fn ring_offset(&self, index: usize) -> usize {
        self.rings_offset + index * self.ring_stride
    }

    /// Offset of slot `slot` of peer `index`'s ring.
    pub fn slot_offset(&self, index: usize, slot: usize) -> usize {
        self.ring_offset(index) + RING_CONTROL_SIZE + slot * self.slot_size
    }

    /// Offset of large buffer `buffer` of peer `index`'s ring.
    pub fn large_offset(&self, index: usize, buffer: usize) -> usize {
        self.ring_offset(index) + self.large_offset_in_ring + buffer * LARGE_STRIDE
    }

    /// Byte locked by the owner of peer `index`.
    pub fn peer_lock_byte(&self, index: usize) -> u64 {
        (self.lock_offset + index) as u64
    }

    /// Byte locked around control operations (join, leave, MAC changes, reclaim).
    pub fn control_lock_byte(&self) -> u64 {
        (self.lock_offset + self.geometry.max_peers as usize) as u64
    }

    /// Reads and checks a header against the file's actual size.
    pub fn from_header(header: &Header, file_size: u64) -> Result<Layout, LayoutError> {
        use std::sync::atomic::Ordering::Relaxed;
        let magic = header.magic.load(Relaxed);
        if magic != MAGIC {
            return Err(LayoutError::Magic(magic));
        }
        let version = header.version.load(Relaxed);
        if version != VERSION {
            return Err(LayoutError::Version { found: version });
        }
        let layout = Layout::new(Geometry {
            max_peers: header.max_peers.load(Relaxed),
            ring_slots: header.ring_slots.load(Relaxed),
            mtu: header.mtu.load(Relaxed),
            gso_buffers: header.gso_buffers.load(Relaxed),
        })?;
        let slot_size = header.slot_size.load(Relaxed);
        if slot_size as usize != layout.slot_size {
            return Err(LayoutError::SlotSize {
                found: slot_size,
                expected: layout.slot_size as u32,
                mtu: layout.geometry.mtu,
            });
        }
        let stored = header.total_size.load(Relaxed);
        for found in [stored, file_size] {
            if found != layout.total_size as u64 {
                return Err(LayoutError::Size {
                    found,
                    expected: layout.total_size as u64,
                });
            }
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn structure_sizes_are_the_documented_ones() {
        assert!(size_of::<Header>() <= HEADER_SIZE);
        assert_eq!(size_of::<Header>(), 384);
        assert_eq!(size_of::<PeerEntry>(), PEER_ENTRY_SIZE);
        assert_eq!(size_of::<RingControl>(), RING_CONTROL_SIZE);
        assert_eq!(size_of::<SlotHeader>(), SLOT_HEADER_SIZE);
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(size_of::<VlanEntry>(), VLAN_ENTRY_SIZE);
        assert_eq!(std::mem::offset_of!(PeerEntry, rx_drops) % 64, 0);
        assert_eq!(size_of::<LargeHeader>(), 64);
        assert_eq!(align_of::<PeerEntry>(), 64);
    }

    #[test]
    fn default_geometry_layout() {
        let layout = Layout::new(Geometry::default()).unwrap();
        assert_eq!(layout.slot_size, 1600); // 32 + 1518 rounded up to 64
        assert_eq!(layout.max_frame, 1568);
        assert_eq!(layout.peer_table_offset, 4096);
        assert_eq!(layout.vlan_offset, 4096 + 64 * 512);
        assert_eq!(layout.fdb_offset, 4096 + 2 * 64 * 512);
        assert_eq!(layout.rings_offset % 4096, 0);
        assert_eq!(layout.large_offset_in_ring, 192 + 256 * 1600);
        assert_eq!(
            layout.ring_stride,
            (192 + 256 * 1600usize + 32 * LARGE_STRIDE).div_ceil(4096) * 4096
        );
        assert_eq!(
            layout.total_size,
            layout.rings_offset + 64 * layout.ring_stride
        );
    }

    #[test]
    fn jumbo_slots_hold_a_tagged_9000_byte_frame() {
        let layout = Layout::new(Geometry {
            mtu: 9000,
            ..Geometry::default()
        })
        .unwrap();
        assert!(layout.max_frame >= 9018);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let g = Geometry::default();
        assert_eq!(
            Layout::new(Geometry { max_peers: 1, ..g }),
            Err(LayoutError::MaxPeers(1))
        );
        assert_eq!(
            Layout::new(Geometry {
                ring_slots: 100,
                ..g
            }),
            Err(LayoutError::RingSlots(100))
        );
        assert_eq!(
            Layout::new(Geometry { mtu: 9001, ..g }),
            Err(LayoutError::Mtu(9001))
        );
    }
}
