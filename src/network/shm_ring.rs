//! A peer's receive ring in the region, as [`ring`](super::ring)'s algorithm sees it: the
//! [`SlotMemory`] of one ring, over the region's checked mapping.
//!
//! The algorithm is generic over its memory so that shuttle can drive it in tests; this
//! is its one production memory. Every length here is the writer's claim and is clamped
//! before it sizes a copy.

use std::sync::atomic::Ordering;

use crate::shm::layout::{self, LargeHeader, RingControl, SlotHeader};
use crate::shm::{Mapping, Strided};

use super::ring::{SlotMemory, SlotMeta};

/// A ring in the region, as the ring algorithm sees it ([`SlotMemory`]).
pub struct ShmRing<'a> {
    pub(super) mapping: &'a Mapping,
    pub(super) control: &'a RingControl,
    pub(super) slots: Strided<'a, SlotHeader>,
    pub(super) large: Option<Strided<'a, LargeHeader>>,
    pub(super) max_frame: usize,
}

impl<'a> ShmRing<'a> {
    /// The ring's control block (cursors, wake-up word).
    pub fn control(&self) -> &'a RingControl {
        self.control
    }
}

impl SlotMemory for ShmRing<'_> {
    type Word = std::sync::atomic::AtomicU64;

    #[inline]
    fn slot_count(&self) -> u64 {
        self.slots.count()
    }

    #[inline]
    fn reserve(&self) -> &Self::Word {
        &self.control.reserve
    }

    #[inline]
    fn state(&self, index: u64) -> &Self::Word {
        &self.slots.at(index).state
    }

    #[inline]
    fn consumed_hint(&self) -> Option<u64> {
        Some(self.control.consumed.load(Ordering::Relaxed))
    }

    #[inline]
    fn slot_capacity(&self) -> usize {
        self.max_frame
    }

    #[inline]
    fn write_frame(&self, index: u64, meta: SlotMeta, bytes: &[u8]) {
        self.write_frame_parts(index, meta, &[bytes]);
    }

    #[inline]
    fn write_frame_parts(&self, index: u64, meta: SlotMeta, parts: &[&[u8]]) {
        let data = self.slots.offset_of(index) + layout::SLOT_HEADER_SIZE;
        write_parts(self.mapping, data, self.max_frame, parts);
        let header = self.slots.at(index);
        header.len.store(meta.len, Ordering::Relaxed);
        header.generation.store(meta.generation, Ordering::Relaxed);
        for (word, value) in header.offload.iter().zip(meta.offload) {
            word.store(value, Ordering::Relaxed);
        }
        header.offload[3].store(meta.large, Ordering::Relaxed);
    }

    #[inline]
    fn prefetch_for_write(&self, index: u64, len: usize) {
        // The header line, where the claim's compare-and-swap lands, and the frame's;
        // from the start of the header's line, so that the frame's last line is not missed.
        let offset = self.slots.offset_of(index);
        let end = offset + layout::SLOT_HEADER_SIZE + len.min(self.max_frame);
        let mut line = offset & !63;
        while line < end {
            self.mapping.prefetch_for_write(line);
            line += 64;
        }
    }

    fn note_late(&self) {
        // Release: a consumer that sees the count move sees the LATE state before it.
        self.control.late_published.fetch_add(1, Ordering::Release);
    }

    #[inline]
    fn read_meta(&self, index: u64) -> SlotMeta {
        let header = self.slots.at(index);
        let word = |i: usize| header.offload[i].load(Ordering::Relaxed);
        SlotMeta {
            len: header.len.load(Ordering::Relaxed),
            generation: header.generation.load(Ordering::Relaxed),
            offload: [word(0), word(1), word(2)],
            large: word(3),
        }
    }

    #[inline]
    fn read_bytes(&self, index: u64, len: usize, out: &mut [u8]) {
        // The length is the writer's claim: clamp before using it to size a copy.
        let len = len.min(self.max_frame).min(out.len());
        let data = self.slots.offset_of(index) + layout::SLOT_HEADER_SIZE;
        let _ = self.mapping.read_bytes(data, &mut out[..len]);
    }

    fn large_count(&self) -> u64 {
        self.large.map_or(0, |large| large.count())
    }

    fn large_capacity(&self) -> usize {
        if self.large.is_some() {
            layout::LARGE_FRAME
        } else {
            0
        }
    }

    fn large_hint(&self) -> &Self::Word {
        &self.control.large_hint
    }

    fn large_owner(&self, index: u64) -> &Self::Word {
        match self.large {
            Some(large) => &large.at(index).owner,
            // Unreachable: callers only ask for index < large_count() == 0.
            None => &self.control.large_hint,
        }
    }

    fn write_large(&self, index: u64, frame: &[u8]) {
        self.write_large_parts(index, &[frame]);
    }

    fn write_large_parts(&self, index: u64, parts: &[&[u8]]) {
        if let Some(large) = self.large {
            let data = large.offset_of(index) + std::mem::size_of::<LargeHeader>();
            write_parts(self.mapping, data, layout::LARGE_FRAME, parts);
        }
    }

    fn read_large(&self, index: u64, len: usize, out: &mut [u8]) {
        if let Some(large) = self.large {
            let len = len.min(layout::LARGE_FRAME).min(out.len());
            let data = large.offset_of(index) + std::mem::size_of::<LargeHeader>();
            let _ = self.mapping.read_bytes(data, &mut out[..len]);
        }
    }
}

/// Writes `parts` one after the other from `offset`, no more than `capacity` bytes in all.
#[inline]
fn write_parts(mapping: &Mapping, offset: usize, capacity: usize, parts: &[&[u8]]) {
    let mut written = 0;
    for part in parts {
        let len = part.len().min(capacity - written);
        // In bounds by construction: the slot or buffer holds `capacity` bytes.
        let _ = mapping.write_bytes(offset + written, &part[..len]);
        written += len;
    }
}
