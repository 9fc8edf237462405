//! Fuzz target `vxlan_datagram`: any bytes arriving on a VXLAN port's underlay.
//!
//! Anyone who can reach the underlay's UDP port chooses every byte of a datagram. The
//! outer IPv4 and UDP parsers either refuse it or describe exactly what is there; the
//! port's judgement ([`classify`]) never panics and refuses a datagram for the first
//! thing wrong with it, in the order the port's documentation gives (unknown remote,
//! short header, I flag clear, foreign VNI, invalid inner frame, and with a VNI map a
//! tagged inner frame); and an inner frame it delivers, encapsulated again as the port
//! sends it (with a map: tagged for its VLAN in the network, then untagged again on the
//! way out), is judged the same way at the other end.
//!
//! Input: `[how][bytes]`. `how`, bit 0: `bytes` is a whole IPv4 packet (outer IPv4, UDP,
//! VXLAN) rather than the UDP payload alone; bit 1: make the outer lengths and the IPv4
//! checksum fit (and drop the UDP checksum), so mutations reach the VXLAN header; bit 2:
//! the datagram came from no configured remote; bit 3: the socket cut it short; bits 4–5:
//! the remote's index; bit 6: the port maps VLANs 10 and 20 to VNIs 42 and 43 instead of
//! carrying VNI 42 alone.
#![no_main]

use std::net::Ipv4Addr;

use guestnet::ports::vxlan::{RxDrop, Segments, Verdict, VniMap, classify};
use guestnet::wire::VirtioNetHdr;
use guestnet::wire::ethernet;
use guestnet::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use guestnet::wire::udp::{self, UdpPacket, UdpRepr};
use guestnet::wire::vlan::{self, VlanTci};
use guestnet::wire::vxlan::{self, VxlanPacket, VxlanRepr};
use libfuzzer_sys::fuzz_target;

/// The port's VNI (the first of its map's) and network MTU.
const VNI: u32 = 42;
const MTU: usize = 1500;

/// The map: VLAN 10 in VNI 42, VLAN 20 in VNI 43.
fn map() -> VniMap {
    VniMap::new([(10, 42), (20, 43)]).expect("a valid map")
}

/// What the port's documentation says a datagram is, check by check.
fn expected(remote: Option<usize>, mapped: bool, datagram: &[u8], oversize: bool) -> Verdict {
    let Some(remote) = remote else {
        return Verdict::UnknownRemote;
    };
    let refused = |reason| Verdict::Refused { remote, reason };
    if datagram.len() < vxlan::HEADER_LEN {
        return refused(RxDrop::Malformed);
    }
    if datagram[0] & vxlan::FLAG_INSTANCE == 0 {
        return refused(RxDrop::InstanceFlagClear);
    }
    let vni = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
    let segment = match (mapped, vni) {
        (_, VNI) => 0,
        (true, 43) => 1,
        _ => return refused(RxDrop::ForeignVni),
    };
    let inner = &datagram[vxlan::HEADER_LEN..];
    if oversize || ethernet::validate_frame(inner, MTU).is_err() {
        return refused(RxDrop::InvalidInner);
    }
    if mapped && inner.get(12..14) == Some(&[0x81, 0x00][..]) {
        return refused(RxDrop::TaggedInner);
    }
    Verdict::Deliver { remote, segment }
}

/// Makes the outer lengths describe the packet as it is and its IPv4 checksum right.
fn fit_outer_headers(packet: &mut [u8]) {
    if packet.len() < ipv4::HEADER_LEN {
        return;
    }
    let total = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    let mut ip = Ipv4Packet::new_unchecked(&mut *packet);
    ip.set_total_len(total);
    let header_len = ip.header_len();
    if header_len < ipv4::HEADER_LEN || header_len > usize::from(total) {
        return;
    }
    ip.fill_checksum();
    let datagram = &mut packet[header_len..usize::from(total)];
    if datagram.len() >= udp::HEADER_LEN {
        let len = u16::try_from(datagram.len()).unwrap_or(u16::MAX);
        let mut udp = UdpPacket::new_unchecked(datagram);
        udp.set_length(len);
        udp.set_checksum(0);
    }
}

/// The UDP payload of an outer IPv4 packet, once both parsers accept it; checks that what
/// they describe is what is there, and that writing it again reads back the same.
fn outer_payload(packet: &[u8]) -> Option<(&[u8], Ipv4Repr, UdpRepr)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let ip_repr = Ipv4Repr::parse(&ip).ok()?;
    assert_eq!(
        ip_repr.payload_len,
        usize::from(ip.total_len()) - ip.header_len()
    );
    assert_eq!(ip.payload().len(), ip_repr.payload_len);
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    let udp_repr = UdpRepr::parse(&udp, ip_repr.source, ip_repr.destination).ok()?;
    assert_eq!(
        udp_repr.payload_len + udp::HEADER_LEN,
        usize::from(udp.length())
    );
    let payload = udp.payload();
    assert_eq!(payload.len(), udp_repr.payload_len);
    let again = encapsulate_raw(ip_repr, udp_repr, payload);
    let (ip_again, udp_again) = parse_outer(&again);
    // Bytes after the UDP length (padding) are not written again.
    let ip_written = Ipv4Repr {
        payload_len: udp::HEADER_LEN + payload.len(),
        ..ip_repr
    };
    assert_eq!(ip_again, Some(ip_written));
    assert_eq!(udp_again, Some(udp_repr));
    // The views borrow themselves; the same bytes, borrowed from the input.
    let start = ip.header_len() + udp::HEADER_LEN;
    Some((&packet[start..start + payload.len()], ip_repr, udp_repr))
}

fn parse_outer(packet: &[u8]) -> (Option<Ipv4Repr>, Option<UdpRepr>) {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return (None, None);
    };
    let Ok(ip_repr) = Ipv4Repr::parse(&ip) else {
        return (None, None);
    };
    let udp = UdpPacket::new_checked(ip.payload())
        .ok()
        .and_then(|udp| UdpRepr::parse(&udp, ip_repr.source, ip_repr.destination).ok());
    (Some(ip_repr), udp)
}

/// Outer IPv4 and UDP headers in front of `payload`, as the port writes them for its raw
/// socket, with the checksum the kernel would fill in.
fn encapsulate_raw(ip: Ipv4Repr, udp: UdpRepr, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; ipv4::HEADER_LEN + udp::HEADER_LEN + payload.len()];
    let mut ip_packet = Ipv4Packet::new_unchecked(&mut packet[..]);
    Ipv4Repr {
        payload_len: udp::HEADER_LEN + payload.len(),
        ..ip
    }
    .emit(&mut ip_packet);
    ip_packet.fill_checksum();
    let mut udp_packet = UdpPacket::new_unchecked(&mut packet[ipv4::HEADER_LEN..]);
    UdpRepr {
        payload_len: payload.len(),
        ..udp
    }
    .emit(&mut udp_packet);
    packet[ipv4::HEADER_LEN + udp::HEADER_LEN..].copy_from_slice(payload);
    packet
}

/// An inner frame as the sending port puts it on the underlay in VNI `vni`: VXLAN header,
/// UDP from the hashed source port, IPv4.
fn encapsulate(inner: &[u8], vni: u32) -> Vec<u8> {
    let mut datagram = vec![0u8; vxlan::HEADER_LEN + inner.len()];
    VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut datagram[..]));
    datagram[vxlan::HEADER_LEN..].copy_from_slice(inner);
    let source_port = vxlan::source_port(inner);
    assert!(vxlan::SOURCE_PORTS.contains(&source_port));
    let ip = Ipv4Repr {
        source: Ipv4Addr::new(192, 0, 2, 1),
        destination: Ipv4Addr::new(192, 0, 2, 2),
        protocol: ipv4::PROTOCOL_UDP,
        payload_len: 0,
        ttl: 64,
        dont_fragment: true,
    };
    let udp = UdpRepr {
        source_port,
        destination_port: vxlan::DEFAULT_PORT,
        payload_len: 0,
    };
    encapsulate_raw(ip, udp, &datagram)
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let remote = (how & 4 == 0).then_some(usize::from(how >> 4 & 3));
    let oversize = how & 8 != 0;
    let mapped = how & 64 != 0;
    let segments = if mapped {
        Segments::Map(map())
    } else {
        Segments::One(VNI)
    };
    let mut bytes = rest.to_vec();
    let datagram: &[u8] = if how & 1 != 0 {
        if how & 2 != 0 {
            fit_outer_headers(&mut bytes);
        }
        match outer_payload(&bytes) {
            Some((payload, ..)) => payload,
            None => return,
        }
    } else {
        &bytes
    };

    let plain = VirtioNetHdr::default();
    let verdict = classify(remote, &segments, MTU, datagram, oversize, &plain);
    assert_eq!(verdict, expected(remote, mapped, datagram, oversize));

    if let Verdict::Deliver { segment, .. } = verdict {
        let inner = &datagram[vxlan::HEADER_LEN..];
        let vni = segments.list()[segment].vni;
        let mut tag_bytes = [0; 4];
        let mut no_tag = [0; 4];
        let in_network;
        let sent_inner = match segments.list()[segment].vlan {
            Some(vid) => {
                // Into the network tagged for its VLAN, still within the MTU; out again
                // in the same VNI, untagged, as it came.
                let tag = VlanTci {
                    pcp: 0,
                    dei: false,
                    vid,
                };
                in_network = vlan::retag_parts(inner, Some(tag), &mut tag_bytes).concat();
                assert!(ethernet::validate_frame(&in_network, MTU).is_ok());
                let outbound = segments.outbound(&in_network).expect("a mapped VLAN");
                assert_eq!((outbound.segment, outbound.vni), (segment, vni));
                vlan::retag_parts(&in_network, None, &mut no_tag).concat()
            }
            None => inner.to_vec(),
        };
        assert_eq!(sent_inner, inner);
        let sent = encapsulate(inner, vni);
        assert_eq!(sent.len(), inner.len() + vxlan::OVERHEAD_IPV4 - 14);
        let (payload, ip, udp) = outer_payload(&sent).expect("our own datagram parses");
        assert_eq!(ip.protocol, ipv4::PROTOCOL_UDP);
        assert!(ip.dont_fragment, "VXLAN datagrams are never fragmented");
        assert_eq!(udp.destination_port, vxlan::DEFAULT_PORT);
        assert_eq!(
            classify(Some(0), &segments, MTU, payload, false, &plain),
            Verdict::Deliver { remote: 0, segment }
        );
        assert_eq!(&payload[vxlan::HEADER_LEN..], inner);
    }
});
