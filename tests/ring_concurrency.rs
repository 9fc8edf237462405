//! The receive ring's algorithm under a controlled scheduler.
//!
//! `guestnet::network::ring` is written against the [`SlotMemory`] and [`AtomicWord`] traits so
//! that the very code the network runs on shared memory can run here on memory whose every
//! atomic access is a scheduling point of the `shuttle` crate. Shuttle then runs each scenario
//! thousands of times, each time with a different interleaving of the producers and the
//! consumer, and any assertion that fails prints the schedule that broke it.
//!
//! The frame bytes and the slot metadata are shuttle atomics too, one word per 8 bytes, so a
//! reader that copied a slot while a writer was filling it would see words of two different
//! frames: every frame's content is derived from `(writer, seq)`, and the consumer checks each
//! word, so a torn frame cannot pass unnoticed.
//!
//! What shuttle does not model: weaker orderings than `SeqCst` (it treats every access as
//! sequentially consistent). These tests therefore check the algorithm's logic — claims,
//! publication, laps, abandonment — and not the choice of `Acquire`/`Release` at each access,
//! which the comments in `ring.rs` argue for.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use guestnet::network::ring::{
    self, AtomicWord, Claim, LateList, LateStep, Pop, Push, SlotMemory, SlotMeta, SlotState, Tag,
};
use shuttle::scheduler::{PctScheduler, RandomScheduler, Scheduler};
use shuttle::sync::Arc;
use shuttle::sync::atomic::AtomicU64;
use shuttle::{Config, MaxSteps, Runner};

/// A ring word whose accesses shuttle schedules.
struct Word(AtomicU64);

impl AtomicWord for Word {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.0.compare_exchange(current, new, success, failure)
    }
}

/// Longest frame a test slot holds, in 8-byte words.
const SLOT_WORDS: usize = 2;
/// Longest frame a large buffer holds, in 8-byte words: frames of 3 and 4 words travel
/// in one of the ring's two large buffers.
const LARGE_WORDS: usize = 4;
/// Longest frame of the tests.
const MAX_WORDS: usize = LARGE_WORDS;

/// One slot: its state word, its metadata and its bytes, all scheduled by shuttle.
struct Slot {
    state: Word,
    len: AtomicU64,
    generation: AtomicU64,
    large: AtomicU64,
    bytes: [AtomicU64; SLOT_WORDS],
}

/// One large buffer: its owner word and its bytes.
struct Large {
    owner: Word,
    bytes: [AtomicU64; LARGE_WORDS],
}

/// A small ring held in shuttle atomics.
struct ShuttleRing {
    /// The consumer's cursor as last stored, if this ring keeps one (as the network's
    /// rings do; the scenarios without it check the algorithm's weaker, cursor-less mode).
    consumed: Option<Word>,
    reserve: Word,
    slots: Vec<Slot>,
    large_hint: Word,
    large: Vec<Large>,
}

impl ShuttleRing {
    fn new(slot_count: u64) -> ShuttleRing {
        ShuttleRing::with_cursor(slot_count, false)
    }

    fn with_cursor(slot_count: u64, cursor: bool) -> ShuttleRing {
        let ring = ShuttleRing {
            consumed: cursor.then(|| Word(AtomicU64::new(0))),
            reserve: Word(AtomicU64::new(0)),
            slots: (0..slot_count)
                .map(|_| Slot {
                    state: Word(AtomicU64::new(0)),
                    len: AtomicU64::new(0),
                    generation: AtomicU64::new(0),
                    large: AtomicU64::new(0),
                    bytes: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            large_hint: Word(AtomicU64::new(0)),
            large: (0..2)
                .map(|_| Large {
                    owner: Word(AtomicU64::new(0)),
                    bytes: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
        };
        ring::reset(&ring);
        ring
    }

    fn slot(&self, index: u64) -> &Slot {
        &self.slots[index as usize]
    }
}

impl SlotMemory for ShuttleRing {
    type Word = Word;

    fn slot_count(&self) -> u64 {
        self.slots.len() as u64
    }

    fn reserve(&self) -> &Word {
        &self.reserve
    }

    fn consumed_hint(&self) -> Option<u64> {
        self.consumed
            .as_ref()
            .map(|word| word.load(Ordering::Relaxed))
    }

    fn state(&self, index: u64) -> &Word {
        &self.slot(index).state
    }

    fn slot_capacity(&self) -> usize {
        SLOT_WORDS * 8
    }

    fn write_frame(&self, index: u64, meta: SlotMeta, bytes: &[u8]) {
        let slot = self.slot(index);
        // One store per word, as the real copy is many stores: a reader racing with this
        // would see a mix of old and new words.
        for (word, chunk) in slot.bytes.iter().zip(bytes.chunks(8)) {
            word.store(word_of(chunk), Ordering::Relaxed);
        }
        slot.len.store(meta.len as u64, Ordering::Relaxed);
        slot.generation
            .store(meta.generation as u64, Ordering::Relaxed);
        slot.large.store(meta.large as u64, Ordering::Relaxed);
    }

    fn read_meta(&self, index: u64) -> SlotMeta {
        let slot = self.slot(index);
        SlotMeta {
            len: slot.len.load(Ordering::Relaxed) as u32,
            generation: slot.generation.load(Ordering::Relaxed) as u32,
            large: slot.large.load(Ordering::Relaxed) as u32,
            ..SlotMeta::default()
        }
    }

    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]) {
        read_words(&self.slot(index).bytes, len, out);
    }

    fn large_count(&self) -> u64 {
        self.large.len() as u64
    }

    fn large_capacity(&self) -> usize {
        LARGE_WORDS * 8
    }

    fn large_hint(&self) -> &Word {
        &self.large_hint
    }

    fn large_owner(&self, index: u64) -> &Word {
        &self.large[index as usize].owner
    }

    fn write_large(&self, index: u64, frame: &[u8]) {
        for (word, chunk) in self.large[index as usize].bytes.iter().zip(frame.chunks(8)) {
            word.store(word_of(chunk), Ordering::Relaxed);
        }
    }

    fn read_large(&self, index: u64, len: usize, out: &mut [u8]) {
        read_words(&self.large[index as usize].bytes, len, out);
    }
}

fn word_of(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

fn read_words(words: &[AtomicU64], len: usize, out: &mut [u8]) {
    let len = len.min(out.len()).min(words.len() * 8);
    for (word, chunk) in words.iter().zip(out[..len].chunks_mut(8)) {
        let bytes = word.load(Ordering::Relaxed).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Frame `seq` of `writer`: 1 to [`MAX_WORDS`] words (so some go by large buffer), each naming its writer, its sequence
/// number and its own index, so a frame spliced from two writes is recognised.
fn frame_for(writer: u16, seq: u32) -> Vec<u8> {
    let words = 1 + (seq as usize + writer as usize) % MAX_WORDS;
    (0..words as u64)
        .flat_map(|i| ((writer as u64) << 48 | (seq as u64) << 16 | i).to_le_bytes())
        .collect()
}

/// Generation a writer stamps, so metadata from the wrong write is caught too.
fn generation_for(writer: u16) -> u32 {
    1000 + writer as u32
}

fn push_frame(ring: &ShuttleRing, writer: u16, seq: u32) -> Push {
    let frame = frame_for(writer, seq);
    let meta = SlotMeta {
        len: frame.len() as u32,
        generation: generation_for(writer),
        ..SlotMeta::default()
    };
    ring::push(ring, writer, meta, &frame)
}

/// Checks a popped frame whole and returns who wrote it.
fn check_frame(meta: SlotMeta, bytes: &[u8]) -> (u16, u32) {
    assert!(
        meta.len >= 8 && meta.len as usize <= MAX_WORDS * 8,
        "implausible length {}",
        meta.len
    );
    let first = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let (writer, seq) = ((first >> 48) as u16, (first >> 16) as u32);
    let expected = frame_for(writer, seq);
    assert_eq!(
        &bytes[..meta.len as usize],
        &expected[..],
        "torn frame: length {} claimed, content does not match frame {seq} of writer {writer}",
        meta.len
    );
    assert_eq!(
        meta.generation,
        generation_for(writer),
        "metadata of another write"
    );
    (writer, seq)
}

/// Peer index of the writer that dies in the scenarios with a [`Death`].
const DEAD_WRITER: u16 = 99;

#[derive(Clone, Copy)]
struct Scenario {
    slots: u64,
    producers: u16,
    frames_each: u32,
    /// Producers retry a refused frame until it goes in (so every frame must arrive);
    /// otherwise a refused frame counts as dropped and must never arrive.
    retry_when_refused: bool,
    /// A further writer dies partway (see [`Death`]); another thread, having seen it dead,
    /// calls `abandon_writer`.
    death: Option<Death>,
    /// The consumer waits only a few looks for a writer holding the slot at its cursor,
    /// then passes over it, as the receiver does with a stopped writer.
    impatient_consumer: bool,
    /// The consumer passes over late a writer holding the slot at its cursor when a frame
    /// is published behind it, and reads the late frame when it is published (giving up
    /// on it after a few looks), as the receiver does.
    late_consumer: bool,
}

impl Scenario {
    /// `producers` writers of `frames_each` frames each through `slots` slots, refused
    /// frames dropped, nobody dying, a patient consumer.
    const fn plain(slots: u64, producers: u16, frames_each: u32) -> Scenario {
        Scenario {
            slots,
            producers,
            frames_each,
            retry_when_refused: false,
            death: None,
            impatient_consumer: false,
            late_consumer: false,
        }
    }
}

/// Looks at a slot held by its writer before an impatient consumer passes over it (the
/// stand-in, in a test without clocks, for the receiver's deadline).
const PATIENCE: u32 = 3;

/// Where the dying writer of a scenario dies.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// Halfway through copying a small frame into its claimed slot.
    MidCopy,
    /// Holding a large buffer it is filling, before claiming a slot.
    FillingLarge,
    /// Having filled a large buffer and claimed a slot naming it, before handing it over.
    ClaimedLarge,
    /// Having handed the large buffer to its claimed slot, before publishing.
    HandedLarge,
}

/// Plays the dying writer's part up to its death; returns its claim (if it got that far).
fn die_partway(ring: &ShuttleRing, death: Death) -> Claim {
    let frame = frame_for(DEAD_WRITER, 0);
    if let Death::MidCopy = death {
        let claim = ring::claim(ring, DEAD_WRITER);
        if let Claim::Claimed(position) = claim {
            let index = position % ring.slot_count();
            ring.slot(index).bytes[0].store(word_of(&frame[..8]), Ordering::Relaxed);
        }
        return claim;
    }
    // The large-frame path, step by step as `ring::push` takes it.
    let owner = ring.large_owner(0);
    if owner
        .compare_exchange(
            ring::LARGE_FREE,
            ring::large_filling(DEAD_WRITER),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return Claim::Busy;
    }
    ring.write_large(0, &frame[..8]);
    if let Death::FillingLarge = death {
        return Claim::Busy;
    }
    let claim = ring::claim(ring, DEAD_WRITER);
    let Claim::Claimed(position) = claim else {
        // A live writer would give the buffer back here; this one dies holding it.
        return claim;
    };
    let meta = SlotMeta {
        len: 32,
        generation: generation_for(DEAD_WRITER),
        large: 1,
        ..SlotMeta::default()
    };
    ring.write_frame(position % ring.slot_count(), meta, &[]);
    if let Death::HandedLarge = death {
        owner.store(ring::large_handed(position), Ordering::Release);
    }
    claim
}

/// What the consumer saw.
struct Consumed {
    frames: Vec<(u16, u32)>,
    abandoned: u64,
    passed_over: u64,
    void: u64,
    /// Positions passed over late (each then read, given up on, or lost).
    passed_late: u64,
    final_tail: u64,
}

impl Consumed {
    /// Notes what became of a slot passed over late.
    fn late(&mut self, step: LateStep, buffer: &[u8]) {
        match step {
            LateStep::Frame(meta) => self.frames.push(check_frame(meta, buffer)),
            LateStep::GaveUp => self.passed_over += 1,
            LateStep::Lost => self.abandoned += 1,
            LateStep::Corrupt => {
                panic!("a late slot of a ring only this consumer reads is corrupt")
            }
        }
    }
}

/// Room in the late consumer's list: small, so that a full list is met too.
const LATE_SLOTS: usize = 2;
/// Turns of the consumer's loop before it gives up on a late slot.
const LATE_PATIENCE: u64 = 12;
/// Turns of the consumer's loop between its looks at all its late slots.
const LATE_LOOK_EVERY: u64 = 4;

fn scenario(s: Scenario) {
    play(s);
}

/// Plays a scenario and checks its outcome; returns how many slots the consumer passed
/// over late.
fn play(s: Scenario) -> u64 {
    // Passing over late needs the consumer's cursor (see `LateList::worth_passing`).
    let ring = Arc::new(ShuttleRing::with_cursor(s.slots, s.late_consumer));
    // Threads that have finished all they will ever do to the ring.
    let finished = Arc::new(AtomicU64::new(0));
    let mut threads = s.producers as u64;

    let producers: Vec<_> = (0..s.producers)
        .map(|writer| {
            let (ring, finished) = (Arc::clone(&ring), Arc::clone(&finished));
            shuttle::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for seq in 0..s.frames_each {
                    let outcome = loop {
                        match push_frame(&ring, writer, seq) {
                            Push::Full | Push::Busy if s.retry_when_refused => {
                                shuttle::thread::yield_now()
                            }
                            other => break other,
                        }
                    };
                    outcomes.push((seq, outcome));
                }
                finished.fetch_add(1, Ordering::SeqCst);
                outcomes
            })
        })
        .collect();

    let abandoner = s.death.map(|death| {
        threads += 1;
        let dying = {
            let ring = Arc::clone(&ring);
            shuttle::thread::spawn(move || die_partway(&ring, death))
        };
        let (ring, finished) = (Arc::clone(&ring), Arc::clone(&finished));
        shuttle::thread::spawn(move || {
            // The network only abandons a writer once its slot lock shows it dead; joining
            // the thread is that knowledge here.
            let claim = dying.join().expect("the dying writer does not panic");
            let abandoned = ring::abandon_writer(&*ring, DEAD_WRITER);
            finished.fetch_add(1, Ordering::SeqCst);
            (claim, abandoned)
        })
    });

    let consumer = {
        let ring = Arc::clone(&ring);
        shuttle::thread::spawn(move || {
            let mut seen = Consumed {
                frames: Vec::new(),
                abandoned: 0,
                passed_over: 0,
                void: 0,
                passed_late: 0,
                final_tail: 0,
            };
            let mut tail = 0;
            let mut looks = 0;
            let mut buffer = [0u8; MAX_WORDS * 8];
            // Slots passed over late, and a clock of loop turns for giving up on them.
            let mut late = LateList::new(LATE_SLOTS);
            let mut clock = 0u64;
            loop {
                clock += 1;
                // Read before looking at the ring: if every thread had finished by then, an
                // empty slot means nothing more will ever come.
                let all_finished = finished.load(Ordering::SeqCst) == threads;
                // The receiver looks at its late slots once per receive batch and reads
                // several frames between looks; here, every few turns (and always once all
                // have finished).
                let due = |_: u16, since: u64| clock - since >= LATE_PATIENCE;
                if clock.is_multiple_of(LATE_LOOK_EVERY) || all_finished {
                    while let Some(step) = late.next(&*ring, None, &mut buffer, due) {
                        seen.late(step, &buffer);
                    }
                }
                let state = ring::peek(&*ring, tail);
                if let Some(writer) = late.owed_before(state, tail) {
                    // A later frame of a writer passed over late: its late one goes first.
                    while let Some(step) =
                        late.next(&*ring, Some(writer), &mut buffer, |_, _| false)
                    {
                        seen.late(step, &buffer);
                    }
                }
                let step = ring::pop_seen(&*ring, tail, state, &mut buffer);
                match step {
                    Pop::Frame(meta) => seen.frames.push(check_frame(meta, &buffer)),
                    Pop::Abandoned => seen.abandoned += 1,
                    Pop::Empty if all_finished && late.is_empty() => break,
                    Pop::InProgress { writer } if all_finished => {
                        panic!("stalled at position {tail}: writer {writer} holds it for ever")
                    }
                    Pop::InProgress { writer }
                        if s.late_consumer
                            && late.worth_passing(&*ring, tail)
                            && late.pass(&*ring, tail, writer, clock) =>
                    {
                        seen.passed_late += 1;
                        tail = ring::advance(tail, 1);
                        looks = 0;
                    }
                    Pop::InProgress { writer } if s.impatient_consumer => {
                        looks += 1;
                        if looks >= PATIENCE && ring::pass_over(&*ring, tail, writer) {
                            seen.passed_over += 1;
                            tail = ring::advance(tail, 1);
                            looks = 0;
                        } else {
                            shuttle::thread::yield_now();
                        }
                    }
                    Pop::Void { .. } => seen.void += 1,
                    Pop::Empty | Pop::InProgress { .. } => shuttle::thread::yield_now(),
                    Pop::AlreadyConsumed | Pop::Corrupt => {
                        panic!("{step:?} at position {tail} of a ring only this consumer reads")
                    }
                }
                if step.advances() {
                    tail = ring::advance(tail, 1);
                    looks = 0;
                }
                // As the receiver stores it after each receive batch (here, one step).
                if let Some(consumed) = &ring.consumed {
                    consumed.store(tail, Ordering::Release);
                }
            }
            seen.final_tail = tail;
            seen
        })
    };

    let outcomes: Vec<Vec<(u32, Push)>> = producers
        .into_iter()
        .map(|p| p.join().expect("producer"))
        .collect();
    let abandonment = abandoner.map(|a| a.join().expect("abandoner"));
    let consumed = consumer.join().expect("consumer");

    // Per producer: strictly increasing sequence numbers (order kept, no duplicates), and
    // exactly the frames whose push said Delivered.
    let mut by_writer: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for &(writer, seq) in &consumed.frames {
        assert_ne!(writer, DEAD_WRITER, "the dead writer's frame was delivered");
        by_writer.entry(writer).or_default().push(seq);
    }
    let mut delivered_total = 0;
    let mut passed_over_total = 0;
    for (writer, outcomes) in outcomes.iter().enumerate() {
        let got = by_writer.remove(&(writer as u16)).unwrap_or_default();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "writer {writer}: out of order or duplicated: {got:?}"
        );
        let delivered: Vec<u32> = outcomes
            .iter()
            .filter(|(_, o)| *o == Push::Delivered)
            .map(|(seq, _)| *seq)
            .collect();
        for (seq, outcome) in outcomes {
            assert!(
                matches!(outcome, Push::Delivered | Push::Full | Push::Busy)
                    || ((s.impatient_consumer || s.late_consumer) && *outcome == Push::PassedOver),
                "writer {writer} frame {seq}: {outcome:?}, yet nobody abandoned it"
            );
        }
        passed_over_total += outcomes
            .iter()
            .filter(|(_, o)| *o == Push::PassedOver)
            .count() as u64;
        assert_eq!(
            got, delivered,
            "writer {writer}: frames received differ from frames delivered"
        );
        if s.retry_when_refused {
            assert_eq!(delivered.len() as u32, s.frames_each, "writer {writer}");
        }
        delivered_total += delivered.len() as u64;
    }
    assert!(by_writer.is_empty(), "frames from unknown writers");

    let claimed_by_dead = match abandonment {
        Some((claim, abandoned)) => {
            let claimed = u64::from(matches!(claim, Claim::Claimed(_)));
            assert_eq!(
                abandoned, claimed,
                "abandon_writer must find exactly the dead writer's claim"
            );
            claimed
        }
        None => 0,
    };
    // The dead writer's claim is skipped once: as abandoned, or passed over if the
    // consumer lost patience before the sweep found it dead.
    let dead_passed_over = consumed.passed_over.checked_sub(passed_over_total);
    assert!(
        matches!(dead_passed_over, Some(n) if n <= claimed_by_dead),
        "a frame is passed over exactly when its writer is told so: counted on both sides \
         ({} passed over, {passed_over_total} told)",
        consumed.passed_over
    );
    assert_eq!(
        consumed.abandoned + dead_passed_over.unwrap_or(0),
        claimed_by_dead,
        "the consumer skips each abandoned slot once"
    );
    assert_eq!(
        consumed.final_tail,
        delivered_total + consumed.abandoned + consumed.passed_over + consumed.void,
        "every claimed position was consumed exactly once"
    );
    // Whatever happened, the ring is left consistent: every slot free for its next lap, or
    // given back by a passed-over writer and waiting for the consumer to free it.
    for index in 0..s.slots {
        let state = SlotState::decode(ring.state(index).load(Ordering::SeqCst));
        assert_eq!(state.position % s.slots, index);
        if state.tag == Tag::Released {
            assert!(
                s.impatient_consumer || s.late_consumer,
                "slot {index} left {state:?}"
            );
            continue;
        }
        assert_eq!(state.tag, Tag::Free, "slot {index} left {state:?}");
        assert!(state.position >= consumed.final_tail);
        assert!(state.position < consumed.final_tail + s.slots);
    }
    // And no large buffer is left owned (an owner word of zero is a free buffer): each one
    // went back when its frame was read, its slot skipped, or its claim refused.
    for (index, large) in ring.large.iter().enumerate() {
        assert_eq!(
            large.owner.load(Ordering::SeqCst),
            0,
            "large buffer {index} leaked"
        );
    }
    consumed.passed_late
}

/// Plays `s` under both schedulers and fails unless some runs passed over late (else the
/// scenario would not test what it says).
fn run_late(s: Scenario, runs: usize) {
    let passed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&passed);
    run(RandomScheduler::new(runs), move || {
        counted.fetch_add(play(s), Ordering::Relaxed);
    });
    let counted = std::sync::Arc::clone(&passed);
    run(PctScheduler::new(3, runs), move || {
        counted.fetch_add(play(s), Ordering::Relaxed);
    });
    assert!(
        passed.load(Ordering::Relaxed) > 0,
        "no run passed a writer over late"
    );
}

/// Runs `test` under `scheduler`, failing any single run that takes more steps than a
/// correct one could (a consumer spinning for ever on a slot nobody will publish).
fn run(scheduler: impl Scheduler + 'static, test: impl Fn() + Send + Sync + 'static) {
    let mut config = Config::new();
    // The orderings' limitation is stated in this file's header.
    config.silence_warnings = true;
    config.max_steps = MaxSteps::FailAfter(200_000);
    Runner::new(scheduler, config).run(test);
}

#[test]
fn concurrent_producers_lose_nothing_unannounced_and_keep_order() {
    let s = Scenario::plain(4, 3, 4);
    run(RandomScheduler::new(1500), move || scenario(s));
    run(PctScheduler::new(3, 1500), move || scenario(s));
}

#[test]
fn a_ring_of_two_slots_wraps_many_laps_without_loss() {
    // 2 producers × 5 frames through 2 slots, every refused frame retried: 5 laps.
    let s = Scenario {
        retry_when_refused: true,
        ..Scenario::plain(2, 2, 5)
    };
    run(RandomScheduler::new(1500), move || scenario(s));
    run(PctScheduler::new(3, 1500), move || scenario(s));
}

#[test]
fn a_writer_dying_mid_copy_never_stalls_the_consumer() {
    let s = Scenario {
        death: Some(Death::MidCopy),
        ..Scenario::plain(4, 2, 4)
    };
    run(RandomScheduler::new(1500), move || scenario(s));
    run(PctScheduler::new(3, 1500), move || scenario(s));
}

#[test]
fn a_writer_dying_in_a_full_two_slot_ring_is_skipped_on_a_later_lap() {
    let s = Scenario {
        retry_when_refused: true,
        death: Some(Death::MidCopy),
        ..Scenario::plain(2, 2, 3)
    };
    run(RandomScheduler::new(1500), move || scenario(s));
}

#[test]
fn a_ring_started_afresh_for_a_new_owner_frees_the_large_buffers_of_unread_frames() {
    // Single-threaded, but on the same shuttle memory (its atomics need shuttle's runtime).
    run(RandomScheduler::new(1), || {
        let ring = ShuttleRing::new(4);
        // The previous owner leaves without reading two large frames.
        assert_eq!(push_frame(&ring, 1, 2), Push::Delivered);
        assert_eq!(push_frame(&ring, 1, 3), Push::Delivered);
        assert!(frame_for(1, 2).len() > SLOT_WORDS * 8, "a large frame");
        let (tail, discarded) = ring::reset_ahead(&ring);
        assert_eq!(discarded.unread, 2, "both unread frames are counted");
        for (index, large) in ring.large.iter().enumerate() {
            assert_eq!(
                large.owner.load(Ordering::SeqCst),
                0,
                "large buffer {index} still held for a frame nobody will read"
            );
        }
        // The new owner can receive large frames.
        assert_eq!(push_frame(&ring, 2, 1), Push::Delivered);
        let mut buffer = [0u8; MAX_WORDS * 8];
        let Pop::Frame(meta) = ring::pop(&ring, tail, &mut buffer) else {
            panic!("no frame at the new owner's first position");
        };
        assert_eq!(check_frame(meta, &buffer), (2, 1));
    });
}

#[test]
fn a_consumer_that_passes_over_slow_writers_never_delivers_a_torn_frame_or_breaks_order() {
    // Writers that take their time (shuttle may pause any of them anywhere, as SIGSTOP
    // would) meet a consumer that waits only a few looks before passing over: every frame
    // arrives whole and in order, or is counted on both sides as passed over, and the slots
    // held for passed-over writers come back.
    let s = Scenario {
        impatient_consumer: true,
        ..Scenario::plain(4, 3, 4)
    };
    run(RandomScheduler::new(1500), move || scenario(s));
    run(PctScheduler::new(3, 1500), move || scenario(s));
}

#[test]
fn a_consumer_passing_over_late_delivers_every_frame_whole_and_in_order() {
    // Writers descheduled between claim and publish (shuttle pauses them anywhere) are
    // passed over late whenever a frame is published behind them: each late frame is read
    // once published, before any later frame of its writer, and none is lost while its
    // writer lives, unless the consumer gives up on it (counted on both sides).
    let s = Scenario {
        late_consumer: true,
        ..Scenario::plain(4, 3, 4)
    };
    run_late(s, 1500);
}

#[test]
fn a_late_consumer_in_a_full_ring_of_two_slots_loses_nothing() {
    // Every refused frame retried through two slots, some held late: laps go on over the
    // late slots, and every frame of every writer arrives, in order.
    let s = Scenario {
        retry_when_refused: true,
        late_consumer: true,
        ..Scenario::plain(2, 3, 3)
    };
    run_late(s, 1500);
}

#[test]
fn a_writer_dying_while_passed_over_late_is_accounted_and_leaks_nothing() {
    for death in [Death::MidCopy, Death::HandedLarge] {
        let s = Scenario {
            death: Some(death),
            late_consumer: true,
            ..Scenario::plain(4, 2, 3)
        };
        run_late(s, 1000);
    }
}

#[test]
fn a_writer_dying_while_an_impatient_consumer_passes_over_it_is_still_accounted() {
    let s = Scenario {
        death: Some(Death::MidCopy),
        impatient_consumer: true,
        ..Scenario::plain(2, 2, 3)
    };
    run(RandomScheduler::new(1500), move || scenario(s));
    run(PctScheduler::new(3, 1500), move || scenario(s));
}

#[test]
fn a_writer_dying_at_any_step_of_a_large_push_leaks_no_buffer_and_stalls_nobody() {
    for death in [Death::FillingLarge, Death::ClaimedLarge, Death::HandedLarge] {
        let s = Scenario {
            death: Some(death),
            ..Scenario::plain(4, 2, 4)
        };
        run(RandomScheduler::new(800), move || scenario(s));
        run(PctScheduler::new(3, 800), move || scenario(s));
    }
}

#[test]
fn a_reclaimed_index_rejoined_by_a_new_writer_gets_only_its_own_frames_through() {
    // The old occupant of index 5 dies mid-copy; the reclaimer abandons its claims while
    // it still holds the dead slot's lock, and only then may a new peer join with the same
    // index and send. Modelled here by ordering: the new writer starts after the
    // reclaimer has finished.
    run(RandomScheduler::new(1000), || {
        const INDEX: u16 = 5;
        let ring = Arc::new(ShuttleRing::new(4));
        let reclaimer = {
            let ring = Arc::clone(&ring);
            shuttle::thread::spawn(move || {
                let claim = ring::claim(&*ring, INDEX);
                if let Claim::Claimed(position) = claim {
                    let frame = frame_for(INDEX, 99);
                    ring.slot(position % 4).bytes[0].store(word_of(&frame[..8]), Ordering::Relaxed);
                }
                // Dead. The reclaim:
                ring::abandon_writer(&*ring, INDEX);
            })
        };
        let rejoined = {
            let ring = Arc::clone(&ring);
            shuttle::thread::spawn(move || {
                reclaimer.join().expect("reclaimer");
                (0..3)
                    .map(|seq| {
                        loop {
                            match push_frame(&ring, INDEX, seq) {
                                Push::Full | Push::Busy => shuttle::thread::yield_now(),
                                other => break other,
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            })
        };
        let consumer = {
            let ring = Arc::clone(&ring);
            shuttle::thread::spawn(move || {
                let (mut tail, mut got, mut abandoned) = (0, Vec::new(), 0);
                let mut buffer = [0u8; MAX_WORDS * 8];
                while got.len() < 3 {
                    let step = ring::pop(&*ring, tail, &mut buffer);
                    match step {
                        Pop::Frame(meta) => got.push(check_frame(meta, &buffer)),
                        Pop::Abandoned => abandoned += 1,
                        Pop::Empty | Pop::InProgress { .. } => shuttle::thread::yield_now(),
                        other => panic!("{other:?} at {tail}"),
                    }
                    if step.advances() {
                        tail = ring::advance(tail, 1);
                    }
                }
                (got, abandoned)
            })
        };
        let pushed = rejoined.join().expect("rejoined writer");
        assert!(pushed.iter().all(|p| *p == Push::Delivered), "{pushed:?}");
        let (got, abandoned) = consumer.join().expect("consumer");
        assert_eq!(got, vec![(INDEX, 0), (INDEX, 1), (INDEX, 2)]);
        assert!(abandoned <= 1);
    });
}

#[test]
fn a_ring_changing_hands_under_a_stalled_large_push_loses_no_buffer_and_no_count() {
    // Two writers push large and small frames while the ring's owner leaves and a new one
    // takes it over (`reset_ahead`) at any moment, and then reads. A writer caught halfway
    // (its large buffer filled or handed, its slot claimed) must neither publish into the
    // new owner's ring nor leave a buffer held for ever; every frame that was published is
    // either read by the new owner or counted as discarded.
    let test = || {
        let ring = Arc::new(ShuttleRing::new(4));
        let finished = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2u16)
            .map(|writer| {
                let (ring, finished) = (Arc::clone(&ring), Arc::clone(&finished));
                shuttle::thread::spawn(move || {
                    let outcomes: Vec<Push> =
                        (0..3).map(|seq| push_frame(&ring, writer, seq)).collect();
                    finished.fetch_add(1, Ordering::SeqCst);
                    outcomes
                })
            })
            .collect();
        let new_owner = {
            let (ring, finished) = (Arc::clone(&ring), Arc::clone(&finished));
            shuttle::thread::spawn(move || {
                let (mut tail, discarded) = ring::reset_ahead(&*ring);
                let mut got = Vec::new();
                let mut buffer = [0u8; MAX_WORDS * 8];
                loop {
                    let all_finished = finished.load(Ordering::SeqCst) == 2;
                    let before = SlotState::decode(ring.state(tail % 4).load(Ordering::SeqCst));
                    let step = ring::pop(&*ring, tail, &mut buffer);
                    match step {
                        Pop::Frame(meta) => got.push(check_frame(meta, &buffer)),
                        Pop::Empty if all_finished => break,
                        Pop::Empty | Pop::InProgress { .. } => shuttle::thread::yield_now(),
                        Pop::Void { .. } => {}
                        other => panic!(
                            "{other:?} at {tail} of a ring taken over cleanly (slot held {before:?})"
                        ),
                    }
                    if step.advances() {
                        tail = ring::advance(tail, 1);
                    }
                }
                (got, discarded)
            })
        };
        let outcomes: Vec<Vec<Push>> = writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect();
        let (got, discarded) = new_owner.join().expect("new owner");
        let delivered = outcomes
            .iter()
            .flatten()
            .filter(|p| **p == Push::Delivered)
            .count() as u64;
        assert_eq!(
            delivered,
            got.len() as u64 + discarded.unread,
            "published frames are read or counted: {outcomes:?}, read {got:?}"
        );
        let passed_over = outcomes
            .iter()
            .flatten()
            .filter(|p| **p == Push::PassedOver)
            .count() as u64;
        assert_eq!(
            passed_over, discarded.passed_over,
            "a writer told its slot was passed over is counted on the ring's side too"
        );
        for (index, large) in ring.large.iter().enumerate() {
            assert_eq!(
                large.owner.load(Ordering::SeqCst),
                ring::LARGE_FREE,
                "large buffer {index} leaked"
            );
        }
    };
    run(RandomScheduler::new(1500), test);
    run(PctScheduler::new(3, 1500), test);
}
