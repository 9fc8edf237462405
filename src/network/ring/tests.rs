//! The ring algorithm step by step, on a heap ring in one thread (the interleavings are
//! `tests/ring_concurrency.rs`'s).

use super::*;
use std::cell::RefCell;
use std::sync::atomic::AtomicU64;

/// A heap ring for single-threaded tests: slots of 16 bytes, two large buffers.
pub struct HeapRing {
    reserve: AtomicU64,
    large_hint: AtomicU64,
    states: Vec<AtomicU64>,
    owners: Vec<AtomicU64>,
    frames: RefCell<Vec<(SlotMeta, Vec<u8>)>>,
    large: RefCell<Vec<Vec<u8>>>,
}

const SLOT_CAPACITY: usize = 16;
const LARGE_CAPACITY: usize = 64;

impl HeapRing {
    pub fn new(slots: u64) -> Self {
        let ring = HeapRing {
            reserve: AtomicU64::new(0),
            large_hint: AtomicU64::new(0),
            states: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            owners: (0..2).map(|_| AtomicU64::new(0)).collect(),
            frames: RefCell::new(vec![(SlotMeta::default(), Vec::new()); slots as usize]),
            large: RefCell::new(vec![Vec::new(); 2]),
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
    fn slot_capacity(&self) -> usize {
        SLOT_CAPACITY
    }
    fn write_frame(&self, index: u64, meta: SlotMeta, bytes: &[u8]) {
        self.frames.borrow_mut()[index as usize] = (meta, bytes.to_vec());
    }
    fn read_meta(&self, index: u64) -> SlotMeta {
        self.frames.borrow()[index as usize].0
    }
    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]) {
        let frames = self.frames.borrow();
        let bytes = &frames[index as usize].1;
        let n = len.min(bytes.len()).min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
    }
    fn large_count(&self) -> u64 {
        self.owners.len() as u64
    }
    fn large_capacity(&self) -> usize {
        LARGE_CAPACITY
    }
    fn large_hint(&self) -> &AtomicU64 {
        &self.large_hint
    }
    fn large_owner(&self, index: u64) -> &AtomicU64 {
        &self.owners[index as usize]
    }
    fn write_large(&self, index: u64, frame: &[u8]) {
        self.large.borrow_mut()[index as usize] = frame.to_vec();
    }
    fn read_large(&self, index: u64, len: usize, out: &mut [u8]) {
        let large = self.large.borrow();
        let bytes = &large[index as usize];
        let n = len.min(bytes.len()).min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
    }
}

fn meta(len: usize) -> SlotMeta {
    SlotMeta {
        len: len as u32,
        generation: 1,
        ..SlotMeta::default()
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
    assert_eq!(ready.encode(), 0x0000_0000_0005_001a);
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
    assert_eq!(publish(&ring, 0, 5), Err(Unpublished::Abandoned));
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
fn a_ring_reset_for_a_new_owner_discards_the_old_and_fences_off_late_writers() {
    let ring = HeapRing::new(4);
    assert_eq!(push(&ring, 1, meta(1), &[1]), Push::Delivered);
    assert_eq!(claim(&ring, 2), Claim::Claimed(1)); // in flight across the handover
    let (start, discarded) = reset_ahead(&ring);
    assert_eq!(start % 4, 0);
    assert_eq!(
        discarded,
        Discarded {
            unread: 1,
            passed_over: 1
        },
        "the unread frame and the late writer's are counted"
    );
    let mut out = [0u8; 4];
    assert_eq!(
        pop(&ring, start, &mut out),
        Pop::Empty,
        "old frames are gone"
    );
    // The late writer may still be copying into its slot, so the slot stays held for
    // it; its frame is never published into the new owner's ring.
    assert_eq!(
        publish(&ring, 1, 2),
        Err(Unpublished::PassedOver),
        "the late writer is fenced off"
    );
    assert_eq!(push(&ring, 3, meta(1), &[9]), Push::Delivered);
    assert_eq!(pop(&ring, start, &mut out), Pop::Frame(meta(1)));
    assert_eq!(out[0], 9);
    // The slot the late writer held is void for this lap and free again for the next.
    assert_eq!(
        pop(&ring, advance(start, 1), &mut out),
        Pop::Void { held_by: None }
    );
    assert_eq!(
        SlotState::decode(ring.state(1).load(Ordering::Relaxed)),
        SlotState::free(advance(start, 5))
    );
}

#[test]
fn large_frames_travel_in_large_buffers_in_order_with_small_ones() {
    let ring = HeapRing::new(8);
    let big = |b: u8| vec![b; 40];
    assert_eq!(push(&ring, 1, meta(40), &big(1)), Push::Delivered);
    assert_eq!(push(&ring, 1, meta(1), &[2]), Push::Delivered);
    assert_eq!(push(&ring, 1, meta(40), &big(3)), Push::Delivered);
    // Both large buffers are in use: the next large frame is refused, small ones pass.
    assert_eq!(push(&ring, 1, meta(40), &big(4)), Push::Full);
    assert_eq!(push(&ring, 1, meta(65), &[0; 65]), Push::TooLarge);
    let mut out = [0u8; 64];
    let large = |len: usize| SlotMeta {
        large: 1,
        ..meta(len)
    };
    assert_eq!(pop(&ring, 0, &mut out), Pop::Frame(large(40)));
    assert_eq!(&out[..40], &big(1)[..]);
    assert_eq!(pop(&ring, 1, &mut out), Pop::Frame(meta(1)));
    assert!(matches!(pop(&ring, 2, &mut out), Pop::Frame(m) if m.len == 40 && m.large == 2));
    assert_eq!(&out[..40], &big(3)[..]);
    assert_eq!(
        push(&ring, 1, meta(40), &big(5)),
        Push::Delivered,
        "buffers were freed"
    );
}

#[test]
fn a_large_buffer_of_a_writer_that_died_is_recovered() {
    let ring = HeapRing::new(8);
    // Died while filling: the sweep frees it.
    assert_eq!(claim_large(&ring, 7), Some(0));
    abandon_writer(&ring, 7);
    // Died after handing it to a claimed slot, before publishing: the receiver frees
    // it when it skips the abandoned slot.
    assert_eq!(claim_large(&ring, 7), Some(1));
    let Claim::Claimed(position) = claim(&ring, 7) else {
        panic!("claim failed")
    };
    ring.owners[1].store(large_handed(position), Ordering::Relaxed);
    ring.write_frame(
        position,
        SlotMeta {
            large: 2,
            ..meta(40)
        },
        &[],
    );
    abandon_writer(&ring, 7);
    let mut out = [0u8; 64];
    assert_eq!(pop(&ring, position, &mut out), Pop::Abandoned);
    assert!(
        ring.owners
            .iter()
            .all(|o| o.load(Ordering::Relaxed) == LARGE_FREE)
    );
}

#[test]
fn a_slot_naming_a_large_buffer_it_was_not_handed_is_corrupt() {
    let ring = HeapRing::new(8);
    assert_eq!(push(&ring, 1, meta(40), &[1; 40]), Push::Delivered);
    // A scribbler makes slot 1 claim the same buffer.
    let Claim::Claimed(position) = claim(&ring, 2) else {
        panic!("claim failed")
    };
    ring.write_frame(
        position,
        SlotMeta {
            large: 1,
            ..meta(40)
        },
        &[],
    );
    publish(&ring, position, 2).unwrap();
    let mut out = [0u8; 64];
    assert!(matches!(pop(&ring, 0, &mut out), Pop::Frame(_)));
    assert_eq!(pop(&ring, 1, &mut out), Pop::Corrupt);
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

#[test]
fn a_slot_passed_over_late_is_read_when_published_and_given_up_or_lost_otherwise() {
    let ring = HeapRing::new(8);
    let mut late = LateList::new(2);
    let mut out = [0u8; 64];
    // Writers 1 and 2 claim 0 and 1; writer 3 publishes 2 behind them.
    assert_eq!(claim(&ring, 1), Claim::Claimed(0));
    assert_eq!(claim(&ring, 2), Claim::Claimed(1));
    assert_eq!(push(&ring, 3, meta(1), &[30]), Push::Delivered);
    assert!(
        !late.worth_passing(&ring, 0),
        "never without the receiver's cursor"
    );
    assert!(late.pass(&ring, 0, 1, 100));
    assert!(late.pass(&ring, 1, 2, 100));
    assert!(!late.pass(&ring, 2, 3, 100), "the list is full");
    assert!(writers_in_progress(&ring), "late writers are still writing");
    assert_eq!(pop(&ring, 2, &mut out), Pop::Frame(meta(1)));
    assert_eq!(out[0], 30);
    // Nothing published yet: nothing to do until it is due.
    let never = |_: u16, _: u64| false;
    assert_eq!(late.next(&ring, None, &mut out, never), None);
    // Writer 1 publishes: LATE, read once, then RELEASED for a later lap to free.
    ring.write_frame(0, meta(1), &[10]);
    assert_eq!(publish(&ring, 0, 1), Ok(()));
    assert_eq!(
        SlotState::decode(ring.state(0).load(Ordering::Relaxed)).tag,
        Tag::Late
    );
    assert!(late.holds(1));
    assert_eq!(
        late.next(&ring, Some(1), &mut out, never),
        Some(LateStep::Frame(meta(1)))
    );
    assert_eq!(out[0], 10);
    assert!(!late.holds(1));
    assert_eq!(
        SlotState::decode(ring.state(0).load(Ordering::Relaxed)).tag,
        Tag::Released
    );
    // Writer 2 dies: the sweep gives its slot back and the frame is lost, counted once.
    assert_eq!(abandon_writer(&ring, 2), 1);
    assert_eq!(
        late.next(&ring, None, &mut out, never),
        Some(LateStep::Lost)
    );
    assert!(late.is_empty());
    // A late writer the receiver gives up on is told so when it publishes.
    assert_eq!(claim(&ring, 4), Claim::Claimed(3));
    assert!(late.pass(&ring, 3, 4, 100));
    let due = |_: u16, since: u64| since <= 100;
    assert_eq!(
        late.next(&ring, None, &mut out, due),
        Some(LateStep::GaveUp)
    );
    assert_eq!(publish(&ring, 3, 4), Err(Unpublished::PassedOver));
    // The late slots' next laps are void for the receiver; passing them frees the slots.
    for tail in 4..8 {
        let _ = pop(&ring, tail, &mut out);
    }
    for (tail, index) in [(8, 0), (9, 1), (11, 3)] {
        assert_eq!(pop(&ring, tail, &mut out), Pop::Void { held_by: None });
        assert_eq!(
            SlotState::decode(ring.state(index).load(Ordering::Relaxed)),
            SlotState::free(tail + 8)
        );
    }
}

#[test]
fn a_ring_started_afresh_discards_late_frames_and_fences_off_late_writers() {
    let ring = HeapRing::new(4);
    let mut late = LateList::new(4);
    assert_eq!(claim(&ring, 1), Claim::Claimed(0));
    assert_eq!(claim(&ring, 2), Claim::Claimed(1));
    assert!(late.pass(&ring, 0, 1, 0));
    assert!(late.pass(&ring, 1, 2, 0));
    ring.write_frame(0, meta(1), &[1]);
    assert_eq!(publish(&ring, 0, 1), Ok(()), "published late");
    let (start, discarded) = reset_ahead(&ring);
    assert_eq!(
        discarded,
        Discarded {
            unread: 1,
            passed_over: 1
        }
    );
    assert_eq!(
        publish(&ring, 1, 2),
        Err(Unpublished::PassedOver),
        "the writer still copying is fenced off"
    );
    let mut out = [0u8; 4];
    assert_eq!(pop(&ring, start, &mut out), Pop::Empty);
}

#[test]
fn a_forged_late_state_is_given_back_not_held_for_ever() {
    let ring = HeapRing::new(4);
    let late = LateList::new(2);
    // A scribbler marks slot 1 as passed over late at position 1; nobody passed it.
    let forged = SlotState {
        position: 1,
        writer: 3,
        tag: Tag::Late,
    };
    ring.state(1).store(forged.encode(), Ordering::Relaxed);
    let mut out = [0u8; 4];
    // Its position is void for the receiver, which gives the slot back.
    assert_eq!(pop(&ring, 1, &mut out), Pop::Void { held_by: None });
    assert!(late.release_forged(&ring, forged));
    assert_eq!(
        SlotState::decode(ring.state(1).load(Ordering::Relaxed)).tag,
        Tag::Released
    );
    // The next lap's visit frees it: senders get the slot again.
    assert_eq!(pop(&ring, 5, &mut out), Pop::Void { held_by: None });
    assert_eq!(
        SlotState::decode(ring.state(1).load(Ordering::Relaxed)),
        SlotState::free(9)
    );
    // A slot the list did pass over is left alone.
    let mut late = LateList::new(2);
    assert_eq!(claim(&ring, 2), Claim::Claimed(0));
    assert!(late.pass(&ring, 0, 2, 0));
    let awaited = SlotState::decode(ring.state(0).load(Ordering::Relaxed));
    assert!(!late.release_forged(&ring, awaited));
}
