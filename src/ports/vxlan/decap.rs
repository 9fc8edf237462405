//! Underlay → network: the serving thread, which takes datagrams from the UDP socket in
//! rounds, judges each, counts every refusal by its reason on the remote it came from (or
//! on the port, when it came from no remote), learns the inner source address of each
//! accepted frame, and sends the round's good frames into the network as one batch.
//!
//! [`classify`] is the whole judgement, a pure function of the datagram's bytes and where
//! it came from; [`State::account`] turns its [`Verdict`] into counts and learning.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use crate::network::counters::DropReason;
use crate::network::{Sender, monotonic_ns};
use crate::ports::socket::{DatagramBatch, Doorbell, FrameBatch, PortError, io_error};
use crate::ports::wait;
use crate::wire::EthernetFrame;
use crate::wire::ethernet::validate_frame;
use crate::wire::vxlan::{HEADER_LEN, VxlanError, VxlanPacket, VxlanRepr};

use super::state::{State, lock};
use super::table::Learned;

/// Most datagrams taken from the socket per round.
pub const RECEIVE_BATCH: usize = 64;

/// Longest the serving thread sleeps before it ages the table.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Underlay → network, on the serving thread.
pub(super) struct Decapsulator<'a> {
    sender: &'a mut Sender,
    socket: &'a UdpSocket,
    vni: u32,
    network_mtu: usize,
    state: &'a Mutex<State>,
    /// The round's datagrams, one slot each, with the address they came from.
    round: DatagramBatch<SocketAddr>,
    batch: FrameBatch,
}

/// What one datagram turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An inner frame to deliver, from remote `remote`.
    Deliver {
        /// The remote's index.
        remote: usize,
    },
    /// From no configured remote.
    UnknownRemote,
    /// Refused, counted on `remote`.
    Refused {
        /// The remote's index.
        remote: usize,
        /// Why.
        reason: RxDrop,
    },
}

/// Why a datagram from a known remote was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// Shorter than the VXLAN header (`rx_malformed`).
    Malformed,
    /// The I flag is clear (`rx_instance_flag_clear`).
    InstanceFlagClear,
    /// Another VNI (`rx_foreign_vni`).
    ForeignVni,
    /// The inner frame breaks the network's rules, or the socket cut the datagram short
    /// (`rx_invalid_inner`).
    InvalidInner,
}

/// What woke the serving thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Stop,
    Datagrams,
    Housekeeping,
}

impl<'a> Decapsulator<'a> {
    /// A decapsulator that reads `socket` and sends into the network through `sender`;
    /// `max_frame_len` is the network's largest frame.
    pub(super) fn new(
        sender: &'a mut Sender,
        socket: &'a UdpSocket,
        vni: u32,
        network_mtu: usize,
        max_frame_len: usize,
        state: &'a Mutex<State>,
    ) -> Decapsulator<'a> {
        Decapsulator {
            sender,
            socket,
            vni,
            network_mtu,
            state,
            // A slot holds the largest valid datagram; a longer one is cut and flagged.
            round: DatagramBatch::new(RECEIVE_BATCH, max_frame_len + HEADER_LEN),
            batch: FrameBatch::default(),
        }
    }

    /// Serves until `stop` rings.
    pub(super) fn run(&mut self, stop: &Doorbell) -> Result<(), PortError> {
        loop {
            match wait_for_event(self.socket, stop).map_err(io_error("wait for datagrams"))? {
                Event::Stop => return Ok(()),
                Event::Datagrams => self.receive_round(),
                Event::Housekeeping => lock(self.state).table.expire(monotonic_ns()),
            }
        }
    }

    /// Takes the datagrams waiting, checks each, and sends the good frames as one batch.
    fn receive_round(&mut self) {
        self.round.receive(self.socket, |from| {
            from.and_then(|a| SocketAddr::try_from(a).ok())
        });
        let now = monotonic_ns();
        let mut state = lock(self.state);
        self.batch.clear();
        let mut refused_inner = false;
        for datagram in self.round.datagrams() {
            let bytes = self.round.bytes(datagram);
            let remote = state.remotes.find_or_admit(datagram.from.ip());
            let verdict = classify(remote, self.vni, self.network_mtu, bytes, datagram.oversize);
            match state.account(verdict, bytes, now) {
                Some(inner) => self.batch.push(inner),
                None if matches!(
                    verdict,
                    Verdict::Refused {
                        reason: RxDrop::InvalidInner,
                        ..
                    }
                ) =>
                {
                    // The network's own counters should agree with ours.
                    self.sender.count_drop(DropReason::Invalid);
                    refused_inner = true;
                }
                None => {}
            }
        }
        drop(state);
        if !self.batch.is_empty() {
            self.sender.send_batch(self.batch.iter());
        } else if refused_inner {
            self.sender.flush();
        }
    }
}

// The accounting of received datagrams lives here, beside the verdicts it counts.
impl State {
    /// Counts a judged datagram, learns its inner source if it is delivered, and returns
    /// the inner frame to deliver, if any.
    fn account<'d>(
        &mut self,
        verdict: Verdict,
        datagram: &'d [u8],
        now_ns: u64,
    ) -> Option<&'d [u8]> {
        let (remote, reason) = match verdict {
            Verdict::UnknownRemote => {
                self.port.rx_unknown_remote += 1;
                return None;
            }
            Verdict::Refused { remote, reason } => (remote, reason),
            Verdict::Deliver { remote } => {
                let inner = datagram.get(HEADER_LEN..)?;
                let source = EthernetFrame::new_checked(inner).ok()?.source();
                let learned = self.table.learn(source, remote, now_ns);
                let counters = self.remotes.counters.get_mut(remote)?;
                if learned == Learned::Full {
                    counters.rx_too_many_sources += 1;
                    return None;
                }
                counters.rx_packets += 1;
                counters.rx_bytes += inner.len() as u64;
                return Some(inner);
            }
        };
        let counters = self.remotes.counters.get_mut(remote)?;
        match reason {
            RxDrop::Malformed => counters.rx_malformed += 1,
            RxDrop::InstanceFlagClear => counters.rx_instance_flag_clear += 1,
            RxDrop::ForeignVni => counters.rx_foreign_vni += 1,
            RxDrop::InvalidInner => counters.rx_invalid_inner += 1,
        }
        None
    }
}

/// Decides what one datagram from `remote` (`None`: no remote of ours) is. `oversize`:
/// the socket cut it short. A pure function of its arguments, so it is tested and fuzzed
/// without sockets.
pub fn classify(
    remote: Option<usize>,
    vni: u32,
    network_mtu: usize,
    datagram: &[u8],
    oversize: bool,
) -> Verdict {
    let Some(remote) = remote else {
        return Verdict::UnknownRemote;
    };
    let refused = |reason| Verdict::Refused { remote, reason };
    let packet = match VxlanPacket::new_checked(datagram) {
        Ok(packet) => packet,
        Err(_) => return refused(RxDrop::Malformed),
    };
    match VxlanRepr::parse(&packet) {
        Err(VxlanError::Truncated) => return refused(RxDrop::Malformed),
        Err(VxlanError::InstanceFlagClear) => return refused(RxDrop::InstanceFlagClear),
        Ok(repr) if repr.vni != vni => return refused(RxDrop::ForeignVni),
        Ok(_) => {}
    }
    if oversize || validate_frame(packet.payload(), network_mtu).is_err() {
        return refused(RxDrop::InvalidInner);
    }
    Verdict::Deliver { remote }
}

/// Waits for the stop bell or datagrams, at most [`HOUSEKEEPING`].
fn wait_for_event(socket: &UdpSocket, stop: &Doorbell) -> std::io::Result<Event> {
    let sources = [
        (stop.as_fd(), Event::Stop),
        (socket.as_fd(), Event::Datagrams),
    ];
    Ok(wait::first_ready(sources, Some(HOUSEKEEPING))?.unwrap_or(Event::Housekeeping))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::vxlan::state::Remotes;
    use crate::ports::vxlan::table::{DEFAULT_AGEING, RemoteTable};
    use crate::wire::MacAddress;

    fn mac(last: u8) -> MacAddress {
        MacAddress::new([0x02, 0, 0, 0, 0, last])
    }

    fn datagram(flags: u8, vni: [u8; 3], inner: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flags, 0, 0, 0, vni[0], vni[1], vni[2], 0];
        bytes.extend_from_slice(inner);
        bytes
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
    fn datagrams_are_classified_by_what_is_wrong_with_them() {
        let check = |remote, bytes: &[u8], oversize| classify(remote, 42, 1500, bytes, oversize);
        let good = datagram(0x08, [0, 0, 42], &inner());
        assert_eq!(check(Some(1), &good, false), Verdict::Deliver { remote: 1 });
        assert_eq!(check(None, &good, false), Verdict::UnknownRemote);
        let refused = |reason| Verdict::Refused { remote: 0, reason };
        assert_eq!(
            check(Some(0), &good[..7], false),
            refused(RxDrop::Malformed)
        );
        assert_eq!(
            check(Some(0), &datagram(0x00, [0, 0, 42], &inner()), false),
            refused(RxDrop::InstanceFlagClear)
        );
        assert_eq!(
            check(Some(0), &datagram(0x08, [0, 0, 43], &inner()), false),
            refused(RxDrop::ForeignVni)
        );
        assert_eq!(
            check(Some(0), &datagram(0x08, [0, 0, 42], &inner()[..13]), false),
            refused(RxDrop::InvalidInner)
        );
        let mut multicast_source = inner();
        multicast_source[6] = 0x01;
        assert_eq!(
            check(
                Some(0),
                &datagram(0x08, [0, 0, 42], &multicast_source),
                false
            ),
            refused(RxDrop::InvalidInner)
        );
        assert_eq!(check(Some(0), &good, true), refused(RxDrop::InvalidInner));
    }

    #[test]
    fn past_the_limit_frames_from_new_sources_are_dropped_and_known_ones_pass() {
        let remotes = vec![
            "10.99.0.2:4789".parse().unwrap(),
            "10.99.0.3:4789".parse().unwrap(),
        ];
        let local = "10.99.0.1:4789".parse().unwrap();
        let mut state = State::new(
            RemoteTable::new(2, DEFAULT_AGEING),
            Remotes::configured(remotes, local),
        );
        let deliver = Verdict::Deliver { remote: 1 };
        for i in 0..5 {
            let mut frame = inner();
            frame[11] = i;
            let datagram = datagram(0x08, [0, 0, 42], &frame);
            let expected = if i < 2 { Some(&frame[..]) } else { None };
            assert_eq!(state.account(deliver, &datagram, 0), expected);
        }
        // A source already learned still passes.
        let mut known = inner();
        known[11] = 1;
        let again = datagram(0x08, [0, 0, 42], &known);
        assert_eq!(state.account(deliver, &again, 0), Some(&known[..]));
        assert_eq!(state.table.len(), 2);
        assert_eq!(state.remotes.counters[1].rx_packets, 3);
        assert_eq!(state.remotes.counters[1].rx_bytes, 3 * 60);
        assert_eq!(state.remotes.counters[1].rx_too_many_sources, 3);
        // Refusals are counted on their remote, or on the port when there is none.
        let good = datagram(0x08, [0, 0, 42], &inner());
        let refused = Verdict::Refused {
            remote: 0,
            reason: RxDrop::ForeignVni,
        };
        assert_eq!(state.account(refused, &good, 0), None);
        assert_eq!(state.account(Verdict::UnknownRemote, &good, 0), None);
        assert_eq!(state.remotes.counters[0].rx_foreign_vni, 1);
        assert_eq!(state.port.rx_unknown_remote, 1);
        assert_eq!(state.remotes.counters[0].rx_packets, 0);
    }
}
