//! The receiver's side of passing over *late* (see the ring's module doc): which slots it
//! passed over while their writers were still copying, and reading them once published.
//!
//! The list lives in the receiver's private memory; the slots' states say the rest
//! (`AWAITED` while the writer copies, `LATE` once it has published). It is short: a
//! writer holds at most one claim at a time, so it only needs room for the writers that
//! can be descheduled mid-copy at once. When it is full, the receiver waits at its cursor
//! as it would without it.

use std::sync::atomic::Ordering;

use super::{
    AtomicWord, Pop, SlotMemory, SlotMeta, SlotState, Tag, advance, read_frame, release_large,
    retag,
};

/// Whether a frame is published within `room` positions past `tail`, past nothing but
/// slots still being written, on a memory that keeps the receiver's cursor (see
/// [`LateList::worth_passing`]): what makes passing over the writer at `tail` worth it.
pub fn published_behind<M: SlotMemory>(ring: &M, tail: u64, room: usize) -> bool {
    if ring.consumed_hint().is_none() {
        return false;
    }
    let slots = ring.slot_count();
    for ahead in 1..=(room as u64).min(slots - 1) {
        let position = advance(tail, ahead);
        let state = SlotState::decode(ring.state(position & (slots - 1)).load(Ordering::Relaxed));
        if state.position != position {
            return false;
        }
        match state.tag {
            Tag::Ready => return true,
            Tag::Writing => {}
            _ => return false,
        }
    }
    false
}

/// Slots a receiver has passed over late and not yet read or given up on, oldest first.
#[derive(Debug)]
pub struct LateList {
    entries: Vec<Entry>,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    position: u64,
    writer: u16,
    /// When the receiver passed it over, in the caller's clock.
    since: u64,
}

/// What [`LateList::next`] did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateStep {
    /// Its writer published: the frame was copied out (`meta.len` unchecked, as with
    /// [`Pop::Frame`]) and the slot marked `RELEASED`, to be freed on a later lap.
    Frame(SlotMeta),
    /// The receiver waited long enough: the slot is `RESERVED` for its writer, which
    /// counts the frame passed over when it publishes, as the receiver does now.
    GaveUp,
    /// The slot no longer waits for this frame: its writer died and the sweep gave the
    /// slot back, or the ring was started afresh. The frame is lost.
    Lost,
    /// The published slot names a large buffer not handed to it (scribbled metadata).
    Corrupt,
}

impl LateList {
    /// A list with room for `capacity` slots.
    pub fn new(capacity: usize) -> LateList {
        LateList {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Whether no slot is waited for.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a slot of `writer` is waited for: its later frames must wait for it.
    pub fn holds(&self, writer: u16) -> bool {
        self.entries.iter().any(|entry| entry.writer == writer)
    }

    /// The writer whose late frames must be read before the frame `state` says waits at
    /// `tail`, if any: a frame published by a writer passed over late. That writer claimed
    /// it after publishing its late one, so the late one is `LATE` by now (seen through the
    /// Acquire of `state`), and goes first ([`LateList::next`] with that writer).
    pub fn owed_before(&self, state: SlotState, tail: u64) -> Option<u16> {
        (!self.entries.is_empty()
            && state.tag == Tag::Ready
            && state.position == tail
            && self.holds(state.writer))
        .then_some(state.writer)
    }

    /// Whether passing over the writer holding `tail` would let the receiver read on: past
    /// it, within the room left in the list, and past other slots still being written,
    /// a frame is published. (With nothing published behind it, passing over gains
    /// nothing: the receiver would only wait further on.)
    ///
    /// Never on a memory without the receiver's cursor ([`SlotMemory::consumed_hint`]):
    /// a late slot stays held while the receiver reads on past its later laps, and only
    /// senders that see the cursor may skip those void positions; the others would find
    /// the ring full until the receiver came round to free the slot, which it cannot do
    /// before they fill the positions in between.
    pub fn worth_passing<M: SlotMemory>(&self, ring: &M, tail: u64) -> bool {
        published_behind(ring, tail, self.room())
    }

    /// How many more slots the list can hold.
    pub fn room(&self) -> usize {
        self.capacity - self.entries.len()
    }

    /// Gives back a slot whose state says passed over late (`state`, as seen at a later
    /// lap's position) though this list never passed it: a forged state, which would
    /// otherwise hold the slot for ever. Returns whether it did (the caller counts it).
    pub fn release_forged<M: SlotMemory>(&self, ring: &M, state: SlotState) -> bool {
        if !matches!(state.tag, Tag::Awaited | Tag::Late)
            || self
                .entries
                .iter()
                .any(|entry| entry.position == state.position)
        {
            return false;
        }
        retag(ring, state.position, state.writer, state.tag, Tag::Released)
    }

    /// Passes over late the slot at `tail` that `writer` is filling: `WRITING → AWAITED`,
    /// noted at `now`. Returns false when the list is full or the state changed meanwhile
    /// (the writer published: read the slot again).
    pub fn pass<M: SlotMemory>(&mut self, ring: &M, tail: u64, writer: u16, now: u64) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        let passed = retag(ring, tail, writer, Tag::Writing, Tag::Awaited);
        if passed {
            self.entries.push(Entry {
                position: tail,
                writer,
                since: now,
            });
        }
        passed
    }

    /// Deals with the oldest entry that can be dealt with now (of `only` that writer, if
    /// given): copies a published frame into `out`, gives up on one that is `due` (given
    /// its writer and since when it is waited for), or drops one whose slot moved on.
    /// `None` when every entry (of that writer) still waits.
    pub fn next<M: SlotMemory>(
        &mut self,
        ring: &M,
        only: Option<u16>,
        out: &mut [u8],
        due: impl Fn(u16, u64) -> bool,
    ) -> Option<LateStep> {
        let slots = ring.slot_count();
        let mut at = 0;
        while let Some(&entry) = self.entries.get(at) {
            if only.is_some_and(|writer| writer != entry.writer) {
                at += 1;
                continue;
            }
            let index = entry.position & (slots - 1);
            let state = |tag| {
                SlotState {
                    position: entry.position,
                    writer: entry.writer,
                    tag,
                }
                .encode()
            };
            // Acquire: the bytes of a frame published LATE are visible once that is seen.
            let seen = ring.state(index).load(Ordering::Acquire);
            if seen == state(Tag::Late) {
                let step = match read_frame(ring, entry.position, out) {
                    Pop::Frame(meta) => LateStep::Frame(meta),
                    _ => LateStep::Corrupt,
                };
                // Our copy is complete before anyone reuses the slot, which the receiver
                // frees on a later lap as it does any given-back slot.
                retag(ring, entry.position, entry.writer, Tag::Late, Tag::Released);
                self.entries.remove(at);
                return Some(step);
            }
            if seen == state(Tag::Awaited) {
                if !due(entry.writer, entry.since) {
                    at += 1;
                    continue;
                }
                if retag(
                    ring,
                    entry.position,
                    entry.writer,
                    Tag::Awaited,
                    Tag::Reserved,
                ) {
                    self.entries.remove(at);
                    return Some(LateStep::GaveUp);
                }
                // Published at the last moment: look again.
                continue;
            }
            // A writer that died after handing a large buffer to this position cannot take
            // it back, and the slot, given back by the sweep, will not be read: free it
            // (only if it really was handed to this position).
            if seen == state(Tag::Released) {
                release_large(ring, ring.read_meta(index), entry.position);
            }
            self.entries.remove(at);
            return Some(LateStep::Lost);
        }
        None
    }
}
