//! A dead peer never stalls the others (DESIGN §4, invariant 4).
//!
//! A peer killed with SIGKILL gets no chance to leave: its slot stays in the table, its MAC
//! keeps attracting frames into a ring nobody reads, and it may die holding a slot of
//! someone else's ring half written. These tests kill `guestnet` processes in the middle
//! of traffic and check that the survivors reclaim the slot on their own within a second,
//! that its MAC stops attracting traffic, and that the receiver it was writing to carries
//! on.

mod traffic_support;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guestnet::network::Sent;
use guestnet::network::counters::DropReason;
use guestnet::network::ring::{self, Claim, SlotMemory, SlotMeta};
use guestnet::network::{JoinOptions, Peer};
use guestnet::shm::Mapping;
use guestnet::shm::layout::{self, Header, Layout, RingControl, SlotHeader};
use guestnet::testframe::{self, Verdict};
use guestnet::wire::MacAddress;
use traffic_support::{Child, network, start_sink, wait_until};

/// The design's target for reclaiming a dead peer's slot.
const RECLAIM: Duration = Duration::from_secs(1);
/// Longest time the survivors may go without a frame from each other.
const PROGRESS: Duration = Duration::from_secs(3);

/// What one surviving peer received: frames per sender identity, and every frame that
/// arrived damaged, twice or out of order.
#[derive(Default)]
struct Tally {
    by_sender: Mutex<HashMap<u32, u64>>,
    problems: AtomicU64,
}

impl Tally {
    fn count(&self, sender: u32) -> u64 {
        let by_sender = self.by_sender.lock().unwrap();
        by_sender.get(&sender).copied().unwrap_or(0)
    }
}

/// A library peer on its own thread that sends test frames to `to` and checks the frames
/// it receives, until dropped.
struct Exchanger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tally: Arc<Tally>,
    id: u32,
}

impl Exchanger {
    fn start(mut peer: Peer, to: MacAddress) -> Exchanger {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let id = u32::from(peer.index());
        let thread = {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            std::thread::spawn(move || {
                let src = peer.mac();
                let mut frame = Vec::new();
                let mut last: HashMap<u32, u64> = HashMap::new();
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let len = 60 + (sequence % 1400) as usize;
                    testframe::encode(&mut frame, to, src, id, sequence, len);
                    peer.send(&frame);
                    sequence += 1;
                    let mut received: HashMap<u32, u64> = HashMap::new();
                    peer.receive(256, |f| match testframe::verify(f) {
                        Verdict::Valid(t) => {
                            let in_order = last.get(&t.sender).is_none_or(|&l| t.sequence > l);
                            if !in_order {
                                tally.problems.fetch_add(1, Ordering::Relaxed);
                            }
                            last.insert(t.sender, t.sequence);
                            *received.entry(t.sender).or_default() += 1;
                        }
                        Verdict::Foreign | Verdict::Corrupt(_) => {
                            tally.problems.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    let mut by_sender = tally.by_sender.lock().unwrap();
                    for (sender, n) in received {
                        *by_sender.entry(sender).or_default() += n;
                    }
                    drop(by_sender);
                    // Sleeps only when nothing waits: the receiver side of a real port.
                    peer.wait(Duration::from_millis(1));
                }
            })
        };
        Exchanger {
            stop,
            thread: Some(thread),
            tally,
            id,
        }
    }
}

impl Drop for Exchanger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A small deterministic generator (xorshift64*) for the kill moments; the seed is
/// printed so a failure can be related to its schedule.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn killing_senders_at_random_moments_never_stalls_the_survivors() {
    const ITERATIONS: u32 = 10;
    const PROBE_ID: u32 = 999;
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), "live", 64);
    let a = net.join(JoinOptions::default()).unwrap();
    let b = net.join(JoinOptions::default()).unwrap();
    let mut probe = net.join(JoinOptions::default()).unwrap();
    let (a_mac, b_mac, b_slot) = (a.mac(), b.mac(), b.index());
    let a = Exchanger::start(a, b_mac);
    let b = Exchanger::start(b, a_mac);
    let seed = guestnet::network::unix_ns() | 1;
    eprintln!("kill schedule seed {seed:#x}");
    let mut random = Random(seed);
    let mut slowest = Duration::ZERO;
    for iteration in 0..ITERATIONS {
        let id = 100 + iteration;
        let victim_mac = MacAddress([0x02, 0xcc, 0, 0, 0, iteration as u8]);
        let mut victim = Child::spawn(
            &format!("pktgen {id}"),
            dir.path(),
            &[
                "pktgen",
                "live",
                "--dst",
                &b_mac.to_string(),
                "--count",
                "0",
                "--size",
                "60-1514",
                "--id",
                &id.to_string(),
                "--mac",
                &victim_mac.to_string(),
            ],
        );
        // Kill it after a random amount of its traffic has reached B: progress, not time,
        // decides the moment, so the kill lands anywhere in its send loop.
        let frames = 1 + random.next() % 2000;
        wait_until(
            &format!("{frames} frames of {id} reach B"),
            PROGRESS,
            || b.tally.count(id) >= frames,
        );
        let victim_slot = net
            .status()
            .peers
            .iter()
            .find(|p| p.mac == victim_mac)
            .map(|p| p.slot)
            .expect("the sender is in the table");
        let from_a = b.tally.count(a.id);
        let from_b = a.tally.count(b.id);
        let killed = Instant::now();
        victim.kill();
        // Read-only polling: nothing here sweeps, so the survivors must reclaim it.
        wait_until("the survivors reclaim the dead slot", RECLAIM, || {
            net.counters(victim_slot).is_none()
        });
        slowest = slowest.max(killed.elapsed());
        // Its MAC no longer attracts traffic: a frame to it floods to the two survivors
        // instead of filling the dead ring. B's ring is being filled at full speed, so a
        // copy may be refused as ring_full (counted); probe again until both copies land.
        let probe_mac = probe.mac();
        let before = b.tally.count(PROBE_ID);
        let deadline = Instant::now() + PROGRESS;
        let mut sequence = u64::from(iteration) * 1_000;
        loop {
            let mut frame = Vec::new();
            testframe::encode(&mut frame, victim_mac, probe_mac, PROBE_ID, sequence, 60);
            sequence += 1;
            let Sent::Routed { delivered, dropped } = probe.send(&frame) else {
                panic!("iteration {iteration}: the probe was refused");
            };
            assert_eq!(
                delivered + dropped,
                2,
                "iteration {iteration}: the dead MAC still attracts traffic"
            );
            if delivered == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {iteration}: probes keep dropping"
            );
        }
        wait_until("the flooded frame reaches B", PROGRESS, || {
            b.tally.count(PROBE_ID) > before
        });
        wait_until("A's frames keep reaching B", PROGRESS, || {
            b.tally.count(a.id) >= from_a + 10
        });
        wait_until("B's frames keep reaching A", PROGRESS, || {
            a.tally.count(b.id) >= from_b + 10
        });
    }
    let abandoned = net
        .counters(b_slot)
        .map_or(0, |c| c.rx_dropped(DropReason::Abandoned));
    eprintln!("slowest reclaim {slowest:?}; {abandoned} frames abandoned mid-copy in B's ring");
    let probe_counters = probe.counters();
    assert_eq!(
        probe_counters.tx_dropped_total(),
        probe_counters.tx_dropped(DropReason::RingFull),
        "the probe's only drops are full rings, never frames sent into the dead slot"
    );
    assert_eq!(a.tally.problems.load(Ordering::Relaxed), 0);
    assert_eq!(b.tally.problems.load(Ordering::Relaxed), 0);
}

#[test]
fn a_killed_receiver_is_reclaimed_and_its_mac_floods_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), "live", 64);
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let mut sink = start_sink(dir.path(), "live", "sink");
    let (a_mac, a_id, sink_mac) = (a.mac(), u32::from(a.index()), sink.mac);
    let mut frame = Vec::new();
    let mut sequence = 0u64;
    let mut send_to_sink = |a: &mut Peer| {
        testframe::encode(&mut frame, sink_mac, a_mac, a_id, sequence, 100);
        sequence += 1;
        a.send(&frame)
    };
    wait_until("the sink receives A's frames", PROGRESS, || {
        send_to_sink(&mut a);
        net.counters(sink.slot).is_some_and(|c| c.rx_packets >= 100)
    });
    let killed = Instant::now();
    sink.child.kill();
    // A keeps sending to the dead MAC meanwhile; `status` sweeps as a command would.
    wait_until("status no longer lists the dead sink", RECLAIM, || {
        send_to_sink(&mut a);
        b.receive(usize::MAX, |_| {});
        net.status().peers.iter().all(|p| p.slot != sink.slot)
    });
    eprintln!("reclaimed after {:?}", killed.elapsed());
    // Now frames to its MAC flood to B instead of piling up in the dead ring.
    let flooded = send_to_sink(&mut a);
    assert_eq!(
        flooded,
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    let mut got = Vec::new();
    b.receive(usize::MAX, |f| got.push(testframe::verify(f)));
    let expected = sequence - 1;
    assert!(
        matches!(got.as_slice(), [Verdict::Valid(t)] if t.sender == a_id && t.sequence == expected),
        "{got:?}"
    );
}

/// One peer's ring in a region mapped by the test itself, so the test can play a sender
/// that claims a slot and never publishes it.
struct RegionRing<'a> {
    mapping: &'a Mapping,
    layout: Layout,
    peer: usize,
}

impl RegionRing<'_> {
    fn header(&self, index: u64) -> &SlotHeader {
        let offset = self.layout.slot_offset(self.peer, index as usize);
        self.mapping.get(offset).expect("slot inside the region")
    }
}

impl SlotMemory for RegionRing<'_> {
    type Word = AtomicU64;

    fn slot_count(&self) -> u64 {
        self.layout.geometry.ring_slots.into()
    }

    fn reserve(&self) -> &AtomicU64 {
        let control: &RingControl = self
            .mapping
            .get(self.layout.ring_offset(self.peer))
            .expect("ring inside the region");
        &control.reserve
    }

    fn state(&self, index: u64) -> &AtomicU64 {
        &self.header(index).state
    }

    fn write_frame(&self, index: u64, meta: SlotMeta, frame: &[u8]) {
        let data = self.layout.slot_offset(self.peer, index as usize) + layout::SLOT_HEADER_SIZE;
        self.mapping
            .write_bytes(data, frame)
            .expect("frame fits its slot");
        self.header(index).len.store(meta.len, Ordering::Relaxed);
        let generation = &self.header(index).generation;
        generation.store(meta.generation, Ordering::Relaxed);
    }

    fn slot_capacity(&self) -> usize {
        self.layout.max_frame
    }

    fn read_meta(&self, index: u64) -> SlotMeta {
        let header = self.header(index);
        SlotMeta {
            len: header.len.load(Ordering::Relaxed),
            generation: header.generation.load(Ordering::Relaxed),
            ..SlotMeta::default()
        }
    }

    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]) {
        let data = self.layout.slot_offset(self.peer, index as usize) + layout::SLOT_HEADER_SIZE;
        let len = len.min(out.len()).min(self.layout.max_frame);
        self.mapping
            .read_bytes(data, &mut out[..len])
            .expect("frame inside its slot");
    }
}

#[test]
fn a_sender_killed_halfway_through_a_frame_does_not_wedge_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), "half", 64);
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    // The victim is a real process, so its death is real: the kernel drops its slot lock.
    let mut victim = start_sink(dir.path(), "half", "victim");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("half"))
        .unwrap();
    let size = file.metadata().unwrap().len();
    let mapping = Mapping::map(file.as_fd(), size as usize).unwrap();
    let header: &Header = mapping.get(0).unwrap();
    let layout = Layout::from_header(header, size).unwrap();
    let ring = RegionRing {
        mapping: &mapping,
        layout,
        peer: b.index().into(),
    };
    // Play the victim's part: claim the next slot of B's ring in its name and copy half
    // a frame in, as if it were killed mid-copy.
    let Claim::Claimed(position) = ring::claim(&ring, victim.slot) else {
        panic!("an empty ring has room")
    };
    let mut half = Vec::new();
    testframe::encode(&mut half, b.mac(), victim.mac, 7, 0, 200);
    half.truncate(100);
    ring.write_frame(
        position % ring.slot_count(),
        SlotMeta {
            len: 200,
            generation: 0,
            ..SlotMeta::default()
        },
        &half,
    );
    // A's frame lands behind the half-written one. B hands it out after a few
    // microseconds, passing over the writer's slot late (a writer still alive would publish
    // its frame there later), and never hands out the half-written one.
    let mut frame = Vec::new();
    let a_mac = a.mac();
    testframe::encode(&mut frame, b.mac(), a_mac, 1, 0, 120);
    assert_eq!(
        a.send(&frame),
        Sent::Routed {
            delivered: 1,
            dropped: 0
        }
    );
    let mut got = Vec::new();
    let sent = Instant::now();
    while got.is_empty() {
        // Well before B's patience with the writer (50 ms) would run out.
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "B waits for the writer"
        );
        b.receive(usize::MAX, |f| got.push(f.to_vec()));
        b.wait(Duration::from_millis(100));
    }
    assert_eq!(got, vec![frame], "only A's frame, intact");
    assert_eq!(b.counters().rx_dropped(DropReason::Stalled), 0);

    let killed = Instant::now();
    victim.child.kill();
    // B alone notices: its wait takes part in the liveness sweep, which gives the slot
    // back, and B counts the frame lost. Skipped once: as abandoned when the sweep found
    // the writer dead first, or as stalled when B lost patience with it first.
    let skipped = |b: &guestnet::network::Peer| {
        let counters = b.counters();
        counters.rx_dropped(DropReason::Abandoned) + counters.rx_dropped(DropReason::Stalled)
    };
    while skipped(&b) == 0 {
        assert!(
            killed.elapsed() < RECLAIM,
            "B never accounted for the dead writer's frame"
        );
        b.wait(Duration::from_millis(100));
        b.receive(usize::MAX, |f| got.push(f.to_vec()));
    }
    assert_eq!(got.len(), 1, "nothing of the dead writer's was handed out");
    assert_eq!(skipped(&b), 1);
    // B may have passed over the slot before the sweep saw the writer dead; the slot is
    // reclaimed within the bound all the same.
    while net.counters(victim.slot).is_some() {
        assert!(killed.elapsed() < RECLAIM, "the slot was not reclaimed");
        b.wait(Duration::from_millis(50));
        net.sweep();
    }
    // Had the writer been merely slow, it could no longer publish the abandoned slot.
    assert!(ring::publish(&ring, position, victim.slot).is_err());
}
