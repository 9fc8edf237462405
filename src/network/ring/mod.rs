//! The receive ring: many senders, one receiver, no locks, and no way for a dead sender to
//! wedge it.
//!
//! Each peer owns one ring of `N` slots (a power of two). Frames are numbered by an
//! ever-increasing *position*; position `p` lives in slot `p mod N`. Every slot carries one
//! 64-bit state word that says, for one position, what the slot holds:
//!
//! ```text
//!  63                      16 15            3 2   0
//! +--------------------------+---------------+-----+
//! |   position (48 bits)     | writer (13 b) | tag |   tag: FREE, WRITING, READY, ABANDONED,
//! +--------------------------+---------------+-----+        RESERVED, RELEASED, AWAITED, LATE
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
//!   state into `ABANDONED(p)`; the receiver counts and skips it.
//! - A sender that is alive but descheduled between its claim and its publish (several
//!   senders sharing a core) would hold every frame behind it. When frames published after
//!   its claim wait behind it, the receiver passes over it *late*: `WRITING(p, w) →
//!   AWAITED(p, w)`, notes `p` in its [`LateList`] and reads on. The writer's publish then
//!   finds `AWAITED` and turns it into `LATE(p, w)` instead of `READY`, and the receiver
//!   reads the frame from its list. Order per sender holds because a sender claims its next
//!   position only after publishing the one before: once the receiver sees a later frame of
//!   `w` published (Acquire), `w`'s late frame is `LATE` too, and the receiver reads it
//!   first. The frame is lost only if its writer dies (the sweep gives the slot back) or the
//!   receiver gives up on it (below).
//! - If a sender is alive but does not finish (stopped by `SIGSTOP` or a debugger halfway
//!   through its copy), the receiver waits for it only a bounded time, then *passes over*
//!   the slot: `WRITING(p, w) → RESERVED(p, w)`, counts the frame as `stalled` and reads on.
//!   The slot stays reserved for that writer, because it may wake up and go on copying
//!   into it at any moment: nobody else may write it or read it until the writer is done.
//!   When it wakes, its publishing compare-and-swap fails on `RESERVED`; it counts the
//!   frame as `stalled` too and gives the slot back, `RESERVED(p, w) → RELEASED(p)`. A
//!   writer that dies instead is released by the liveness sweep. The frame is dropped on
//!   both sides and never delivered, so nothing torn is ever read and per-sender order
//!   holds (a writer's later frames cannot overtake a frame that is never delivered).
//!   A late slot the receiver has waited for as long gets the same: `AWAITED → RESERVED`.
//! - While a slot is `RESERVED`, `RELEASED`, `AWAITED` or `LATE` for an earlier lap, the
//!   positions of later laps that fall on it are *void*: senders skip them when claiming
//!   and the receiver skips them when reading, both without counting anything, since no
//!   frame was ever there. Once the receiver has read a late frame it marks the slot
//!   `RELEASED` too. The receiver turns a `RELEASED` slot back into `FREE` for the lap after
//!   the one it is reading, which is the only lap no sender can have skipped yet. So a
//!   stopped writer costs its receiver one slot of capacity, never a stall.
//!
//! The reserve cursor in the control block is only a hint of the next position to try;
//! anyone who sees it lag behind the slot states helps it forward. Positions wrap at
//! 2^48, which at 20 Mpps is five months; all comparisons are equalities modulo 2^48, so
//! the wrap is harmless.
//!
//! **Large frames.** A frame too big for a slot (a segmentation-offload super-frame of up
//! to 64 KiB) travels in one of the ring's few *large buffers*; its slot carries only the
//! metadata and the buffer's number. A large buffer's owner word says who holds it:
//!
//! - `FREE`; a sender claims one by compare-and-swap to `FILLING(writer)` and copies;
//! - before publishing the slot that refers to it, the sender hands it to that position,
//!   `HANDED(p)`; from then on it belongs to the receiver, which copies it out and frees
//!   it when it reads (or skips) position `p`;
//! - a writer that dies while `FILLING` loses its buffers to the liveness sweep. A buffer
//!   is never freed by anyone while a live party may still touch it.
//!
//! The algorithm is written against [`SlotMemory`], so the same code runs on the shared
//! region and, in the tests, on memory whose atomics the `shuttle` scheduler controls.

use std::sync::atomic::Ordering;

mod late;
mod recovery;
mod state;

pub use late::{LateList, LateStep, published_behind};
pub use recovery::{Discarded, abandon_writer, reset, reset_ahead, writers_in_progress};
pub use state::{AtomicWord, POSITION_BITS, SlotState, Tag, advance, is_earlier_lap};
use state::{POSITION_MASK, WRITER_MASK};

/// What travels in a slot header beside the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotMeta {
    /// Frame length as the writer claims it (untrusted until checked).
    pub len: u32,
    /// Generation of the receiver the frame was meant for.
    pub generation: u32,
    /// Offload metadata (a virtio-net header), opaque to the ring.
    pub offload: [u32; 3],
    /// Large buffer holding the frame, plus one; 0 when the frame is in the slot.
    pub large: u32,
}

/// A large buffer's owner word when nobody holds it.
pub const LARGE_FREE: u64 = 0;
const LARGE_FILLING: u64 = 1;
const LARGE_HANDED: u64 = 2;

/// A large buffer's owner word while `writer` copies a frame into it.
pub const fn large_filling(writer: u16) -> u64 {
    LARGE_FILLING | ((writer as u64 & WRITER_MASK) << 2)
}

/// A large buffer's owner word once handed to the frame at `position`.
pub const fn large_handed(position: u64) -> u64 {
    LARGE_HANDED | ((position & POSITION_MASK) << 16)
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
    /// The receiver's cursor as last stored, if the memory keeps one (see [`claim`]).
    fn consumed_hint(&self) -> Option<u64> {
        None
    }
    /// Bytes a slot holds.
    fn slot_capacity(&self) -> usize;
    /// Writes metadata and `bytes` (at most [`SlotMemory::slot_capacity`]) into slot
    /// `index`; `meta.len` is stored as given. Plain (relaxed) writes: the publishing CAS
    /// orders them.
    fn write_frame(&self, index: u64, meta: SlotMeta, bytes: &[u8]);
    /// [`SlotMemory::write_frame`] of a frame given in consecutive parts (a header, a
    /// VLAN tag, the rest), so that a sender retagging a frame copies it once. The default
    /// joins the parts first; memories on the data path write them in place.
    fn write_frame_parts(&self, index: u64, meta: SlotMeta, parts: &[&[u8]]) {
        self.write_frame(index, meta, &parts.concat());
    }
    /// Reads slot `index`'s metadata.
    fn read_meta(&self, index: u64) -> SlotMeta;
    /// Copies `len` bytes (clamped to the slot and to `out`) of slot `index`'s frame.
    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]);

    /// Number of large buffers (none by default).
    fn large_count(&self) -> u64 {
        0
    }
    /// Bytes a large buffer holds.
    fn large_capacity(&self) -> usize {
        0
    }
    /// Where producers start looking for a free large buffer.
    fn large_hint(&self) -> &Self::Word {
        self.reserve()
    }
    /// Owner word of large buffer `index` (< large_count).
    fn large_owner(&self, index: u64) -> &Self::Word {
        self.state(index)
    }
    /// Copies a frame into large buffer `index`.
    fn write_large(&self, _index: u64, _frame: &[u8]) {}
    /// [`SlotMemory::write_large`] of a frame given in consecutive parts (see
    /// [`SlotMemory::write_frame_parts`]).
    fn write_large_parts(&self, index: u64, parts: &[&[u8]]) {
        self.write_large(index, &parts.concat());
    }
    /// Copies `len` bytes (clamped) of large buffer `index` into `out`.
    fn read_large(&self, _index: u64, _len: usize, _out: &mut [u8]) {}

    /// Tells a receiver that may be asleep that a frame it passed over late is now
    /// published (see [`LateList`]); called by the writer after `AWAITED → LATE`.
    fn note_late(&self) {}

    /// A hint that slot `index` is about to be written with a frame of about `len` bytes:
    /// its memory may fetch the slot's lines ahead, so that the copy into it and the
    /// publish after do not wait for them.
    fn prefetch_for_write(&self, _index: u64, _len: usize) {}
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

/// How many slots past the one it claimed a sender asks for the lines of
/// ([`SlotMemory::prefetch_for_write`]). A line the receiver's core read last takes longer
/// to come over than one frame's copy and publish: asked for one slot ahead it was still on
/// its way when the next claim's compare-and-swap needed it (9 Mpps against 13.6–14.1 at 4
/// ahead for 64-byte frames, one sender and one receiver; 8, 16 and 32 ahead no better).
const WRITE_AHEAD: u64 = 4;

/// How many laps past the receiver's cursor the reserve hint must be before a sender takes
/// it for scribbled and brings it back (see [`claim`]).
const HINT_RUNAWAY_LAPS: u64 = 4;

/// Claims the next free position for `writer`.
pub fn claim<M: SlotMemory>(ring: &M, writer: u16) -> Claim {
    let slots = ring.slot_count();
    for _ in 0..CLAIM_TRIES {
        let position = ring.reserve().load(Ordering::Acquire) & POSITION_MASK;
        // A lap ahead of the receiver's cursor means full, without touching the slot's
        // cache line, which the receiver is about to read: an overrunning sender must not
        // pull it back and forth. The cursor is only stored once per receive batch, so it
        // may lag by up to one receive budget: near the brim a frame can be refused that
        // would just have fitted. It is counted like any other full-ring drop.
        if let Some(consumed) = ring.consumed_hint() {
            let ahead = position.wrapping_sub(consumed) & POSITION_MASK;
            if ahead >= HINT_RUNAWAY_LAPS * slots {
                // No correct run puts the hint this far past the cursor (claims stop a lap
                // ahead of it; a stale read or a handover adds a lap or two), nor behind it:
                // the hint was scribbled. Left alone, every send would be refused as full
                // for ever. Bring it back to the cursor; senders then help it forward over
                // the positions already taken.
                let _ = ring.reserve().compare_exchange(
                    position,
                    consumed,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                continue;
            }
            if ahead >= slots {
                return Claim::Full;
            }
        }
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
        } else if state.holds_slot() && is_earlier_lap(state.position, position, slots) {
            // A void position: the slot is held back for a writer the receiver passed over
            // (or waits for the receiver to free it). The receiver skips it too, and frees
            // the slot for the lap after the one it is reading; so a claim may skip a void
            // position only if it is less than a lap ahead of the receiver. The cursor
            // check above makes sure of that; without a cursor, only the lap right after
            // the passed-over position is known to be.
            if ring.consumed_hint().is_none()
                && state.position != advance(position, slots.wrapping_neg())
            {
                return Claim::Full;
            }
            help_reserve(ring, position);
        } else if state.position == advance(position, slots.wrapping_neg()) {
            // The slot still holds the previous lap: unread, being written, or abandoned
            // but not yet skipped by its receiver. Either way it is not ours.
            if state.tag != Tag::Free {
                return Claim::Full;
            }
            return Claim::Busy;
        } else {
            // The hint lags (its mover died between claim and update) or the ring is
            // corrupt; move it along and look again.
            help_reserve(ring, position);
        }
    }
    Claim::Busy
}

fn help_reserve<M: SlotMemory>(ring: &M, position: u64) {
    // A plain store, not a compare-and-swap: the reserve is only a hint, every decision is
    // re-checked against the slot state with Acquire, and a store that races another may
    // move the hint back a little, which the next claim walks forward over. The locked
    // instruction it replaces cost about a tenth of a sender's time per frame.
    ring.reserve()
        .store(advance(position, 1), Ordering::Relaxed);
}

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpublished {
    /// The claim was taken from us: we were believed dead, or the ring changed hands.
    Abandoned,
    /// The receiver passed over our slot because we took too long; the slot is given back.
    PassedOver,
}

/// Publishes a claimed, filled slot: `READY`, or `LATE` if the receiver passed over it
/// late meanwhile. If the receiver gave up on it, gives the slot back
/// (`RESERVED → RELEASED`).
pub fn publish<M: SlotMemory>(ring: &M, position: u64, writer: u16) -> Result<(), Unpublished> {
    let word = ring.state(position & (ring.slot_count() - 1));
    let mine = |tag| {
        SlotState {
            position,
            writer,
            tag,
        }
        .encode()
    };
    // Release: the frame bytes and metadata written before must be visible to the
    // receiver that sees READY (or LATE) with Acquire.
    let Err(mut actual) = word.compare_exchange(
        mine(Tag::Writing),
        mine(Tag::Ready),
        Ordering::Release,
        Ordering::Relaxed,
    ) else {
        return Ok(());
    };
    if actual == mine(Tag::Awaited) {
        // The receiver read on past us and waits for this frame aside; only it may give
        // up on it (AWAITED → RESERVED), so a failure here means it just did.
        match word.compare_exchange(
            actual,
            mine(Tag::Late),
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                ring.note_late();
                return Ok(());
            }
            Err(now) => actual = now,
        }
    }
    let reserved = mine(Tag::Reserved);
    if actual != reserved {
        return Err(Unpublished::Abandoned);
    }
    let released = mine(Tag::Released);
    // Release: our last writes into the slot happen before whoever reuses it sees it freed.
    // Only we may release our reservation (or the sweep once we are dead), so this cannot
    // fail; if a scribbler got there first, its state is handled as any other.
    let _ = word.compare_exchange(reserved, released, Ordering::Release, Ordering::Relaxed);
    Err(Unpublished::PassedOver)
}

/// Claims, writes and publishes a frame in one go; a frame too big for a slot goes into
/// a large buffer. (The same as [`push_parts`] with one part, written out: this is every
/// frame's path on a network without VLANs, and a slice of parts costs it measurably.)
pub fn push<M: SlotMemory>(ring: &M, writer: u16, meta: SlotMeta, frame: &[u8]) -> Push {
    let meta = SlotMeta {
        len: frame.len() as u32,
        large: 0,
        ..meta
    };
    if frame.len() > ring.slot_capacity() {
        return push_large(ring, writer, meta, frame.len(), &[frame]);
    }
    match claim(ring, writer) {
        Claim::Claimed(position) => {
            // Our next frames (or the next sender's) likely go into the next slots, and are
            // likely about as long as this one.
            ring.prefetch_for_write(
                advance(position, WRITE_AHEAD) & (ring.slot_count() - 1),
                frame.len(),
            );
            ring.write_frame(position & (ring.slot_count() - 1), meta, frame);
            match publish(ring, position, writer) {
                Ok(()) => Push::Delivered,
                Err(Unpublished::Abandoned) => Push::Abandoned,
                Err(Unpublished::PassedOver) => Push::PassedOver,
            }
        }
        Claim::Full => Push::Full,
        Claim::Busy => Push::Busy,
    }
}

/// [`push`] of a frame given in consecutive parts, written in place one after the other.
pub fn push_parts<M: SlotMemory>(ring: &M, writer: u16, meta: SlotMeta, parts: &[&[u8]]) -> Push {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let meta = SlotMeta {
        len: len as u32,
        large: 0,
        ..meta
    };
    if len > ring.slot_capacity() {
        return push_large(ring, writer, meta, len, parts);
    }
    match claim(ring, writer) {
        Claim::Claimed(position) => {
            ring.prefetch_for_write(
                advance(position, WRITE_AHEAD) & (ring.slot_count() - 1),
                len,
            );
            ring.write_frame_parts(position & (ring.slot_count() - 1), meta, parts);
            match publish(ring, position, writer) {
                Ok(()) => Push::Delivered,
                Err(Unpublished::Abandoned) => Push::Abandoned,
                Err(Unpublished::PassedOver) => Push::PassedOver,
            }
        }
        Claim::Full => Push::Full,
        Claim::Busy => Push::Busy,
    }
}

fn push_large<M: SlotMemory>(
    ring: &M,
    writer: u16,
    meta: SlotMeta,
    len: usize,
    parts: &[&[u8]],
) -> Push {
    if len > ring.large_capacity() {
        return Push::TooLarge;
    }
    let Some(buffer) = claim_large(ring, writer) else {
        return Push::Full;
    };
    ring.write_large_parts(buffer, parts);
    let owner = ring.large_owner(buffer);
    match claim(ring, writer) {
        Claim::Claimed(position) => {
            ring.prefetch_for_write(advance(position, WRITE_AHEAD) & (ring.slot_count() - 1), 0);
            // Name the buffer in the slot first, then hand the buffer to the position, then
            // publish. A writer dying before the hand-over leaves a FILLING buffer, which
            // the liveness sweep frees; one dying after it leaves an abandoned slot that
            // names a HANDED buffer, which the receiver frees when it skips the slot. From
            // the hand-over on, only the receiver frees it, so the sweep can never pull it
            // from under a reader.
            let meta = SlotMeta {
                large: buffer as u32 + 1,
                ..meta
            };
            ring.write_frame(position & (ring.slot_count() - 1), meta, &[]);
            owner.store(large_handed(position), Ordering::Release);
            match publish(ring, position, writer) {
                Ok(()) => Push::Delivered,
                Err(unpublished) => {
                    // The buffer was handed to a position that will never be read: the
                    // receiver passed over it, or the ring changed hands and the position
                    // is gone. Take it back, or nobody ever would. (The receiver may free
                    // it at the same moment when it skips an abandoned slot; the
                    // compare-and-swap lets exactly one of us do it, and fails harmlessly
                    // if the buffer has since gone to another frame.)
                    let _ = owner.compare_exchange(
                        large_handed(position),
                        LARGE_FREE,
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                    match unpublished {
                        Unpublished::Abandoned => Push::Abandoned,
                        Unpublished::PassedOver => Push::PassedOver,
                    }
                }
            }
        }
        refused => {
            owner.store(LARGE_FREE, Ordering::Release);
            if refused == Claim::Full {
                Push::Full
            } else {
                Push::Busy
            }
        }
    }
}

fn claim_large<M: SlotMemory>(ring: &M, writer: u16) -> Option<u64> {
    let count = ring.large_count();
    let start = ring.large_hint().load(Ordering::Relaxed);
    for i in 0..count {
        let buffer = start.wrapping_add(i) % count;
        let owner = ring.large_owner(buffer);
        // Acquire on success: the receiver's copy out of the buffer happened before it
        // freed it, and must not see our writes.
        if owner.load(Ordering::Relaxed) == LARGE_FREE
            && owner
                .compare_exchange(
                    LARGE_FREE,
                    large_filling(writer),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            ring.large_hint()
                .store(buffer.wrapping_add(1), Ordering::Relaxed);
            return Some(buffer);
        }
    }
    None
}

/// Frees the large buffer a slot at `position` names, if it really was handed to it.
/// Returns false when the slot names a buffer that is not its own (scribbled metadata).
fn release_large<M: SlotMemory>(ring: &M, meta: SlotMeta, position: u64) -> bool {
    let Some(buffer) = meta.large.checked_sub(1).map(u64::from) else {
        return true;
    };
    if buffer >= ring.large_count() {
        return false;
    }
    let owner = ring.large_owner(buffer);
    owner
        .compare_exchange(
            large_handed(position),
            LARGE_FREE,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
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
    /// Our claim was taken from us (we were believed dead, or the ring changed hands).
    Abandoned,
    /// We took so long that the receiver passed over our slot; the frame is dropped.
    PassedOver,
    /// The frame is bigger than anything the ring can hold.
    TooLarge,
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
    /// The slot was already consumed by a previous owner of this ring; the tail advances.
    AlreadyConsumed,
    /// The slot's state makes no sense for `tail`; it was reset. The tail advances.
    Corrupt,
    /// A void position: its slot is held back for a writer passed over on an earlier lap
    /// (`held_by`, if it still holds it). Nothing was there; the tail advances.
    Void {
        /// The writer still holding the slot, if any.
        held_by: Option<u16>,
    },
}

impl Pop {
    /// Whether this step moved the tail on.
    pub const fn advances(self) -> bool {
        !matches!(self, Pop::Empty | Pop::InProgress { .. })
    }
}

/// Reads position `tail`, copying a frame into `out`.
pub fn pop<M: SlotMemory>(ring: &M, tail: u64, out: &mut [u8]) -> Pop {
    pop_seen(ring, tail, peek(ring, tail), out)
}

/// The state of the slot position `tail` falls on (Acquire: a published frame's bytes
/// are visible once its state is seen).
pub fn peek<M: SlotMemory>(ring: &M, tail: u64) -> SlotState {
    SlotState::decode(
        ring.state(tail & (ring.slot_count() - 1))
            .load(Ordering::Acquire),
    )
}

/// [`pop`] acting on the state [`peek`] returned, for a receiver that decides something
/// by the state first (see [`LateList`]).
pub fn pop_seen<M: SlotMemory>(ring: &M, tail: u64, state: SlotState, out: &mut [u8]) -> Pop {
    let slots = ring.slot_count();
    let word = ring.state(tail & (slots - 1));
    let next_lap = SlotState::free(advance(tail, slots)).encode();
    if state.holds_slot() && (state.position == tail || is_earlier_lap(state.position, tail, slots))
    {
        return pop_void(ring, state, tail, next_lap);
    }
    if state.position == tail {
        match state.tag {
            Tag::Free => Pop::Empty,
            Tag::Writing => Pop::InProgress {
                writer: state.writer,
            },
            Tag::Ready => {
                let step = read_frame(ring, tail, out);
                // Release: our copy must be complete before a sender may reuse the slot.
                word.store(next_lap, Ordering::Release);
                step
            }
            Tag::Abandoned => {
                // The writer may have handed a large buffer to this position before dying.
                release_large(ring, ring.read_meta(tail & (slots - 1)), tail);
                word.store(next_lap, Ordering::Release);
                Pop::Abandoned
            }
            // Handled by pop_void above.
            Tag::Reserved | Tag::Released | Tag::Awaited | Tag::Late => Pop::Void { held_by: None },
        }
    } else if state.position == advance(tail, slots) && state.tag == Tag::Free {
        Pop::AlreadyConsumed
    } else {
        word.store(next_lap, Ordering::Release);
        Pop::Corrupt
    }
}

/// Skips a void position whose slot is held back (see the module doc); a slot its writer
/// has given back is freed for the lap after `tail`'s.
fn pop_void<M: SlotMemory>(ring: &M, state: SlotState, tail: u64, next_lap: u64) -> Pop {
    match state.tag {
        Tag::Reserved => {
            return Pop::Void {
                held_by: Some(state.writer),
            };
        }
        // Passed over late: the receiver's late list has it, and frees it once read.
        Tag::Awaited | Tag::Late => return Pop::Void { held_by: None },
        _ => {}
    }
    let word = ring.state(tail & (ring.slot_count() - 1));
    let released = state.encode();
    // A large buffer handed to the passed-over position is its writer's to take back; a
    // writer that died after handing it cannot, so free it here (only if it really was
    // handed to that position).
    release_large(
        ring,
        ring.read_meta(tail & (ring.slot_count() - 1)),
        state.position,
    );
    // Release: the writer's last bytes in the slot happen before a sender reuses it. The
    // lap after `tail`'s is the first no sender can have skipped: claims never run more
    // than a lap ahead of the receiver.
    let _ = word.compare_exchange(released, next_lap, Ordering::Release, Ordering::Relaxed);
    Pop::Void { held_by: None }
}

/// Passes over the slot at `tail` whose writer is alive but has not finished in time:
/// `WRITING(tail, writer) → RESERVED(tail, writer)`. Returns false if the writer published
/// (or the state changed) meanwhile; the caller then reads the slot again.
pub fn pass_over<M: SlotMemory>(ring: &M, tail: u64, writer: u16) -> bool {
    retag(ring, tail, writer, Tag::Writing, Tag::Reserved)
}

/// Moves the slot at `position` from `from` to `to`, both for `writer`, if it is still
/// in `from`; returns whether it did. AcqRel: whoever moves a state on sees what its
/// writer did before, and is seen by whoever sees the new state.
fn retag<M: SlotMemory>(ring: &M, position: u64, writer: u16, from: Tag, to: Tag) -> bool {
    let state = |tag| {
        SlotState {
            position,
            writer,
            tag,
        }
        .encode()
    };
    ring.state(position & (ring.slot_count() - 1))
        .compare_exchange(state(from), state(to), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Copies out the frame published at `position` (in its slot, or the large buffer its
/// slot names), `meta.len` unchecked as in [`Pop::Frame`].
fn read_frame<M: SlotMemory>(ring: &M, position: u64, out: &mut [u8]) -> Pop {
    let index = position & (ring.slot_count() - 1);
    let meta = ring.read_meta(index);
    if meta.large == 0 {
        ring.read_bytes(index, meta.len as usize, out);
        Pop::Frame(meta)
    } else {
        pop_large(ring, meta, position, out)
    }
}

/// Marks the slot at `tail` abandoned when the writer it names cannot exist (outside the
/// peer table, or a free entry): nobody will ever publish it. Returns whether it did.
pub fn abandon_nonexistent<M: SlotMemory>(ring: &M, tail: u64, writer: u16) -> bool {
    retag(ring, tail, writer, Tag::Writing, Tag::Abandoned)
}

/// Gives back, on the writer's behalf, a slot held reserved by a writer that cannot exist
/// or is dead: `RESERVED(p, writer) → RELEASED(p)` for the slot `position` falls on.
pub fn release_reservation<M: SlotMemory>(ring: &M, position: u64, writer: u16) {
    let index = position & (ring.slot_count() - 1);
    let word = ring.state(index);
    let seen = word.load(Ordering::Acquire);
    let state = SlotState::decode(seen);
    if state.tag == Tag::Reserved && state.writer == writer {
        let released = SlotState {
            tag: Tag::Released,
            ..state
        };
        let _ = word.compare_exchange(seen, released.encode(), Ordering::AcqRel, Ordering::Relaxed);
    }
}

fn pop_large<M: SlotMemory>(ring: &M, meta: SlotMeta, tail: u64, out: &mut [u8]) -> Pop {
    let buffer = u64::from(meta.large - 1);
    let handed = buffer < ring.large_count()
        && ring.large_owner(buffer).load(Ordering::Acquire) == large_handed(tail);
    if !handed {
        // The slot names a buffer that was not handed to it: scribbled metadata. Touching
        // that buffer could steal another frame's, so leave it alone.
        return Pop::Corrupt;
    }
    ring.read_large(buffer, meta.len as usize, out);
    release_large(ring, meta, tail);
    Pop::Frame(meta)
}

/// Whether a frame (or something else that needs the receiver) waits at `tail`.
pub fn has_work<M: SlotMemory>(ring: &M, tail: u64) -> bool {
    let state = SlotState::decode(
        ring.state(tail & (ring.slot_count() - 1))
            .load(Ordering::Acquire),
    );
    !(state.position == tail && matches!(state.tag, Tag::Free | Tag::Writing))
}

/// The writer holding the slot at `tail` while it copies a frame, if one does.
pub fn in_progress<M: SlotMemory>(ring: &M, tail: u64) -> Option<u16> {
    let state = SlotState::decode(
        ring.state(tail & (ring.slot_count() - 1))
            .load(Ordering::Acquire),
    );
    (state.position == tail && state.tag == Tag::Writing).then_some(state.writer)
}

#[cfg(test)]
mod tests;
