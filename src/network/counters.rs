//! Counters: every frame a peer accepts is delivered or counted here with its reason.
//!
//! A peer's counters live in its table entry so that `guestnet status` (any process) reads
//! them. The owner accumulates them privately during a batch and writes them once at its
//! end; drops that a *sender* observes on behalf of a receiver (its ring was full) are added
//! to the receiver's entry with `fetch_add`, so both sides of the accounting hold:
//!
//! ```text
//! sender:    tx_packets × destinations = tx_deliveries + Σ tx_drops[reason]
//! receiver:  deliveries into its ring  = rx_packets + Σ rx_drops[reason] (+ frames still queued)
//! ```
//!
//! (For unicast a frame has one destination; a flooded frame counts once in `tx_packets`
//! and once per copy in `tx_deliveries` or the drops.) Frames refused before routing
//! (invalid, no route) have no destination and count once in `tx_drops`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::shm::layout::{DROP_REASONS, OWNER_COUNTERS, PeerEntry};

/// Why a frame, or one copy of it, was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The receiver's ring had no free slot.
    RingFull,
    /// The ring's cursor kept moving under the sender (pathological contention or a
    /// corrupted ring).
    RingBusy,
    /// Unicast to an unknown address on a network that drops unknown unicast, or to an
    /// address that sits behind the sender itself.
    NoRoute,
    /// The frame broke the network's rules: shorter than 14 bytes, longer than the MTU
    /// allows, or with a multicast source address.
    Invalid,
    /// The receiver left or was reclaimed while the frame was on its way.
    PeerGone,
    /// The receiver's link is down.
    LinkDown,
    /// The writer died (or was believed dead) before publishing the frame.
    Abandoned,
    /// The frame was meant for a previous occupant of the receiver's slot.
    Stale,
    /// A ring slot held a state that made no sense; it was reset.
    Corrupt,
    /// The port is quarantined for misbehaviour.
    Quarantined,
    /// The writer, alive but not progressing (stopped mid-copy), held its slot past the
    /// receiver's patience; the receiver passed over it. Counted on both sides.
    Stalled,
    /// The sender's port is locked to its published MAC and the frame's source was
    /// another address.
    Spoofed,
    /// The sender's port has a rate limit and the frame was over it.
    RateLimited,
    /// 802.1Q: the frame was tagged for a VLAN the port is not in, tagged on an access
    /// port, or untagged on a trunk without a native VLAN; or (on the receiving side) it
    /// arrived in a form its VLANs rule out.
    VlanFiltered,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::RingFull,
        DropReason::RingBusy,
        DropReason::NoRoute,
        DropReason::Invalid,
        DropReason::PeerGone,
        DropReason::LinkDown,
        DropReason::Abandoned,
        DropReason::Stale,
        DropReason::Corrupt,
        DropReason::Quarantined,
        DropReason::Stalled,
        DropReason::Spoofed,
        DropReason::RateLimited,
        DropReason::VlanFiltered,
    ];

    /// Index of the reason's counter.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The reason's name in `status` output.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::RingBusy => "ring_busy",
            DropReason::NoRoute => "no_route",
            DropReason::Invalid => "invalid",
            DropReason::PeerGone => "peer_gone",
            DropReason::LinkDown => "link_down",
            DropReason::Abandoned => "abandoned",
            DropReason::Stale => "stale",
            DropReason::Corrupt => "corrupt",
            DropReason::Quarantined => "quarantined",
            DropReason::Stalled => "stalled",
            DropReason::Spoofed => "spoofed",
            DropReason::RateLimited => "rate_limited",
            DropReason::VlanFiltered => "vlan_filtered",
        }
    }
}

/// Indices of the owner-written counters.
pub(crate) mod slot {
    pub const TX_PACKETS: usize = 0;
    pub const TX_BYTES: usize = 1;
    pub const RX_PACKETS: usize = 2;
    pub const RX_BYTES: usize = 3;
    pub const WAKEUPS: usize = 4;
    pub const TX_DELIVERIES: usize = 5;
    pub const LEARN_REFUSED: usize = 6;
    pub const TX_HELD_BACK: usize = 7;
    pub const TX_DROPS: usize = super::OWNER_COUNTERS;
}

/// A copy of one peer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Frames accepted from the port.
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Copies published into receivers' rings.
    pub tx_deliveries: u64,
    /// Frames received by the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Times the receiver was woken from sleep.
    pub wakeups: u64,
    /// Source addresses not learned because the peer's learning quota was full.
    pub learn_refused: u64,
    /// Unicast frames that found their receiver's ring full, waited for room (a port
    /// that holds its guest back, see `Sender::set_hold_back`) and went in.
    pub held_back: u64,
    /// Transmit drops by [`DropReason::index`].
    pub tx_drops: [u64; DROP_REASONS],
    /// Receive drops by [`DropReason::index`].
    pub rx_drops: [u64; DROP_REASONS],
}

impl PeerCounters {
    /// Reads a table entry's counters.
    pub fn read(entry: &PeerEntry) -> PeerCounters {
        Self::from_words(&entry.owner_counters, &entry.rx_drops)
    }

    /// Reads the counters of the peers that have left, as the region's header keeps them
    /// (owner counters, then receive drops).
    pub fn read_retired(words: &[AtomicU64; OWNER_COUNTERS + 2 * DROP_REASONS]) -> PeerCounters {
        let (owner, rx) = words.split_at(OWNER_COUNTERS + DROP_REASONS);
        Self::from_words(owner, rx)
    }

    fn from_words(owner_words: &[AtomicU64], rx_words: &[AtomicU64]) -> PeerCounters {
        let word =
            |words: &[AtomicU64], i: usize| words.get(i).map_or(0, |w| w.load(Ordering::Relaxed));
        let owner = |i: usize| word(owner_words, i);
        let mut counters = PeerCounters {
            tx_packets: owner(slot::TX_PACKETS),
            tx_bytes: owner(slot::TX_BYTES),
            tx_deliveries: owner(slot::TX_DELIVERIES),
            rx_packets: owner(slot::RX_PACKETS),
            rx_bytes: owner(slot::RX_BYTES),
            wakeups: owner(slot::WAKEUPS),
            learn_refused: owner(slot::LEARN_REFUSED),
            held_back: owner(slot::TX_HELD_BACK),
            ..PeerCounters::default()
        };
        for reason in DropReason::ALL {
            counters.tx_drops[reason.index()] = owner(slot::TX_DROPS + reason.index());
            counters.rx_drops[reason.index()] = word(rx_words, reason.index());
        }
        counters
    }

    /// Transmit drops for one reason.
    pub fn tx_dropped(&self, reason: DropReason) -> u64 {
        self.tx_drops[reason.index()]
    }

    /// Receive drops for one reason.
    pub fn rx_dropped(&self, reason: DropReason) -> u64 {
        self.rx_drops[reason.index()]
    }

    /// All transmit drops.
    pub fn tx_dropped_total(&self) -> u64 {
        self.tx_drops.iter().sum()
    }

    /// All receive drops.
    pub fn rx_dropped_total(&self) -> u64 {
        self.rx_drops.iter().sum()
    }

    /// Non-zero drops by name, `tx_ring_full`, `rx_stale`, …
    pub fn drops_by_name(&self) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        for reason in DropReason::ALL {
            for (side, value) in [
                ("tx", self.tx_dropped(reason)),
                ("rx", self.rx_dropped(reason)),
            ] {
                if value != 0 {
                    map.insert(format!("{side}_{}", reason.name()), value);
                }
            }
        }
        map
    }
}

impl Serialize for DropReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Moves a departing peer's counters into the network's retired totals (`retired`, laid
/// out as [`PeerCounters::read_retired`] reads it) and zeroes them, so that the
/// accounting identities above hold for the network as a whole after members come and go.
/// Called when the entry is cleared, once its owner can no longer write them.
pub(crate) fn retire(entry: &PeerEntry, retired: &[AtomicU64; OWNER_COUNTERS + 2 * DROP_REASONS]) {
    let words = entry.owner_counters.iter().chain(entry.rx_drops.iter());
    for (counter, total) in words.zip(retired.iter()) {
        let value = counter.swap(0, Ordering::Relaxed);
        if value != 0 {
            total.fetch_add(value, Ordering::Relaxed);
        }
    }
}

/// Counts `n` receive drops for `reason` on behalf of a receiver that has gone: into the
/// network's retired totals, where its own counters went when it left. (Counting them on
/// its entry would lose them: the entry is zeroed for its next occupant.)
pub(crate) fn count_retired_rx(
    reason: DropReason,
    n: u64,
    retired: &[AtomicU64; OWNER_COUNTERS + 2 * DROP_REASONS],
) {
    if n != 0 {
        retired[OWNER_COUNTERS + DROP_REASONS + reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts a batch accumulates before writing them to the table in one go.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub owner: [u64; OWNER_COUNTERS + DROP_REASONS],
    pub dirty: bool,
}

impl Pending {
    pub fn add(&mut self, index: usize, value: u64) {
        if let Some(counter) = self.owner.get_mut(index) {
            *counter += value;
            self.dirty = true;
        }
    }

    pub fn tx_drop(&mut self, reason: DropReason) {
        self.add(slot::TX_DROPS + reason.index(), 1);
    }

    /// Writes the accumulated counts. The owner is the only writer of these counters, so a
    /// plain load and store (no locked read-modify-write) is enough; Relaxed because they
    /// order nothing.
    pub fn flush(&mut self, entry: &PeerEntry) {
        if !self.dirty {
            return;
        }
        for (counter, value) in entry.owner_counters.iter().zip(self.owner.iter_mut()) {
            if *value != 0 {
                counter.store(
                    counter.load(Ordering::Relaxed).wrapping_add(*value),
                    Ordering::Relaxed,
                );
                *value = 0;
            }
        }
        self.dirty = false;
    }
}

/// Adds a receive drop to a peer's entry (possibly another process's).
pub(crate) fn count_rx_drop(entry: &PeerEntry, reason: DropReason) {
    entry.rx_drops[reason.index()].fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_are_unique_and_in_counter_order() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DROP_REASONS);
    }

    #[test]
    fn drops_by_name_lists_only_nonzero_counts() {
        let mut c = PeerCounters::default();
        c.tx_drops[DropReason::RingFull.index()] = 3;
        c.rx_drops[DropReason::Stale.index()] = 1;
        let map = c.drops_by_name();
        assert_eq!(map.len(), 2);
        assert_eq!(map["tx_ring_full"], 3);
        assert_eq!(map["rx_stale"], 1);
    }
}
