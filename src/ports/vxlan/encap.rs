//! Network → underlay: the sending thread, which takes the frames the port's peer
//! receives, looks each destination up in the table of remote addresses, and sends one
//! VXLAN datagram to the remote it was learned behind, or one to every remote (the group,
//! on a multicast underlay) for broadcast, multicast and unknown unicast. A frame too big
//! for the underlay is counted and dropped, never fragmented.
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
use crate::wire::vxlan::{HEADER_LEN, VxlanPacket, VxlanRepr};

use super::state::{State, VxlanCounters, lock};
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
    vni: u32,
    /// Longest inner frame that fits the underlay.
    max_inner: usize,
    state: &'a Mutex<State>,
    stopping: &'a AtomicBool,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// To one remote: its address was learned there.
    One(usize),
    /// To every remote.
    All,
    /// Nowhere: too big for the underlay.
    TooBig,
}

impl<'a> Encapsulator<'a> {
    /// An encapsulator that takes frames from `receiver` and sends them by `way_out`
    /// until `stopping` is set; `max_inner` is the longest frame that fits the underlay.
    pub(super) fn new(
        receiver: Receiver,
        way_out: WayOut,
        vni: u32,
        max_inner: usize,
        state: &'a Mutex<State>,
        stopping: &'a AtomicBool,
    ) -> Encapsulator<'a> {
        Encapsulator {
            receiver,
            way_out,
            vni,
            max_inner,
            state,
            stopping,
        }
    }

    /// Sends until `stopping` is set.
    pub(super) fn run(mut self) {
        let mut batch = FrameBatch::default();
        let mut targets = Vec::with_capacity(SEND_BUDGET);
        let mut datagram = Vec::new();
        // Copies of the remotes, taken under the lock each round, so that sends need none.
        let mut endpoints = Vec::new();
        let mut flood = 0..0;
        let mut counted = Vec::new();
        while !self.stopping.load(Ordering::Relaxed) {
            if !self.receiver.wait(SENDER_WAIT) {
                continue;
            }
            batch.clear();
            self.receiver
                .receive(SEND_BUDGET, |frame| batch.push(frame));
            // Decide under the lock, send without it: the serving thread learns meanwhile.
            targets.clear();
            let now = monotonic_ns();
            {
                let state = lock(self.state);
                targets.extend(
                    batch
                        .iter()
                        .map(|frame| target(&state.table, self.max_inner, frame, now)),
                );
                endpoints.clone_from(&state.remotes.endpoints);
                flood = state.remotes.flood();
            }
            let mut too_big = 0;
            counted.clear();
            counted.resize(endpoints.len(), VxlanCounters::default());
            for (frame, &target) in batch.iter().zip(&targets) {
                let remotes = match target {
                    Target::TooBig => {
                        too_big += 1;
                        continue;
                    }
                    Target::One(remote) => remote..remote + 1,
                    Target::All => flood.clone(),
                };
                for remote in remotes {
                    if let (Some(&Some(endpoint)), Some(counters)) =
                        (endpoints.get(remote), counted.get_mut(remote))
                    {
                        self.send(&mut datagram, frame, endpoint, counters);
                    }
                }
            }
            let mut state = lock(self.state);
            state.port.tx_too_big += too_big;
            state.add_sent(&endpoints, &counted);
        }
    }

    /// Encapsulates `frame` and sends it to `endpoint`, counting the outcome.
    ///
    /// `datagram` is scratch space: outer headroom, VXLAN header, frame.
    fn send(
        &self,
        datagram: &mut Vec<u8>,
        frame: &[u8],
        endpoint: SocketAddr,
        counters: &mut VxlanCounters,
    ) {
        datagram.clear();
        datagram.resize(OUTER_HEADROOM + HEADER_LEN, 0);
        VxlanRepr { vni: self.vni }.emit(&mut VxlanPacket::new_unchecked(
            &mut datagram[OUTER_HEADROOM..],
        ));
        datagram.extend_from_slice(frame);
        let sent = self.way_out.send(datagram, frame, endpoint);
        match sent {
            Ok(()) => {
                counters.tx_packets += 1;
                counters.tx_bytes += frame.len() as u64;
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "sending a VXLAN datagram failed");
                counters.tx_errors += 1;
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

/// Where `frame` goes: the remote its destination was learned behind, or every remote.
fn target(table: &RemoteTable, max_inner: usize, frame: &[u8], now_ns: u64) -> Target {
    if frame.len() > max_inner {
        return Target::TooBig;
    }
    let Ok(view) = EthernetFrame::new_checked(frame) else {
        // The ring hands only checked frames; a short one is still not worth a crash.
        return Target::TooBig;
    };
    let destination = view.destination();
    if destination.is_multicast() {
        return Target::All;
    }
    match table.lookup(destination, now_ns) {
        Some(remote) => Target::One(remote),
        None => Target::All,
    }
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

    #[test]
    fn known_unicast_goes_to_one_remote_and_the_rest_to_all() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(mac(1), 1, 0);
        let mut frame = inner();
        assert_eq!(target(&table, 1514, &frame, 0), Target::All);
        frame[..6].copy_from_slice(&mac(1).octets());
        assert_eq!(target(&table, 1514, &frame, 0), Target::One(1));
        frame[..6].copy_from_slice(&mac(2).octets());
        assert_eq!(target(&table, 1514, &frame, 0), Target::All);
        assert_eq!(target(&table, 59, &frame, 0), Target::TooBig);
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
