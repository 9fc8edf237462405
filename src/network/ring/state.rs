//! A slot's state word, its positions, and the atomic operations the ring needs: the
//! vocabulary of the ring algorithm in [`super`], kept apart so that the algorithm reads
//! as the steps it takes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a position.
pub const POSITION_BITS: u32 = 48;
pub(super) const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
pub(super) const WRITER_MASK: u64 = 0x1fff;

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
    /// Passed over by the receiver while its writer, alive but not progressing, still
    /// holds it (meaningful `writer`).
    Reserved,
    /// Given back by the writer that held it reserved (or by the sweep, if it died); the
    /// receiver frees it for a later lap.
    Released,
    /// Passed over *late* by the receiver while its writer, alive, was still copying: the
    /// receiver reads on and comes back for it (meaningful `writer`).
    Awaited,
    /// Published by its writer after the receiver passed over it late: a frame the
    /// receiver still has to read (meaningful `writer`).
    Late,
}

/// A decoded slot state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Position the state is about.
    pub position: u64,
    /// Peer index of the writer (meaningful for `Writing`, `Ready` and `Reserved`).
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
            Tag::Reserved => 4,
            Tag::Released => 5,
            Tag::Awaited => 6,
            Tag::Late => 7,
        };
        ((self.position & POSITION_MASK) << 16) | ((self.writer as u64 & WRITER_MASK) << 3) | tag
    }

    /// Unpacks a word (every word decodes to some state).
    pub const fn decode(word: u64) -> SlotState {
        let tag = match word & 7 {
            0 => Tag::Free,
            1 => Tag::Writing,
            2 => Tag::Ready,
            3 => Tag::Abandoned,
            4 => Tag::Reserved,
            5 => Tag::Released,
            6 => Tag::Awaited,
            _ => Tag::Late,
        };
        SlotState {
            position: word >> 16,
            writer: ((word >> 3) & WRITER_MASK) as u16,
            tag,
        }
    }

    /// Whether the slot is held back from later laps (see the module doc): those laps'
    /// positions on it are void.
    pub const fn holds_slot(self) -> bool {
        matches!(
            self.tag,
            Tag::Reserved | Tag::Released | Tag::Awaited | Tag::Late
        )
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

/// Whether `earlier` is the position of an earlier lap of the same slot than `position`
/// (a whole number of laps before it, less than half the position space back).
pub const fn is_earlier_lap(earlier: u64, position: u64, slots: u64) -> bool {
    let distance = position.wrapping_sub(earlier) & POSITION_MASK;
    distance != 0 && distance.is_multiple_of(slots) && distance < (1 << (POSITION_BITS - 1))
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
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    #[inline]
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
