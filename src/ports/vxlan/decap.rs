//! Underlay → network: the serving thread, which takes datagrams from the underlay in
//! rounds ([`Inbound`]), judges each, counts every refusal by its reason on the remote it
//! came from (or on the port, when it came from no remote), learns the inner source
//! address of each accepted frame in its VNI, and sends the round's good frames into the
//! network as one batch, each with the offload work its sender left undone. On a port with
//! a VNI map each frame gets the tag of its segment's VLAN on the way in, written as the
//! frame is copied into the batch, its offload header's offsets moved by the tag.
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
use crate::wire::ethernet::{VLAN_TAG_LEN, validate_frame};
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::vlan::{self as wire_vlan, VlanTci};
use crate::wire::vxlan::{HEADER_LEN, VxlanError, VxlanPacket, VxlanRepr};
use crate::wire::{EthernetFrame, EthernetRepr};

use super::inbound::{Inbound, OuterFault, RECEIVE_BATCH};
use super::segments::{Segments, tag_of};
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
    segments: &'a Segments,
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
    /// An inner frame to deliver, from remote `remote`, in segment `segment`.
    Deliver {
        /// The remote's index.
        remote: usize,
        /// The segment's index (0 on a port of one VNI).
        segment: usize,
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
    /// Another VNI, or with a map one it does not name (`rx_foreign_vni`).
    ForeignVni,
    /// The inner frame breaks the network's rules, or the socket cut the datagram short
    /// (`rx_invalid_inner`).
    InvalidInner,
    /// With a map, the inner frame already carries an 802.1Q tag (`rx_tagged_inner`).
    TaggedInner,
}

/// A frame to hand to the network: the inner frame, the tag to insert after its
/// addresses (on a port with a map), and its offload header for the frame as tagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery<'d> {
    frame: &'d [u8],
    tag: Option<VlanTci>,
    offload: VirtioNetHdr,
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
        segments: &'a Segments,
        network_mtu: usize,
        state: &'a Mutex<State>,
    ) -> Decapsulator<'a> {
        Decapsulator {
            sender,
            inbound,
            segments,
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
                        self.segments,
                        self.network_mtu,
                        datagram.bytes,
                        datagram.oversize,
                        &datagram.offload,
                    );
                    (verdict, datagram.bytes, datagram.offload)
                }
                Err(fault) => (Verdict::BadOuter(fault), &[][..], VirtioNetHdr::default()),
            };
            match state.account(verdict, bytes, &offload, now) {
                Some(Delivery {
                    frame,
                    tag: None,
                    offload,
                }) => {
                    self.batch.push(frame);
                    self.offloads.push(offload);
                }
                Some(Delivery {
                    frame,
                    tag: Some(tag),
                    offload,
                }) => {
                    let mut tag_bytes = [0; VLAN_TAG_LEN];
                    self.batch.push_parts(&wire_vlan::retag_parts(
                        frame,
                        Some(tag),
                        &mut tag_bytes,
                    ));
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
            let frames = self.offloads.iter().zip(self.batch.iter());
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
    /// Counts a judged datagram (`offload`: what its inner frame still needs), learns its
    /// inner source in its VNI if it is delivered, and returns what to deliver, if any.
    fn account<'d>(
        &mut self,
        verdict: Verdict,
        datagram: &'d [u8],
        offload: &VirtioNetHdr,
        now_ns: u64,
    ) -> Option<Delivery<'d>> {
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
            Verdict::Deliver { remote, segment } => {
                // `classify` checked all of these: an inner frame, a segment, and room for
                // the tag in the offload header.
                let inner = datagram.get(HEADER_LEN..)?;
                let source = EthernetFrame::new_checked(inner).ok()?.source();
                let (segment, segment_counters) = self.segments.get_mut(segment)?;
                let (tag, offload) = match segment.vlan {
                    Some(vid) => (Some(tag_of(vid)), tagged_offload(offload)?),
                    None => (None, *offload),
                };
                let learned = self.table.learn(segment.vni, source, remote, now_ns);
                let counters = self.remotes.counters.get_mut(remote)?;
                if learned == Learned::Full {
                    counters.rx_too_many_sources += 1;
                    return None;
                }
                counters.rx_packets += 1;
                counters.rx_bytes += inner.len() as u64;
                segment_counters.rx_packets += 1;
                segment_counters.rx_bytes += inner.len() as u64;
                return Some(Delivery {
                    frame: inner,
                    tag,
                    offload,
                });
            }
        };
        let counters = self.remotes.counters.get_mut(remote)?;
        match reason {
            RxDrop::Malformed => counters.rx_malformed += 1,
            RxDrop::InstanceFlagClear => counters.rx_instance_flag_clear += 1,
            RxDrop::ForeignVni => counters.rx_foreign_vni += 1,
            RxDrop::InvalidInner => counters.rx_invalid_inner += 1,
            RxDrop::TaggedInner => counters.rx_tagged_inner += 1,
        }
        None
    }
}

/// The offload header of a frame once a tag is inserted after its addresses:
/// `csum_start` and `hdr_len` count from the frame's start, so they move by the tag's four
/// bytes; `None` if one would no longer fit its field.
fn tagged_offload(offload: &VirtioNetHdr) -> Option<VirtioNetHdr> {
    let tag = VLAN_TAG_LEN as u16;
    let mut moved = *offload;
    if offload.needs_checksum() {
        moved.csum_start = offload.csum_start.checked_add(tag)?;
    }
    if offload.hdr_len != 0 {
        moved.hdr_len = offload.hdr_len.checked_add(tag)?;
    }
    Some(moved)
}

/// Decides what one datagram from `remote` (`None`: no remote of ours) is, for a port
/// carrying `segments`. `oversize`: the socket cut it short; `offload`: what its inner
/// frame still needs. A pure function of its arguments, so it is tested and fuzzed without
/// sockets.
///
/// The checks, in order: a remote of ours, a whole VXLAN header, the I flag, a VNI the
/// port carries, an inner frame that keeps the network's rules (with room for the tag the
/// port adds, on a port with a map), and on such a port an inner frame without a tag.
pub fn classify(
    remote: Option<usize>,
    segments: &Segments,
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
    let (segment, vlan) = match VxlanRepr::parse(&packet) {
        Err(VxlanError::Truncated) => return refused(RxDrop::Malformed),
        Err(VxlanError::InstanceFlagClear) => return refused(RxDrop::InstanceFlagClear),
        Ok(repr) => match segments.inbound(repr.vni) {
            Some(found) => found,
            None => return refused(RxDrop::ForeignVni),
        },
    };
    let inner = packet.payload();
    let tagging = vlan.is_some();
    if oversize || !inner_frame_is_valid(inner, network_mtu, offload, tagging) {
        return refused(RxDrop::InvalidInner);
    }
    if tagging && wire_vlan::is_tagged(inner) {
        return refused(RxDrop::TaggedInner);
    }
    Verdict::Deliver { remote, segment }
}

/// Whether `frame`, with the offload work `offload` still to do, keeps the network's rules:
/// a plain frame fits the MTU; a super-frame still to be cut into segments fits a large
/// buffer instead and has a checksum to finish (segmentation implies one); either way a
/// checksum to finish lies inside the frame and the source is not multicast. (The network
/// checks super-frames further, against its own MTU, and counts what it refuses.) When the
/// port will insert a tag (`tagging`), the frame keeps the rules with it: a super-frame
/// still fits a large buffer, and the offload header's offsets still fit their fields (a
/// plain frame may be four bytes longer once tagged: the MTU counts the payload).
fn inner_frame_is_valid(
    frame: &[u8],
    network_mtu: usize,
    offload: &VirtioNetHdr,
    tagging: bool,
) -> bool {
    let added = if tagging { VLAN_TAG_LEN } else { 0 };
    if tagging && tagged_offload(offload).is_none() {
        return false;
    }
    let keeps_the_rules = if offload.gso_type == GsoType::None {
        validate_frame(frame, network_mtu).is_ok()
    } else {
        offload.needs_checksum()
            && frame.len() + added <= LARGE_FRAME
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

    /// A port of VNI 42 alone.
    const ONE: Segments = Segments::One(42);

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
            |remote, bytes: &[u8], oversize| classify(remote, &ONE, 1500, bytes, oversize, &plain);
        let good = datagram(0x08, [0, 0, 42], &inner());
        assert_eq!(
            check(Some(1), &good, false),
            Verdict::Deliver {
                remote: 1,
                segment: 0
            }
        );
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
                &ONE,
                1500,
                &datagram(0x08, [0, 0, 42], frame),
                false,
                offload,
            )
        };
        let deliver = Verdict::Deliver {
            remote: 0,
            segment: 0,
        };
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
            &ONE,
        );
        let deliver = Verdict::Deliver {
            remote: 1,
            segment: 0,
        };
        let plain = VirtioNetHdr::default();
        let frame_of = |delivery: Option<Delivery<'_>>| delivery.map(|d| d.frame.to_vec());
        for i in 0..5 {
            let mut frame = inner();
            frame[11] = i;
            let datagram = datagram(0x08, [0, 0, 42], &frame);
            let expected = if i < 2 { Some(frame) } else { None };
            assert_eq!(
                frame_of(state.account(deliver, &datagram, &plain, 0)),
                expected
            );
        }
        // A source already learned still passes.
        let mut known = inner();
        known[11] = 1;
        let again = datagram(0x08, [0, 0, 42], &known);
        assert_eq!(
            frame_of(state.account(deliver, &again, &plain, 0)),
            Some(known)
        );
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
        assert_eq!(state.account(refused, &good, &plain, 0), None);
        assert_eq!(
            state.account(Verdict::UnknownRemote, &good, &plain, 0),
            None
        );
        assert_eq!(state.remotes.counters[0].rx_foreign_vni, 1);
        assert_eq!(state.port.rx_unknown_remote, 1);
        assert_eq!(state.remotes.counters[0].rx_packets, 0);
    }

    /// A port with `--vni-map 10=1010,20=1020`.
    fn mapped() -> Segments {
        Segments::Map("10=1010,20=1020".parse().unwrap())
    }

    fn vni(vni: u32) -> [u8; 3] {
        let bytes = vni.to_be_bytes();
        [bytes[1], bytes[2], bytes[3]]
    }

    #[test]
    fn with_a_map_each_vni_is_its_segment_and_the_rest_foreign_or_tagged() {
        let plain = VirtioNetHdr::default();
        let segments = mapped();
        let check = |bytes: &[u8]| classify(Some(0), &segments, 1500, bytes, false, &plain);
        let deliver = |segment| Verdict::Deliver { remote: 0, segment };
        let refused = |reason| Verdict::Refused { remote: 0, reason };
        assert_eq!(check(&datagram(0x08, vni(1010), &inner())), deliver(0));
        assert_eq!(check(&datagram(0x08, vni(1020), &inner())), deliver(1));
        assert_eq!(
            check(&datagram(0x08, vni(42), &inner())),
            refused(RxDrop::ForeignVni)
        );
        let mut tagged = inner();
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(
            check(&datagram(0x08, vni(1010), &tagged)),
            refused(RxDrop::TaggedInner)
        );
        // A priority tag is a tag too: the port would have to stack its own on it.
        tagged[14..16].copy_from_slice(&[0xa0, 0x00]);
        assert_eq!(
            check(&datagram(0x08, vni(1010), &tagged)),
            refused(RxDrop::TaggedInner)
        );
        // A full-size frame stays valid once tagged: the MTU counts the payload.
        let mut full = inner();
        full.resize(1514, 0);
        assert_eq!(check(&datagram(0x08, vni(1020), &full)), deliver(1));
        // Without a map, tags cross inside the tunnel as they are.
        assert_eq!(
            classify(
                Some(0),
                &ONE,
                1500,
                &datagram(0x08, vni(42), &tagged),
                false,
                &plain
            ),
            deliver(0)
        );
    }

    #[test]
    fn with_a_map_a_delivered_frame_is_tagged_for_its_vlan_and_counted_in_its_vni() {
        let local = "10.99.0.1:4789".parse().unwrap();
        let remotes = vec!["10.99.0.2:4789".parse().unwrap()];
        let mut state = State::new(
            RemoteTable::new(16, DEFAULT_AGEING),
            Remotes::configured(remotes, local),
            &mapped(),
        );
        let offload = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            hdr_len: 42,
            ..VirtioNetHdr::default()
        };
        let frame = inner();
        let arrived = datagram(0x08, vni(1020), &frame);
        let deliver = Verdict::Deliver {
            remote: 0,
            segment: 1,
        };
        let delivery = state.account(deliver, &arrived, &offload, 0).unwrap();
        assert_eq!(delivery.frame, &frame[..]);
        assert_eq!(delivery.tag.map(|tag| tag.vid), Some(20));
        // The checksum and the headers start four bytes later in the tagged frame.
        assert_eq!(delivery.offload.csum_start, 38);
        assert_eq!(delivery.offload.csum_offset, 6);
        assert_eq!(delivery.offload.hdr_len, 46);
        // Learned in its VNI only, and counted there.
        assert_eq!(state.table.lookup(1020, mac(7), 0), Some(0));
        assert_eq!(state.table.lookup(1010, mac(7), 0), None);
        assert_eq!(state.segments[1].1.rx_packets, 1);
        assert_eq!(state.segments[1].1.rx_bytes, 60);
        assert_eq!(state.segments[0].1.rx_packets, 0);
        // As the decapsulator writes it into the batch: the tag after the addresses.
        let mut tag_bytes = [0; VLAN_TAG_LEN];
        let tagged = wire_vlan::retag_parts(delivery.frame, delivery.tag, &mut tag_bytes).concat();
        assert_eq!(tagged.len(), 64);
        assert_eq!(&tagged[..12], &frame[..12]);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 20]);
        assert_eq!(&tagged[16..], &frame[12..]);
        // A refusal is counted on its remote, whatever the segment.
        let refused = Verdict::Refused {
            remote: 0,
            reason: RxDrop::TaggedInner,
        };
        assert_eq!(state.account(refused, &arrived, &offload, 0), None);
        assert_eq!(state.remotes.counters[0].rx_tagged_inner, 1);
    }

    #[test]
    fn with_a_map_a_super_frame_that_would_not_fit_once_tagged_is_refused() {
        let check = |segments: &Segments, len: usize, csum_start: u16| {
            let offload = VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                gso_size: 1448,
                csum_start,
                csum_offset: 0,
                ..VirtioNetHdr::default()
            };
            let mut frame = inner();
            frame.resize(len, 0);
            let vni = match segments {
                Segments::One(_) => vni(42),
                Segments::Map(_) => vni(1010),
            };
            classify(
                Some(0),
                segments,
                1500,
                &datagram(0x08, vni, &frame),
                false,
                &offload,
            )
        };
        let refused = Verdict::Refused {
            remote: 0,
            reason: RxDrop::InvalidInner,
        };
        let deliver = Verdict::Deliver {
            remote: 0,
            segment: 0,
        };
        // A checksum offset that fits its 16 bits untagged but not four bytes later.
        assert_eq!(check(&ONE, 65_596, 65_533), deliver);
        assert_eq!(check(&mapped(), 65_596, 65_533), refused);
        assert_eq!(check(&mapped(), 65_596, 34), deliver);
        // A super-frame that fills a large buffer untagged would overflow it tagged.
        assert_eq!(check(&ONE, LARGE_FRAME, 34), deliver);
        assert_eq!(check(&mapped(), LARGE_FRAME, 34), refused);
        assert_eq!(check(&mapped(), LARGE_FRAME - VLAN_TAG_LEN, 34), deliver);
    }
}
