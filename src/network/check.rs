//! Integrity checks of a region that opens: what `guestnet status` reports as damage.
//!
//! Opening a region already refuses a bad magic, version, geometry or size
//! ([`Error::Layout`](super::Error::Layout)), so every offset is sound by the time we get
//! here. What opening cannot see is damage *inside* the structures: a peer entry, a ring
//! slot's state word or a learned address that some buggy process scribbled over. Readers
//! on the data path already survive such damage (they validate each value they use, reset
//! nonsensical slot states and count the frame as `corrupt`), so none of this is fatal; but
//! an operator wants to know, because a scribbler is a bug to find.
//!
//! [`check`] only reads. It runs on a live network, so every rule below is one that a
//! running network can never break, however its peers interleave; the comment at each
//! rule says why, and where a margin is needed for values read a moment apart.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::shm::layout::status;
use crate::wire::MacAddress;

use super::clock::monotonic_ns;
use super::ring::{self, SlotMemory, SlotState, Tag};
use super::vlan::VlanSet;
use super::{Network, fdb};

/// One problem found in a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Damage {
    /// A peer entry's status is neither free nor up.
    PeerStatus {
        /// Peer slot.
        slot: u16,
        /// The status word found.
        status: u32,
    },
    /// An up peer publishes a MAC that no port may own (multicast or all zeros).
    PeerMac {
        /// Peer slot.
        slot: u16,
        /// The MAC found.
        mac: MacAddress,
    },
    /// Two up peers publish the same MAC in a VLAN they share (joining and
    /// `set_mac_address` refuse that; in disjoint VLANs it is allowed).
    DuplicateMac {
        /// The MAC.
        mac: MacAddress,
        /// The first slot publishing it.
        slot: u16,
        /// The other slot publishing it.
        other: u16,
    },
    /// An up peer has generation 0, which joining never hands out.
    ZeroGeneration {
        /// Peer slot.
        slot: u16,
    },
    /// A ring's reserve cursor runs further ahead of its consumer than the ring allows.
    RingCursor {
        /// Ring (peer slot) index.
        ring: u16,
        /// Consumer's cursor.
        consumed: u64,
        /// Producers' reserve cursor.
        reserve: u64,
    },
    /// A ring slot's state word names a position outside the window its cursors allow,
    /// or a writer outside the peer table.
    RingSlot {
        /// Ring (peer slot) index.
        ring: u16,
        /// Slot index in the ring.
        index: u64,
        /// The raw state word.
        state: u64,
        /// Consumer's cursor when checked.
        consumed: u64,
        /// Producers' reserve cursor when checked.
        reserve: u64,
    },
    /// A learned address names a peer index outside the table.
    LearnedPeer {
        /// The address.
        mac: MacAddress,
        /// The peer index it names.
        peer: u16,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::PeerStatus { slot, status } => write!(
                f,
                "peer slot {slot}: status {status:#x} is neither free nor up"
            ),
            Damage::PeerMac { slot, mac } => write!(
                f,
                "peer slot {slot}: is up with MAC {mac}, which is multicast or zero"
            ),
            Damage::DuplicateMac { mac, slot, other } => {
                write!(f, "peer slots {slot} and {other} both publish MAC {mac}")
            }
            Damage::ZeroGeneration { slot } => {
                write!(f, "peer slot {slot}: is up with generation 0")
            }
            Damage::RingCursor {
                ring,
                consumed,
                reserve,
            } => write!(
                f,
                "ring {ring}: reserve cursor {reserve} is too far ahead of consumed cursor {consumed}"
            ),
            Damage::RingSlot {
                ring,
                index,
                state,
                consumed,
                reserve,
            } => {
                let decoded = SlotState::decode(*state);
                write!(
                    f,
                    "ring {ring} slot {index}: state {state:#018x} ({:?} at position {}, writer {}) \
                     is outside the window of consumed {consumed} / reserve {reserve}",
                    decoded.tag, decoded.position, decoded.writer
                )
            }
            Damage::LearnedPeer { mac, peer } => write!(
                f,
                "learned address {mac} names peer {peer}, beyond the peer table"
            ),
        }
    }
}

/// Positions are compared modulo 2^48 (see [`ring`]); `distance(from, to)` is how far
/// `to` lies ahead of `from`.
fn distance(from: u64, to: u64) -> u64 {
    ring::advance(to, from.wrapping_neg())
}

/// Half the position space: a distance beyond it means "behind", not "far ahead".
const BEHIND: u64 = 1 << (ring::POSITION_BITS - 1);

/// Checks a region for damage; an empty list means none was found.
pub fn check(network: &Network) -> Vec<Damage> {
    let mut damage = Vec::new();
    check_peers(network, &mut damage);
    let peers = network.region.peers();
    for ring in 0..peers.count() {
        // Only the rings of peers that are up, and only if the same peer is still up once
        // its ring is read. A peer leaving starts its ring afresh two laps ahead and leaves
        // its reader's cursor behind, and one joining starts it afresh again before it is
        // up: either, under our feet or done, looks like a ring far past its cursor, which
        // it is not. A free slot's ring is started afresh by whoever takes the slot next,
        // so nothing in it can harm anyone. (Its state store comes after the status store
        // of a peer leaving, and before the generation and status stores of one joining:
        // having read one of its states, we see the status or generation change.)
        let entry = peers.at(ring);
        let up = || entry.status.load(Ordering::Acquire) == status::UP;
        if !up() {
            continue;
        }
        let generation = entry.generation.load(Ordering::Acquire);
        let mut found = Vec::new();
        check_ring(network, ring as u16, &mut found);
        if up() && entry.generation.load(Ordering::Acquire) == generation {
            damage.append(&mut found);
        }
    }
    check_learned(network, &mut damage);
    damage
}

fn check_peers(network: &Network, damage: &mut Vec<Damage>) {
    let peers = network.region.peers();
    let maps = network.region.vlans();
    let mut published: Vec<(MacAddress, u16, VlanSet)> = Vec::new();
    for index in 0..peers.count() {
        let slot = index as u16;
        let entry = peers.at(index);
        match entry.status.load(Ordering::Acquire) {
            status::FREE => continue,
            status::UP => {}
            other => {
                damage.push(Damage::PeerStatus {
                    slot,
                    status: other,
                });
                continue;
            }
        }
        // A MAC and generation are written under the control lock before the status turns
        // UP (Release, paired with the Acquire above), so an up entry is always complete.
        let mac = MacAddress::from_u64(entry.mac.load(Ordering::Relaxed));
        if mac.is_multicast() || mac.is_zero() {
            damage.push(Damage::PeerMac { slot, mac });
        } else if let Some(&(_, first, _)) = published
            .iter()
            .find(|(m, _, vlans)| *m == mac && vlans.overlaps(&VlanSet::read(maps.at(index))))
        {
            damage.push(Damage::DuplicateMac {
                mac,
                slot: first,
                other: slot,
            });
        } else {
            published.push((mac, slot, VlanSet::read(maps.at(index))));
        }
        if entry.generation.load(Ordering::Relaxed) == 0 {
            damage.push(Damage::ZeroGeneration { slot });
        }
    }
}

/// The window a ring's slot states must lie in.
///
/// Every store into a state word keeps its position congruent to the slot index (a claim
/// writes position `p` into slot `p mod N`, a consumer frees slot `t mod N` for `t + N`), so
/// a position in the wrong slot is damage whatever the timing.
///
/// Below: the consumer stores `consumed` only after freeing the slots it read (Release),
/// and we load it first (Acquire), so no state we read afterwards is older than it.
///
/// Above: a producer claims position `p` only when the slot says `FREE(p)`, and the
/// consumer writes `FREE(p)` only after reading `p - N`, which was claimed. So a claimed
/// position is below the true claim cursor, and a free one below it plus `N`. The `reserve`
/// hint lags the true cursor by at most one step per sender that has claimed but not yet
/// moved it, so the bound adds one per peer; we load `reserve` last, so that it is at least
/// as new as every state we read.
fn check_ring(network: &Network, ring_index: u16, damage: &mut Vec<Damage>) {
    let region = &network.region;
    let max_peers = u64::from(region.layout.geometry.max_peers);
    let ring = region.ring(ring_index);
    let slots = ring.slot_count();
    let consumed = ring.control().consumed.load(Ordering::Acquire) & position_mask();
    let states: Vec<u64> = (0..slots)
        .map(|index| ring.state(index).load(Ordering::Acquire))
        .collect();
    let reserve = ring.control().reserve.load(Ordering::Acquire) & position_mask();
    // The reserve hint may trail `consumed` a little (a claimant died before moving it
    // and the consumer skipped its abandoned slot); the next claim repairs that, so it is
    // no damage: measure from whichever is ahead.
    let ahead = distance(consumed, reserve);
    let claimed_until = if ahead >= BEHIND { 0 } else { ahead };
    // The true claim cursor is at most `N` past the consumer's private tail, which runs
    // ahead of the stored `consumed` by at most one receive batch; allowing another `N`
    // for that batch keeps a busy but healthy ring from being reported.
    if claimed_until > 2 * slots + max_peers {
        damage.push(Damage::RingCursor {
            ring: ring_index,
            consumed,
            reserve,
        });
    }
    for (index, &word) in (0u64..).zip(&states) {
        let state = SlotState::decode(word);
        let offset = distance(consumed, state.position);
        let limit = match state.tag {
            Tag::Free => claimed_until + slots + max_peers,
            Tag::Writing | Tag::Ready | Tag::Abandoned => claimed_until + max_peers,
            // Held back for a passed-over writer for as long as it is stopped (or waited
            // for late): any lap behind the consumer is possible, so only its slot and
            // writer are checked.
            Tag::Reserved | Tag::Released | Tag::Awaited | Tag::Late => u64::MAX,
        };
        let claimed = state.tag != Tag::Free;
        let bad = state.position % slots != index
            || offset >= limit
            || (claimed && u64::from(state.writer) >= max_peers);
        if bad {
            damage.push(Damage::RingSlot {
                ring: ring_index,
                index,
                state: word,
                consumed,
                reserve,
            });
        }
    }
}

fn position_mask() -> u64 {
    (1 << ring::POSITION_BITS) - 1
}

fn check_learned(network: &Network, damage: &mut Vec<Damage>) {
    let max_peers = network.region.layout.geometry.max_peers;
    // Only fresh entries: an expired one is never looked up, whatever it names.
    let now_ms = monotonic_ns() / 1_000_000;
    for entry in fdb::entries(network.region.fdb(), now_ms) {
        if u32::from(entry.peer) >= max_peers {
            damage.push(Damage::LearnedPeer {
                mac: entry.mac,
                peer: entry.peer,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{CreateOptions, JoinOptions};
    use crate::shm::layout::Geometry;

    fn network(dir: &tempfile::TempDir) -> Network {
        Network::create(
            dir.path(),
            "check",
            CreateOptions {
                geometry: Geometry {
                    max_peers: 4,
                    ring_slots: 8,
                    mtu: 1500,
                    ..Geometry::default()
                },
                ..CreateOptions::default()
            },
        )
        .unwrap()
    }

    fn frame(dst: MacAddress, src: MacAddress) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn a_busy_healthy_network_has_no_damage() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(&dir);
        let mut a = net.join(JoinOptions::default()).unwrap();
        let mut b = net.join(JoinOptions::default()).unwrap();
        assert_eq!(check(&net), vec![]);
        // Several laps, a full ring and frames left unread.
        for _ in 0..5 {
            for _ in 0..10 {
                a.send(&frame(b.mac(), a.mac()));
            }
            b.receive(5, |_| {});
            assert_eq!(check(&net), vec![]);
        }
    }

    #[test]
    fn the_ring_a_peer_left_behind_is_not_judged() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(&dir);
        let mut a = net.join(JoinOptions::default()).unwrap();
        let b = net.join(JoinOptions::default()).unwrap();
        // b leaves with a full ring: leaving starts its ring afresh two laps ahead, and
        // nobody moves its reader's cursor until the next peer takes the slot.
        for _ in 0..8 {
            a.send(&frame(b.mac(), a.mac()));
        }
        drop(b);
        assert_eq!(check(&net), vec![]);
        // The next peer in the slot starts its ring afresh again, and is judged.
        let c = net.join(JoinOptions::default()).unwrap();
        assert_eq!(check(&net), vec![]);
        let far = SlotState::free(3 + 8 * 1000).encode();
        net.region
            .ring(c.index())
            .state(3)
            .store(far, Ordering::Relaxed);
        assert_eq!(check(&net).len(), 1);
    }

    #[test]
    fn scribbled_entries_and_states_are_each_reported() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(&dir);
        let a = net.join(JoinOptions::default()).unwrap();
        let b = net.join(JoinOptions::default()).unwrap();
        let region = &net.region;
        let peers = region.peers();
        peers.at(2).status.store(7, Ordering::Relaxed);
        peers
            .at(u64::from(b.index()))
            .mac
            .store(a.mac().to_u64(), Ordering::Relaxed);
        peers
            .at(u64::from(a.index()))
            .generation
            .store(0, Ordering::Relaxed);
        // Slot 3 of ring 1 claims position 3 + 8 * 1000: far outside the window.
        let far = SlotState::free(3 + 8 * 1000).encode();
        region.ring(1).state(3).store(far, Ordering::Relaxed);
        // Slot 5 of ring 0 names position 4: the wrong slot for it.
        let misplaced = SlotState::free(4).encode();
        region.ring(0).state(5).store(misplaced, Ordering::Relaxed);
        let found = check(&net);
        assert!(found.contains(&Damage::PeerStatus { slot: 2, status: 7 }));
        assert!(found.contains(&Damage::DuplicateMac {
            mac: a.mac(),
            slot: a.index(),
            other: b.index()
        }));
        assert!(found.contains(&Damage::ZeroGeneration { slot: a.index() }));
        assert!(found.iter().any(|d| matches!(
            d,
            Damage::RingSlot { ring: 1, index: 3, state, .. } if *state == far
        )));
        assert!(found.iter().any(|d| matches!(
            d,
            Damage::RingSlot { ring: 0, index: 5, state, .. } if *state == misplaced
        )));
        assert_eq!(found.len(), 5, "{found:#?}");
    }

    #[test]
    fn a_multicast_mac_and_a_learned_entry_beyond_the_table_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(&dir);
        let a = net.join(JoinOptions::default()).unwrap();
        let region = &net.region;
        let multicast = MacAddress::new([0x01, 0, 0x5e, 0, 0, 1]);
        region
            .peers()
            .at(u64::from(a.index()))
            .mac
            .store(multicast.to_u64(), Ordering::Relaxed);
        let learned = MacAddress::new([2, 9, 9, 9, 9, 9]);
        fdb::learn(region.fdb(), 1, learned, 300, monotonic_ns() / 1_000_000);
        let found = check(&net);
        assert_eq!(
            found,
            vec![
                Damage::PeerMac {
                    slot: a.index(),
                    mac: multicast
                },
                Damage::LearnedPeer {
                    mac: learned,
                    peer: 300
                }
            ]
        );
    }

    #[test]
    fn a_runaway_reserve_cursor_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(&dir);
        let a = net.join(JoinOptions::default()).unwrap();
        let ring = net.region.ring(a.index());
        let consumed = ring.control().consumed.load(Ordering::Relaxed);
        ring.control().reserve.store(1_000_000, Ordering::Relaxed);
        assert_eq!(
            check(&net),
            vec![Damage::RingCursor {
                ring: a.index(),
                consumed,
                reserve: 1_000_000
            }]
        );
    }
}
