//! The receive ring: many senders, one receiver, no locks, and no way for a dead sender to
//! wedge it.
//!
//! Each peer owns one ring of `N` slots (a power of two). Frames are numbered by an
//! ever-increasing *position*; position `p` lives in slot `p mod N`. Every slot carries one
//! 64-bit state word that says, for one position, what the slot holds:
//!
//! ```text
//!  63                      16 15            2 1   0
//! +--------------------------+---------------+-----+
//! |   position (48 bits)     | writer (14 b) | tag |   tag: FREE, WRITING, READY, ABANDONED
//! +--------------------------+---------------+-----+
//! ```
//!
//! - `FREE(p)`: the slot waits for position `p`. A sender claims it by a compare-and-swap
//!   to `WRITING(p, me)`, so a claim is one atomic step that also names the claimant:
//!   there is no moment at which a slot is taken but its owner unknown. (A separate
//!   "reserve" counter followed by a write of the owner would leave exactly such a window,
//!   and a sender killed inside it would stall the ring for ever.)
//! - The sender copies the frame, writes the length and the receiver's generation into the
//!   slot header, and publishes with a compare-and-swap `WRITING(p, me) → READY(p, me)`
//!   (Release: the bytes become visible no later than the state).
//! - The receiver reads position `tail` when it is `READY(tail)` (Acquire), copies the frame
//!   out, then stores `FREE(tail + N)`: the slot is free for the next lap. Only the receiver
//!   frees slots, so a full ring is seen by senders as a slot still holding the previous
//!   lap, and **a full ring never overwrites an unread frame** (defect 3 of lguest).
//! - If a sender dies holding `WRITING(p, it)`, whoever reclaims its peer slot turns that
//!   state into `ABANDONED(p)`; the receiver counts and skips it. If a sender merely takes
//!   its time, the receiver waits for it: per-sender order and the absence of torn frames
//!   matter more than latency under a sender that was stopped mid-copy (see the README's
//!   known limitations).
//!
//! The reserve cursor in the control block is only a hint of the next position to try;
//! anyone who sees it lag behind the slot states helps it forward, and one found ahead of a
//! free slot (which only corruption produces) is brought back to it. A slot state that fits
//! no lap of its position is never used to move the hint: the receiver resets it. Positions wrap at
//! 2^48, which at 20 Mpps is five months; all comparisons are equalities modulo 2^48, so
//! the wrap is harmless.
//!
//! The algorithm is written against [`SlotMemory`], so the same code runs on the shared
//! region and, in the tests, on memory whose atomics the `shuttle` scheduler controls.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a position.
pub const POSITION_BITS: u32 = 48;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
const WRITER_MASK: u64 = 0x3fff;

/// What a slot state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Waiting for its position.
    Free,
    /// Claimed by a writer that is copying.
    Writing,
    /// Holds a published frame.
    Ready,
    /// Its writer died before publishing.
    Abandoned,
}

/// A decoded slot state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Position the state is about.
    pub position: u64,
    /// Peer index of the writer (meaningful for `Writing` and `Ready`).
    pub writer: u16,
    /// What the slot holds.
    pub tag: Tag,
}

impl SlotState {
    /// Packs the state into its word.
    pub const fn encode(self) -> u64 {
        let tag = match self.tag {
            Tag::Free => 0,
            Tag::Writing => 1,
            Tag::Ready => 2,
            Tag::Abandoned => 3,
        };
        ((self.position & POSITION_MASK) << 16) | ((self.writer as u64 & WRITER_MASK) << 2) | tag
    }

    /// Unpacks a word (every word decodes to some state).
    pub const fn decode(word: u64) -> SlotState {
        let tag = match word & 3 {
            0 => Tag::Free,
            1 => Tag::Writing,
            2 => Tag::Ready,
            _ => Tag::Abandoned,
        };
        SlotState {
            position: word >> 16,
            writer: ((word >> 2) & WRITER_MASK) as u16,
            tag,
        }
    }

    /// `FREE(position)`.
    pub const fn free(position: u64) -> SlotState {
        SlotState {
            position: position & POSITION_MASK,
            writer: 0,
            tag: Tag::Free,
        }
    }
}

/// Adds to a position, modulo 2^48.
pub const fn advance(position: u64, by: u64) -> u64 {
    position.wrapping_add(by) & POSITION_MASK
}

/// The atomic operations the ring needs from a 64-bit word.
pub trait AtomicWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// Strong compare-and-swap; `Err(actual)` on failure.
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl AtomicWord for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}

/// What travels in a slot header beside the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotMeta {
    /// Frame length as the writer claims it (untrusted until checked).
    pub len: u32,
    /// Generation of the receiver the frame was meant for.
    pub generation: u32,
}

/// The memory of one ring.
pub trait SlotMemory {
    /// The atomic word type.
    type Word: AtomicWord;
    /// Number of slots, a power of two.
    fn slot_count(&self) -> u64;
    /// The reserve hint.
    fn reserve(&self) -> &Self::Word;
    /// State word of slot `index` (< slot_count).
    fn state(&self, index: u64) -> &Self::Word;
    /// Writes a frame and its metadata into slot `index`; the caller guarantees that the
    /// frame fits the slot. Plain (relaxed) writes: the publishing CAS orders them.
    fn write_frame(&self, index: u64, meta: SlotMeta, frame: &[u8]);
    /// Reads slot `index`'s metadata and copies up to `out.len()` bytes of its frame.
    fn read_frame(&self, index: u64, out: &mut [u8]) -> SlotMeta;
}

/// Result of trying to claim a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The slot for this position is ours to fill.
    Claimed(u64),
    /// The slot for the next position still holds an unread frame.
    Full,
    /// The cursor kept moving under us (heavy contention or a corrupted ring).
    Busy,
}

/// How many times a sender retries a claim before giving up with [`Claim::Busy`]. Each
/// failed try means another sender made progress, so this only bounds pathological cases.
const CLAIM_TRIES: usize = 64;

/// Claims the next free position for `writer`.
pub fn claim<M: SlotMemory>(ring: &M, writer: u16) -> Claim {
    let slots = ring.slot_count();
    for _ in 0..CLAIM_TRIES {
        let position = ring.reserve().load(Ordering::Acquire) & POSITION_MASK;
        let word = ring.state(position & (slots - 1));
        let seen = word.load(Ordering::Acquire);
        let state = SlotState::decode(seen);
        if state.position == position {
            if state.tag == Tag::Free {
                let mine = SlotState {
                    position,
                    writer,
                    tag: Tag::Writing,
                }
                .encode();
                // Acquire on success: we must not write the slot's bytes before we own it,
                // and must see the receiver's reads of the previous lap as finished.
                if word
                    .compare_exchange(seen, mine, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    help_reserve(ring, position);
                    return Claim::Claimed(position);
                }
            } else {
                // Someone claimed this position but has not moved the hint yet.
                help_reserve(ring, position);
            }
        } else if state.position == advance(position, slots.wrapping_neg())
            && state.tag != Tag::Free
        {
            // The slot still holds the previous lap: unread, being written, or abandoned
            // but not yet skipped by its receiver. Either way it is not ours.
            return Claim::Full;
        } else if is_later_lap(position, state.position, slots) {
            // The hint lags (its mover died between claim and update, or we read it long
            // ago): the slot has moved on, so this position is taken. Move the hint along.
            help_reserve(ring, position);
        } else if state.tag == Tag::Free && same_slot(position, state.position, slots) {
            // A free slot waits for an earlier position than the hint names, which no
            // correct run produces: the hint ran ahead (it was scribbled, or passed slots a
            // scribbler had spoilt before their receiver reset them). Left alone, the
            // receiver would wait for that position for ever while senders, finding every
            // slot "behind", never claim again. Bring the hint back to it.
            let _ = ring.reserve().compare_exchange(
                position,
                state.position,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            // A state that fits no lap of this position: junk. Moving the hint past it
            // could run the hint away from the slots for good, so leave it to the
            // receiver, which resets such slots when it reaches them.
            return Claim::Busy;
        }
    }
    Claim::Busy
}

/// Whether `later` is `position` plus a whole, positive number of laps (less than half the
/// position space, so that a wrapped comparison stays meaningful).
fn is_later_lap(position: u64, later: u64, slots: u64) -> bool {
    let distance = later.wrapping_sub(position) & POSITION_MASK;
    distance != 0 && distance < 1 << (POSITION_BITS - 1) && distance.is_multiple_of(slots)
}

/// Whether two positions live in the same slot.
fn same_slot(a: u64, b: u64, slots: u64) -> bool {
    a & (slots - 1) == b & (slots - 1)
}

fn help_reserve<M: SlotMemory>(ring: &M, position: u64) {
    // Relaxed is enough: the reserve is only a hint, and every decision is re-checked
    // against the slot state with Acquire.
    let _ = ring.reserve().compare_exchange(
        position,
        advance(position, 1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// Publishes a claimed, filled slot.
pub fn publish<M: SlotMemory>(ring: &M, position: u64, writer: u16) -> Result<(), Abandoned> {
    let word = ring.state(position & (ring.slot_count() - 1));
    let writing = SlotState {
        position,
        writer,
        tag: Tag::Writing,
    }
    .encode();
    let ready = SlotState {
        position,
        writer,
        tag: Tag::Ready,
    }
    .encode();
    // Release: the frame bytes and metadata written before must be visible to the
    // receiver that sees READY with Acquire.
    word.compare_exchange(writing, ready, Ordering::Release, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|_| Abandoned)
}

/// Claims, writes and publishes a frame in one go.
pub fn push<M: SlotMemory>(ring: &M, writer: u16, meta: SlotMeta, frame: &[u8]) -> Push {
    match claim(ring, writer) {
        Claim::Claimed(position) => {
            ring.write_frame(position & (ring.slot_count() - 1), meta, frame);
            match publish(ring, position, writer) {
                Ok(()) => Push::Delivered,
                Err(Abandoned) => Push::Abandoned,
            }
        }
        Claim::Full => Push::Full,
        Claim::Busy => Push::Busy,
    }
}

/// Result of [`push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Published.
    Delivered,
    /// The ring is full.
    Full,
    /// Gave up under contention.
    Busy,
    /// Our claim was taken from us (we were believed dead).
    Abandoned,
}

/// One step of the receiver at position `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop {
    /// A frame was copied out (`meta.len` is the claimed length, unchecked; at most
    /// `out.len()` bytes were copied). The tail advances.
    Frame(SlotMeta),
    /// Nothing published at `tail`.
    Empty,
    /// A live writer is still copying into the slot at `tail`.
    InProgress {
        /// Its peer index.
        writer: u16,
    },
    /// The writer died before publishing; skipped. The tail advances.
    Abandoned,
    /// The slot already serves a later lap: a previous owner of this ring consumed `tail`
    /// (its stored cursor was stale). The slot is untouched; the tail advances.
    AlreadyConsumed,
    /// The slot's state makes no sense for `tail`; it was reset. The tail advances.
    Corrupt,
}

impl Pop {
    /// Whether this step moved the tail on.
    pub const fn advances(self) -> bool {
        !matches!(self, Pop::Empty | Pop::InProgress { .. })
    }
}

/// Reads position `tail`, copying a frame into `out`.
pub fn pop<M: SlotMemory>(ring: &M, tail: u64, out: &mut [u8]) -> Pop {
    let slots = ring.slot_count();
    let word = ring.state(tail & (slots - 1));
    let state = SlotState::decode(word.load(Ordering::Acquire));
    let next_lap = SlotState::free(advance(tail, slots)).encode();
    if state.position == tail {
        match state.tag {
            Tag::Free => Pop::Empty,
            Tag::Writing => Pop::InProgress {
                writer: state.writer,
            },
            Tag::Ready => {
                let meta = ring.read_frame(tail & (slots - 1), out);
                // Release: our copy must be complete before a sender may reuse the slot.
                word.store(next_lap, Ordering::Release);
                Pop::Frame(meta)
            }
            Tag::Abandoned => {
                word.store(next_lap, Ordering::Release);
                Pop::Abandoned
            }
        }
    } else if is_later_lap(tail, state.position, slots) {
        // The slot already serves a later lap, so `tail` was consumed: by a previous owner
        // of this ring that died (or unwound) before storing its cursor, which can lag by
        // many laps. The slot is left alone — resetting it to `tail`'s next lap would move
        // it backwards, behind the senders, and wedge the ring.
        Pop::AlreadyConsumed
    } else {
        word.store(next_lap, Ordering::Release);
        Pop::Corrupt
    }
}

/// Whether a frame (or something else that needs the receiver) waits at `tail`.
pub fn has_work<M: SlotMemory>(ring: &M, tail: u64) -> bool {
    let state = SlotState::decode(
        ring.state(tail & (ring.slot_count() - 1))
            .load(Ordering::Acquire),
    );
    !(state.position == tail && matches!(state.tag, Tag::Free | Tag::Writing))
}

/// Marks every slot that `dead_writer` was filling as abandoned; returns how many. Called
/// only once the writer is known dead (its slot lock is free), so it cannot race with the
/// writer's own publish.
pub fn abandon_writer<M: SlotMemory>(ring: &M, dead_writer: u16) -> u64 {
    let mut count = 0;
    for index in 0..ring.slot_count() {
        let word = ring.state(index);
        let seen = word.load(Ordering::Acquire);
        let state = SlotState::decode(seen);
        if state.tag == Tag::Writing && state.writer == dead_writer {
            let abandoned = SlotState {
                tag: Tag::Abandoned,
                ..state
            }
            .encode();
            if word
                .compare_exchange(seen, abandoned, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                count += 1;
            }
        }
    }
    count
}

/// Puts a ring in its initial state: position 0 next, every slot free for its first lap.
pub fn reset<M: SlotMemory>(ring: &M) {
    for index in 0..ring.slot_count() {
        ring.state(index)
            .store(SlotState::free(index).encode(), Ordering::Relaxed);
    }
    ring.reserve().store(0, Ordering::Release);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A heap ring for single-threaded tests.
    pub struct HeapRing {
        reserve: AtomicU64,
        states: Vec<AtomicU64>,
        frames: RefCell<Vec<(SlotMeta, Vec<u8>)>>,
    }

    impl HeapRing {
        pub fn new(slots: u64) -> Self {
            let ring = HeapRing {
                reserve: AtomicU64::new(0),
                states: (0..slots).map(|_| AtomicU64::new(0)).collect(),
                frames: RefCell::new(vec![(SlotMeta::default(), Vec::new()); slots as usize]),
            };
            reset(&ring);
            ring
        }
    }

    impl SlotMemory for HeapRing {
        type Word = AtomicU64;
        fn slot_count(&self) -> u64 {
            self.states.len() as u64
        }
        fn reserve(&self) -> &AtomicU64 {
            &self.reserve
        }
        fn state(&self, index: u64) -> &AtomicU64 {
            &self.states[index as usize]
        }
        fn write_frame(&self, index: u64, meta: SlotMeta, frame: &[u8]) {
            self.frames.borrow_mut()[index as usize] = (meta, frame.to_vec());
        }
        fn read_frame(&self, index: u64, out: &mut [u8]) -> SlotMeta {
            let frames = self.frames.borrow();
            let (meta, bytes) = &frames[index as usize];
            let n = bytes.len().min(out.len());
            out[..n].copy_from_slice(&bytes[..n]);
            *meta
        }
    }

    fn meta(len: usize) -> SlotMeta {
        SlotMeta {
            len: len as u32,
            generation: 1,
        }
    }

    #[test]
    fn state_word_round_trips() {
        for tag in [Tag::Free, Tag::Writing, Tag::Ready, Tag::Abandoned] {
            let s = SlotState {
                position: POSITION_MASK - 3,
                writer: 1023,
                tag,
            };
            assert_eq!(SlotState::decode(s.encode()), s);
        }
        // Byte-literal: READY at position 5 from writer 3.
        let ready = SlotState {
            position: 5,
            writer: 3,
            tag: Tag::Ready,
        };
        assert_eq!(ready.encode(), 0x0000_0000_0005_000e);
    }

    #[test]
    fn frames_come_out_in_order_and_a_full_ring_refuses_without_overwriting() {
        let ring = HeapRing::new(4);
        for i in 0..4u8 {
            assert_eq!(push(&ring, 1, meta(1), &[i]), Push::Delivered);
        }
        assert_eq!(push(&ring, 1, meta(1), &[99]), Push::Full);
        let mut out = [0u8; 8];
        for (tail, expect) in (0..4u8).enumerate() {
            assert_eq!(pop(&ring, tail as u64, &mut out), Pop::Frame(meta(1)));
            assert_eq!(
                out[0], expect,
                "frame 99 must not have overwritten anything"
            );
        }
        assert_eq!(pop(&ring, 4, &mut out), Pop::Empty);
        // The next lap works.
        assert_eq!(push(&ring, 2, meta(1), &[7]), Push::Delivered);
        assert_eq!(pop(&ring, 4, &mut out), Pop::Frame(meta(1)));
        assert_eq!(out[0], 7);
    }

    #[test]
    fn a_writer_killed_mid_copy_is_abandoned_and_skipped() {
        let ring = HeapRing::new(8);
        // Writer 5 claims and "dies" before publishing.
        assert_eq!(claim(&ring, 5), Claim::Claimed(0));
        assert_eq!(push(&ring, 6, meta(1), &[42]), Push::Delivered);
        let mut out = [0u8; 4];
        assert_eq!(pop(&ring, 0, &mut out), Pop::InProgress { writer: 5 });
        assert!(!has_work(&ring, 0));
        assert_eq!(abandon_writer(&ring, 5), 1);
        assert!(has_work(&ring, 0));
        assert_eq!(pop(&ring, 0, &mut out), Pop::Abandoned);
        assert_eq!(pop(&ring, 1, &mut out), Pop::Frame(meta(1)));
        assert_eq!(out[0], 42);
        // The dead writer, had it been alive after all, could not publish.
        assert_eq!(publish(&ring, 0, 5), Err(Abandoned));
    }

    #[test]
    fn a_lagging_reserve_hint_is_helped_forward() {
        let ring = HeapRing::new(8);
        assert_eq!(claim(&ring, 1), Claim::Claimed(0));
        // Simulate a claimant that died between its CAS and moving the hint.
        ring.reserve.store(0, Ordering::Relaxed);
        assert_eq!(claim(&ring, 2), Claim::Claimed(1));
    }

    #[test]
    fn a_new_owner_recovers_a_stale_tail() {
        let ring = HeapRing::new(4);
        assert_eq!(push(&ring, 1, meta(1), &[1]), Push::Delivered);
        let mut out = [0u8; 4];
        assert_eq!(pop(&ring, 0, &mut out), Pop::Frame(meta(1)));
        // The previous owner died before storing tail = 1; its successor starts at 0.
        assert_eq!(pop(&ring, 0, &mut out), Pop::AlreadyConsumed);
        assert_eq!(pop(&ring, 1, &mut out), Pop::Empty);
    }

    #[test]
    fn a_tail_stale_by_several_laps_skips_without_touching_the_slots() {
        let ring = HeapRing::new(4);
        let mut out = [0u8; 4];
        // The previous owner consumed 10 frames but stored no cursor.
        for i in 0..10u8 {
            assert_eq!(push(&ring, 1, meta(1), &[i]), Push::Delivered);
            assert_eq!(pop(&ring, i as u64, &mut out), Pop::Frame(meta(1)));
        }
        assert_eq!(push(&ring, 1, meta(1), &[10]), Push::Delivered);
        for tail in 0..10 {
            assert_eq!(pop(&ring, tail, &mut out), Pop::AlreadyConsumed);
        }
        assert_eq!(pop(&ring, 10, &mut out), Pop::Frame(meta(1)));
        assert_eq!(out[0], 10);
    }

    #[test]
    fn a_hint_ahead_of_every_slot_is_brought_back() {
        let ring = HeapRing::new(4);
        ring.reserve.store(4_000_001, Ordering::Relaxed);
        // Slot 1 waits for position 1: the hint returns to it instead of giving up.
        assert_eq!(claim(&ring, 1), Claim::Claimed(1));
    }

    #[test]
    fn a_scribbled_state_is_reset_not_trusted() {
        let ring = HeapRing::new(4);
        ring.states[0].store(0xdead_beef_dead_beef, Ordering::Relaxed);
        let mut out = [0u8; 4];
        assert_eq!(pop(&ring, 0, &mut out), Pop::Corrupt);
        // After the reset the slot serves its next lap; position 1.. still work.
        assert_eq!(push(&ring, 1, meta(1), &[3]), Push::Delivered);
        assert_eq!(pop(&ring, 1, &mut out), Pop::Frame(meta(1)));
    }

    #[test]
    fn positions_wrap_at_2_pow_48() {
        let ring = HeapRing::new(4);
        let start = POSITION_MASK - 1;
        for i in 0..4 {
            ring.states[((start + i) & 3) as usize].store(
                SlotState::free(advance(start, i)).encode(),
                Ordering::Relaxed,
            );
        }
        ring.reserve.store(start, Ordering::Relaxed);
        let mut out = [0u8; 4];
        let mut tail = start;
        for i in 0..6u8 {
            assert_eq!(push(&ring, 1, meta(1), &[i]), Push::Delivered);
            assert_eq!(pop(&ring, tail, &mut out), Pop::Frame(meta(1)));
            assert_eq!(out[0], i);
            tail = advance(tail, 1);
        }
        assert_eq!(tail, 4);
    }
}
