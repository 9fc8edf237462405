//! Putting a ring right after somebody died: the liveness sweep's part (a dead writer's
//! claims and buffers) and a new owner's (starting the ring afresh). The algorithm they
//! repair is in [`super`].

use std::sync::atomic::Ordering;

use super::state::POSITION_MASK;
use super::{
    AtomicWord, LARGE_FREE, LARGE_HANDED, SlotMemory, SlotState, Tag, advance, large_filling,
};

/// Marks every slot that `dead_writer` was filling as abandoned, gives back the slots it
/// held reserved, and frees the large buffers it was filling; returns how many slots. Called only once the writer is known
/// dead (its slot lock is free), so it cannot race with the writer itself.
pub fn abandon_writer<M: SlotMemory>(ring: &M, dead_writer: u16) -> u64 {
    for buffer in 0..ring.large_count() {
        let _ = ring.large_owner(buffer).compare_exchange(
            large_filling(dead_writer),
            LARGE_FREE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
    let mut count = 0;
    for index in 0..ring.slot_count() {
        let word = ring.state(index);
        // The receiver may pass over the slot between our load and our compare-and-swap
        // (WRITING → RESERVED); look again then. Only the dead writer's states qualify and
        // it cannot change them, so a few tries always settle it.
        for _ in 0..4 {
            let seen = word.load(Ordering::Acquire);
            let state = SlotState::decode(seen);
            // A dead writer's claims become abandoned (the receiver counts and skips them)
            // and its reservations are given back (nobody else will ever give them back).
            // A claim passed over late is behind the receiver's cursor: given back, it is
            // freed on a later lap, and the receiver's late list counts it lost.
            let replacement = match state.tag {
                Tag::Writing if state.writer == dead_writer => Tag::Abandoned,
                Tag::Reserved | Tag::Awaited if state.writer == dead_writer => Tag::Released,
                _ => break,
            };
            let replaced = SlotState {
                tag: replacement,
                ..state
            }
            .encode();
            if word
                .compare_exchange(seen, replaced, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                count += 1;
                break;
            }
        }
    }
    count
}

/// Whether any slot is being written (also one passed over late).
pub fn writers_in_progress<M: SlotMemory>(ring: &M) -> bool {
    (0..ring.slot_count()).any(|index| {
        matches!(
            SlotState::decode(ring.state(index).load(Ordering::Acquire)).tag,
            Tag::Writing | Tag::Awaited
        )
    })
}

/// Puts a ring in its initial state: position 0 next, every slot free for its first lap.
pub fn reset<M: SlotMemory>(ring: &M) {
    reset_at(ring, 0);
}

/// What starting a ring afresh did to the frames in it, for the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Discarded {
    /// Published frames nobody will read.
    pub unread: u64,
    /// Slots still being written, now passed over: their writers count them `stalled`.
    pub passed_over: u64,
}

/// Starts a ring afresh for a new owner; returns the position to read from and what was
/// discarded.
///
/// Whatever the previous owner left (unread frames, a cursor it died before storing,
/// slots scribbled on) is discarded by moving every slot to a lap *ahead* of any position
/// an earlier writer could have seen: a writer that was still in flight when the slot
/// changed hands finds its compare-and-swap failing (its frame counts as abandoned)
/// instead of publishing into the new owner's ring. A slot some writer still holds
/// (claimed and being written, or reserved after a pass-over) stays held: that writer may
/// still write into it, so it is passed over rather than freed, and its later laps are
/// void until the writer gives it back. Large buffers handed to the discarded frames are
/// freed.
pub fn reset_ahead<M: SlotMemory>(ring: &M) -> (u64, Discarded) {
    let slots = ring.slot_count();
    let hint = ring.reserve().load(Ordering::Acquire);
    // Two laps past the hint, on a lap boundary so that position p sits in slot p mod N.
    let base = advance(hint, 2 * slots) & !(slots - 1);
    let mut discarded = Discarded::default();
    for index in 0..slots {
        let word = ring.state(index);
        // A writer may claim, publish or give back this very slot meanwhile; then look
        // again. States only move forward, so a few tries settle it.
        for _ in 0..8 {
            let seen = word.load(Ordering::Acquire);
            let state = SlotState::decode(seen);
            let own_slot = state.position & (slots - 1) == index;
            let replacement = match state.tag {
                Tag::Writing | Tag::Awaited if own_slot => SlotState {
                    tag: Tag::Reserved,
                    ..state
                },
                Tag::Reserved | Tag::Released if own_slot => break,
                _ => SlotState::free(advance(base, index)),
            };
            if word
                .compare_exchange(
                    seen,
                    replacement.encode(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                discarded.unread += u64::from(matches!(state.tag, Tag::Ready | Tag::Late));
                discarded.passed_over +=
                    u64::from(matches!(state.tag, Tag::Writing | Tag::Awaited));
                break;
            }
        }
    }
    // Release: a writer that reads the new hint must see the new slot states.
    ring.reserve().store(base, Ordering::Release);
    // The discarded frames will never be read, so the large buffers handed to them would
    // never come back: free them. Buffers still FILLING belong to live writers (or to dead
    // ones, which the liveness sweep frees) and are left alone; a passed-over writer takes
    // back its own handed buffer when its publish fails, and does nothing harmful if it
    // was freed here first.
    for buffer in 0..ring.large_count() {
        let owner = ring.large_owner(buffer);
        let seen = owner.load(Ordering::Acquire);
        // Only buffers handed to positions before the new base: a sender may already have
        // handed one to a position of the new lap (the slots were freed for it above).
        let handed_to = (seen >> 16) & POSITION_MASK;
        let in_new_lap = handed_to.wrapping_sub(base) & POSITION_MASK < slots;
        if seen & 3 == LARGE_HANDED && !in_new_lap {
            let _ = owner.compare_exchange(seen, LARGE_FREE, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    (base, discarded)
}

fn reset_at<M: SlotMemory>(ring: &M, base: u64) {
    for index in 0..ring.slot_count() {
        ring.state(index).store(
            SlotState::free(advance(base, index)).encode(),
            Ordering::Relaxed,
        );
    }
    // Release: a writer that reads the new hint must see the new slot states.
    ring.reserve().store(base, Ordering::Release);
}
