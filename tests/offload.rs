//! Offloads through the network: super-frames travel as they are to peers that take them
//! and arrive finished (segmented, checksummed, within the MTU) at peers that do not.

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use guestnet::network::counters::DropReason;
use guestnet::network::{CreateOptions, JoinOptions, Network, Peer};
use guestnet::network::{Sent, offloads};
use guestnet::shm::layout::Geometry;
use guestnet::wire::virtio_net::{FLAG_NEEDS_CSUM, GsoType, VirtioNetHdr};

fn network(dir: &tempfile::TempDir, gso_buffers: u32) -> Network {
    Network::create(
        dir.path(),
        "offload",
        CreateOptions {
            geometry: Geometry {
                gso_buffers,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

fn join(net: &Network, offloads: u32) -> Peer {
    net.join(JoinOptions {
        offloads,
        ..JoinOptions::default()
    })
    .unwrap()
}

/// A TCP/IPv4 super-frame from `from` to `to` carrying `payload`, as a kernel with TSO
/// hands it over (here with its checksum already complete, which the receiver ignores).
fn super_frame(from: &Peer, to: &Peer, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(from.mac().octets(), to.mac().octets())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 1000, 64000)
        .ack(7)
        .psh()
        .write(&mut frame, payload)
        .unwrap();
    frame
}

fn tso(gso_size: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        hdr_len: 54,
        gso_size,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
        ..VirtioNetHdr::default()
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Checks finished segments: each within the MTU with valid IP and TCP checksums,
/// contiguous sequence numbers, and payloads adding up to the original.
fn check_segments(segments: &[Vec<u8>], original: &[u8], mtu: usize) {
    let mut joined = Vec::new();
    for segment in segments {
        assert!(
            segment.len() <= 14 + mtu,
            "segment of {} bytes",
            segment.len()
        );
        let parsed = PacketHeaders::from_ethernet_slice(segment).unwrap();
        let Some(NetHeaders::Ipv4(ip, _)) = parsed.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let Some(TransportHeader::Tcp(tcp)) = parsed.transport else {
            panic!("not TCP")
        };
        let data = parsed.payload.slice();
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, data).unwrap());
        assert_eq!(tcp.sequence_number, 1000 + joined.len() as u32);
        joined.extend_from_slice(data);
    }
    assert_eq!(joined, original);
}

#[test]
fn a_super_frame_reaches_an_offload_peer_whole_and_a_plain_peer_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 16);
    let mut tap_like = join(&net, offloads::ALL);
    let mut offload_receiver = join(&net, offloads::ALL);
    let mut plain_receiver = join(&net, 0);
    let data = payload(20_000);

    let whole = super_frame(&tap_like, &offload_receiver, &data);
    assert_eq!(
        tap_like.send_offloaded(&tso(1448), &whole),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    let mut got = Vec::new();
    offload_receiver.receive_offloaded(8, |hdr, frame| got.push((*hdr, frame.to_vec())));
    assert_eq!(got.len(), 1, "one super-frame, not segments");
    assert_eq!(got[0].1, whole);
    assert_eq!(got[0].0.gso_type, GsoType::TcpV4);
    assert_eq!(got[0].0.gso_size, 1448);

    let to_plain = super_frame(&tap_like, &plain_receiver, &data);
    assert_eq!(
        tap_like.send_offloaded(&tso(1448), &to_plain),
        Sent::Routed {
            delivered: 14,
            dropped: 0
        },
        "20000 bytes in 1448-byte segments"
    );
    let mut segments = Vec::new();
    plain_receiver.receive(64, |frame| segments.push(frame.to_vec()));
    check_segments(&segments, &data, 1500);
}

#[test]
fn segment_sizes_are_cut_to_the_network_mtu() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 16);
    let mut sender = join(&net, offloads::ALL);
    let mut offload_receiver = join(&net, offloads::ALL);
    let mut plain_receiver = join(&net, 0);
    let data = payload(30_000);
    // The sender asks for 8000-byte segments on a 1500-byte network.
    sender.send_offloaded(&tso(8000), &super_frame(&sender, &offload_receiver, &data));
    let mut hdrs = Vec::new();
    offload_receiver.receive_offloaded(8, |hdr, _| hdrs.push(*hdr));
    assert_eq!(hdrs.len(), 1);
    assert_eq!(hdrs[0].gso_size, 1460, "1500 - 20 (IPv4) - 20 (TCP)");
    sender.send_offloaded(&tso(8000), &super_frame(&sender, &plain_receiver, &data));
    let mut segments = Vec::new();
    plain_receiver.receive(64, |frame| segments.push(frame.to_vec()));
    check_segments(&segments, &data, 1500);
}

#[test]
fn a_network_without_large_buffers_finishes_super_frames_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 0);
    let mut sender = join(&net, offloads::ALL);
    let mut receiver = join(&net, offloads::ALL);
    let data = payload(10_000);
    sender.send_offloaded(&tso(1448), &super_frame(&sender, &receiver, &data));
    let mut segments = Vec::new();
    receiver.receive_offloaded(64, |hdr, frame| {
        assert!(hdr.is_plain());
        segments.push(frame.to_vec());
    });
    check_segments(&segments, &data, 1500);
}

#[test]
fn super_frames_beyond_the_large_buffers_are_counted_as_ring_full() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 4);
    let mut sender = join(&net, offloads::ALL);
    let mut receiver = join(&net, offloads::ALL);
    let frame = super_frame(&sender, &receiver, &payload(5_000));
    for _ in 0..6 {
        sender.send_offloaded(&tso(1448), &frame);
    }
    assert_eq!(sender.counters().tx_dropped(DropReason::RingFull), 2);
    assert_eq!(receiver.counters().rx_dropped(DropReason::RingFull), 2);
    assert_eq!(receiver.receive_offloaded(64, |_, _| {}), 4);
    // The buffers are free again once read.
    sender.send_offloaded(&tso(1448), &frame);
    assert_eq!(receiver.receive_offloaded(64, |_, _| {}), 1);
}

#[test]
fn offload_requests_guestnet_cannot_honour_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 16);
    let mut sender = join(&net, offloads::ALL);
    let receiver = join(&net, offloads::ALL);
    let frame = super_frame(&sender, &receiver, &payload(3_000));
    let ufo = VirtioNetHdr {
        gso_type: GsoType::Udp,
        ..tso(1448)
    };
    assert_eq!(
        sender.send_offloaded(&ufo, &frame),
        Sent::Refused(DropReason::Invalid)
    );
    let small = super_frame(&sender, &receiver, &payload(100));
    let checksum_outside = VirtioNetHdr {
        gso_type: GsoType::None,
        csum_start: 150,
        csum_offset: 16,
        ..tso(0)
    };
    assert_eq!(
        sender.send_offloaded(&checksum_outside, &small),
        Sent::Refused(DropReason::Invalid)
    );
    let zero_segments = tso(0);
    assert_eq!(
        sender.send_offloaded(&zero_segments, &frame),
        Sent::Refused(DropReason::Invalid)
    );
    assert_eq!(sender.counters().tx_dropped(DropReason::Invalid), 3);
}

#[test]
fn a_checksum_aimed_at_the_ethernet_header_is_refused_before_it_can_rewrite_addresses() {
    // Found by the `offload` fuzz target: csum_start 0, csum_offset 6 had the sender (and
    // a receiver taking the offload) write the checksum over the source address after the
    // frame was routed and its source learned, so the plain peer was handed a frame from
    // a multicast source, which it then dropped as invalid.
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 16);
    let mut sender = join(&net, offloads::ALL);
    let mut offload_receiver = join(&net, offloads::ALL);
    let mut plain_receiver = join(&net, 0);
    let mut frame = super_frame(&sender, &plain_receiver, &payload(100));
    frame[..6].fill(0xff);
    for (gso_type, csum_start, csum_offset) in [
        (GsoType::None, 0, 6),
        (GsoType::None, 6, 0),
        (GsoType::None, 13, 21),
        (GsoType::TcpV4, 0, 6),
    ] {
        let hdr = VirtioNetHdr {
            gso_type,
            csum_start,
            csum_offset,
            ..tso(1448)
        };
        assert_eq!(
            sender.send_offloaded(&hdr, &frame),
            Sent::Refused(DropReason::Invalid),
            "{hdr:?}"
        );
    }
    assert_eq!(sender.counters().tx_dropped(DropReason::Invalid), 4);
    assert_eq!(offload_receiver.receive_offloaded(64, |_, _| {}), 0);
    assert_eq!(plain_receiver.receive(64, |_| {}), 0);
    assert_eq!(plain_receiver.counters().rx_dropped_total(), 0);
}

#[test]
fn a_frame_needing_only_a_checksum_is_completed_for_plain_peers() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, 16);
    let mut sender = join(&net, offloads::ALL);
    let mut plain_receiver = join(&net, 0);
    let data = payload(500);
    let mut frame = super_frame(&sender, &plain_receiver, &data);
    // Leave only the pseudo-header sum in the checksum field, as a kernel handing the
    // rest to the device does.
    let tcp_len = (frame.len() - 34) as u16;
    let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 6];
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    let partial = guestnet::wire::offload::partial_sum(&pseudo, 0) as u16;
    frame[50..52].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        gso_type: GsoType::None,
        ..tso(0)
    };
    sender.send_offloaded(&hdr, &frame);
    let mut segments = Vec::new();
    plain_receiver.receive(8, |f| segments.push(f.to_vec()));
    assert_eq!(segments.len(), 1);
    check_segments(&segments, &data, 1500);
}
