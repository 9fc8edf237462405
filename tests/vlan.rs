//! 802.1Q VLANs through the Rust API: who hears whom, with which tag, and what is counted.

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use guestnet::network::counters::DropReason;
use guestnet::network::ring::{self, Push, SlotMeta};
use guestnet::network::{
    CreateOptions, Error, JoinOptions, Network, Peer, Sent, VlanMembership, VlanSet, offloads,
};
use guestnet::shm::layout::Geometry;
use guestnet::wire::MacAddress;
use guestnet::wire::offload::Segmenter;
use guestnet::wire::virtio_net::{FLAG_NEEDS_CSUM, GsoType, VirtioNetHdr};

fn network(dir: &tempfile::TempDir) -> Network {
    Network::create(
        dir.path(),
        "vlans",
        CreateOptions {
            geometry: Geometry {
                gso_buffers: 8,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    )
    .expect("create network")
}

fn join(net: &Network, vlans: VlanMembership) -> Peer {
    net.join(JoinOptions {
        vlans,
        ..JoinOptions::default()
    })
    .expect("join")
}

fn access(vid: u16) -> VlanMembership {
    VlanMembership::access(vid).unwrap()
}

fn trunk(list: &str, native: Option<u16>) -> VlanMembership {
    VlanMembership::trunk(list.parse::<VlanSet>().unwrap(), native).unwrap()
}

/// An untagged frame of `len` bytes (at least 60).
fn frame(dst: MacAddress, src: MacAddress, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len.saturating_sub(14)).map(|i| i as u8));
    f.resize(len.max(60), 0);
    f
}

/// `untagged` with an 802.1Q tag whose TCI is `tci`.
fn tagged(untagged: &[u8], tci: u16) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

fn drain(peer: &mut Peer) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    peer.receive(usize::MAX, |f| got.push(f.to_vec()));
    got
}

fn tx_drops(peer: &Peer, reason: DropReason) -> u64 {
    peer.counters().tx_drops[reason.index()]
}

fn rx_drops(peer: &Peer, reason: DropReason) -> u64 {
    peer.counters().rx_drops[reason.index()]
}

#[test]
fn access_ports_of_two_vlans_do_not_hear_each_other_and_a_trunk_hears_both_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a10 = join(&net, access(10));
    let mut b10 = join(&net, access(10));
    let mut c20 = join(&net, access(20));
    let mut t = join(&net, trunk("10,20", None));

    let from_a = frame(MacAddress::BROADCAST, a10.mac(), 60);
    assert_eq!(
        a10.send(&from_a),
        Sent::Routed {
            delivered: 2,
            dropped: 0
        }
    );
    assert_eq!(
        drain(&mut b10),
        vec![from_a.clone()],
        "untagged on an access port"
    );
    assert!(
        drain(&mut c20).is_empty(),
        "VLAN 20 hears nothing of VLAN 10"
    );
    assert_eq!(
        drain(&mut t),
        vec![tagged(&from_a, 10)],
        "tagged 10 on the trunk"
    );

    let from_c = frame(MacAddress::BROADCAST, c20.mac(), 60);
    c20.send(&from_c);
    assert_eq!(drain(&mut t), vec![tagged(&from_c, 20)]);
    assert!(drain(&mut a10).is_empty() && drain(&mut b10).is_empty());

    // Unicast to a peer of another VLAN has no route, even with its published address.
    assert_eq!(
        c20.send(&frame(a10.mac(), c20.mac(), 60)),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        },
        "unknown in VLAN 20, so flooded there: to the trunk only"
    );
    assert!(drain(&mut a10).is_empty());
    assert_eq!(drain(&mut t).len(), 1);

    // The trunk speaks into each VLAN with its tag; the tag comes off on the access port.
    let to_a = frame(a10.mac(), t.mac(), 100);
    t.send(&tagged(&to_a, 10));
    assert_eq!(drain(&mut a10), vec![to_a]);
    assert!(drain(&mut c20).is_empty() && drain(&mut b10).is_empty());
}

#[test]
fn the_native_vlan_is_untagged_on_a_trunk_and_untagged_frames_without_one_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a10 = join(&net, access(10));
    let mut c20 = join(&net, access(20));
    let mut native = join(&net, trunk("20", Some(10)));
    let mut bare = join(&net, trunk("10,20", None));

    let from_a = frame(MacAddress::BROADCAST, a10.mac(), 60);
    a10.send(&from_a);
    assert_eq!(
        drain(&mut native),
        vec![from_a.clone()],
        "native VLAN: untagged"
    );
    assert_eq!(drain(&mut bare), vec![tagged(&from_a, 10)]);
    let from_c = frame(MacAddress::BROADCAST, c20.mac(), 60);
    c20.send(&from_c);
    assert_eq!(drain(&mut native), vec![tagged(&from_c, 20)]);
    assert_eq!(drain(&mut bare), vec![tagged(&from_c, 20)]);

    // Untagged from the trunk belongs to its native VLAN.
    let untagged = frame(MacAddress::BROADCAST, native.mac(), 60);
    native.send(&untagged);
    assert_eq!(drain(&mut a10), vec![untagged.clone()]);
    assert_eq!(drain(&mut bare), vec![tagged(&untagged, 10)]);
    assert!(drain(&mut c20).is_empty());

    // A trunk without a native VLAN has nowhere to put an untagged frame.
    let untagged = frame(MacAddress::BROADCAST, bare.mac(), 60);
    assert_eq!(
        bare.send(&untagged),
        Sent::Refused(DropReason::VlanFiltered)
    );
    assert_eq!(tx_drops(&bare, DropReason::VlanFiltered), 1);
    assert!(drain(&mut a10).is_empty() && drain(&mut native).is_empty());
}

#[test]
fn frames_tagged_against_the_port_are_counted_vlan_filtered_and_priority_tags_count_as_untagged() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a10 = join(&net, access(10));
    let mut b10 = join(&net, access(10));
    let mut t = join(&net, trunk("10,20", None));

    let plain = frame(MacAddress::BROADCAST, a10.mac(), 60);
    assert_eq!(
        a10.send(&tagged(&plain, 10)),
        Sent::Refused(DropReason::VlanFiltered),
        "an access port carries no tags, not even its own VLAN's"
    );
    let from_t = frame(MacAddress::BROADCAST, t.mac(), 60);
    assert_eq!(
        t.send(&tagged(&from_t, 30)),
        Sent::Refused(DropReason::VlanFiltered),
        "a trunk only carries its own VLANs"
    );
    assert_eq!(tx_drops(&a10, DropReason::VlanFiltered), 1);
    assert_eq!(tx_drops(&t, DropReason::VlanFiltered), 1);
    assert!(drain(&mut b10).is_empty() && drain(&mut t).is_empty());

    // Priority 5, VID 0: untagged as far as VLANs go; the priority survives onto the trunk.
    a10.send(&tagged(&plain, 0xa000));
    assert_eq!(drain(&mut b10), vec![plain.clone()]);
    assert_eq!(drain(&mut t), vec![tagged(&plain, 0xa00a)]);
    assert_eq!(tx_drops(&a10, DropReason::VlanFiltered), 1);
}

#[test]
fn a_network_without_vlan_options_keeps_tags_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a = join(&net, VlanMembership::default());
    let mut b = join(&net, VlanMembership::default());
    let mut t10 = join(&net, trunk("10", None));
    let plain = frame(MacAddress::BROADCAST, a.mac(), 60);
    a.send(&plain);
    assert_eq!(drain(&mut b), vec![plain.clone()], "VLAN 1, untagged");
    assert!(drain(&mut t10).is_empty(), "VLAN 1 is not VLAN 10");
    let in_10 = tagged(&plain, 10);
    a.send(&in_10);
    assert_eq!(drain(&mut b), vec![in_10.clone()], "tag kept");
    assert_eq!(drain(&mut t10), vec![in_10]);
    // A tag for VLAN 1 is the native VLAN's: it comes off.
    a.send(&tagged(&plain, 1));
    assert_eq!(drain(&mut b), vec![plain]);
}

#[test]
fn the_same_mac_may_be_published_in_two_vlans_but_not_twice_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let shared = MacAddress([2, 0xaa, 0, 0, 0, 1]);
    let with_mac = |vlans| JoinOptions {
        mac: Some(shared),
        vlans,
        ..JoinOptions::default()
    };
    let mut m10 = net.join(with_mac(access(10))).unwrap();
    let mut m20 = net.join(with_mac(access(20))).unwrap();
    match net.join(with_mac(trunk("20,30", None))) {
        Err(Error::MacInUse { mac, slot }) => assert_eq!((mac, slot), (shared, m20.index())),
        other => panic!("a second holder in VLAN 20: {other:?}"),
    }
    assert!(
        net.join(with_mac(VlanMembership::default())).is_err(),
        "a peer of every VLAN overlaps both"
    );
    let mut s10 = join(&net, access(10));
    let mut s20 = join(&net, access(20));
    s10.send(&frame(shared, s10.mac(), 60));
    s20.send(&frame(shared, s20.mac(), 61));
    assert_eq!(drain(&mut m10).len(), 1);
    assert_eq!(drain(&mut m20).len(), 1);
    assert_eq!(drain(&mut m10).len() + drain(&mut m20).len(), 0);
    // Changing a MAC obeys the same rule.
    let other = MacAddress([2, 0xaa, 0, 0, 0, 2]);
    s20.set_mac_address(other).unwrap();
    assert!(s10.set_mac_address(shared).is_err());
    assert!(drain(&mut s10).is_empty() && drain(&mut s20).is_empty());
}

#[test]
fn addresses_are_learned_per_vlan() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut t = join(&net, trunk("10,20", None));
    let mut u20 = join(&net, access(20));
    let mut a10 = join(&net, access(10));
    let mut b10 = join(&net, access(10));
    let mut c20 = join(&net, access(20));
    // One host address behind the trunk in VLAN 10, and behind u20 in VLAN 20.
    let host = MacAddress([2, 0xbb, 0, 0, 0, 1]);
    t.send(&tagged(&frame(MacAddress::BROADCAST, host, 60), 10));
    u20.send(&frame(MacAddress::BROADCAST, host, 60));
    for peer in [&mut t, &mut u20, &mut a10, &mut b10, &mut c20] {
        drain(peer);
    }
    // VLAN 10 reaches it behind the trunk, and only there.
    assert_eq!(
        a10.send(&frame(host, a10.mac(), 60)),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    assert_eq!(drain(&mut t).len(), 1);
    assert!(drain(&mut b10).is_empty() && drain(&mut u20).is_empty());
    // VLAN 20 reaches it behind u20, and only there.
    c20.send(&frame(host, c20.mac(), 60));
    assert_eq!(drain(&mut u20).len(), 1);
    assert!(drain(&mut t).is_empty());
    let learned = net.status().learned;
    let mut entries: Vec<(u16, u16)> = learned
        .iter()
        .filter(|l| l.mac == host)
        .map(|l| (l.vlan, l.slot))
        .collect();
    entries.sort();
    assert_eq!(entries, vec![(10, t.index()), (20, u20.index())]);
}

#[test]
fn a_full_size_frame_gains_its_tag_without_becoming_a_giant() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a10 = join(&net, access(10));
    let mut t = join(&net, trunk("10", None));
    let full = frame(t.mac(), a10.mac(), 1514);
    assert_eq!(
        a10.send(&full),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    let got = drain(&mut t);
    assert_eq!(got, vec![tagged(&full, 10)]);
    assert_eq!(got[0].len(), 1518);
    // And back: 1518 tagged bytes become 1514 untagged ones.
    let back = frame(a10.mac(), t.mac(), 1514);
    t.send(&tagged(&back, 10));
    assert_eq!(drain(&mut a10), vec![back]);
    assert_eq!(rx_drops(&t, DropReason::Invalid), 0);
    assert_eq!(tx_drops(&t, DropReason::Invalid), 0);
}

/// A TCP/IPv4 super-frame as a kernel with TSO hands it over.
fn super_frame(src: MacAddress, dst: MacAddress, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(src.octets(), dst.octets())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 1000, 64000)
        .ack(7)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

fn tso() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    }
}

/// Checks segments tagged for `vid`: valid IPv4 and TCP checksums, contiguous sequence
/// numbers, payloads adding up to `original`.
fn check_tagged_segments(segments: &[Vec<u8>], vid: u16, original: &[u8]) {
    let mut joined = Vec::new();
    for segment in segments {
        assert!(segment.len() <= 1518, "segment of {} bytes", segment.len());
        assert_eq!(&segment[12..16], &[0x81, 0x00, 0, vid as u8]);
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
fn an_offloaded_super_frame_crosses_from_an_access_port_to_trunks_and_still_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let with = |vlans, offloads| JoinOptions {
        vlans,
        offloads,
        ..JoinOptions::default()
    };
    let mut a10 = net.join(with(access(10), offloads::ALL)).unwrap();
    let mut offload_trunk = net.join(with(trunk("10", None), offloads::ALL)).unwrap();
    let mut plain_trunk = net.join(with(trunk("10", None), 0)).unwrap();
    let data: Vec<u8> = (0..20_000).map(|i| (i * 7 + i / 251) as u8).collect();
    let whole = super_frame(a10.mac(), MacAddress::BROADCAST, &data);
    assert_eq!(
        a10.send_offloaded(&tso(), &whole),
        Sent::Routed {
            delivered: 1 + 14,
            dropped: 0
        },
        "whole to the trunk that takes offloads, 14 segments to the other"
    );

    // Whole, tagged, with the checksum's start moved past the tag.
    let mut got = Vec::new();
    offload_trunk.receive_offloaded(8, |hdr, frame| got.push((*hdr, frame.to_vec())));
    assert_eq!(got.len(), 1);
    let (hdr, frame) = &got[0];
    assert_eq!(*frame, tagged(&whole, 10));
    assert_eq!((hdr.csum_start, hdr.hdr_len), (38, 58));
    // Finishing it in software, as a kernel would, gives correct segments.
    let mut segments = Vec::new();
    Segmenter::new()
        .segment(frame, hdr, usize::MAX, &mut |s: &[u8]| {
            segments.push(s.to_vec())
        })
        .unwrap();
    check_tagged_segments(&segments, 10, &data);

    // Finished by the sender for the trunk without offloads, each segment tagged.
    let plain = drain(&mut plain_trunk);
    check_tagged_segments(&plain, 10, &data);
}

#[test]
fn a_receiver_refuses_a_frame_written_into_its_ring_for_a_vlan_it_is_not_in() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a10 = join(&net, access(10));
    let t = join(&net, trunk("10,20", None));
    // A hostile writer skips the sender's rules and writes a tagged frame straight into
    // the access port's ring.
    let ring = net.ring_memory(a10.index()).unwrap();
    let meta = SlotMeta {
        generation: a10.control().generation(),
        ..SlotMeta::default()
    };
    let bad = tagged(&frame(a10.mac(), t.mac(), 60), 20);
    assert_eq!(ring::push(&ring, t.index(), meta, &bad), Push::Delivered);
    let good = frame(a10.mac(), t.mac(), 60);
    assert_eq!(ring::push(&ring, t.index(), meta, &good), Push::Delivered);
    assert_eq!(drain(&mut a10), vec![good]);
    assert_eq!(rx_drops(&a10, DropReason::VlanFiltered), 1);
}

#[test]
fn status_shows_each_peers_vlans_and_native_vlan() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _a = join(&net, access(10));
    let _t = join(&net, trunk("10,20,30-40", Some(5)));
    let _d = join(&net, VlanMembership::default());
    let _c = join(&net, VlanMembership::trunk_all());
    let status = net.status();
    let shown: Vec<(String, String, Option<u16>)> = status
        .peers
        .iter()
        .map(|p| (p.vlan_mode.clone(), p.vlans.clone(), p.native))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("access".to_string(), "10".to_string(), Some(10)),
            ("trunk".to_string(), "5,10,20,30-40".to_string(), Some(5)),
            ("trunk".to_string(), "all".to_string(), Some(1)),
            ("trunk".to_string(), "all".to_string(), None),
        ]
    );
}

fn guestnet(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run guestnet")
}

/// The arguments every port subcommand needs besides its VLAN options.
const PORT_COMMANDS: [&[&str]; 5] = [
    &["tap", "lab", "--ifname", "gnv0"],
    &["vhost-user", "lab", "--socket", "/nonexistent/v.sock"],
    &["stream", "lab", "--listen", "/nonexistent/s.sock"],
    &["dgram", "lab", "--listen", "/nonexistent/d.sock"],
    &["capture", "lab", "--write", "/nonexistent/c.pcap"],
];

#[test]
fn vlan_options_refuse_vid_0_4095_and_a_native_vlan_without_a_trunk_on_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let vxlan: &[&str] = &[
        "vxlan",
        "lab",
        "--vni",
        "1",
        "--local",
        "127.0.0.1",
        "--remote",
        "127.0.0.2",
    ];
    let cases: [(&[&str], &str); 6] = [
        (&["--vlan", "0"], "priority"),
        (&["--vlan", "4095"], "reserved"),
        (&["--trunk", "10,4095"], "reserved"),
        (&["--trunk", "0-5"], "priority"),
        (&["--native", "5"], "--trunk"),
        (&["--vlan", "10", "--trunk", "20"], "cannot be used with"),
    ];
    for command in PORT_COMMANDS {
        for (options, expected) in cases {
            let args: Vec<&str> = command.iter().chain(options).copied().collect();
            let output = guestnet(dir.path(), &args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(expected), "{args:?}: {stderr}");
        }
    }
    for (options, expected) in [
        (&["--vlan", "4095"], "reserved"),
        (&["--vlan", "0"], "priority"),
    ] {
        let args: Vec<&str> = vxlan.iter().chain(options).copied().collect();
        let output = guestnet(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // vxlan takes --vlan only.
    let args: Vec<&str> = vxlan.iter().chain(&["--trunk", "10"]).copied().collect();
    assert_eq!(guestnet(dir.path(), &args).status.code(), Some(2));
}

#[test]
fn status_json_and_table_show_vlans_and_native_vlan() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a = join(&net, access(10));
    let _t = join(&net, trunk("20,30-40", Some(5)));
    let _d = join(&net, VlanMembership::default());
    a.send(&frame(
        MacAddress::BROADCAST,
        MacAddress([2, 0xcc, 0, 0, 0, 1]),
        60,
    ));
    a.send(&tagged(&frame(MacAddress::BROADCAST, a.mac(), 60), 10));
    let output = guestnet(dir.path(), &["status", "vlans", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let peers = json["peers"].as_array().unwrap();
    let shown: Vec<(String, String, serde_json::Value)> = peers
        .iter()
        .map(|p| {
            (
                p["vlan_mode"].as_str().unwrap().to_string(),
                p["vlans"].as_str().unwrap().to_string(),
                p["native"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            ("access".into(), "10".into(), serde_json::json!(10)),
            ("trunk".into(), "5,20,30-40".into(), serde_json::json!(5)),
            ("trunk".into(), "all".into(), serde_json::json!(1)),
        ]
    );
    assert_eq!(peers[0]["drops"]["tx_vlan_filtered"], serde_json::json!(1));
    let learned = json["learned"].as_array().unwrap();
    assert_eq!(learned[0]["vlan"], serde_json::json!(10));

    let output = guestnet(dir.path(), &["status", "vlans"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("VLANS") && table.contains("NATIVE"),
        "{table}"
    );
    assert!(
        table.contains("5,20,30-40") && table.contains("access"),
        "{table}"
    );
    assert!(table.contains("vlan_filtered"), "{table}");
}

/// A port process, killed and reaped however the test ends.
struct PortProcess(std::process::Child);

impl Drop for PortProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `guestnet ARGS` and waits (bounded) for its first line of output.
fn start_port(dir: &std::path::Path, args: &[&str]) -> (PortProcess, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the port");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = PortProcess(child);
    let (lines, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = lines.send(line);
    });
    let line = ready
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("guestnet {args:?} did not get ready within 10 s"));
    (guard, line)
}

/// Waits up to 10 s for `condition`, failing loudly with `what`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_stream_port_with_vlan_10_is_an_access_port_of_vlan_10() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let socket = dir.path().join("qemu.sock");
    let socket_text = socket.to_str().unwrap();
    let (_port, line) = start_port(
        dir.path(),
        &["stream", "vlans", "--listen", socket_text, "--vlan", "10"],
    );
    assert!(line.starts_with("listening"), "{line}");
    let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    wait_for("the client's peer is up", || net.status().peers.len() == 1);
    let port = net.status().peers[0].clone();
    assert_eq!(
        (port.vlan_mode.as_str(), port.vlans.as_str()),
        ("access", "10")
    );
    let mut t = join(&net, trunk("10,20", None));

    // Into the client, untagged: the trunk's VLAN-10 frame loses its tag.
    let to_client = frame(MacAddress::BROADCAST, t.mac(), 60);
    t.send(&tagged(&to_client, 10));
    t.send(&tagged(&frame(MacAddress::BROADCAST, t.mac(), 61), 20));
    let mut length = [0u8; 4];
    client.read_exact(&mut length).unwrap();
    let mut got = vec![0; u32::from_be_bytes(length) as usize];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, to_client, "VLAN 10's frame, untagged, first");

    // From the client: untagged goes out in VLAN 10, a tag is refused and counted.
    let mine = MacAddress([2, 0xdd, 0, 0, 0, 1]);
    for f in [
        frame(MacAddress::BROADCAST, mine, 60),
        tagged(&frame(MacAddress::BROADCAST, mine, 60), 20),
    ] {
        client.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
        client.write_all(&f).unwrap();
    }
    wait_for("the client's frames are counted", || {
        let peer = &net.status().peers[0];
        peer.tx_packets == 1 && peer.drops.get("tx_vlan_filtered") == Some(&1)
    });
    let mut at_trunk = Vec::new();
    wait_for("the trunk receives it", || {
        t.receive(8, |f| at_trunk.push(f.to_vec()));
        !at_trunk.is_empty()
    });
    assert_eq!(
        at_trunk,
        vec![tagged(&frame(MacAddress::BROADCAST, mine, 60), 10)]
    );
}

#[test]
fn a_vxlan_port_with_vlan_10_joins_as_an_access_port() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let (_port, line) = start_port(
        dir.path(),
        &[
            "vxlan",
            "vlans",
            "--vni",
            "42",
            "--local",
            "127.0.0.1:0",
            "--remote",
            "127.0.0.1:9",
            "--vlan",
            "10",
        ],
    );
    assert!(line.starts_with("ready"), "{line}");
    let peers = net.status().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (
            peers[0].vlan_mode.as_str(),
            peers[0].vlans.as_str(),
            peers[0].native
        ),
        ("access", "10", Some(10))
    );
}

#[test]
fn a_double_tagged_frame_never_hops_from_a_native_vlan_into_the_vlan_of_its_inner_tag() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut a20 = join(&net, access(20));
    let mut c20 = join(&net, access(20));
    // Native 20: VLAN 20 leaves it untagged, so the inner tag would be all it saw.
    let mut t = join(&net, trunk("10,20", Some(20)));
    // Native 1: VLAN 20 leaves it tagged 20, the inner tag under it as sent.
    let mut u = join(&net, trunk("20", Some(1)));
    let mut b10 = join(&net, access(10));
    // A priority tag (VID 0: the sender's own VLAN 20) over a tag for VLAN 10.
    let hop = tagged(&tagged(&frame(MacAddress::BROADCAST, a20.mac(), 64), 10), 0);
    a20.send(&hop);
    assert!(drain(&mut t).is_empty(), "VLAN 10 reached from VLAN 20");
    assert!(
        drain(&mut c20).is_empty(),
        "an access port gets no tagged frame"
    );
    assert!(drain(&mut b10).is_empty());
    assert_eq!(
        drain(&mut u),
        vec![tagged(
            &hop[..12]
                .iter()
                .chain(&hop[16..])
                .copied()
                .collect::<Vec<u8>>(),
            20
        )],
        "tagged 20 on a trunk whose native VLAN it is not, the inner tag kept"
    );
    assert_eq!(tx_drops(&a20, DropReason::VlanFiltered), 2);
    assert_eq!(rx_drops(&t, DropReason::VlanFiltered), 1);
    assert_eq!(rx_drops(&c20, DropReason::VlanFiltered), 1);
    // The same from a trunk: tagged 20 over a tag for 10.
    let from_u = tagged(&tagged(&frame(MacAddress::BROADCAST, u.mac(), 64), 10), 20);
    u.send(&from_u);
    assert!(drain(&mut t).is_empty(), "VLAN 10 reached from VLAN 20");
    assert!(drain(&mut b10).is_empty());
    assert_eq!(tx_drops(&u, DropReason::VlanFiltered), 3, "a20, c20 and t");
}
