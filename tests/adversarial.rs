//! What a buggy or hostile peer can do to a region, and what the others see.
//!
//! Every process that can open a region can write any byte of it. The design's promise
//! (no loss or crash from a corrupted region) is that such writes never crash another reader: they cost counted drops,
//! a reset slot or a refused region, and the network goes on. Each test here plays one bad
//! peer by writing the region file directly, at offsets computed from the public
//! [`Layout`], then checks that the honest peers still talk and that the counters say what
//! happened.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use guestnet::network::Sent;
use guestnet::network::counters::{DropReason, PeerCounters};
use guestnet::network::{CreateOptions, Error, JoinOptions, Network, Peer, monotonic_ns};
use guestnet::shm::layout::{self, FDB_ENTRIES, Geometry, Layout, LayoutError};
use guestnet::wire::MacAddress;

const NAME: &str = "adversarial";

/// Byte offsets inside the structures of `shm::layout` (all `repr(C)`), as a bad peer
/// would compute them.
mod offset {
    /// `Header::version`.
    pub const HEADER_VERSION: u64 = 8;
    /// `Header::table_version`.
    pub const HEADER_TABLE_VERSION: u64 = 64;
    /// `PeerEntry::generation`.
    pub const PEER_GENERATION: u64 = 4;
    /// `PeerEntry::mac`.
    pub const PEER_MAC: u64 = 8;
    /// `SlotHeader::state`.
    pub const SLOT_STATE: u64 = 0;
    /// `SlotHeader::len`.
    pub const SLOT_LEN: u64 = 8;
    /// `SlotHeader::generation`.
    pub const SLOT_GENERATION: u64 = 12;
    /// `RingControl::reserve`.
    pub const RING_RESERVE: u64 = 0;
    /// `RingControl::consumed`.
    pub const RING_CONSUMED: u64 = 64;
    /// `FdbEntry::key`.
    pub const FDB_KEY: u64 = 0;
    /// `FdbEntry::seen_ms`.
    pub const FDB_SEEN: u64 = 8;
}

/// A network in a private directory, and the bad peer's own handle on its file.
struct Fixture {
    dir: tempfile::TempDir,
    net: Network,
    layout: Layout,
    file: File,
}

impl Fixture {
    fn new(ring_slots: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let geometry = Geometry {
            max_peers: 8,
            ring_slots,
            mtu: 1500,
            ..Geometry::default()
        };
        let net = Network::create(
            dir.path(),
            NAME,
            CreateOptions {
                geometry,
                ..CreateOptions::default()
            },
        )
        .expect("create network");
        let layout = Layout::new(geometry).expect("layout");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(NAME))
            .expect("open region file");
        Fixture {
            dir,
            net,
            layout,
            file,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(NAME)
    }

    fn join(&self) -> Peer {
        self.net.join(JoinOptions::default()).expect("join")
    }

    fn write_u64(&self, at: usize, field: u64, value: u64) {
        self.file
            .write_all_at(&value.to_le_bytes(), at as u64 + field)
            .expect("scribble");
    }

    fn write_u32(&self, at: usize, field: u64, value: u32) {
        self.file
            .write_all_at(&value.to_le_bytes(), at as u64 + field)
            .expect("scribble");
    }

    fn read_u64(&self, at: usize, field: u64) -> u64 {
        let mut bytes = [0; 8];
        self.file
            .read_exact_at(&mut bytes, at as u64 + field)
            .expect("read region");
        u64::from_le_bytes(bytes)
    }

    fn read_u32(&self, at: usize, field: u64) -> u32 {
        let mut bytes = [0; 4];
        self.file
            .read_exact_at(&mut bytes, at as u64 + field)
            .expect("read region");
        u32::from_le_bytes(bytes)
    }
}

fn frame(dst: MacAddress, src: MacAddress, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(64, 0xa5);
    f
}

fn drain(peer: &mut Peer) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    peer.receive(usize::MAX, |f| got.push(f.to_vec()));
    got
}

/// Sends frames `seqs` from `a` to `b`, a few at a time so the ring never fills, and
/// checks that `b` gets exactly them, whole and in order.
fn assert_traffic_flows(a: &mut Peer, b: &mut Peer, seqs: std::ops::Range<u32>) {
    let frames: Vec<Vec<u8>> = seqs.map(|s| frame(b.mac(), a.mac(), s)).collect();
    let mut got = Vec::new();
    for chunk in frames.chunks(3) {
        for f in chunk {
            assert_eq!(
                a.send(f),
                Sent::Routed {
                    delivered: 1,
                    dropped: 0
                }
            );
        }
        got.extend(drain(b));
    }
    assert_eq!(got, frames, "honest frames arrive whole and in order");
}

/// A few deterministic 64-bit garbage words (xorshift), so a failure replays.
fn garbage(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

#[test]
fn a_peer_that_scribbles_slot_states_costs_counted_corrupt_drops_then_traffic_resumes() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    // Junk that fits no lap of its slot: the position bits name another slot.
    for (slot, word) in (0..8u64).zip(garbage(0x5eed)) {
        let wrong_slot = (slot + 1 + word % 7) % 8;
        let junk = (word & !(7 << 16)) | wrong_slot << 16;
        fx.write_u64(
            fx.layout.slot_offset(b.index() as usize, slot as usize),
            offset::SLOT_STATE,
            junk,
        );
    }
    // The sender cannot find a claimable slot in a ring of junk: a counted drop, no hang.
    let refused = frame(b.mac(), a.mac(), 0);
    assert_eq!(
        a.send(&refused),
        Sent::Routed {
            delivered: 0,
            dropped: 1
        }
    );
    let ring_drops = |c: PeerCounters, side: fn(&PeerCounters, DropReason) -> u64| {
        side(&c, DropReason::RingFull) + side(&c, DropReason::RingBusy)
    };
    assert_eq!(ring_drops(a.counters(), PeerCounters::tx_dropped), 1);
    assert_eq!(ring_drops(b.counters(), PeerCounters::rx_dropped), 1);
    // The receiver resets each junk slot, counting it, and hands nothing up.
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.counters().rx_dropped(DropReason::Corrupt), 8);
    assert_eq!(b.counters().rx_packets, 0);
    // After the reset the ring serves every lap again.
    assert_traffic_flows(&mut a, &mut b, 1..20);
    assert_eq!(b.counters().rx_dropped(DropReason::Corrupt), 8);
}

#[test]
fn a_peer_that_scribbles_the_reserve_hint_loses_no_frame() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    // The hint now names a position a million laps ahead of every slot.
    fx.write_u64(
        fx.layout.ring_offset(b.index() as usize),
        offset::RING_RESERVE,
        8_000_003,
    );
    let frames: Vec<Vec<u8>> = (0..8).map(|s| frame(b.mac(), a.mac(), s)).collect();
    for f in &frames {
        assert_eq!(
            a.send(f),
            Sent::Routed {
                delivered: 1,
                dropped: 0
            },
            "senders bring the hint back to the slots instead of giving up"
        );
    }
    assert_eq!(drain(&mut b), frames, "all of them, in order");
    assert_eq!(b.counters().rx_dropped_total(), 0);
    assert_traffic_flows(&mut a, &mut b, 10..30);
}

#[test]
fn a_peer_that_writes_a_huge_length_into_a_slot_is_counted_invalid_and_the_next_frames_arrive() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let ring = b.index() as usize;
    let slots = fx.layout.geometry.ring_slots as u64;
    // A joining peer starts its ring at some lap; its cursor says where.
    let tail = fx.read_u64(fx.layout.ring_offset(ring), offset::RING_CONSUMED);
    let slot_of = |position: u64| fx.layout.slot_offset(ring, (position % slots) as usize);
    // 1. A real frame whose length is rewritten after publication.
    a.send(&frame(b.mac(), a.mac(), 0));
    fx.write_u32(slot_of(tail), offset::SLOT_LEN, u32::MAX);
    // 2. A slot forged from nothing: READY for the next position, the receiver's own
    //    generation, and a length just past the slot.
    let generation = fx.read_u32(fx.layout.peer_offset(ring), offset::PEER_GENERATION);
    let forged = slot_of(tail + 1);
    let ready = guestnet::network::ring::SlotState {
        position: tail + 1,
        writer: a.index(),
        tag: guestnet::network::ring::Tag::Ready,
    }
    .encode();
    fx.write_u64(forged, offset::SLOT_STATE, ready);
    fx.write_u32(forged, offset::SLOT_GENERATION, generation);
    fx.write_u32(forged, offset::SLOT_LEN, fx.layout.max_frame as u32 + 1);
    // The reserve hint, past the forgery.
    fx.write_u64(fx.layout.ring_offset(ring), offset::RING_RESERVE, tail + 2);

    assert!(
        drain(&mut b).is_empty(),
        "no frame of bogus length is handed up"
    );
    assert_eq!(b.counters().rx_dropped(DropReason::Invalid), 2);
    assert_eq!(b.counters().rx_packets, 0);
    assert_traffic_flows(&mut a, &mut b, 1..12);
    assert_eq!(b.counters().rx_dropped(DropReason::Invalid), 2);
}

#[test]
fn a_writer_that_dies_with_the_table_seqlock_odd_leaves_senders_routing() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let mut c = fx.join();
    assert_traffic_flows(&mut a, &mut b, 0..2);
    // A control operation dies halfway: the version is odd, and b's entry already holds the
    // new MAC it was writing.
    let version = fx.read_u64(0, offset::HEADER_TABLE_VERSION);
    assert_eq!(version % 2, 0);
    fx.write_u64(0, offset::HEADER_TABLE_VERSION, version + 1);
    let new_mac: MacAddress = "02:00:5e:ee:00:01".parse().expect("mac");
    fx.write_u64(
        fx.layout.peer_offset(b.index() as usize),
        offset::PEER_MAC,
        new_mac.to_u64(),
    );
    // Senders do not wait for the version to turn even: they use what they read.
    let to_new = frame(new_mac, a.mac(), 7);
    assert_eq!(
        a.send(&to_new),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    assert_eq!(drain(&mut b), vec![to_new]);
    assert!(
        drain(&mut c).is_empty(),
        "the new MAC is routed, not flooded"
    );
    // The next control operation repairs the seqlock.
    let d = fx.join();
    assert_eq!(fx.read_u64(0, offset::HEADER_TABLE_VERSION) % 2, 0);
    assert_traffic_flows(&mut c, &mut b, 10..13);
    drop(d);
}

#[test]
fn a_region_with_garbage_in_the_learned_table_still_routes_and_reports() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let mut c = fx.join();
    let vm: MacAddress = "52:54:00:de:ad:01".parse().expect("mac");
    let now_ms = monotonic_ns() / 1_000_000;
    // Even entries: `vm` learned, freshly, behind a peer slot that does not exist. Odd ones:
    // junk keys with junk times (some in the future, so they never age out).
    let behind_nobody = vm.to_u64() | (999 + 1) << 48;
    let mut junk = garbage(0xfdb);
    for index in 0..FDB_ENTRIES {
        let at = fx.layout.fdb_entry_offset(index);
        if index % 2 == 0 {
            fx.write_u64(at, offset::FDB_KEY, behind_nobody);
            fx.write_u64(at, offset::FDB_SEEN, now_ms);
        } else {
            fx.write_u64(at, offset::FDB_KEY, junk.next().unwrap_or(0));
            fx.write_u64(at, offset::FDB_SEEN, junk.next().unwrap_or(0));
        }
    }
    let status = fx.net.status();
    assert_eq!(status.peers.len(), 3);
    // Published addresses win over anything learned.
    assert_traffic_flows(&mut a, &mut b, 0..3);
    assert!(drain(&mut c).is_empty());
    // An address learned behind a slot nobody holds is unknown: flooded, not lost.
    assert_eq!(
        a.send(&frame(vm, a.mac(), 99)),
        Sent::Routed {
            delivered: 2,
            dropped: 0
        }
    );
    assert_eq!(drain(&mut b).len(), 1);
    assert_eq!(drain(&mut c).len(), 1);
    // Learning goes on where it finds room, and lookups that find it route directly.
    let guest: MacAddress = "52:54:00:00:00:42".parse().expect("mac");
    b.send(&frame(MacAddress::BROADCAST, guest, 1));
    drain(&mut a);
    drain(&mut c);
    let routed = a.send(&frame(guest, a.mac(), 2));
    assert!(matches!(
        routed,
        Sent::Routed {
            delivered: 1 | 2,
            ..
        }
    ));
    assert_eq!(drain(&mut b).len(), 1);
}

#[test]
fn a_receiver_whose_frame_handler_panics_mid_batch_leaves_its_successor_a_clean_ring() {
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let (a_mac, b_mac, b_slot) = (a.mac(), b.mac(), b.index());
    for seq in 0..8 {
        a.send(&frame(b_mac, a_mac, seq));
    }
    // The port's handler fails on the third frame: `receive` unwinds before it can store
    // how far it got, and five frames stay unread.
    let mut handled = 0;
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.receive(usize::MAX, |_| {
            handled += 1;
            assert!(handled < 3, "the port's frame handler fails");
        })
    }));
    assert!(crashed.is_err());
    drop(b);
    // The next peer to join takes the same slot and its ring: it must get every frame sent
    // to it, in order, and nothing its predecessor left behind.
    let mut successor = fx.join();
    assert_eq!(successor.index(), b_slot);
    assert!(
        drain(&mut successor).is_empty(),
        "a predecessor's frame leaked"
    );
    assert_traffic_flows(&mut a, &mut successor, 100..140);
    assert_eq!(successor.counters().rx_dropped_total(), 0);
}

#[test]
fn a_truncated_or_resized_region_is_refused() {
    let fx = Fixture::new(8);
    let size = fx.layout.total_size as u64;
    let refused = |what: &str| match Network::open(fx.dir.path(), NAME) {
        Err(Error::Layout {
            source: LayoutError::Size { found, expected },
            ..
        }) => (found, expected),
        other => panic!("{what}: expected a size error, got {other:?}"),
    };
    fx.file.set_len(size / 2).expect("truncate");
    assert_eq!(refused("half a region"), (size / 2, size));
    fx.file.set_len(size + 4096).expect("grow");
    assert_eq!(refused("a grown region"), (size + 4096, size));
    fx.file.set_len(100).expect("truncate");
    assert_eq!(
        refused("less than a header"),
        (100, layout::HEADER_SIZE as u64)
    );
    fx.file.set_len(0).expect("truncate");
    assert_eq!(refused("an empty file").0, 0);
    // And a region file that never was one.
    std::fs::write(fx.path(), vec![0x42; size as usize]).expect("write");
    assert!(matches!(
        Network::open(fx.dir.path(), NAME),
        Err(Error::Layout {
            source: LayoutError::Magic(_),
            ..
        })
    ));
}

#[test]
fn a_region_of_another_version_is_refused() {
    let fx = Fixture::new(8);
    fx.write_u32(0, offset::HEADER_VERSION, layout::VERSION + 1);
    let error = Network::open(fx.dir.path(), NAME).expect_err("another version must be refused");
    assert!(
        matches!(
            &error,
            Error::Layout {
                source: LayoutError::Version { found },
                ..
            } if *found == layout::VERSION + 1
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("version {}", layout::VERSION)),
        "{error}"
    );
    // The refusal is about the version alone: put back, the region opens again.
    fx.write_u32(0, offset::HEADER_VERSION, layout::VERSION);
    assert!(Network::open(fx.dir.path(), NAME).is_ok());
}

/// A READY or WRITING state forged at the receiver's next position, with what it claims.
fn forge_slot(fx: &Fixture, ring: usize, tail: u64, state: guestnet::network::ring::SlotState) {
    let slots = fx.layout.geometry.ring_slots as u64;
    let at = fx.layout.slot_offset(ring, (tail % slots) as usize);
    fx.write_u64(at, offset::SLOT_STATE, state.encode());
    fx.write_u64(
        fx.layout.ring_offset(ring),
        offset::RING_RESERVE,
        tail.wrapping_add(1),
    );
}

#[test]
fn a_writing_state_naming_a_writer_that_does_not_exist_is_skipped_as_abandoned_at_once() {
    use guestnet::network::ring::{SlotState, Tag};
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let ring = b.index() as usize;
    let tail = fx.read_u64(fx.layout.ring_offset(ring), offset::RING_CONSUMED);
    // Writer 7 is a free slot of this 8-peer network; writer 1000 is outside the table.
    for (i, writer) in [7u16, 1000].into_iter().enumerate() {
        let position = tail + i as u64;
        forge_slot(
            &fx,
            ring,
            position,
            SlotState {
                position,
                writer,
                tag: Tag::Writing,
            },
        );
    }
    // No waiting: nobody can ever finish these, so the receiver does not wait for them.
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.counters().rx_dropped(DropReason::Abandoned), 2);
    assert_traffic_flows(&mut a, &mut b, 0..10);
}

/// A stopped writer: a live member (it holds its slot lock) that has claimed the next slot
/// of `receiver`'s ring and does nothing more, as a process stopped with SIGSTOP mid-copy
/// would. Returns it and the position it holds.
fn stopped_writer(fx: &Fixture, receiver: &Peer) -> (Peer, u64) {
    use guestnet::network::ring::{self, Claim};
    let writer = fx.join();
    let ring_view = fx.net.ring_memory(receiver.index()).expect("a ring");
    let Claim::Claimed(position) = ring::claim(&ring_view, writer.index()) else {
        panic!("an empty ring has room")
    };
    (writer, position)
}

#[test]
fn a_writer_that_stops_halfway_through_a_frame_is_passed_over_and_later_frames_flow() {
    use guestnet::network::ring::{self, Unpublished};
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let (stopped, position) = stopped_writer(&fx, &b);
    let ring_view = fx.net.ring_memory(b.index()).expect("a ring");
    // Nothing behind it yet: B waits for the writer at its cursor, a while.
    assert!(drain(&mut b).is_empty());
    // B's wait ends by itself once its patience with the writer runs out (far sooner than
    // the 5 s asked for); then B passes over it, counted, and frames flow.
    let started = std::time::Instant::now();
    assert!(
        b.wait(std::time::Duration::from_secs(5)),
        "work is reported"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} for a stopped writer",
        started.elapsed()
    );
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.counters().rx_dropped(DropReason::Stalled), 1);
    // The writer wakes up: its frame is not delivered, and it is told so.
    assert_eq!(
        ring::publish(&ring_view, position, stopped.index()),
        Err(Unpublished::PassedOver)
    );
    // Its slot comes back: many laps of traffic flow through the 8-slot ring.
    assert_traffic_flows(&mut a, &mut b, 0..40);
    assert_eq!(b.counters().rx_dropped(DropReason::Stalled), 1);
}

#[test]
fn frames_behind_a_writer_stopped_mid_copy_flow_and_its_own_arrives_late_in_order() {
    use guestnet::network::ring::{self, SlotMemory, SlotMeta};
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    // It stops (descheduled, or SIGSTOP) while A's frames are published behind it.
    let (mut late, position) = stopped_writer(&fx, &b);
    let ring_view = fx.net.ring_memory(b.index()).expect("a ring");
    let frames: Vec<Vec<u8>> = (0..3).map(|s| frame(b.mac(), a.mac(), s)).collect();
    for f in &frames {
        assert!(matches!(a.send(f), Sent::Routed { delivered: 1, .. }));
    }
    // B gives a writer holding its cursor a few microseconds (it may just be copying on
    // another core), then reads on past it: its wait ends with work, and the frames behind
    // come whole and in order, with nothing dropped.
    let mut got = drain(&mut b);
    if got.is_empty() {
        let started = std::time::Instant::now();
        assert!(
            b.wait(std::time::Duration::from_secs(5)),
            "work is reported"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
        got = drain(&mut b);
    }
    assert_eq!(got, frames, "the frames behind the stopped writer");
    assert_eq!(b.counters().rx_dropped(DropReason::Stalled), 0);
    // The writer goes on: it finishes and publishes its frame, then sends another through
    // the network. Both arrive, its own order kept, and nothing counts as dropped.
    let own = frame(b.mac(), late.mac(), 100);
    let generation = fx.read_u32(
        fx.layout.peer_offset(b.index() as usize),
        offset::PEER_GENERATION,
    );
    let meta = SlotMeta {
        len: own.len() as u32,
        generation,
        ..SlotMeta::default()
    };
    ring_view.write_frame(position % ring_view.slot_count(), meta, &own);
    assert_eq!(ring::publish(&ring_view, position, late.index()), Ok(()));
    // The late frame is work for a receiver about to sleep (a sleeping one is woken by the
    // sender's batch end, as for any frame), though nothing waits at its cursor.
    let started = std::time::Instant::now();
    assert!(b.wait(std::time::Duration::from_secs(5)));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "slept {:?} with a late frame waiting",
        started.elapsed()
    );
    let next = frame(b.mac(), late.mac(), 101);
    assert!(matches!(
        late.send(&next),
        Sent::Routed { delivered: 1, .. }
    ));
    assert_eq!(drain(&mut b), vec![own, next]);
    for reason in [
        DropReason::Stalled,
        DropReason::Abandoned,
        DropReason::Corrupt,
    ] {
        assert_eq!(b.counters().rx_dropped(reason), 0, "{reason:?}");
    }
    // The late slot is freed on a later lap: many laps of traffic flow through the ring.
    assert_traffic_flows(&mut a, &mut b, 3..40);
}

#[test]
fn a_forged_slot_with_offload_words_never_hands_a_giant_or_stale_bytes_to_a_plain_receiver() {
    use guestnet::network::ring::{SlotState, Tag};
    use guestnet::wire::virtio_net::{GsoType, VirtioNetHdr};
    let fx = Fixture::new(8);
    let mut a = fx.join();
    let mut b = fx.join();
    let ring = b.index() as usize;
    let slots = fx.layout.geometry.ring_slots as u64;
    let tail = fx.read_u64(fx.layout.ring_offset(ring), offset::RING_CONSUMED);
    let generation = fx.read_u32(fx.layout.peer_offset(ring), offset::PEER_GENERATION);
    // TSO words with gso_size 65535 and a length of 3000 (past the slot's 1518 bytes), then
    // TSO with gso_size 1, which would cut one frame into a thousand.
    for (i, (gso_size, len)) in [(65535u16, 3000u32), (1, 1400)].into_iter().enumerate() {
        let position = tail + i as u64;
        let at = fx.layout.slot_offset(ring, (position % slots) as usize);
        let hdr = VirtioNetHdr {
            gso_type: GsoType::TcpV4,
            gso_size,
            hdr_len: 54,
            ..VirtioNetHdr::default()
        };
        let bytes = hdr.to_bytes();
        for (w, chunk) in bytes.chunks_exact(4).enumerate() {
            fx.write_u32(
                at,
                16 + 4 * w as u64,
                u32::from_le_bytes(chunk.try_into().expect("4 bytes")),
            );
        }
        fx.write_u32(at, offset::SLOT_LEN, len);
        fx.write_u32(at, offset::SLOT_GENERATION, generation);
        forge_slot(
            &fx,
            ring,
            position,
            SlotState {
                position,
                writer: a.index(),
                tag: Tag::Ready,
            },
        );
    }
    let mut sizes = Vec::new();
    b.receive(usize::MAX, |f| sizes.push(f.len()));
    assert!(sizes.is_empty(), "handed frames of {sizes:?} bytes");
    assert_eq!(b.counters().rx_dropped(DropReason::Invalid), 2);
    assert_traffic_flows(&mut a, &mut b, 0..10);
}
