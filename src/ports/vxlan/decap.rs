//! Underlay → network: the serving thread, which takes datagrams from the underlay in
//! rounds ([`Inbound`]), judges each, counts every refusal by its reason on the remote it
//! came from (or on the port, when it came from no remote), learns the inner source
//! address of each accepted frame, and sends the round's good frames into the network as
//! one batch, each with the offload work its sender left undone.
//!
//! [`classify`] is the whole judgement, a pure function of the datagram's bytes and where
//! it came from; [`State::account`] turns its [`Verdict`] into counts and learning.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::time::Duration;

use crate::network::counters::DropReason;
use crate::network::{Sender, monotonic_ns};
use crate::ports::socket::{Doorbell, FrameBatch, PortError, io_error};
use crate::ports::wait;
use crate::shm::layout::LARGE_FRAME;
use crate::wire::ethernet::validate_frame;
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::vxlan::{HEADER_LEN, VxlanError, VxlanPacket, VxlanRepr};
use crate::wire::{EthernetFrame, EthernetRepr};

use super::inbound::{Inbound, OuterFault, RECEIVE_BATCH};
use super::state::{State, lock};
use super::table::Learned;

/// How often the serving thread ages the table and the group's senders: at the latest
/// after this long asleep, and at the end of a round once this long has passed since the
/// last time, so that steady traffic does not put it off for ever.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Underlay → network, on the serving thread.
pub(super) struct Decapsulator<'a> {
    sender: &'a mut Sender,
    /// The socket and the round's datagrams.
    inbound: Inbound<'a>,
    vni: u32,
    network_mtu: usize,
    state: &'a Mutex<State>,
    /// The round's frames to deliver, and beside them the offload work of each.
    batch: FrameBatch,
    offloads: Vec<VirtioNetHdr>,
    /// When the table and the senders were last aged (monotonic nanoseconds).
    aged_ns: u64,
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
    /// Its outer headers were refused before its sender was looked at.
    BadOuter(OuterFault),
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
    /// A decapsulator that reads from `inbound` and sends into the network through
    /// `sender`.
    pub(super) fn new(
        sender: &'a mut Sender,
        inbound: Inbound<'a>,
        vni: u32,
        network_mtu: usize,
        state: &'a Mutex<State>,
    ) -> Decapsulator<'a> {
        Decapsulator {
            sender,
            inbound,
            vni,
            network_mtu,
            state,
            batch: FrameBatch::default(),
            offloads: Vec::with_capacity(RECEIVE_BATCH),
            aged_ns: 0,
        }
    }

    /// Serves until `stop` rings.
    pub(super) fn run(&mut self, stop: &Doorbell) -> Result<(), PortError> {
        loop {
            let sockets = self.inbound.sockets();
            match wait_for_event(sockets, stop).map_err(io_error("wait for datagrams"))? {
                Event::Stop => return Ok(()),
                Event::Datagrams => self.receive_round(),
                Event::Housekeeping => self.age(&mut lock(self.state), monotonic_ns()),
            }
        }
    }

    /// Takes the datagrams waiting, checks each, and sends the good frames as one batch.
    fn receive_round(&mut self) {
        let undescribed = self.inbound.receive();
        let now = monotonic_ns();
        let mut state = lock(self.state);
        state.port.rx_bad_outer += undescribed;
        self.batch.clear();
        self.offloads.clear();
        let mut refused_inner = false;
        for arrival in self.inbound.arrivals() {
            let (verdict, bytes, offload) = match arrival {
                Ok(datagram) => {
                    let remote = state.find_or_admit(datagram.from, now);
                    let verdict = classify(
                        remote,
                        self.vni,
                        self.network_mtu,
                        datagram.bytes,
                        datagram.oversize,
                        &datagram.offload,
                    );
                    (verdict, datagram.bytes, datagram.offload)
                }
                Err(fault) => (Verdict::BadOuter(fault), &[][..], VirtioNetHdr::default()),
            };
            match state.account(verdict, bytes, now) {
                Some(inner) => {
                    self.batch.push(inner);
                    self.offloads.push(offload);
                }
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
        if now.saturating_sub(self.aged_ns) >= HOUSEKEEPING.as_nanos() as u64 {
            self.age(&mut state, now);
        }
        drop(state);
        if !self.batch.is_empty() {
            let frames = self.offloads.iter().copied().zip(self.batch.iter());
            self.sender.send_batch_offloaded(frames);
        } else if refused_inner {
            self.sender.flush();
        }
    }
}

impl Decapsulator<'_> {
    /// Forgets the addresses and the group's senders that have gone silent by `now_ns`.
    fn age(&mut self, state: &mut State, now_ns: u64) {
        state.expire(now_ns);
        self.aged_ns = now_ns;
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
            Verdict::BadOuter(OuterFault::Invalid) => {
                self.port.rx_bad_outer += 1;
                return None;
            }
            Verdict::BadOuter(OuterFault::Fragment) => {
                self.port.rx_fragmented += 1;
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
/// the socket cut it short; `offload`: what its inner frame still needs. A pure function
/// of its arguments, so it is tested and fuzzed without sockets.
pub fn classify(
    remote: Option<usize>,
    vni: u32,
    network_mtu: usize,
    datagram: &[u8],
    oversize: bool,
    offload: &VirtioNetHdr,
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
    if oversize || !inner_frame_is_valid(packet.payload(), network_mtu, offload) {
        return refused(RxDrop::InvalidInner);
    }
    Verdict::Deliver { remote }
}

/// Whether `frame`, with the offload work `offload` still to do, keeps the network's rules:
/// a plain frame fits the MTU; a super-frame still to be cut into segments fits a large
/// buffer instead and has a checksum to finish (segmentation implies one); either way a
/// checksum to finish lies inside the frame and the source is not multicast. (The network
/// checks super-frames further, against its own MTU, and counts what it refuses.)
fn inner_frame_is_valid(frame: &[u8], network_mtu: usize, offload: &VirtioNetHdr) -> bool {
    let keeps_the_rules = if offload.gso_type == GsoType::None {
        validate_frame(frame, network_mtu).is_ok()
    } else {
        offload.needs_checksum()
            && frame.len() <= LARGE_FRAME
            && EthernetFrame::new_checked(frame)
                .and_then(|view| EthernetRepr::parse(&view))
                .is_ok()
    };
    let checksum_field_end = usize::from(offload.csum_start) + usize::from(offload.csum_offset) + 2;
    keeps_the_rules && (!offload.needs_checksum() || checksum_field_end <= frame.len())
}

/// Waits for the stop bell or datagrams, at most [`HOUSEKEEPING`].
fn wait_for_event(sockets: [BorrowedFd<'_>; 2], stop: &Doorbell) -> std::io::Result<Event> {
    let sources = [
        (stop.as_fd(), Event::Stop),
        (sockets[0], Event::Datagrams),
        (sockets[1], Event::Datagrams),
    ];
    Ok(wait::first_ready(sources, Some(HOUSEKEEPING))?.unwrap_or(Event::Housekeeping))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::vxlan::state::Remotes;
    use crate::ports::vxlan::table::{DEFAULT_AGEING, RemoteTable};
    use crate::wire::MacAddress;
    use crate::wire::virtio_net::FLAG_NEEDS_CSUM;

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
        let plain = VirtioNetHdr::default();
        let check =
            |remote, bytes: &[u8], oversize| classify(remote, 42, 1500, bytes, oversize, &plain);
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
        let mut giant = inner();
        giant.resize(1515, 0);
        assert_eq!(
            check(Some(0), &datagram(0x08, [0, 0, 42], &giant), false),
            refused(RxDrop::InvalidInner)
        );
    }

    #[test]
    fn offload_work_left_by_the_sender_is_judged_with_the_inner_frame() {
        let check = |frame: &[u8], offload: &VirtioNetHdr| {
            classify(
                Some(0),
                42,
                1500,
                &datagram(0x08, [0, 0, 42], frame),
                false,
                offload,
            )
        };
        let deliver = Verdict::Deliver { remote: 0 };
        let refused = Verdict::Refused {
            remote: 0,
            reason: RxDrop::InvalidInner,
        };
        let checksum = |csum_start: u16, csum_offset: u16| VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start,
            csum_offset,
            ..VirtioNetHdr::default()
        };
        let frame = inner();
        assert_eq!(check(&frame, &checksum(34, 16)), deliver);
        // The checksum field must lie inside the frame.
        assert_eq!(check(&frame, &checksum(34, 24)), deliver);
        assert_eq!(check(&frame, &checksum(34, 25)), refused);
        // A super-frame may be longer than the MTU, up to a large buffer, and always has
        // a checksum to finish.
        let mut super_frame = inner();
        super_frame.resize(16_000, 0);
        let segmented = VirtioNetHdr {
            gso_type: GsoType::TcpV4,
            gso_size: 1448,
            ..checksum(34, 16)
        };
        assert_eq!(check(&super_frame, &segmented), deliver);
        let without_checksum = VirtioNetHdr {
            flags: 0,
            ..segmented
        };
        assert_eq!(check(&super_frame, &without_checksum), refused);
        super_frame.resize(LARGE_FRAME + 1, 0);
        assert_eq!(check(&super_frame, &segmented), refused);
        // Without segmentation, the MTU still holds.
        super_frame.truncate(16_000);
        assert_eq!(check(&super_frame, &checksum(34, 16)), refused);
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
