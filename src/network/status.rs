//! What `guestnet status` shows of a network: its geometry, its peers with their flags
//! and counters, and the learned addresses. Reading it takes no lock and never stalls
//! the data path; the values are read a moment apart, not as one snapshot.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::shm::layout::{self, status};
use crate::wire::MacAddress;

use super::clock::monotonic_ns;
use super::counters::PeerCounters;
use super::membership::{PortKind, read_label};
use super::region::Region;
use super::vlan::VlanMembership;
use super::{fdb, ring};

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
    /// Sources locked to the published MAC.
    pub lock_mac: bool,
    /// Isolated from the other isolated peers.
    pub isolated: bool,
    /// Rate limit on what it sends, bits per second (0: none).
    pub rate: u64,
    /// Burst of the rate limit, bytes.
    pub burst: u64,
    /// How it carries VLANs: "access" or "trunk".
    pub vlan_mode: String,
    /// Its VLANs: "10", "10,20,30-40" or "all".
    pub vlans: String,
    /// The VLAN of its untagged frames (none: a trunk that carries only tagged frames).
    pub native: Option<u16>,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Copies delivered to receivers: into their rings, or straight into a guest served by
    /// the same port (see [`crate::network::send::Shortcut`]).
    pub tx_deliveries: u64,
    /// Receiver wake-ups.
    pub wakeups: u64,
    /// Source addresses not learned: the peer's learning quota was full.
    pub learn_refused: u64,
    /// Unicast frames that waited for room in a full ring, then went in.
    pub held_back: u64,
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
    /// The VLAN it was learned in.
    pub vlan: u16,
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
    /// Memory the region really uses: what `create` reserved (header, tables, slots) and
    /// the large buffers of the slots peers have joined.
    pub resident_bytes: u64,
    /// Peers that are up.
    pub peers: Vec<PeerStatus>,
    /// Learned addresses.
    pub learned: Vec<LearnedStatus>,
    /// Slots reclaimed by this status call.
    pub reclaimed: Vec<u16>,
    /// Counters of the peers that have left or were reclaimed, added up, and the frames
    /// discarded unread from their rings (`rx_peer_gone`).
    pub retired: RetiredStatus,
}

/// The counters of departed peers, added up.
#[derive(Debug, Clone, Serialize)]
pub struct RetiredStatus {
    /// Frames they sent.
    pub tx_packets: u64,
    /// Copies they delivered into receivers' rings.
    pub tx_deliveries: u64,
    /// Frames they received.
    pub rx_packets: u64,
    /// Drops by reason, non-zero only.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// Reads everything `guestnet status` shows from `region`; `reclaimed` lists the slots
/// the caller's sweep just reclaimed.
pub(crate) fn collect(region: &Region, reclaimed: Vec<u16>) -> NetworkStatus {
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
        let vlans = VlanMembership::read(entry, region.vlans().at(index));
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
            lock_mac: flags & layout::flags::LOCK_MAC != 0,
            isolated: flags & layout::flags::ISOLATED != 0,
            rate: entry.rate_bps.load(Ordering::Relaxed),
            burst: entry.burst_bytes.load(Ordering::Relaxed),
            vlan_mode: vlans.mode().name().to_string(),
            vlans: vlans.members().to_string(),
            native: vlans.native(),
            rx_packets: counters.rx_packets,
            rx_bytes: counters.rx_bytes,
            tx_packets: counters.tx_packets,
            tx_bytes: counters.tx_bytes,
            tx_deliveries: counters.tx_deliveries,
            wakeups: counters.wakeups,
            learn_refused: counters.learn_refused,
            held_back: counters.held_back,
            rx_queued: queued.min(region.layout.geometry.ring_slots as u64),
            drops: counters.drops_by_name(),
        });
    }
    let now_ms = monotonic_ns() / 1_000_000;
    let learned = fdb::entries(region.fdb(), now_ms)
        .into_iter()
        .map(|e| LearnedStatus {
            mac: e.mac,
            vlan: e.vlan,
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
        // The open file, not the path: the name may point to another network by now.
        resident_bytes: region
            .file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m).saturating_mul(512))
            .unwrap_or(0),
        peers: list,
        learned,
        reclaimed,
        retired: {
            let retired = PeerCounters::read_retired(&region.header().retired);
            RetiredStatus {
                tx_packets: retired.tx_packets,
                tx_deliveries: retired.tx_deliveries,
                rx_packets: retired.rx_packets,
                drops: retired.drops_by_name(),
            }
        },
    }
}
