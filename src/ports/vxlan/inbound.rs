//! How datagrams come in, and what is left of each once the underlay's headers are gone:
//! who sent it, its bytes from the VXLAN header on, and the offload work its inner frame
//! still needs.
//!
//! **From the packet socket** (IPv4, with `CAP_NET_RAW`). A sender on this host — a
//! namespace or a container behind a Linux `vxlan` device over veth — leaves the inner TCP
//! or UDP checksum to "hardware", and veth has none: the datagram crosses with the
//! checksum field holding only the pseudo-header sum, and TSO super-frames cross whole.
//! A UDP socket hands such a datagram over as bytes, and the far end would drop every
//! TCP segment for its checksum. The packet socket puts before each packet the kernel's
//! virtio-net header: `NEEDS_CSUM` with where the checksum starts and where it goes, and
//! the segmentation still to do, both counted from the outer Ethernet header. [`open_outer`]
//! checks the outer headers (the packet socket sees them before the kernel's IP layer
//! does), and moves those offsets onto the inner frame ([`inner_offload`]); the network
//! then hands the frame as it is to receivers that take checksum offload or TSO and
//! finishes it in software for the others. A fragment is dropped (`rx_fragmented`): the
//! packet socket sees the pieces, not the datagram, and RFC 7348 lets a VTEP discard them.
//!
//! **From the UDP socket** (IPv6, without `CAP_NET_RAW`, or over a link without Ethernet
//! headers). The kernel checks the outer headers and reassembles fragments; the checksum
//! state is lost, so a sender on this host must finish its own checksums
//! (`ethtool -K … tx off` on its guest's interface).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::ports::socket::DatagramBatch;
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::udp::{self, UdpPacket};
use crate::wire::virtio_net::{
    FLAG_DATA_VALID, FLAG_NEEDS_CSUM, GsoType, LEGACY_HEADER_LEN, VirtioNetHdr,
};
use crate::wire::vxlan;

/// Most datagrams taken from the sockets per round.
pub const RECEIVE_BATCH: usize = 64;

/// Room for one packet from the packet socket: its virtio-net header, the Ethernet header
/// and the largest IPv4 packet.
const PACKET_ROOM: usize = LEGACY_HEADER_LEN + ETHERNET_HEADER_LEN + u16::MAX as usize;

/// One datagram of a round, its outer headers gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Datagram<'b> {
    /// The sender's address.
    pub from: IpAddr,
    /// The UDP payload: the VXLAN header and the inner frame.
    pub bytes: &'b [u8],
    /// What the inner frame still needs: a checksum, segmentation; plain for most.
    pub offload: VirtioNetHdr,
    /// Longer than the UDP socket's slot: cut short.
    pub oversize: bool,
}

/// Why a packet from the packet socket was dropped before its sender was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterFault {
    /// Outer IPv4 or UDP headers that do not hold together (version, lengths, checksums).
    Invalid,
    /// The first fragment of a fragmented datagram (the kernel filters out the others).
    Fragment,
}

/// The sockets datagrams come in by, with the rounds they read into.
pub(super) struct Inbound<'a> {
    /// The packet socket, if the port may have one: whole Ethernet frames, each behind a
    /// virtio-net header.
    packet: Option<(&'a OwnedFd, PacketRound)>,
    /// The UDP socket: UDP payloads; with a packet socket, only those that came over other
    /// links than Ethernet.
    udp: &'a UdpSocket,
    udp_round: DatagramBatch<SocketAddr>,
}

impl<'a> Inbound<'a> {
    /// Reads from the packet socket, if there is one, and from the UDP socket, datagrams
    /// of up to `max_datagram` bytes there (a longer one is cut and flagged).
    pub(super) fn new(
        packet: Option<&'a OwnedFd>,
        udp: &'a UdpSocket,
        max_datagram: usize,
    ) -> Inbound<'a> {
        Inbound {
            packet: packet.map(|socket| (socket, PacketRound::default())),
            udp,
            udp_round: DatagramBatch::new(RECEIVE_BATCH, max_datagram),
        }
    }

    /// The sockets to wait on (the UDP socket twice when there is no packet socket).
    pub(super) fn sockets(&self) -> [BorrowedFd<'_>; 2] {
        let udp = self.udp.as_fd();
        let packet = self
            .packet
            .as_ref()
            .map_or(udp, |(socket, _)| socket.as_fd());
        [packet, udp]
    }

    /// Replaces the rounds with what waits on the sockets, without waiting for more.
    /// Returns how many packets the packet socket dropped because the kernel could not
    /// describe them (a segmentation virtio-net has no name for).
    pub(super) fn receive(&mut self) -> u64 {
        let undescribed = match &mut self.packet {
            Some((socket, round)) => round.receive(socket),
            None => 0,
        };
        self.udp_round.receive(self.udp, |from| {
            from.and_then(|a| SocketAddr::try_from(a).ok())
        });
        undescribed
    }

    /// The rounds' datagrams (the packet socket's first, each socket's in the order they
    /// arrived), or why each packet was dropped.
    pub(super) fn arrivals(&self) -> impl Iterator<Item = Result<Datagram<'_>, OuterFault>> {
        let from_packets = self
            .packet
            .iter()
            .flat_map(|(_, round)| round.packets().map(open_outer));
        let round = &self.udp_round;
        let from_udp = round.datagrams().iter().map(|datagram| {
            Ok(Datagram {
                from: datagram.from.ip(),
                bytes: round.bytes(datagram),
                offload: VirtioNetHdr::default(),
                oversize: datagram.oversize,
            })
        });
        from_packets.chain(from_udp)
    }
}

/// The packets a round takes from the packet socket, back to back in one buffer that
/// grows to the round's largest total and then stays, so a round costs no allocation.
#[derive(Debug, Default)]
pub(super) struct PacketRound {
    bytes: Vec<u8>,
    packets: Vec<Range<usize>>,
}

impl PacketRound {
    /// Takes at most [`RECEIVE_BATCH`] packets from `socket`, without waiting; returns
    /// how many the kernel dropped for want of a header to describe them.
    fn receive(&mut self, socket: &OwnedFd) -> u64 {
        self.bytes.clear();
        self.packets.clear();
        let mut undescribed = 0;
        for _ in 0..RECEIVE_BATCH {
            self.bytes.reserve(PACKET_ROOM);
            let start = self.bytes.len();
            let spare = rustix::buffer::spare_capacity(&mut self.bytes);
            match rustix::net::recv(socket, spare, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
                // A packet longer than the room is kept cut short; its IPv4 total length
                // then points past the end, and `open_outer` refuses it.
                Ok(_) => self.packets.push(start..self.bytes.len()),
                Err(Errno::INTR) => {}
                // The packet's segmentation has no virtio-net name; the kernel dropped it.
                Err(Errno::INVAL) => undescribed += 1,
                Err(e) => {
                    if e != Errno::AGAIN {
                        tracing::warn!(error = %e, "receiving from the packet socket failed");
                    }
                    break;
                }
            }
        }
        undescribed
    }

    /// Each packet: its virtio-net header, then the Ethernet frame.
    fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.packets
            .iter()
            .filter_map(|range| self.bytes.get(range.clone()))
    }
}

/// Checks the outer IPv4 and UDP headers of a frame from the packet socket (behind its
/// virtio-net header; the socket's filter let through only IPv4 over Ethernet) and returns
/// what is left: the sender, the UDP payload, and the offload work the inner frame still
/// needs.
///
/// The UDP checksum is checked unless the kernel vouches for the packet: a checksum still
/// to compute (`NEEDS_CSUM`: the packet was built on this host and never crossed a wire)
/// or one a network card already checked (`DATA_VALID`). Zero means none, over IPv4.
pub(super) fn open_outer(received: &[u8]) -> Result<Datagram<'_>, OuterFault> {
    let outer =
        VirtioNetHdr::parse(received, LEGACY_HEADER_LEN).map_err(|_| OuterFault::Invalid)?;
    // The virtio-net header's offsets count from the start of the frame.
    let frame = received
        .get(LEGACY_HEADER_LEN..)
        .ok_or(OuterFault::Invalid)?;
    let packet = frame
        .get(ETHERNET_HEADER_LEN..)
        .ok_or(OuterFault::Invalid)?;
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| OuterFault::Invalid)?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return Err(OuterFault::Invalid);
    }
    if ip.is_fragment() {
        return Err(OuterFault::Fragment);
    }
    if ip.protocol() != ipv4::PROTOCOL_UDP {
        return Err(OuterFault::Invalid);
    }
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| OuterFault::Invalid)?;
    let vouched = outer.needs_checksum() || outer.flags & FLAG_DATA_VALID != 0;
    if !vouched && !udp.verify_checksum(ip.source(), ip.destination()) {
        return Err(OuterFault::Invalid);
    }
    let payload_at = ip.header_len() + udp::HEADER_LEN;
    let payload_end = ip.header_len() + usize::from(udp.length());
    let bytes = packet
        .get(payload_at..payload_end)
        .ok_or(OuterFault::Invalid)?;
    Ok(Datagram {
        from: IpAddr::V4(ip.source()),
        bytes,
        offload: inner_offload(&outer, ETHERNET_HEADER_LEN + payload_at + vxlan::HEADER_LEN),
        oversize: false,
    })
}

/// The offload work of the inner frame that starts `inner_at` bytes into the outer
/// frame, from the outer frame's header.
///
/// A checksum to compute inside the inner frame moves with it: its start less
/// `inner_at`. One before it is the outer UDP checksum (the sender left that one to
/// "hardware" and finished the inner frame's itself), which goes with the outer headers:
/// the inner frame is complete. Segmentation moves too; its header length is a hint that
/// the network does not trust, moved all the same.
pub(super) fn inner_offload(outer: &VirtioNetHdr, inner_at: usize) -> VirtioNetHdr {
    let inner_at = u16::try_from(inner_at).unwrap_or(u16::MAX);
    let mut inner = VirtioNetHdr::default();
    if outer.needs_checksum() && outer.csum_start >= inner_at {
        inner.flags = FLAG_NEEDS_CSUM;
        inner.csum_start = outer.csum_start - inner_at;
        inner.csum_offset = outer.csum_offset;
    }
    if outer.gso_type != GsoType::None {
        inner.gso_type = outer.gso_type;
        inner.ecn = outer.ecn;
        inner.gso_size = outer.gso_size;
        inner.hdr_len = outer.hdr_len.saturating_sub(inner_at);
    }
    inner
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::wire::ipv4::Ipv4Repr;
    use crate::wire::offload::{complete_checksum, partial_sum};
    use crate::wire::udp::UdpRepr;

    /// The outer headers before the inner frame: Ethernet, IPv4, UDP, VXLAN.
    const INNER_AT: usize = 14 + 20 + 8 + 8;

    /// An inner TCP segment over IPv4 (10.77.0.2:5201 → 10.77.0.1:40000, 100 bytes of
    /// payload), its checksum field holding only the pseudo-header sum, as Linux leaves a
    /// checksum to "hardware"; and the checksum it should end with.
    fn inner_with_partial_checksum() -> (Vec<u8>, [u8; 2]) {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 77, 0, 2], [10, 77, 0, 1], 64)
            .tcp(5201, 40000, 1, 65535);
        let payload = [0x5a; 100];
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        let field = 14 + 20 + 16;
        let finished = [frame[field], frame[field + 1]];
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&[10, 77, 0, 2]);
        pseudo[4..8].copy_from_slice(&[10, 77, 0, 1]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&(20u16 + 100).to_be_bytes());
        let partial = partial_sum(&pseudo, 0) as u16;
        frame[field..field + 2].copy_from_slice(&partial.to_be_bytes());
        (frame, finished)
    }

    /// What the packet socket delivers for `inner` sent by 10.99.0.2 to 10.99.0.1:4789:
    /// `vnet`, then the outer Ethernet frame, its UDP checksum `udp_checksum`.
    fn received(vnet: &VirtioNetHdr, inner: &[u8], udp_checksum: u16) -> Vec<u8> {
        let mut bytes = vnet.to_bytes()[..LEGACY_HEADER_LEN].to_vec();
        bytes.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 2, 0, 0, 0, 0, 0xb, 0x08, 0x00]);
        let udp = UdpRepr {
            source_port: 50000,
            destination_port: 4789,
            payload_len: vxlan::HEADER_LEN + inner.len(),
        };
        let ip = Ipv4Repr {
            source: Ipv4Addr::new(10, 99, 0, 2),
            destination: Ipv4Addr::new(10, 99, 0, 1),
            protocol: ipv4::PROTOCOL_UDP,
            payload_len: udp::HEADER_LEN + udp.payload_len,
            ttl: 64,
            dont_fragment: false,
        };
        let mut headers = [0u8; 36];
        let (ip_header, rest) = headers.split_at_mut(20);
        let mut packet = Ipv4Packet::new_unchecked(&mut ip_header[..]);
        ip.emit(&mut packet);
        packet.fill_checksum();
        let mut datagram = UdpPacket::new_unchecked(&mut rest[..8]);
        udp.emit(&mut datagram);
        datagram.set_checksum(udp_checksum);
        rest[8..16].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
        bytes.extend_from_slice(&headers);
        bytes.extend_from_slice(inner);
        bytes
    }

    fn needs_checksum(csum_start: usize, csum_offset: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: csum_start as u16,
            csum_offset,
            ..VirtioNetHdr::default()
        }
    }

    #[test]
    fn a_checksum_the_sender_left_to_hardware_moves_onto_the_inner_frame() {
        let (inner, finished) = inner_with_partial_checksum();
        // As the kernel reports it: from the outer Ethernet header to the inner TCP header.
        let vnet = needs_checksum(INNER_AT + 14 + 20, 16);
        let bytes = received(&vnet, &inner, 0);
        let datagram = open_outer(&bytes).unwrap();
        assert_eq!(datagram.from, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(&datagram.bytes[..8], &[0x08, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(&datagram.bytes[8..], &inner[..]);
        assert_eq!(datagram.offload, needs_checksum(14 + 20, 16));
        // Finished where it lands, the checksum is the one the sender would have sent.
        let mut frame = datagram.bytes[8..].to_vec();
        complete_checksum(&mut frame, &datagram.offload).unwrap();
        assert_eq!(frame[14 + 20 + 16..14 + 20 + 18], finished);
    }

    #[test]
    fn a_partial_outer_udp_checksum_stays_behind_with_the_outer_headers() {
        let (inner, _) = inner_with_partial_checksum();
        // The sender finished the inner checksum and left the outer UDP one (at 14 + 20).
        let bytes = received(&needs_checksum(14 + 20, 6), &inner, 0x1234);
        let datagram = open_outer(&bytes).unwrap();
        assert_eq!(datagram.offload, VirtioNetHdr::default());
    }

    #[test]
    fn a_super_frame_keeps_its_segmentation_with_offsets_from_the_inner_frame() {
        let (inner, _) = inner_with_partial_checksum();
        let vnet = VirtioNetHdr {
            gso_type: GsoType::TcpV4,
            gso_size: 1448,
            hdr_len: (INNER_AT + 14 + 20 + 32) as u16,
            ..needs_checksum(INNER_AT + 14 + 20, 16)
        };
        let bytes = received(&vnet, &inner, 0);
        let datagram = open_outer(&bytes).unwrap();
        let expected = VirtioNetHdr {
            gso_type: GsoType::TcpV4,
            gso_size: 1448,
            hdr_len: 14 + 20 + 32,
            ..needs_checksum(14 + 20, 16)
        };
        assert_eq!(datagram.offload, expected);
    }

    #[test]
    fn the_udp_checksum_is_checked_unless_the_kernel_vouches_for_it() {
        let (inner, _) = inner_with_partial_checksum();
        let plain = VirtioNetHdr::default();
        assert_eq!(
            open_outer(&received(&plain, &inner, 0x1234)).err(),
            Some(OuterFault::Invalid),
            "a wrong checksum from a wire"
        );
        let checked_by_the_card = VirtioNetHdr {
            flags: FLAG_DATA_VALID,
            ..plain
        };
        assert!(open_outer(&received(&checked_by_the_card, &inner, 0x1234)).is_ok());
        // Zero: no checksum, over IPv4.
        assert!(open_outer(&received(&plain, &inner, 0)).is_ok());
    }

    #[test]
    fn broken_outer_headers_and_fragments_are_refused() {
        let (inner, _) = inner_with_partial_checksum();
        let good = received(&VirtioNetHdr::default(), &inner, 0);
        let ip_at = LEGACY_HEADER_LEN + 14;
        let mut corrupted = good.clone();
        corrupted[ip_at + 8] = 1; // the TTL, under the header checksum
        assert_eq!(open_outer(&corrupted).err(), Some(OuterFault::Invalid));
        let mut fragment = good.clone();
        fragment[ip_at + 6] = 0x20; // More Fragments
        Ipv4Packet::new_unchecked(&mut fragment[ip_at..]).fill_checksum();
        assert_eq!(open_outer(&fragment).err(), Some(OuterFault::Fragment));
        let mut long_udp = good.clone();
        long_udp[ip_at + 24..ip_at + 26].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(open_outer(&long_udp).err(), Some(OuterFault::Invalid));
        for len in 0..ip_at + 28 {
            assert!(open_outer(&good[..len]).is_err(), "{len} bytes");
        }
    }
}
