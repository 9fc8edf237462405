//! A split virtqueue read and written in place: the port's own walk of the available ring,
//! the descriptor table and the used ring (virtio 1.x, 2.7).
//!
//! `virtio-queue`'s iterators look every descriptor, every ring entry and every index up in
//! guest memory afresh: a search of the regions, then a checked copy, per access. Under
//! load that was two fifths of the switch's time. A [`SplitRing`] finds the three parts of
//! a ring once per round (each must lie in one region of guest memory, as `SET_VRING_ADDR`
//! already checked) and then reads entries and descriptors with single bounds-checked
//! volatile loads; it reads the guest's available index only when the entries it read
//! last are used up, as a driver publishes many at a time.
//!
//! Nothing here is believed: an index past the table, a chain longer than the table (a
//! loop), an indirect table inside an indirect table, of a bad length, or outside guest
//! memory ends the walk with [`ChainFault::BadChain`]; an available index that runs more
//! than a ring ahead is an error the caller turns into a stopped ring. The `virtio-queue`
//! [`Queue`] stays the record of the ring's addresses and indices, which the connection's
//! requests set.

use std::cell::Cell;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::datapath::ChainFault;
use super::regions::{Access, Regions};
use crate::shm::guest::GuestSpan;

/// `VIRTQ_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
const F_INDIRECT: u16 = 4;
/// Bytes of a descriptor.
const DESCRIPTOR: usize = 16;
/// Bytes of a buffer [`SplitRing::prefetch`] asks for: its first two cache lines.
pub(super) const FIRST_LINES: usize = 128;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    /// Where it starts in guest memory (not checked: the copy that uses it checks).
    pub addr: GuestAddress,
    /// Its length.
    pub len: u32,
    /// The device writes it (a receive buffer); else it reads it.
    pub write_only: bool,
}

/// A ring's three parts, found in guest memory for one round.
pub struct SplitRing<'m> {
    /// Copies to and from the buffers, remembering the region of the last.
    regions: Regions<'m>,
    desc: GuestSpan<'m>,
    avail: GuestSpan<'m>,
    /// Absent when the used ring does not lie in guest memory: chains can still be read,
    /// but not returned (each failure is counted by the caller).
    used: Option<GuestSpan<'m>>,
    size: u16,
    /// `size - 1`: the size is a power of two (`SET_VRING_NUM` refuses any other), so a
    /// ring position is taken modulo the size with a mask, not a division.
    mask: u16,
    /// The guest's available index as last read.
    avail_idx: Cell<u16>,
}

impl<'m> SplitRing<'m> {
    /// The ring `queue` describes, or `None` when its descriptor table or available ring
    /// does not lie within one region of `memory` (the frontend replaced the memory table
    /// under the ring) or its size is not a power of two (none other is accepted).
    pub fn new(queue: &Queue, memory: &'m GuestMemoryMmap) -> Option<SplitRing<'m>> {
        let size = queue.size();
        let n = usize::from(size);
        if !size.is_power_of_two() {
            return None;
        }
        // The parts with their event fields (6 bytes of flags, index and event each).
        let part = |address: u64, len: usize| {
            let slice = memory.get_slice(GuestAddress(address), len).ok()?;
            Some(GuestSpan::new(&slice))
        };
        Some(SplitRing {
            regions: Regions::new(memory),
            desc: part(queue.desc_table(), DESCRIPTOR * n)?,
            avail: part(queue.avail_ring(), 6 + 2 * n)?,
            used: part(queue.used_ring(), 6 + 8 * n),
            size,
            mask: size - 1,
            avail_idx: Cell::new(queue.next_avail()),
        })
    }

    /// The guest's available index as last read (or as given to
    /// [`SplitRing::assume_available`]): the chains before it were made available.
    pub fn seen_available(&self) -> u16 {
        self.avail_idx.get()
    }

    /// Takes `idx` as the available index read at an earlier look at this same ring, when
    /// the chains before it were seen made available (with acquire): [`SplitRing::available`]
    /// reads the index again only once those are taken. The guest may not take a chain
    /// back once it made it available, so what was seen then still holds.
    pub fn assume_available(&self, idx: u16) {
        self.avail_idx.set(idx);
    }

    /// Copies to and from the guest's buffers, for the length of this ring's round: the
    /// region the last one fell in is remembered from one chain to the next.
    pub fn regions(&self) -> &Regions<'m> {
        &self.regions
    }

    /// How many chains the guest has made available from `next` on. The index is read
    /// again (with acquire, so the entries before it are seen) only when those seen at the
    /// last look are all taken. [`ChainFault::BadChain`] when it ran more than a ring ahead
    /// of `next` (or could not be read).
    #[inline]
    pub fn available(&self, next: u16) -> Result<u16, ChainFault> {
        let seen = self.avail_idx.get().wrapping_sub(next);
        if seen != 0 && seen <= self.size {
            return Ok(seen);
        }
        let idx = self.avail.load_u16_acquire(2).ok_or(ChainFault::BadChain)?;
        let pending = idx.wrapping_sub(next);
        if pending > self.size {
            return Err(ChainFault::BadChain);
        }
        self.avail_idx.set(idx);
        Ok(pending)
    }

    /// The head of the chain at position `index` of the available ring (any index: it is
    /// taken modulo the ring's size). Not checked against the table: [`SplitRing::walk`]
    /// does that.
    #[inline]
    pub fn head(&self, index: u16) -> Option<u16> {
        self.avail.load_u16(4 + 2 * usize::from(index & self.mask))
    }

    /// Calls `each` with every buffer of the chain starting at descriptor `head`, in
    /// order, following an indirect table where a descriptor points to one. Ends at the
    /// first error of `each`, or with [`ChainFault::BadChain`] at anything the chain may
    /// not be.
    #[inline(always)]
    pub fn walk(
        &self,
        head: u16,
        mut each: impl FnMut(Buffer) -> Result<(), ChainFault>,
    ) -> Result<(), ChainFault> {
        let mut table = self.desc;
        let mut count = self.size;
        let mut index = head;
        // Descriptors left before the chain is longer than its table: a loop.
        let mut left = count;
        let mut indirect = false;
        loop {
            if index >= count || left == 0 {
                return Err(ChainFault::BadChain);
            }
            left -= 1;
            let descriptor = table
                .load_u64_pair(DESCRIPTOR * usize::from(index))
                .map(Descriptor::from_words)
                .ok_or(ChainFault::BadChain)?;
            let flags = descriptor.flags;
            if flags & F_INDIRECT != 0 {
                // One table per chain, of whole descriptors, within one region.
                let len = descriptor.len as usize;
                if indirect || len == 0 || !len.is_multiple_of(DESCRIPTOR) {
                    return Err(ChainFault::BadChain);
                }
                count = u16::try_from(len / DESCRIPTOR).map_err(|_| ChainFault::BadChain)?;
                table = self
                    .regions
                    .locate(descriptor.addr, len)
                    .ok_or(ChainFault::BadChain)?;
                index = 0;
                left = count;
                indirect = true;
                continue;
            }
            each(descriptor.buffer())?;
            if flags & F_NEXT == 0 {
                return Ok(());
            }
            index = descriptor.next;
        }
    }

    /// The chain at `head` when it is a single descriptor of the ring's own table (no
    /// next, not indirect), the usual chain, read with one load; `None` for any other
    /// chain, which [`SplitRing::walk`] then reads and judges.
    #[inline]
    pub fn single(&self, head: u16) -> Option<Buffer> {
        if head >= self.size {
            return None;
        }
        let descriptor = self
            .desc
            .load_u64_pair(DESCRIPTOR * usize::from(head))
            .map(Descriptor::from_words)?;
        (descriptor.flags & (F_NEXT | F_INDIRECT) == 0).then(|| descriptor.buffer())
    }

    /// Asks for the used ring's lines holding the `count` entries from position `index`
    /// on, writable, so that writing them later does not wait for the guest's core to
    /// give them up.
    #[inline]
    pub fn prefetch_used(&self, index: u16, count: u16) {
        let Some(used) = self.used else {
            return;
        };
        let entry = |k: u16| 4 + 8 * usize::from(index.wrapping_add(k) & self.mask);
        // A line holds eight entries; the last entry's line too, when the first is not at
        // the start of one.
        let mut k = 0;
        while k < count {
            used.prefetch(entry(k), 1, true);
            k = k.saturating_add(8);
        }
        if count > 0 {
            used.prefetch(entry(count - 1), 1, true);
        }
    }

    /// Writes used entry `index` (modulo the ring's size): chain `head`, `written` bytes.
    /// Returns whether it could.
    #[inline]
    pub fn put_used(&self, index: u16, head: u16, written: u32) -> bool {
        let at = 4 + 8 * usize::from(index & self.mask);
        self.used
            .is_some_and(|used| used.store_u32_pair(at, [u32::from(head), written]))
    }

    /// Asks for the first two lines of the first buffer of the chain the guest posted
    /// `ahead` chains after position `next`, for `access`. A hint, so an entry not posted
    /// yet or a bad one only fetches wrong lines.
    #[inline]
    pub fn prefetch(&self, next: u16, ahead: u16, access: Access) {
        if let Some(descriptor) = self.first_descriptor(next.wrapping_add(ahead)) {
            self.regions.prefetch(descriptor.addr, 0, access);
        }
    }

    /// Asks for the rest of that buffer, up to `whole` bytes of it, when
    /// [`SplitRing::prefetch`] already asked for its first two lines: nothing more for a
    /// buffer no longer than those.
    #[inline]
    pub fn prefetch_rest(&self, next: u16, ahead: u16, access: Access, whole: usize) {
        let Some(descriptor) = self.first_descriptor(next.wrapping_add(ahead)) else {
            return;
        };
        let len = whole.min(descriptor.len as usize);
        // The guest's address: one near the top of the address space has no rest.
        if len > FIRST_LINES
            && let Some(rest) = descriptor.addr.checked_add(FIRST_LINES as u64)
        {
            self.regions.prefetch(rest, len - FIRST_LINES, access);
        }
    }

    /// The first descriptor of the chain at position `index` of the available ring, as it
    /// is now (unchecked: for hints only).
    #[inline]
    fn first_descriptor(&self, index: u16) -> Option<Descriptor> {
        let head = self.head(index)?;
        let at = DESCRIPTOR * usize::from(head & self.mask);
        self.desc.load_u64_pair(at).map(Descriptor::from_words)
    }
}

/// A descriptor as the guest wrote it (virtio 1.x, 2.7.5), not yet believed.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    addr: GuestAddress,
    len: u32,
    flags: u16,
    next: u16,
}

impl Descriptor {
    /// From its two little-endian words: the address, then length, flags and next.
    fn from_words([addr, rest]: [u64; 2]) -> Descriptor {
        Descriptor {
            addr: GuestAddress(addr),
            len: rest as u32,
            flags: (rest >> 32) as u16,
            next: (rest >> 48) as u16,
        }
    }

    /// The buffer it names (an indirect table's descriptor is not one).
    fn buffer(&self) -> Buffer {
        Buffer {
            addr: self.addr,
            len: self.len,
            write_only: self.flags & F_WRITE != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::vhost_user::mock::{self, GuestMemory, GuestQueue, Layout, desc_flags};

    const SIZE: u16 = 8;
    /// Where the ring's three parts start, back to back.
    const RINGS: u64 = 0x1000;
    const TABLE: u64 = 0x4000;
    const DATA: u64 = 0x8000;
    const MEMORY: u64 = 0x10000;
    const NEXT: u16 = desc_flags::NEXT;
    const WRITE: u16 = desc_flags::WRITE;
    const INDIRECT: u16 = desc_flags::INDIRECT;

    struct Guest {
        memory: GuestMemory,
        driver: GuestQueue,
        queue: Queue,
    }

    impl Guest {
        fn new() -> Guest {
            let memory = GuestMemory::anonymous(&[(0, MEMORY)]).expect("memory");
            let driver = GuestQueue::new(Layout::packed(SIZE, RINGS, DATA..MEMORY));
            let mut queue = Queue::new(SIZE).expect("queue");
            driver.configure(&mut queue).expect("addresses");
            Guest {
                memory,
                driver,
                queue,
            }
        }

        /// Writes entry `i` of the ring's descriptor table.
        fn descriptor(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let table = self.driver.layout().desc;
            self.write_at(table + 16 * u64::from(i), (addr, len, flags, next));
        }

        /// Writes entry `i` of an indirect table at `TABLE`.
        fn indirect(&self, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
            self.write_at(TABLE + 16 * i, (addr, len, flags, next));
        }

        fn write_at(&self, at: u64, (addr, len, flags, next): (u64, u32, u16, u16)) {
            let d = mock::Descriptor {
                addr,
                len,
                flags,
                next,
            };
            self.memory.write(at, &d.to_bytes());
        }

        fn ring(&self) -> SplitRing<'_> {
            SplitRing::new(&self.queue, self.memory.mmap()).expect("a ring in memory")
        }
    }

    /// The buffers of the chain at `head` as (address, length, write-only), or its fault.
    fn walk(ring: &SplitRing<'_>, head: u16) -> Result<Vec<(u64, u32, bool)>, ChainFault> {
        let mut seen = Vec::new();
        ring.walk(head, |b| {
            seen.push((b.addr.0, b.len, b.write_only));
            Ok(())
        })
        .map(|()| seen)
    }

    #[test]
    fn a_chain_and_an_indirect_table_yield_their_buffers_in_order() {
        let guest = Guest::new();
        guest.descriptor(0, DATA, 10, NEXT, 3);
        guest.descriptor(3, DATA + 0x100, 20, WRITE, 0);
        guest.descriptor(1, TABLE, 32, INDIRECT, 0);
        guest.indirect(0, DATA + 0x200, 30, NEXT, 1);
        guest.indirect(1, DATA + 0x300, 40, WRITE, 0);
        let ring = guest.ring();
        assert_eq!(
            walk(&ring, 0),
            Ok(vec![(DATA, 10, false), (DATA + 0x100, 20, true)])
        );
        assert_eq!(
            walk(&ring, 1),
            Ok(vec![(DATA + 0x200, 30, false), (DATA + 0x300, 40, true)])
        );
    }

    #[test]
    fn chains_that_may_not_be_end_in_bad_chain() {
        let guest = Guest::new();
        // A loop in the table: 0 → 1 → 0.
        guest.descriptor(0, DATA, 8, NEXT, 1);
        guest.descriptor(1, DATA, 8, NEXT, 0);
        // A next index past the table.
        guest.descriptor(2, DATA, 8, NEXT, SIZE);
        // An indirect table of a length that is no whole number of descriptors, of none,
        // outside guest memory, and one holding another indirect descriptor.
        guest.descriptor(3, TABLE, 24, INDIRECT, 0);
        guest.descriptor(4, TABLE, 0, INDIRECT, 0);
        guest.descriptor(5, MEMORY - 16, 32, INDIRECT, 0);
        guest.descriptor(6, TABLE, 16, INDIRECT, 0);
        guest.indirect(0, TABLE, 16, INDIRECT, 0);
        let ring = guest.ring();
        for head in [0, 2, 3, 4, 5, 6, SIZE, u16::MAX] {
            assert_eq!(walk(&ring, head), Err(ChainFault::BadChain), "head {head}");
        }
        // A loop inside an indirect table, and a next index past its end.
        guest.descriptor(7, TABLE, 32, INDIRECT, 0);
        guest.indirect(0, DATA, 8, NEXT, 1);
        guest.indirect(1, DATA, 8, NEXT, 0);
        assert_eq!(walk(&ring, 7), Err(ChainFault::BadChain));
        guest.indirect(1, DATA, 8, NEXT, 2);
        assert_eq!(walk(&ring, 7), Err(ChainFault::BadChain));
    }

    #[test]
    fn the_first_fault_of_the_caller_ends_the_walk() {
        let guest = Guest::new();
        guest.descriptor(0, DATA, 8, NEXT, 1);
        guest.descriptor(1, DATA, 8, WRITE, 0);
        let ring = guest.ring();
        let mut calls = 0;
        let walked = ring.walk(0, |b| {
            calls += 1;
            if b.write_only {
                Err(ChainFault::WrongDirection)
            } else {
                Ok(())
            }
        });
        assert_eq!((walked, calls), (Err(ChainFault::WrongDirection), 2));
    }

    #[test]
    fn the_available_index_is_read_again_only_when_the_chains_seen_are_taken() {
        let mut guest = Guest::new();
        guest.driver.publish_batch(&guest.memory, [0, 1]);
        let ring = SplitRing::new(&guest.queue, guest.memory.mmap()).expect("a ring");
        assert_eq!(ring.available(0), Ok(2));
        assert_eq!((ring.head(0), ring.head(1)), (Some(0), Some(1)));
        // The guest posts three more; the port still works through the two it saw.
        guest.driver.publish_batch(&guest.memory, [2, 3, 4]);
        assert_eq!(ring.available(1), Ok(1));
        assert_eq!(ring.available(2), Ok(3), "read again once those are taken");
        assert_eq!(ring.head(4), Some(4));
        assert_eq!(ring.available(5), Ok(0));
        // An index more than a ring ahead is refused.
        guest.driver.set_avail_index(&guest.memory, 5 + SIZE + 1);
        assert_eq!(ring.available(5), Err(ChainFault::BadChain));
    }

    #[test]
    fn an_index_seen_at_an_earlier_look_stands_until_its_chains_are_taken() {
        let mut guest = Guest::new();
        guest.driver.publish_batch(&guest.memory, [0, 1]);
        let first = SplitRing::new(&guest.queue, guest.memory.mmap()).expect("a ring");
        assert_eq!(first.available(0), Ok(2));
        assert_eq!(first.seen_available(), 2);
        // The next round's ring starts from what this one saw, not from the index the
        // guest has moved meanwhile.
        guest.driver.publish_batch(&guest.memory, [2, 3, 4]);
        let next = SplitRing::new(&guest.queue, guest.memory.mmap()).expect("a ring");
        next.assume_available(first.seen_available());
        assert_eq!(next.available(0), Ok(2), "the index is not read");
        assert_eq!(next.available(2), Ok(3), "read once those are taken");
        // Without it, a ring reads the index at once.
        let fresh = SplitRing::new(&guest.queue, guest.memory.mmap()).expect("a ring");
        assert_eq!(fresh.available(0), Ok(5));
    }

    #[test]
    fn used_entries_land_where_the_guest_reads_them_and_a_lost_used_ring_is_reported() {
        let mut guest = Guest::new();
        let ring = guest.ring();
        assert!(
            ring.put_used(SIZE + 2, 5, 1234),
            "indices wrap around the ring"
        );
        let entry = guest.driver.used_entry(&guest.memory, 2);
        assert_eq!((entry.id, entry.len), (5, 1234));
        guest
            .queue
            .set_used_ring_address(Some(MEMORY as u32 + 0x1000), Some(0));
        let ring = guest.ring();
        assert!(
            !ring.put_used(0, 1, 1),
            "the used ring lies outside guest memory"
        );
        guest
            .queue
            .set_desc_table_address(Some(MEMORY as u32 - 16), Some(0));
        assert!(
            SplitRing::new(&guest.queue, guest.memory.mmap()).is_none(),
            "a descriptor table running past guest memory"
        );
    }

    #[test]
    fn a_prefetch_of_a_bad_entry_or_address_is_harmless() {
        let mut guest = Guest::new();
        guest.descriptor(0, MEMORY + 0x1000, 64, 0, 0);
        // A long buffer at the top of the address space: its rest would start past it.
        guest.descriptor(1, u64::MAX - 64, 4096, 0, 0);
        guest.driver.publish_batch(&guest.memory, [0, 1, SIZE + 5]);
        let ring = guest.ring();
        for ahead in 0..2 * SIZE {
            ring.prefetch(0, ahead, Access::Read);
            ring.prefetch_rest(0, ahead, Access::Write, 4096);
        }
    }
}
