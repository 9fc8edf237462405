//! Network → underlay: the sending thread, which takes the frames the port's peer
//! receives, finds each one's segment (on a port with a VNI map, the VNI of the VLAN it
//! is tagged for; the tag comes off), looks its destination up in the table of remote
//! addresses in that VNI, and sends one VXLAN datagram to the remote it was learned behind,
//! or one to every remote (the group, on a multicast underlay) for broadcast, multicast and
//! unknown unicast. A frame too big for the underlay is counted and dropped, never
//! fragmented, and so is one of a VLAN the map does not name.
//!
//! The lock is taken once per round to decide every frame's target and copy the remotes,
//! and once to add up what the round counted; the sends themselves hold no lock, so the
//! serving thread learns meanwhile.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::network::{Receiver, monotonic_ns};
use crate::ports::socket::FrameBatch;
use crate::wire::EthernetFrame;
use crate::wire::ethernet::VLAN_TAG_LEN;
use crate::wire::vlan::retag_parts;
use crate::wire::vxlan::{HEADER_LEN, VxlanPacket, VxlanRepr};

use super::segments::{Outbound, Segments};
use super::state::{State, VniCounters, VxlanCounters, lock};
use super::table::RemoteTable;
use super::underlay::{OUTER_HEADROOM, WayOut};

/// Frames taken from the peer's ring per round.
const SEND_BUDGET: usize = 64;

/// Longest the sending thread sleeps on its ring before it looks whether the port stops.
const SENDER_WAIT: Duration = Duration::from_millis(200);

/// Network → underlay, on its own thread.
pub(super) struct Encapsulator<'a> {
    receiver: Receiver,
    way_out: WayOut,
    segments: &'a Segments,
    /// Longest inner frame that fits the underlay.
    max_inner: usize,
    state: &'a Mutex<State>,
    stopping: &'a AtomicBool,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// To one remote: its address was learned there (in the frame's VNI).
    One(usize),
    /// To every remote.
    All,
    /// Nowhere: too big for the underlay (`tx_too_big`).
    TooBig,
    /// Nowhere: untagged, or in a VLAN the port's map does not name
    /// (`tx_unmapped_vlan`).
    Unmapped,
}

/// What becomes of a frame: where it goes, and as which segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    target: Target,
    /// Meaningful for [`Target::One`] and [`Target::All`].
    outbound: Outbound,
}

impl<'a> Encapsulator<'a> {
    /// An encapsulator that takes frames from `receiver` and sends them by `way_out`
    /// until `stopping` is set; `max_inner` is the longest frame that fits the underlay.
    pub(super) fn new(
        receiver: Receiver,
        way_out: WayOut,
        segments: &'a Segments,
        max_inner: usize,
        state: &'a Mutex<State>,
        stopping: &'a AtomicBool,
    ) -> Encapsulator<'a> {
        Encapsulator {
            receiver,
            way_out,
            segments,
            max_inner,
            state,
            stopping,
        }
    }

    /// Sends until `stopping` is set.
    pub(super) fn run(mut self) {
        let mut batch = FrameBatch::default();
        let mut plans = Vec::with_capacity(SEND_BUDGET);
        let mut datagram = Vec::new();
        // Copies of the remotes, taken under the lock each round, so that sends need none.
        let mut endpoints = Vec::new();
        let mut flood = 0..0;
        let mut counted = Vec::new();
        let mut by_segment = vec![VniCounters::default(); self.segments.list().len()];
        while !self.stopping.load(Ordering::Relaxed) {
            if !self.receiver.wait(SENDER_WAIT) {
                continue;
            }
            batch.clear();
            self.receiver
                .receive(SEND_BUDGET, |frame| batch.push(frame));
            // Decide under the lock, send without it: the serving thread learns meanwhile.
            plans.clear();
            let now = monotonic_ns();
            {
                let state = lock(self.state);
                plans.extend(
                    batch
                        .iter()
                        .map(|frame| plan(&state.table, self.segments, self.max_inner, frame, now)),
                );
                endpoints.clone_from(&state.remotes.endpoints);
                flood = state.remotes.flood();
            }
            let (mut too_big, mut unmapped) = (0, 0);
            counted.clear();
            counted.resize(endpoints.len(), VxlanCounters::default());
            by_segment.fill(VniCounters::default());
            for (frame, plan) in batch.iter().zip(&plans) {
                let remotes = match plan.target {
                    Target::TooBig => {
                        too_big += 1;
                        continue;
                    }
                    Target::Unmapped => {
                        unmapped += 1;
                        continue;
                    }
                    Target::One(remote) => remote..remote + 1,
                    Target::All => flood.clone(),
                };
                let Some(segment) = by_segment.get_mut(plan.outbound.segment) else {
                    continue; // `plan` names only the port's segments
                };
                for remote in remotes {
                    if let (Some(&Some(endpoint)), Some(counters)) =
                        (endpoints.get(remote), counted.get_mut(remote))
                    {
                        let sent = self.send(&mut datagram, frame, plan.outbound, endpoint);
                        counters.add(&sent);
                        segment.tx_packets += sent.tx_packets;
                        segment.tx_bytes += sent.tx_bytes;
                    }
                }
            }
            let mut state = lock(self.state);
            state.port.tx_too_big += too_big;
            state.port.tx_unmapped_vlan += unmapped;
            state.add_sent(&endpoints, &counted);
            for ((_, total), round) in state.segments.iter_mut().zip(&by_segment) {
                total.add(round);
            }
        }
    }

    /// Encapsulates `frame` in its segment's VNI (without its tag, if `outbound` says so)
    /// and sends it to `endpoint`; returns the outcome, counted.
    ///
    /// `datagram` is scratch space: outer headroom, VXLAN header, frame.
    fn send(
        &self,
        datagram: &mut Vec<u8>,
        frame: &[u8],
        outbound: Outbound,
        endpoint: SocketAddr,
    ) -> VxlanCounters {
        let inner_len = encapsulate(datagram, frame, outbound);
        match self.way_out.send(datagram, endpoint) {
            Ok(()) => VxlanCounters {
                tx_packets: 1,
                tx_bytes: inner_len as u64,
                ..VxlanCounters::default()
            },
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "sending a VXLAN datagram failed");
                VxlanCounters {
                    tx_errors: 1,
                    ..VxlanCounters::default()
                }
            }
        }
    }
}

// The accounting of sent datagrams lives here, beside the sends it counts.
impl State {
    /// Adds what a round sent to `endpoints` (the remotes as they were when the round
    /// chose its targets) to each remote's counters. A slot whose sender was retired
    /// meanwhile, or taken by another, gets none of it: the port's totals do, where the
    /// retired sender's counts went too.
    fn add_sent(&mut self, endpoints: &[Option<SocketAddr>], counted: &[VxlanCounters]) {
        for (remote, (endpoint, round)) in endpoints.iter().zip(counted).enumerate() {
            let same = self.remotes.endpoints.get(remote) == Some(endpoint);
            match self.remotes.counters.get_mut(remote) {
                Some(total) if same => total.add(round),
                _ => self.port.add(round),
            }
        }
    }
}

/// Writes into `datagram` the outer headroom, the VXLAN header of `outbound`'s VNI and
/// `frame` (its tag removed if `outbound` says so); returns the inner frame's length.
fn encapsulate(datagram: &mut Vec<u8>, frame: &[u8], outbound: Outbound) -> usize {
    datagram.clear();
    datagram.resize(OUTER_HEADROOM + HEADER_LEN, 0);
    VxlanRepr { vni: outbound.vni }.emit(&mut VxlanPacket::new_unchecked(
        &mut datagram[OUTER_HEADROOM..],
    ));
    if outbound.untag {
        let mut no_tag = [0; VLAN_TAG_LEN];
        for part in retag_parts(frame, None, &mut no_tag) {
            datagram.extend_from_slice(part);
        }
    } else {
        datagram.extend_from_slice(frame);
    }
    datagram.len() - OUTER_HEADROOM - HEADER_LEN
}

/// What becomes of `frame`: its segment, and the remote its destination was learned behind
/// in that segment's VNI, or every remote.
fn plan(
    table: &RemoteTable,
    segments: &Segments,
    max_inner: usize,
    frame: &[u8],
    now_ns: u64,
) -> Plan {
    let refused = |target| Plan {
        target,
        outbound: Outbound {
            segment: 0,
            vni: 0,
            untag: false,
        },
    };
    let Some(outbound) = segments.outbound(frame) else {
        return refused(Target::Unmapped);
    };
    let inner_len = if outbound.untag {
        frame.len().saturating_sub(VLAN_TAG_LEN)
    } else {
        frame.len()
    };
    if inner_len > max_inner {
        return refused(Target::TooBig);
    }
    let Ok(view) = EthernetFrame::new_checked(frame) else {
        // The ring hands only checked frames; a short one is still not worth a crash.
        return refused(Target::TooBig);
    };
    let destination = view.destination();
    let target = if destination.is_multicast() {
        Target::All
    } else {
        match table.lookup(outbound.vni, destination, now_ns) {
            Some(remote) => Target::One(remote),
            None => Target::All,
        }
    };
    Plan { target, outbound }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::vxlan::table::DEFAULT_AGEING;
    use crate::wire::MacAddress;

    fn mac(last: u8) -> MacAddress {
        MacAddress::new([0x02, 0, 0, 0, 0, last])
    }

    /// A 60-byte broadcast frame from 02:00:00:00:00:07.
    fn inner() -> Vec<u8> {
        let mut frame = vec![0u8; 60];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&mac(7).octets());
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        frame
    }

    const ONE: Segments = Segments::One(42);

    /// Where `frame` goes from a port carrying `segments`.
    fn target(table: &RemoteTable, segments: &Segments, max_inner: usize, frame: &[u8]) -> Target {
        plan(table, segments, max_inner, frame, 0).target
    }

    /// A port with `--vni-map 10=1010,20=1020`.
    fn mapped() -> Segments {
        Segments::Map("10=1010,20=1020".parse().unwrap())
    }

    /// `frame` tagged for VLAN `vid`, with priority 5 (which VXLAN does not carry).
    fn tagged(frame: &[u8], vid: u8) -> Vec<u8> {
        let mut tagged = frame.to_vec();
        tagged.splice(12..12, [0x81, 0x00, 0xa0, vid]);
        tagged
    }

    #[test]
    fn known_unicast_goes_to_one_remote_and_the_rest_to_all() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(42, mac(1), 1, 0);
        let mut frame = inner();
        assert_eq!(target(&table, &ONE, 1514, &frame), Target::All);
        frame[..6].copy_from_slice(&mac(1).octets());
        assert_eq!(target(&table, &ONE, 1514, &frame), Target::One(1));
        frame[..6].copy_from_slice(&mac(2).octets());
        assert_eq!(target(&table, &ONE, 1514, &frame), Target::All);
        assert_eq!(target(&table, &ONE, 59, &frame), Target::TooBig);
    }

    #[test]
    fn with_a_map_each_vlan_is_looked_up_and_sent_in_its_own_vni_without_its_tag() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        // The same address, learned behind another remote in each VNI.
        table.learn(1010, mac(1), 0, 0);
        table.learn(1020, mac(1), 1, 0);
        let mut frame = inner();
        frame[..6].copy_from_slice(&mac(1).octets());
        let segments = mapped();
        let in_10 = plan(&table, &segments, 1514, &tagged(&frame, 10), 0);
        assert_eq!(in_10.target, Target::One(0));
        assert_eq!(
            in_10.outbound,
            Outbound {
                segment: 0,
                vni: 1010,
                untag: true
            }
        );
        let in_20 = plan(&table, &segments, 1514, &tagged(&frame, 20), 0);
        assert_eq!((in_20.target, in_20.outbound.vni), (Target::One(1), 1020));
        // Neither untagged frames nor other VLANs come from a trunk of the mapped VLANs;
        // they are refused all the same.
        assert_eq!(target(&table, &segments, 1514, &frame), Target::Unmapped);
        assert_eq!(
            target(&table, &segments, 1514, &tagged(&frame, 30)),
            Target::Unmapped
        );
        // The limit is the frame as sent: without its tag.
        let mut full = tagged(&frame, 10);
        full.resize(1518, 0);
        assert_eq!(target(&table, &segments, 1514, &full), Target::One(0));
        full.push(0);
        assert_eq!(target(&table, &segments, 1514, &full), Target::TooBig);

        // The datagram: the VNI of the frame's VLAN, then the frame as it was before the
        // network tagged it.
        let mut datagram = Vec::new();
        let inner_len = encapsulate(&mut datagram, &tagged(&frame, 20), in_20.outbound);
        assert_eq!(inner_len, frame.len());
        let vxlan = &datagram[OUTER_HEADROOM..];
        assert_eq!(&vxlan[..8], &[0x08, 0, 0, 0, 0, 0x03, 0xfc, 0]);
        assert_eq!(&vxlan[HEADER_LEN..], &frame[..]);
        // Without a map, a tagged frame crosses with its tag.
        let one = plan(&table, &ONE, 1514, &tagged(&frame, 20), 0).outbound;
        encapsulate(&mut datagram, &tagged(&frame, 20), one);
        assert_eq!(
            &datagram[OUTER_HEADROOM + 4..OUTER_HEADROOM + 7],
            &[0, 0, 42]
        );
        assert_eq!(
            &datagram[OUTER_HEADROOM + HEADER_LEN..],
            &tagged(&frame, 20)[..]
        );
    }

    #[test]
    fn what_was_sent_to_a_sender_retired_meanwhile_counts_on_the_port_not_on_its_successor() {
        use crate::ports::vxlan::state::Remotes;
        use std::net::Ipv4Addr;
        let ageing = Duration::from_secs(10);
        let mut state = State::new(
            RemoteTable::new(16, ageing),
            Remotes::on_group(
                Ipv4Addr::new(239, 1, 1, 1),
                "10.99.0.1:4789".parse().unwrap(),
                ageing,
            ),
            &ONE,
        );
        state.find_or_admit("10.99.0.2".parse().unwrap(), 0);
        state.find_or_admit("10.99.0.3".parse().unwrap(), 0);
        // The round chose its targets and copied the remotes…
        let endpoints = state.remotes.endpoints.clone();
        let sent = VxlanCounters {
            tx_packets: 1,
            ..VxlanCounters::default()
        };
        let counted = vec![sent; 3];
        // …then 10.99.0.2 went silent long enough, and 10.99.0.4 took its slot.
        state.find_or_admit("10.99.0.3".parse().unwrap(), 10_000_000_000);
        state.expire(10_000_000_000);
        state.find_or_admit("10.99.0.4".parse().unwrap(), 10_000_000_000);
        state.add_sent(&endpoints, &counted);
        assert_eq!(state.remotes.counters[0].tx_packets, 1, "the group");
        assert_eq!(state.remotes.counters[1].tx_packets, 0, "the newcomer");
        assert_eq!(state.remotes.counters[2].tx_packets, 1, "still there");
        assert_eq!(state.port.tx_packets, 1);
    }
}
