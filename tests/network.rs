//! The network core in one process: joining, delivery rules, counters, leaving.

use std::time::Duration;

use guestnet::network::counters::DropReason;
use guestnet::network::{CreateOptions, JoinOptions, Network, Sent};
use guestnet::shm::layout::Geometry;
use guestnet::wire::{MacAddress, VirtioNetHdr};

fn network(dir: &tempfile::TempDir, geometry: Geometry) -> Network {
    Network::create(
        dir.path(),
        "test",
        CreateOptions {
            geometry,
            ..CreateOptions::default()
        },
    )
    .expect("create network")
}

fn frame(dst: MacAddress, src: MacAddress, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn drain(peer: &mut guestnet::network::Peer) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    peer.receive(usize::MAX, |f| got.push(f.to_vec()));
    got
}

#[test]
fn unicast_reaches_its_owner_only_and_counters_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let mut c = net.join(JoinOptions::default()).unwrap();
    assert_ne!(a.mac(), b.mac());
    let f = frame(b.mac(), a.mac(), b"hello");
    assert_eq!(
        a.send(&f),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    assert_eq!(drain(&mut b), vec![f.clone()]);
    assert!(drain(&mut c).is_empty());
    assert!(drain(&mut a).is_empty(), "never back to the sender");
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(
        (ca.tx_packets, ca.tx_deliveries, ca.tx_bytes),
        (1, 1, f.len() as u64)
    );
    assert_eq!((cb.rx_packets, cb.rx_bytes), (1, f.len() as u64));
}

#[test]
fn broadcast_reaches_every_other_peer() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut peers: Vec<_> = (0..4)
        .map(|_| net.join(JoinOptions::default()).unwrap())
        .collect();
    let src = peers[0].mac();
    let f = frame(MacAddress::BROADCAST, src, b"all");
    assert_eq!(
        peers[0].send(&f),
        Sent::Routed {
            delivered: 3,
            dropped: 0
        }
    );
    assert!(drain(&mut peers[0]).is_empty());
    for p in &mut peers[1..] {
        assert_eq!(drain(p), vec![f.clone()]);
    }
}

#[test]
fn a_full_ring_drops_with_a_count_on_both_sides_and_keeps_old_frames() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(
        &dir,
        Geometry {
            ring_slots: 8,
            ..Geometry::default()
        },
    );
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| frame(b.mac(), a.mac(), &[i])).collect();
    assert_eq!(a.send_batch(frames.iter().map(|f| f.as_slice())), 10);
    let got = drain(&mut b);
    assert_eq!(got, frames[..8].to_vec(), "the first 8 survive, in order");
    assert_eq!(a.counters().tx_dropped(DropReason::RingFull), 2);
    assert_eq!(b.counters().rx_dropped(DropReason::RingFull), 2);
    assert_eq!(a.counters().tx_deliveries + 2, a.counters().tx_packets);
}

#[test]
fn invalid_frames_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    assert_eq!(a.send(&[0u8; 13]), Sent::Refused(DropReason::Invalid));
    let giant = frame(b.mac(), a.mac(), &[0; 1501]);
    assert_eq!(a.send(&giant), Sent::Refused(DropReason::Invalid));
    let multicast_source = frame(b.mac(), MacAddress::BROADCAST, b"x");
    assert_eq!(
        a.send(&multicast_source),
        Sent::Refused(DropReason::Invalid)
    );
    assert_eq!(a.counters().tx_dropped(DropReason::Invalid), 3);
    assert_eq!(a.counters().tx_packets, 0);
}

#[test]
fn mac_changes_are_followed_and_duplicates_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let mut c = net.join(JoinOptions::default()).unwrap();
    let new_mac: MacAddress = "02:aa:bb:cc:dd:ee".parse().unwrap();
    b.set_mac_address(new_mac).unwrap();
    assert!(matches!(
        c.set_mac_address(new_mac),
        Err(guestnet::network::Error::MacInUse { .. })
    ));
    a.send(&frame(new_mac, a.mac(), b"to new"));
    assert_eq!(drain(&mut b).len(), 1);
    assert!(
        drain(&mut c).is_empty(),
        "the new MAC is known, not flooded"
    );
}

#[test]
fn learned_addresses_are_reached_directly() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let mut c = net.join(JoinOptions::default()).unwrap();
    let vm: MacAddress = "52:54:00:12:34:56".parse().unwrap();
    // b fronts a VM whose MAC it was never told: its first frame floods and teaches us.
    b.send(&frame(MacAddress::BROADCAST, vm, b"arp"));
    drain(&mut a);
    drain(&mut c);
    a.send(&frame(vm, a.mac(), b"reply"));
    assert_eq!(drain(&mut b).len(), 1);
    assert!(drain(&mut c).is_empty());
    let status = net.status();
    assert!(
        status
            .learned
            .iter()
            .any(|l| l.mac == vm && l.slot == b.index())
    );
}

#[test]
fn a_peer_that_leaves_frees_its_slot_and_mac() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    let mut c = net.join(JoinOptions::default()).unwrap();
    let gone = b.mac();
    drop(b);
    assert_eq!(net.status().peers.len(), 2);
    a.send(&frame(gone, a.mac(), b"anyone?"));
    assert_eq!(drain(&mut c).len(), 1, "an unknown MAC floods");
    let again = net
        .join(JoinOptions {
            mac: Some(gone),
            ..JoinOptions::default()
        })
        .unwrap();
    assert_eq!(again.index(), 1, "the freed slot is reused");
}

#[test]
fn wait_sleeps_until_a_frame_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    let (b_mac, a_mac) = (b.mac(), a.mac());
    let (_, mut rx) = b.split();
    let (mut tx, _) = a.split();
    assert!(!rx.wait(Duration::from_millis(1)), "nothing to do yet");
    let waiter = std::thread::spawn(move || {
        let woke = rx.wait(Duration::from_secs(10));
        let mut n = 0;
        rx.receive(16, |_| n += 1);
        (woke, n, rx.control().counters().wakeups)
    });
    // Keep sending until the receiver is seen asleep or has woken: no sleeps as sync.
    let f = frame(b_mac, a_mac, b"wake");
    tx.send(&f);
    let (woke, n, _) = waiter.join().unwrap();
    assert!(woke);
    assert_eq!(n, 1);
}

#[test]
fn a_peer_spraying_made_up_source_addresses_cannot_push_others_out_of_the_learned_table() {
    use guestnet::network::send::LEARN_QUOTA;
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut flooder = net.join(JoinOptions::default()).unwrap();
    let mut host = net.join(JoinOptions::default()).unwrap();
    let mut other = net.join(JoinOptions::default()).unwrap();
    // More made-up addresses than the whole shared table holds (4096 entries).
    let sprayed = 5000u32;
    let frames: Vec<Vec<u8>> = (0..sprayed)
        .map(|i| {
            let b = i.to_be_bytes();
            frame(
                MacAddress::BROADCAST,
                MacAddress([0x02, 0xee, b[0], b[1], b[2], b[3]]),
                b"x",
            )
        })
        .collect();
    for chunk in frames.chunks(64) {
        flooder.send_batch(chunk.iter().map(Vec::as_slice));
        drain(&mut host);
        drain(&mut other);
    }
    let refused = flooder.counters().learn_refused;
    assert_eq!(refused, u64::from(sprayed) - LEARN_QUOTA as u64);
    // A host behind `host` speaks afterwards and is learned; unicast to it goes to `host`
    // alone instead of being flooded to everyone, the flooder included.
    let behind = MacAddress([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    host.send(&frame(MacAddress::BROADCAST, behind, b"hello"));
    drain(&mut flooder);
    drain(&mut other);
    let to_behind = frame(behind, other.mac(), b"to the learned host");
    assert_eq!(
        other.send(&to_behind),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    assert_eq!(drain(&mut host), vec![to_behind]);
    assert!(drain(&mut flooder).is_empty(), "not flooded to the flooder");
    let status = net.status();
    let flooder_status = status
        .peers
        .iter()
        .find(|p| p.slot == flooder.index())
        .unwrap();
    assert_eq!(
        flooder_status.learn_refused, refused,
        "status shows the refusals"
    );
    let learned_behind_flooder = status
        .learned
        .iter()
        .filter(|l| l.slot == flooder.index())
        .count();
    assert!(learned_behind_flooder <= LEARN_QUOTA);
}

#[test]
fn a_guest_sending_as_a_host_learned_behind_another_peer_cannot_take_its_unicast() {
    use guestnet::network::Error;
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut uplink = net.join(JoinOptions::default()).unwrap();
    let mut guest = net.join(JoinOptions::default()).unwrap();
    let mut other = net.join(JoinOptions::default()).unwrap();
    // A host behind the uplink speaks first and is learned there.
    let host = MacAddress([0x02, 0x42, 0, 0, 0, 7]);
    uplink.send(&frame(MacAddress::BROADCAST, host, b"hello"));
    drain(&mut guest);
    drain(&mut other);
    // The guest's port would publish the host's address, seen as the guest's source: refused.
    match guest.control().publish_guest_mac(host) {
        Err(Error::MacLearnedElsewhere { mac, slot }) => {
            assert_eq!((mac, slot), (host, uplink.index()));
        }
        other => panic!("published a MAC learned behind another peer: {other:?}"),
    }
    // Unicast to the host still goes behind the uplink, not to the guest.
    let to_host = frame(host, other.mac(), b"for the host");
    other.send(&to_host);
    assert_eq!(drain(&mut uplink), vec![to_host]);
    assert!(drain(&mut guest).is_empty());
    // A MAC nobody has used is published as before.
    let fresh = MacAddress([0x02, 0x42, 0, 0, 0, 8]);
    guest.control().publish_guest_mac(fresh).unwrap();
    assert_eq!(guest.mac(), fresh);
}

#[test]
fn a_mac_locked_peer_that_sends_from_another_address_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut locked = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    locked.control().set_mac_locked(true).unwrap();
    let own = frame(b.mac(), locked.mac(), b"mine");
    let spoofed = frame(b.mac(), MacAddress([0x02, 0x66, 0, 0, 0, 1]), b"not mine");
    assert!(matches!(
        locked.send(&own),
        Sent::Routed { delivered: 1, .. }
    ));
    assert_eq!(locked.send(&spoofed), Sent::Refused(DropReason::Spoofed));
    assert_eq!(drain(&mut b), vec![own]);
    assert_eq!(locked.counters().tx_dropped(DropReason::Spoofed), 1);
    let status = net.status();
    let entry = status
        .peers
        .iter()
        .find(|p| p.slot == locked.index())
        .unwrap();
    assert!(entry.lock_mac);
    assert_eq!(entry.drops.get("tx_spoofed"), Some(&1));
    // Unlocked, the same frame goes out (and its source is learned).
    locked.control().set_mac_locked(false).unwrap();
    assert!(matches!(
        locked.send(&spoofed),
        Sent::Routed { delivered: 1, .. }
    ));
}

#[test]
fn frames_left_unread_by_a_departing_peer_are_counted_and_its_counters_retired() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    // b reads one frame, then leaves with three still in its ring.
    a.send(&frame(b.mac(), a.mac(), b"read"));
    assert_eq!(drain(&mut b).len(), 1);
    for _ in 0..3 {
        a.send(&frame(b.mac(), a.mac(), b"never read"));
    }
    let b_sent = b.counters().tx_packets;
    drop(b);
    let status = net.status();
    // a's side: four delivered, no drops; the network's side: one read, three gone.
    assert_eq!(a.counters().tx_deliveries, 4);
    assert_eq!(
        status.retired.rx_packets, 1,
        "b's counters are kept after it left"
    );
    assert_eq!(status.retired.tx_packets, b_sent);
    assert_eq!(status.retired.drops.get("rx_peer_gone"), Some(&3));
    // sent = delivered + drops, network-wide: every copy a delivered is read or counted.
    let retired_rx_drops: u64 = status
        .retired
        .drops
        .iter()
        .filter(|(k, _)| k.starts_with("rx_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        a.counters().tx_deliveries,
        status.retired.rx_packets + retired_rx_drops
    );
}

#[test]
fn frames_refused_because_their_receiver_left_mid_batch_are_counted_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = Some(net.join(JoinOptions::default()).unwrap());
    let b_mac = b.as_ref().unwrap().mac();
    let frames: Vec<Vec<u8>> = (0..4u8).map(|i| frame(b_mac, a.mac(), &[i])).collect();
    // b leaves after the first frame of a's batch: a's view of the table is the one it
    // took when the batch began, so the other three are refused as peer_gone.
    a.send_batch(frames.iter().enumerate().map(|(i, f)| {
        if i == 1 {
            drop(b.take());
        }
        f.as_slice()
    }));
    let sent = a.counters();
    assert_eq!(sent.tx_deliveries, 1);
    assert_eq!(sent.tx_dropped(DropReason::PeerGone), 3);
    // The receiving side: the delivered frame was discarded unread, the three refused
    // ones counted on b's behalf; 4 = 1 + 3 on both sides.
    let retired = net.status().retired;
    assert_eq!(retired.drops.get("rx_peer_gone"), Some(&4));
}

#[test]
fn a_writer_caught_mid_copy_by_its_receiver_leaving_is_counted_on_both_sides() {
    use guestnet::network::ring::{self, Claim, Unpublished};
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    let ring_memory = net.ring_memory(b.index()).unwrap();
    let Claim::Claimed(position) = ring::claim(&ring_memory, a.index()) else {
        panic!("an empty ring has room")
    };
    drop(b);
    // a finishes its copy after b has gone: its frame is not published into the ring the
    // next occupant will get, a is told so (and counts it stalled), and the network counts
    // it on the receiving side too.
    assert_eq!(
        ring::publish(&ring_memory, position, a.index()),
        Err(Unpublished::PassedOver)
    );
    let retired = net.status().retired;
    assert_eq!(retired.drops.get("rx_stalled"), Some(&1));
}

#[test]
fn two_isolated_peers_reach_a_normal_peer_and_never_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut gateway = net.join(JoinOptions::default()).unwrap();
    let mut red = net.join(JoinOptions::default()).unwrap();
    let mut blue = net.join(JoinOptions::default()).unwrap();
    red.control().set_isolated(true).unwrap();
    blue.control().set_isolated(true).unwrap();
    // Unicast: to the gateway, yes; to the other isolated peer, no route.
    let to_gateway = frame(gateway.mac(), red.mac(), b"to the gateway");
    assert!(matches!(
        red.send(&to_gateway),
        Sent::Routed { delivered: 1, .. }
    ));
    assert_eq!(drain(&mut gateway), vec![to_gateway]);
    assert_eq!(
        red.send(&frame(blue.mac(), red.mac(), b"to blue")),
        Sent::Refused(DropReason::NoRoute)
    );
    // Broadcast from an isolated peer reaches the gateway only; from the gateway, both.
    let hello = frame(MacAddress::BROADCAST, blue.mac(), b"hello");
    blue.send(&hello);
    assert_eq!(drain(&mut gateway), vec![hello]);
    assert!(
        drain(&mut red).is_empty(),
        "isolated peers never hear each other"
    );
    let announce = frame(MacAddress::BROADCAST, gateway.mac(), b"announce");
    gateway.send(&announce);
    assert_eq!(drain(&mut red), vec![announce.clone()]);
    assert_eq!(drain(&mut blue), vec![announce]);
    let status = net.status();
    assert!(status.peers.iter().filter(|p| p.isolated).count() == 2);
    assert_eq!(red.counters().tx_dropped(DropReason::NoRoute), 1);
}

#[test]
fn frames_over_a_peers_rate_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, Geometry::default());
    let mut limited = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    // 8 kbit/s = 1000 bytes a second, a burst of 3 frames of 1000 bytes: the fourth of a
    // quick batch is over it.
    limited.control().set_rate(8_000, 3_000).unwrap();
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let mut f = frame(b.mac(), limited.mac(), b"");
            f.resize(1000, 0);
            f
        })
        .collect();
    let accepted = limited.send_batch(frames.iter().map(Vec::as_slice));
    assert_eq!(accepted, 3);
    assert_eq!(drain(&mut b).len(), 3);
    assert_eq!(limited.counters().tx_dropped(DropReason::RateLimited), 1);
    let status = net.status();
    let entry = status
        .peers
        .iter()
        .find(|p| p.slot == limited.index())
        .unwrap();
    assert_eq!((entry.rate, entry.burst), (8_000, 3_000));
    assert_eq!(entry.drops.get("tx_rate_limited"), Some(&1));
    // Lifting the limit lets everything through again.
    limited.control().set_rate(0, 0).unwrap();
    assert_eq!(limited.send_batch(frames.iter().map(Vec::as_slice)), 4);
}

/// A network of 8-slot rings, a sender that may hold back for `hold_back`, and a receiver.
fn held_back_pair(
    dir: &tempfile::TempDir,
    hold_back: Duration,
) -> (
    Network,
    guestnet::network::Sender,
    MacAddress,
    guestnet::network::Peer,
) {
    let net = network(
        dir,
        Geometry {
            ring_slots: 8,
            ..Geometry::default()
        },
    );
    let a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    let a_mac = a.mac();
    let (mut sender, _) = a.split();
    sender.set_hold_back(hold_back);
    (net, sender, a_mac, b)
}

#[test]
fn with_hold_back_a_unicast_frame_waits_for_room_and_none_of_a_stream_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_net, mut sender, a_mac, b) = held_back_pair(&dir, Duration::from_secs(10));
    let frames: Vec<Vec<u8>> = (0..64u8).map(|i| frame(b.mac(), a_mac, &[i])).collect();
    // The first eight fill the ring; the reader starts only then.
    assert_eq!(
        sender.send_batch(frames[..8].iter().map(|f| f.as_slice())),
        8
    );
    let b_control = b.control();
    let (_, mut receiver) = b.split();
    let reader = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 64 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "only {} of 64 frames arrived", got.len());
            receiver.wait(left);
            receiver.receive(1, |f| got.push(f.to_vec()));
        }
        got
    });
    for f in &frames[8..] {
        assert_eq!(
            sender.send(f),
            Sent::Routed {
                delivered: 1,
                dropped: 0
            }
        );
    }
    let got = reader.join().expect("the reader");
    let counters = b_control.counters();
    assert_eq!(got, frames, "every frame, in order");
    assert_eq!(
        sender.control().counters().tx_dropped(DropReason::RingFull),
        0
    );
    assert_eq!(counters.rx_dropped(DropReason::RingFull), 0);
    assert!(
        sender.control().counters().held_back >= 1,
        "the ninth frame found the ring full and waited: {:?}",
        sender.control().counters()
    );
}

#[test]
fn a_receiver_that_stays_full_is_marked_congested_and_never_waited_for_again_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let hold_back = Duration::from_secs(2);
    let (_net, mut sender, a_mac, mut b) = held_back_pair(&dir, hold_back);
    let to_b = frame(b.mac(), a_mac, b"b");
    for _ in 0..8 {
        sender.send(&to_b);
    }
    // Full, and nobody reads: the frame waits the whole hold-back, then is dropped.
    let started = std::time::Instant::now();
    assert_eq!(
        sender.send(&to_b),
        Sent::Routed {
            delivered: 0,
            dropped: 1
        }
    );
    assert!(started.elapsed() >= hold_back, "it waited for room");
    // Congested now: the next ones are dropped at once (well within one hold-back).
    let started = std::time::Instant::now();
    for _ in 0..5 {
        sender.send(&to_b);
    }
    assert!(
        started.elapsed() < hold_back,
        "a congested receiver is not waited for"
    );
    // Broadcast never waits, whatever the receiver's state.
    let started = std::time::Instant::now();
    sender.send(&frame(MacAddress::BROADCAST, a_mac, b"all"));
    assert!(started.elapsed() < hold_back, "broadcast never waits");
    assert_eq!(
        sender.control().counters().tx_dropped(DropReason::RingFull),
        7
    );
    assert_eq!(b.counters().rx_dropped(DropReason::RingFull), 7);
    assert_eq!(sender.control().counters().held_back, 0);
    // Drained, it is waited for again: a reader that drains after the ring filled lets
    // the next frame in.
    assert_eq!(drain(&mut b).len(), 8);
    for _ in 0..8 {
        sender.send(&to_b);
    }
    let (_, mut receiver) = b.split();
    let reader = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got < 9 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "only {got} of 9 frames arrived");
            receiver.wait(left);
            receiver.receive(1, |_| got += 1);
        }
    });
    assert_eq!(
        sender.send(&to_b),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    reader.join().expect("the reader");
    assert_eq!(
        sender.control().counters().tx_dropped(DropReason::RingFull),
        7
    );
}

/// A port that reads the receiver's ring itself (as a vhost-user port reads the rings of
/// the other VMs it serves) and takes no copy past it.
struct ReadsItself(u16);

impl guestnet::network::send::Shortcut for ReadsItself {
    fn offer(&mut self, _: (u16, u32), _: (&VirtioNetHdr, u32), _: &[u8]) -> bool {
        false
    }

    fn queued(&mut self, _: u16) {}

    fn serves(&mut self, index: u16) -> bool {
        index == self.0
    }
}

#[test]
fn a_full_ring_the_port_reads_itself_is_never_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let hold_back = Duration::from_secs(5);
    let (_net, mut sender, a_mac, b) = held_back_pair(&dir, hold_back);
    let to_b = frame(b.mac(), a_mac, b"b");
    for _ in 0..8 {
        sender.send(&to_b);
    }
    // Full, and its reader is the sending port's own thread: waiting would wait for
    // itself, so the frame is dropped at once, and counted.
    let started = std::time::Instant::now();
    let plain = VirtioNetHdr::default();
    let sent = sender.send_batch_via(
        std::iter::once((plain, to_b.as_slice())),
        guestnet::network::monotonic_ns(),
        &mut ReadsItself(b.index()),
    );
    assert_eq!(sent, 1, "routed");
    assert!(
        started.elapsed() < hold_back,
        "a ring the port reads itself is not waited for"
    );
    assert_eq!(
        sender.control().counters().tx_dropped(DropReason::RingFull),
        1
    );
    assert_eq!(sender.control().counters().held_back, 0);
}
