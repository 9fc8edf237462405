//! Fuzz target `region`: a region file holding any bytes at all.
//!
//! Every process that may open a region can write any byte of it, so opening a spoilt
//! region must fail cleanly, and using one that still opens — status, join, send, receive,
//! sweep — must never panic: a corrupted region never crashes a reader.
//!
//! The input's first byte picks how the file is made. Even: the rest of the input *is* the
//! file, which exercises the header and size checks. Odd: the rest is a list of patches
//! `[offset: u32 LE][len: u8][len bytes]` over a real, small region with frames in flight,
//! so that the fuzzer reaches the peer table, the learned table and the rings instead of
//! stopping at the magic number. One of the two peers is a trunk of VLAN 10, so the VLAN
//! table, per-VLAN learning and retagging are on the path too, and what it receives must be
//! tagged for VLAN 10 whatever the ring held.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use guestnet::network::{CreateOptions, JoinOptions, Network, VlanMembership, VlanSet};
use guestnet::shm::layout::Geometry;
use guestnet::wire::{MacAddress, ethernet, vlan};
use libfuzzer_sys::fuzz_target;

struct Workspace {
    dir: PathBuf,
    template: Vec<u8>,
}

fn frame(dst: MacAddress, src: MacAddress) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(60, 0x5a);
    f
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("guestnet-fuzz-region-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let geometry = Geometry {
            max_peers: 2,
            ring_slots: 8,
            mtu: 68,
            gso_buffers: 2,
        };
        let net = Network::create(
            &dir,
            "template",
            CreateOptions {
                geometry,
                ..CreateOptions::default()
            },
        )
        .expect("create the template region");
        {
            // Leave frames in both rings, so slot states and headers are not all zero.
            let mut a = net.join(JoinOptions::default()).expect("join");
            let mut b = net.join(trunk_of_vlan_10()).expect("join");
            a.send(&tagged_10(&frame(b.mac(), a.mac())));
            b.send(&frame(MacAddress::BROADCAST, b.mac()));
        }
        let template = std::fs::read(dir.join("template")).expect("read the template");
        Workspace { dir, template }
    })
}

fn trunk_of_vlan_10() -> JoinOptions {
    JoinOptions {
        vlans: VlanMembership::trunk(VlanSet::single(10), None).expect("a valid trunk"),
        ..JoinOptions::default()
    }
}

fn tagged_10(untagged: &[u8]) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00, 10]);
    f.extend_from_slice(&untagged[12..]);
    f
}

fn patched(template: &[u8], mut patches: &[u8]) -> Vec<u8> {
    let mut file = template.to_vec();
    while let [a, b, c, d, len, rest @ ..] = patches {
        let offset = u32::from_le_bytes([*a, *b, *c, *d]) as usize % file.len();
        let len = (*len as usize).min(rest.len()).min(file.len() - offset);
        file[offset..offset + len].copy_from_slice(&rest[..len]);
        patches = &rest[len..];
    }
    file
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ws = workspace();
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        patched(&ws.template, rest)
    };
    std::fs::write(ws.dir.join("fuzzed"), &bytes).expect("write the region file");
    let Ok(net) = Network::open(&ws.dir, "fuzzed") else {
        return;
    };
    let status = net.status();
    assert!(status.peers.len() <= status.max_peers as usize);
    let mtu = net.geometry().mtu as usize;
    let (Ok(mut a), Ok(mut b)) = (
        net.join(JoinOptions::default()),
        net.join(trunk_of_vlan_10()),
    ) else {
        return;
    };
    a.send(&frame(MacAddress::BROADCAST, a.mac()));
    a.send(&tagged_10(&frame(MacAddress::BROADCAST, a.mac())));
    a.send(&tagged_10(&frame(b.mac(), a.mac())));
    b.send(&tagged_10(&frame(a.mac(), b.mac())));
    // Whatever a spoilt ring held, what comes out has passed the network's checks, in
    // the form the receiver's VLANs allow.
    a.receive(64, |f| {
        assert!(ethernet::validate_frame(f, mtu).is_ok(), "{f:02x?}");
    });
    b.receive(64, |f| {
        assert!(ethernet::validate_frame(f, mtu).is_ok(), "{f:02x?}");
        assert_eq!(vlan::tci_of(f).map(|t| t.vid), Some(10), "{f:02x?}");
    });
    net.sweep();
    let _ = net.status();
});
