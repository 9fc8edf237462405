//! Fuzz target `offload`: a guest's virtio-net header and frame, sent with offload work.
//!
//! A guest that negotiated checksum and segmentation offloads writes every number of the
//! header and every byte of the frame. Whatever they are, the network either refuses the
//! frame with a counted reason or routes it; a receiver that takes every offload gets it
//! as it is, one that takes none gets it finished in software, and every frame the latter
//! is handed passes the network's own checks (DESIGN.md §3.5, §4.1). Software segmentation
//! on its own, cut to any MTU with `mss_for_mtu`, only ever yields valid frames, and
//! nothing at all when it refuses.
//!
//! Input: `[how][virtio-net header: 12 bytes][frame]`. `how`, bits 0–1: keep the
//! destination address, or make it the plain receiver's, the offloading receiver's, or
//! broadcast; bit 2: put the sender's own source address in; bit 3: make the IPv4 total
//! length or IPv6 payload length fit the frame, so mutations get past the length checks
//! to the segmentation proper; bits 4–7: the MTU for the direct segmentation, 68 + 96 × n.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use guestnet::network::{CreateOptions, JoinOptions, Network, Peer, Sent, offloads};
use guestnet::shm::layout::Geometry;
use guestnet::wire::offload::{Segmenter, mss_for_mtu};
use guestnet::wire::virtio_net::{self, GsoType, VirtioNetHdr};
use guestnet::wire::{EthernetFrame, EthernetRepr, MacAddress, ethernet};
use libfuzzer_sys::fuzz_target;

struct Bench {
    _dir: PathBuf,
    _net: Network,
    sender: Peer,
    /// Takes no offloads: everything reaches it finished.
    plain: Peer,
    /// Takes every offload: super-frames reach it whole.
    offloading: Peer,
    mtu: usize,
    segmenter: Segmenter,
}

fn bench() -> &'static Mutex<Bench> {
    static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();
    BENCH.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("guestnet-fuzz-offload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Rings long enough for the most segments one super-frame can make (64 KiB cut
        // into the smallest segments allowed), so a drained ring never drops a copy.
        let geometry = Geometry {
            max_peers: 4,
            ring_slots: 1024,
            mtu: 1500,
            gso_buffers: 4,
        };
        let options = CreateOptions {
            geometry,
            ..CreateOptions::default()
        };
        let net = Network::create(&dir, "offload", options).expect("create network");
        let join = |offloads| {
            net.join(JoinOptions {
                offloads,
                ..JoinOptions::default()
            })
            .expect("join")
        };
        let (sender, plain, offloading) = (join(offloads::ALL), join(0), join(offloads::ALL));
        let mtu = net.geometry().mtu as usize;
        Mutex::new(Bench {
            _dir: dir,
            _net: net,
            sender,
            plain,
            offloading,
            mtu,
            segmenter: Segmenter::new(),
        })
    })
}

/// Rewrites the IP length field so that the packet ends where the frame does.
fn fit_ip_length(frame: &mut [u8]) {
    let mut l3 = ethernet::HEADER_LEN;
    if frame.get(12..14) == Some(&[0x81, 0x00]) {
        l3 += ethernet::VLAN_TAG_LEN;
    }
    let Some(ethertype) = frame.get(l3 - 2..l3) else {
        return;
    };
    let (field, len) = match ethertype {
        [0x08, 0x00] => (l3 + 2, frame.len().saturating_sub(l3)),
        [0x86, 0xdd] => (l3 + 4, frame.len().saturating_sub(l3 + 40)),
        _ => return,
    };
    let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(bytes) = frame.get_mut(field..field + 2) {
        bytes.copy_from_slice(&len);
    }
}

/// Software segmentation alone, cut to `mtu`: every segment is a valid frame of that
/// MTU, and a refusal emits nothing.
fn segment_directly(segmenter: &mut Segmenter, hdr: &VirtioNetHdr, frame: &[u8], mtu: usize) {
    let Ok(mss) = mss_for_mtu(frame, hdr, mtu) else {
        return;
    };
    // Segments carry the frame's Ethernet header: one with a multicast source cannot
    // make valid ones, and the network refuses it before it gets here.
    let header_ok = EthernetFrame::new_checked(frame)
        .and_then(|f| EthernetRepr::parse(&f))
        .is_ok();
    let mut emitted = 0;
    let result = segmenter.segment(frame, hdr, mss, &mut |segment: &[u8]| {
        emitted += 1;
        if header_ok {
            assert!(
                ethernet::validate_frame(segment, mtu).is_ok(),
                "segment of {} bytes for MTU {mtu} (mss {mss}): {segment:02x?}",
                segment.len()
            );
        }
    });
    match result {
        Ok(count) => assert_eq!(count, emitted, "segments counted and emitted differ"),
        Err(e) => assert_eq!(emitted, 0, "refused ({e}) after emitting segments"),
    }
}

fn drain_plain(peer: &mut Peer, mtu: usize) -> usize {
    let mut got = 0;
    peer.receive(usize::MAX, |frame| {
        assert!(
            ethernet::validate_frame(frame, mtu).is_ok(),
            "a plain receiver got an invalid frame of {} bytes: {frame:02x?}",
            frame.len()
        );
        got += 1;
    });
    got
}

fn drain_offloading(peer: &mut Peer) -> usize {
    let mut got = 0;
    peer.receive_offloaded(usize::MAX, |_, _| got += 1);
    got
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let Ok(hdr) = VirtioNetHdr::parse(rest, virtio_net::HEADER_LEN) else {
        return;
    };
    let mut frame = rest[virtio_net::HEADER_LEN..].to_vec();
    let mut guard = bench().lock().unwrap_or_else(|p| p.into_inner());
    let bench = &mut *guard;
    if frame.len() >= 6 {
        let destination = match how & 3 {
            1 => Some(bench.plain.mac()),
            2 => Some(bench.offloading.mac()),
            3 => Some(MacAddress::BROADCAST),
            _ => None,
        };
        if let Some(destination) = destination {
            frame[..6].copy_from_slice(&destination.0);
        }
    }
    if how & 4 != 0 && frame.len() >= 12 {
        frame[6..12].copy_from_slice(&bench.sender.mac().0);
    }
    if how & 8 != 0 {
        fit_ip_length(&mut frame);
    }

    let direct_mtu = 68 + 96 * usize::from(how >> 4);
    segment_directly(&mut bench.segmenter, &hdr, &frame, direct_mtu);

    let before = (
        bench.sender.counters(),
        bench.plain.counters(),
        bench.offloading.counters(),
    );
    let sent = bench.sender.send_offloaded(&hdr, &frame);
    let plain_got = drain_plain(&mut bench.plain, bench.mtu);
    let offloading_got = drain_offloading(&mut bench.offloading);
    assert_eq!(
        drain_offloading(&mut bench.sender),
        0,
        "never back to the sender"
    );
    let after = (
        bench.sender.counters(),
        bench.plain.counters(),
        bench.offloading.counters(),
    );
    let tx_dropped = after.0.tx_dropped_total() - before.0.tx_dropped_total();
    match sent {
        Sent::Refused(reason) => {
            assert_eq!(
                plain_got + offloading_got,
                0,
                "refused ({reason:?}) yet delivered"
            );
            assert_eq!(
                after.0.tx_dropped(reason) - before.0.tx_dropped(reason),
                1,
                "a refusal ({reason:?}) not counted"
            );
            assert_eq!(tx_dropped, 1);
        }
        Sent::Routed { delivered, dropped } => {
            assert_eq!(after.0.tx_packets - before.0.tx_packets, 1);
            assert_eq!(
                plain_got + offloading_got,
                delivered as usize,
                "copies said delivered and copies received differ ({hdr:?})"
            );
            assert_eq!(tx_dropped, u64::from(dropped), "dropped copies not counted");
            if hdr.gso_type == GsoType::None && !hdr.needs_checksum() {
                assert!(offloading_got <= 1 && plain_got <= 1);
            }
        }
    }
    // The receivers' own checks never disagree with the sender's: they count exactly the
    // copies the sender said it dropped (a double-tagged frame that may not leave
    // untagged, say), and they count what they hand over.
    let rx_dropped = after.1.rx_dropped_total() - before.1.rx_dropped_total()
        + after.2.rx_dropped_total()
        - before.2.rx_dropped_total();
    let copies_dropped = match sent {
        Sent::Routed { dropped, .. } => u64::from(dropped),
        Sent::Refused(_) => 0,
    };
    assert_eq!(rx_dropped, copies_dropped, "receivers and sender disagree");
    assert_eq!(after.1.rx_packets - before.1.rx_packets, plain_got as u64);
    assert_eq!(
        after.2.rx_packets - before.2.rx_packets,
        offloading_got as u64
    );
});
