//! Fuzz target `frame`: any bytes a port hands to the network as a frame.
//!
//! A guest decides every byte of what its port sends. Whatever it is, the sender either
//! refuses it with a counted reason or routes it, and every copy it says it delivered
//! arrives byte for byte, once, never back at the sender, and passes the receiver's own
//! checks (the delivery rules, and no frame lost without a count).
//!
//! Every peer here has the default VLAN membership (a trunk of all VLANs, native VLAN 1),
//! so a copy is the frame itself, except that a tag for the native VLAN — VID 1, or VID 0,
//! a priority tag, which counts as untagged — comes off at the receiving port; and that
//! such a frame with a second tag under that one reaches no one (the copies are counted
//! `vlan_filtered`: untagged, they would hop into the inner tag's VLAN).
//!
//! Input: the first byte chooses what to do to the destination address (keep it, or make it
//! the second peer's, the third peer's, or broadcast) and whether to put the sender's own
//! source address in; the rest is the frame.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use guestnet::network::Sent;
use guestnet::network::{CreateOptions, JoinOptions, Network, Peer};
use guestnet::wire::{MacAddress, ethernet, vlan};
use libfuzzer_sys::fuzz_target;

struct Bench {
    _dir: PathBuf,
    _net: Network,
    a: Peer,
    b: Peer,
    c: Peer,
    mtu: usize,
}

fn bench() -> &'static Mutex<Bench> {
    static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();
    BENCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("guestnet-fuzz-frame-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let net =
            Network::create(&dir, "frames", CreateOptions::default()).expect("create network");
        let join = || net.join(JoinOptions::default()).expect("join");
        let (a, b, c) = (join(), join(), join());
        let mtu = net.geometry().mtu as usize;
        Mutex::new(Bench {
            _dir: dir,
            _net: net,
            a,
            b,
            c,
            mtu,
        })
    })
}

/// Whether every copy of a routed `frame` is dropped, the inner tag of a native-VLAN
/// frame exposed.
fn hops(frame: &[u8]) -> bool {
    vlan::tci_of(frame).is_some_and(|tci| tci.vid <= 1) && vlan::is_tagged_under_tag(frame)
}

/// The copy a default port receives of a routed `frame`.
fn expected_copy(frame: &[u8]) -> Vec<u8> {
    match vlan::tci_of(frame) {
        Some(tci) if tci.vid <= 1 => {
            let mut tag = [0; 4];
            vlan::retag_parts(frame, None, &mut tag).concat()
        }
        _ => frame.to_vec(),
    }
}

fn drain(peer: &mut Peer) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    peer.receive(usize::MAX, |f| got.push(f.to_vec()));
    got
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let mut guard = bench().lock().unwrap_or_else(|p| p.into_inner());
    let bench = &mut *guard;
    let mut frame = rest.to_vec();
    if frame.len() >= 6 {
        let dst = match how & 3 {
            1 => Some(bench.b.mac()),
            2 => Some(bench.c.mac()),
            3 => Some(MacAddress::BROADCAST),
            _ => None,
        };
        if let Some(dst) = dst {
            frame[..6].copy_from_slice(&dst.0);
        }
    }
    if how & 4 != 0 && frame.len() >= 12 {
        frame[6..12].copy_from_slice(&bench.a.mac().0);
    }
    let valid = ethernet::validate_frame(&frame, bench.mtu).is_ok();
    let before = (bench.b.counters(), bench.c.counters());
    let sent = bench.a.send(&frame);
    let received: Vec<Vec<u8>> = drain(&mut bench.b)
        .into_iter()
        .chain(drain(&mut bench.c))
        .collect();
    assert!(drain(&mut bench.a).is_empty(), "never back to the sender");
    match sent {
        Sent::Refused(reason) => {
            assert!(received.is_empty(), "refused ({reason:?}) yet delivered");
        }
        Sent::Routed { delivered, dropped } => {
            assert!(valid, "an invalid frame was routed");
            if hops(&frame) {
                assert_eq!(delivered, 0, "a double-tagged frame went out untagged");
            } else {
                assert_eq!(dropped, 0, "rings are drained after every frame");
            }
            assert_eq!(received.len(), delivered as usize);
            let expected = expected_copy(&frame);
            assert!(received.iter().all(|f| *f == expected), "a copy differs");
        }
    }
    // The receivers' own checks never disagree with the sender's: they count exactly the
    // copies the sender said it dropped.
    let after = (bench.b.counters(), bench.c.counters());
    let rx_drops = after.0.rx_dropped_total() - before.0.rx_dropped_total()
        + after.1.rx_dropped_total()
        - before.1.rx_dropped_total();
    let dropped = match sent {
        Sent::Routed { dropped, .. } => u64::from(dropped),
        Sent::Refused(_) => 0,
    };
    assert_eq!(rx_drops, dropped);
});
