//! Who receives a frame: the network's delivery rules, numbered below, as one pure function.
//!
//! The sender calls [`resolve`] with its cached view of the peer table and a lookup into the
//! learned table; the function touches no shared memory and no clock, so the property
//! tests can compare it with a naive model frame by frame.
//!
//! 1. Unicast goes to the peer that publishes the destination MAC, else to the peer the
//!    address was learned behind, else to everyone (flooding, like a learning bridge) or
//!    nowhere when the network drops unknown unicast.
//! 2. Broadcast goes to every other peer; multicast to those whose filter takes it.
//! 3. Promiscuous peers get a copy of everything.
//! 4. Never back to the sender.
//! 5. Isolated peers (`--isolated`, as the Linux bridge's `isolated on`) exchange frames
//!    with non-isolated peers only: nothing an isolated peer sends reaches another
//!    isolated peer, promiscuous or not. Unicast between two isolated peers has no route.
//! 6. VLANs (802.1Q): every rule above holds within the frame's VLAN. Only peers in that
//!    VLAN are candidates at all: the publisher of an address (so the same MAC may be
//!    published in two VLANs), the peer it was learned behind (the learned table is keyed
//!    by VLAN and address), multicast, flood and promiscuous receivers. Which copies are
//!    tagged is [`egress_tagged`]'s answer. On a network where every peer is in every
//!    VLAN ([`PeerView::all_vlans`]) this costs one flag test per candidate.

use crate::shm::layout::flags;
use crate::wire::MacAddress;

/// What the sender knows of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Slot index.
    pub index: u16,
    /// Join generation, stamped into every frame sent to it.
    pub generation: u32,
    /// Published MAC.
    pub mac: MacAddress,
    /// Flag bits (`shm::layout::flags`).
    pub flags: u32,
    /// Hash filter of subscribed multicast groups.
    pub multicast_filter: u64,
    /// Offloads it accepts (`network::peer::offloads`).
    pub offloads: u32,
    /// The VLAN whose frames it gets untagged (0: none; every frame it gets is tagged).
    pub native: u16,
    /// It is in every VLAN (a peer without VLAN options), so no map need be looked at.
    pub all_vlans: bool,
}

impl PeerView {
    /// Whether it is isolated from the other isolated peers.
    pub fn is_isolated(&self) -> bool {
        self.flags & flags::ISOLATED != 0
    }

    /// Whether it gets a copy of every frame.
    pub fn is_promiscuous(&self) -> bool {
        self.flags & flags::PROMISCUOUS != 0
    }

    /// Whether a multicast frame to `group` is for it.
    pub fn accepts_multicast(&self, group: MacAddress) -> bool {
        group.is_broadcast()
            || self.flags & (flags::ALL_MULTICAST | flags::PROMISCUOUS) != 0
            || self.multicast_filter & multicast_filter_bit(group) != 0
    }
}

/// The bit a multicast group sets in a peer's 64-bit filter (a Fibonacci hash of the MAC,
/// top six bits). False positives are possible, as with any NIC hash filter; the guest's
/// own stack discards frames for groups it did not join.
pub fn multicast_filter_bit(group: MacAddress) -> u64 {
    let hash = group.to_u64().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1u64 << (hash >> 58)
}

/// Whether `receiver`'s copy of a frame of VLAN `vid` carries a tag: unless `vid` is its
/// native VLAN (an access port's only VLAN is its native one).
#[inline]
pub fn egress_tagged(receiver: &PeerView, vid: u16) -> bool {
    receiver.native != vid
}

/// The rules for one sender's frames: the network's, and the sender's own standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// Drop unicast to unknown addresses instead of flooding it.
    pub drop_unknown_unicast: bool,
    /// The sender is isolated (rule 5). The sender knows it from its cached view of the
    /// table, so no frame has to look it up.
    pub isolated_sender: bool,
}

/// How the destinations were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the peer publishing the address.
    Published,
    /// To the peer the address was learned behind.
    Learned,
    /// Unknown unicast sent to everyone.
    Flooded,
    /// Broadcast or multicast.
    Multicast,
    /// Nowhere: unknown unicast on a dropping network, or an address behind the sender.
    NoRoute,
}

/// Fills `out` with the indices (into `peers`) of the frame's receivers, in table order.
///
/// `member(i)` says whether `peers[i]` is in the frame's VLAN; `learned` maps an address
/// to the slot index it was learned behind in that VLAN.
pub fn resolve(
    dst: MacAddress,
    sender: u16,
    peers: &[PeerView],
    member: impl Fn(usize) -> bool,
    learned: impl FnOnce(MacAddress) -> Option<u16>,
    rules: Rules,
    out: &mut Vec<usize>,
) -> Route {
    let route = resolve_ignoring_isolation(dst, sender, peers, member, learned, rules, out);
    if !rules.isolated_sender {
        return route;
    }
    out.retain(|&i| !peers[i].is_isolated());
    if out.is_empty() && route != Route::Multicast {
        Route::NoRoute
    } else {
        route
    }
}

/// Rules 1 to 4, and 6.
fn resolve_ignoring_isolation(
    dst: MacAddress,
    sender: u16,
    peers: &[PeerView],
    member: impl Fn(usize) -> bool,
    learned: impl FnOnce(MacAddress) -> Option<u16>,
    rules: Rules,
    out: &mut Vec<usize>,
) -> Route {
    out.clear();
    if dst.is_multicast() {
        out.extend(
            peers
                .iter()
                .enumerate()
                .filter(|&(i, p)| p.index != sender && p.accepts_multicast(dst) && member(i))
                .map(|(i, _)| i),
        );
        return Route::Multicast;
    }
    let published = peers
        .iter()
        .enumerate()
        .position(|(i, p)| p.mac == dst && member(i));
    let owner = match published {
        Some(i) => Some((i, Route::Published)),
        None => learned(dst)
            .and_then(|slot| peers.iter().position(|p| p.index == slot))
            .filter(|&i| member(i))
            .map(|i| (i, Route::Learned)),
    };
    match owner {
        Some((i, route)) => {
            if peers[i].index == sender {
                // Behind the sender itself: a bridge filters this, and so do we; but a
                // promiscuous peer still sees it, as a mirror port would.
                out.extend(promiscuous_others(peers, sender, &member));
                return if out.is_empty() {
                    Route::NoRoute
                } else {
                    route
                };
            }
            out.extend(
                peers
                    .iter()
                    .enumerate()
                    .filter(|&(j, p)| {
                        j == i || (p.index != sender && p.is_promiscuous() && member(j))
                    })
                    .map(|(j, _)| j),
            );
            route
        }
        None if rules.drop_unknown_unicast => {
            out.extend(promiscuous_others(peers, sender, &member));
            if out.is_empty() {
                Route::NoRoute
            } else {
                Route::Flooded
            }
        }
        None => {
            out.extend(
                peers
                    .iter()
                    .enumerate()
                    .filter(|&(i, p)| p.index != sender && member(i))
                    .map(|(i, _)| i),
            );
            Route::Flooded
        }
    }
}

fn promiscuous_others<'a>(
    peers: &'a [PeerView],
    sender: u16,
    member: &'a impl Fn(usize) -> bool,
) -> impl Iterator<Item = usize> + 'a {
    peers
        .iter()
        .enumerate()
        .filter(move |&(i, p)| p.index != sender && p.is_promiscuous() && member(i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn mac(last: u8) -> MacAddress {
        MacAddress([2, 0, 0, 0, 0, last])
    }

    fn peer(index: u16, flags: u32) -> PeerView {
        PeerView {
            index,
            generation: 1,
            mac: mac(index as u8 + 1),
            flags,
            multicast_filter: 0,
            offloads: 0,
            native: 1,
            all_vlans: true,
        }
    }

    fn receivers(
        dst: MacAddress,
        sender: u16,
        peers: &[PeerView],
        learned: Option<u16>,
        rules: Rules,
    ) -> (Route, Vec<u16>) {
        let mut out = Vec::new();
        let route = resolve(dst, sender, peers, |_| true, |_| learned, rules, &mut out);
        (route, out.iter().map(|&i| peers[i].index).collect())
    }

    #[test]
    fn unicast_reaches_only_its_owner() {
        let peers = [peer(0, 0), peer(1, 0), peer(2, 0)];
        assert_eq!(
            receivers(mac(3), 0, &peers, None, Rules::default()),
            (Route::Published, vec![2])
        );
    }

    #[test]
    fn promiscuous_peers_see_others_unicast() {
        let peers = [peer(0, 0), peer(1, flags::PROMISCUOUS), peer(2, 0)];
        assert_eq!(
            receivers(mac(3), 0, &peers, None, Rules::default()),
            (Route::Published, vec![1, 2])
        );
    }

    #[test]
    fn learned_addresses_are_reached_directly_and_published_ones_win() {
        let peers = [peer(0, 0), peer(1, 0), peer(2, 0)];
        let far = MacAddress([0x52, 0x54, 0, 0, 0, 9]);
        assert_eq!(
            receivers(far, 0, &peers, Some(1), Rules::default()),
            (Route::Learned, vec![1])
        );
        // A guest spoofing peer 2's MAC as a source cannot steal its traffic.
        assert_eq!(
            receivers(mac(3), 0, &peers, Some(1), Rules::default()),
            (Route::Published, vec![2])
        );
    }

    #[test]
    fn unknown_unicast_floods_or_drops_by_rule() {
        let peers = [peer(0, 0), peer(1, 0), peer(2, 0)];
        let unknown = MacAddress([2, 9, 9, 9, 9, 9]);
        assert_eq!(
            receivers(unknown, 1, &peers, None, Rules::default()),
            (Route::Flooded, vec![0, 2])
        );
        let drop = Rules {
            drop_unknown_unicast: true,
            ..Rules::default()
        };
        assert_eq!(
            receivers(unknown, 1, &peers, None, drop),
            (Route::NoRoute, vec![])
        );
    }

    #[test]
    fn multicast_respects_filters_and_broadcast_reaches_all() {
        let group = MacAddress([0x33, 0x33, 0, 0, 0, 1]);
        let mut subscribed = peer(2, 0);
        subscribed.multicast_filter = multicast_filter_bit(group);
        let peers = [
            peer(0, 0),
            peer(1, flags::ALL_MULTICAST),
            subscribed,
            peer(3, 0),
        ];
        let (route, got) = receivers(group, 0, &peers, None, Rules::default());
        assert_eq!(route, Route::Multicast);
        assert!(got.contains(&1) && got.contains(&2) && !got.contains(&0));
        assert_eq!(
            receivers(MacAddress::BROADCAST, 0, &peers, None, Rules::default()).1,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn frames_to_an_address_behind_the_sender_go_nowhere() {
        let peers = [peer(0, 0), peer(1, 0)];
        let behind = MacAddress([2, 7, 7, 7, 7, 7]);
        assert_eq!(
            receivers(behind, 0, &peers, Some(0), Rules::default()),
            (Route::NoRoute, vec![])
        );
    }

    /// A peer's VLANs in the model: access to one VLAN, or a trunk of a set with an
    /// optional native VLAN (VLANs 1 to 3 only, so that they meet often).
    #[derive(Debug, Clone, Copy)]
    enum ModelVlans {
        Access(u16),
        Trunk { members: u8, native: Option<u16> },
    }

    impl ModelVlans {
        fn member(self, vid: u16) -> bool {
            match self {
                ModelVlans::Access(v) => v == vid,
                ModelVlans::Trunk { members, native } => {
                    members >> vid & 1 != 0 || native == Some(vid)
                }
            }
        }

        /// IEEE 802.1Q egress: tagged iff the port is a trunk and the VLAN is not its
        /// native one.
        fn tagged(self, vid: u16) -> bool {
            match self {
                ModelVlans::Access(_) => false,
                ModelVlans::Trunk { native, .. } => native != Some(vid),
            }
        }

        fn native(self) -> u16 {
            match self {
                ModelVlans::Access(v) => v,
                ModelVlans::Trunk { native, .. } => native.unwrap_or(0),
            }
        }
    }

    fn model_vlans() -> impl Strategy<Value = ModelVlans> {
        prop_oneof![
            (1u16..4).prop_map(ModelVlans::Access),
            (0u8..16, proptest::option::of(1u16..4)).prop_map(|(bits, native)| {
                ModelVlans::Trunk {
                    members: bits & 0b1110,
                    native,
                }
            }),
        ]
    }

    /// The rules stated as plainly as possible, peer by peer: who receives a frame of VLAN
    /// `vid`, and whether with a tag.
    fn model(
        dst: MacAddress,
        vid: u16,
        sender: u16,
        peers: &[(PeerView, ModelVlans)],
        learned: Option<u16>,
        rules: Rules,
    ) -> BTreeSet<(u16, bool)> {
        let in_vlan = |p: &(PeerView, ModelVlans)| p.1.member(vid);
        let owner = peers
            .iter()
            .find(|p| p.0.mac == dst && in_vlan(p))
            .map(|p| p.0.index)
            .or_else(|| learned.filter(|l| peers.iter().any(|p| p.0.index == *l && in_vlan(p))));
        let mut set = BTreeSet::new();
        let isolated_sender = peers
            .iter()
            .any(|p| p.0.index == sender && p.0.flags & flags::ISOLATED != 0);
        for entry in peers {
            let (p, vlans) = entry;
            if p.index == sender
                || (isolated_sender && p.flags & flags::ISOLATED != 0)
                || !in_vlan(entry)
            {
                continue;
            }
            let wanted = if dst.is_multicast() {
                dst.is_broadcast()
                    || p.flags & (flags::ALL_MULTICAST | flags::PROMISCUOUS) != 0
                    || p.multicast_filter & multicast_filter_bit(dst) != 0
            } else {
                p.is_promiscuous()
                    || match owner {
                        Some(o) => o == p.index,
                        None => !rules.drop_unknown_unicast,
                    }
            };
            if wanted {
                set.insert((p.index, vlans.tagged(vid)));
            }
        }
        set
    }

    proptest! {
        #[test]
        fn resolve_agrees_with_the_model(
            peer_flags in proptest::collection::vec(
                (0u32..8, any::<u64>(), proptest::option::of(model_vlans()), 0u8..4),
                1..12,
            ),
            sender in 0u16..12,
            dst_pick in 0usize..16,
            vid in 1u16..4,
            learned in proptest::option::of(0u16..12),
            drop_unknown in any::<bool>(),
        ) {
            let peers: Vec<(PeerView, ModelVlans)> = peer_flags
                .iter()
                .enumerate()
                .map(|(i, &(f, filter, vlans, mac_pick))| {
                    // No VLAN options: a trunk of everything, native VLAN 1.
                    let vlans = vlans.unwrap_or(ModelVlans::Trunk { members: 0b1110, native: Some(1) });
                    // Some peers share a MAC, as they may in disjoint VLANs.
                    let mac = if mac_pick == 0 { mac(100) } else { mac(i as u8 + 1) };
                    let view = PeerView {
                        multicast_filter: filter & 0x0f0f,
                        mac,
                        native: vlans.native(),
                        all_vlans: false,
                        ..peer(
                            i as u16,
                            (f & (flags::PROMISCUOUS | flags::ALL_MULTICAST))
                                | if f & 4 != 0 { flags::ISOLATED } else { 0 },
                        )
                    };
                    (view, vlans)
                })
                .collect();
            let views: Vec<PeerView> = peers.iter().map(|p| p.0).collect();
            let choices = [
                MacAddress::BROADCAST,
                MacAddress([0x33, 0x33, 0, 0, 0, 1]),
                MacAddress([0x01, 0, 0x5e, 0, 0, 7]),
                MacAddress([2, 9, 9, 9, 9, 9]),
                mac(100),
            ];
            let dst = if dst_pick < choices.len() { choices[dst_pick] } else { mac((dst_pick - choices.len()) as u8 + 1) };
            let rules = Rules {
                drop_unknown_unicast: drop_unknown,
                isolated_sender: views
                    .iter()
                    .any(|p| p.index == sender && p.flags & flags::ISOLATED != 0),
            };
            let mut out = Vec::new();
            resolve(dst, sender, &views, |i| peers[i].1.member(vid), |_| learned, rules, &mut out);
            let got: Vec<u16> = out.iter().map(|&i| views[i].index).collect();
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &got, "receivers must be listed once, in table order");
            prop_assert!(!got.contains(&sender), "never back to the sender");
            let with_tags: BTreeSet<(u16, bool)> = out
                .iter()
                .map(|&i| (views[i].index, egress_tagged(&views[i], vid)))
                .collect();
            let expected = model(dst, vid, sender, &peers, learned, rules);
            prop_assert_eq!(with_tags, expected);
        }
    }

    #[test]
    fn a_vlan_keeps_its_frames_and_the_same_mac_lives_in_two() {
        let vlan = |index: u16, native: u16| PeerView {
            native,
            all_vlans: false,
            ..peer(index, 0)
        };
        let mut peers = [vlan(0, 10), vlan(1, 10), vlan(2, 20), vlan(3, 0)];
        peers[2].mac = peers[1].mac;
        // Peer 3 is a trunk of 10 and 20; 0 and 1 are in 10, 2 in 20.
        let in_vlan = |vid: u16| move |i: usize| matches!((i, vid), (0 | 1 | 3, 10) | (2 | 3, 20));
        let mut out = Vec::new();
        let route = resolve(
            MacAddress::BROADCAST,
            0,
            &peers,
            in_vlan(10),
            |_| None,
            Rules::default(),
            &mut out,
        );
        assert_eq!((route, out.clone()), (Route::Multicast, vec![1, 3]));
        assert!(!egress_tagged(&peers[1], 10) && egress_tagged(&peers[3], 10));
        // The shared MAC resolves to its owner in the frame's VLAN.
        resolve(
            peers[1].mac,
            3,
            &peers,
            in_vlan(20),
            |_| None,
            Rules::default(),
            &mut out,
        );
        assert_eq!(out, vec![2]);
        resolve(
            peers[1].mac,
            3,
            &peers,
            in_vlan(10),
            |_| None,
            Rules::default(),
            &mut out,
        );
        assert_eq!(out, vec![1]);
        // An address learned behind a peer outside the VLAN is no route into it.
        let unknown = MacAddress([2, 9, 9, 9, 9, 9]);
        resolve(
            unknown,
            0,
            &peers,
            in_vlan(10),
            |_| Some(2),
            Rules::default(),
            &mut out,
        );
        assert_eq!(out, vec![1, 3], "flooded within VLAN 10 instead");
    }
}
