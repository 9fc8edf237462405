//! A guest for tests: its memory and the driver's side of its split virtqueues.
//!
//! The vhost-user port is the *device* end of a virtqueue. To test it, something has to
//! play the *driver*, the guest's virtio-net driver: lay out the rings, write descriptors,
//! make chains available, and read back what the device used. This module is that driver,
//! exported as `virtio-queue` exports its own mock, so that the data path's unit tests,
//! the end-to-end tests of `tests/vhost_user.rs` and the `vhost_user` bench all drive one
//! implementation of the ring format, not one each.
//!
//! * [`GuestMemory`] is guest RAM. It is either private to this process (anonymous
//!   memory, for a device driven in the same process) or one sealed memfd that can be
//!   handed to a backend process, as QEMU's memfd backend does.
//! * [`GuestQueue`] is one split virtqueue (virtio 1.x, 2.7 "Split Virtqueues") in that
//!   memory. It can post transmit chains and receive buffers and read the used ring. Raw
//!   descriptor and index writes are public too, so a test can build the bad chains a
//!   hostile guest would.
//!
//! Notifications are not here. Kicks and calls belong to the transport (eventfds for
//! vhost-user), so they stay with the test that drives one.
//!
//! This is a test aid and nothing in the port uses it. All memory access goes through
//! `vm-memory`'s checked accessors. The mock panics, like a failed assertion, when a
//! test asks it to touch memory outside the guest's. What the device wrote into the used
//! ring is only reported, never used as an address.
//!
//! Ring layout, all little-endian: the descriptor table (16 bytes × size, 16-aligned);
//! the available ring (`flags: u16, idx: u16, ring: [u16; size], used_event: u16`,
//! 2-aligned); the used ring (`flags: u16, idx: u16, ring: [{id: u32, len: u32}; size],
//! avail_event: u16`, 4-aligned).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// Split-ring descriptor flags (virtio 1.x, 2.7.5).
pub mod desc_flags {
    /// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// `VIRTQ_DESC_F_WRITE`: the device writes this buffer (receive side).
    pub const WRITE: u16 = 2;
    /// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

/// One region of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address, what descriptors point at.
    pub guest_address: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the region starts in the memory's file (see [`GuestMemory::fd`]).
    pub file_offset: u64,
}

/// Guest RAM: one or more regions, reached through `vm-memory`'s checked accessors.
#[derive(Debug)]
pub struct GuestMemory {
    memory: GuestMemoryMmap,
    /// The memfd behind every region, for memory made by [`GuestMemory::shared`].
    file: Option<Arc<File>>,
    regions: Vec<Region>,
}

impl GuestMemory {
    /// Private memory with one region per `(guest-physical address, size)`, for a device
    /// driven in this process.
    pub fn anonymous(layout: &[(u64, u64)]) -> io::Result<GuestMemory> {
        let regions = regions_of(layout);
        let ranges = regions
            .iter()
            .map(|r| Ok((GuestAddress(r.guest_address), size_of(r)?)))
            .collect::<io::Result<Vec<_>>>()?;
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(io::Error::other)?;
        Ok(GuestMemory {
            memory,
            file: None,
            regions,
        })
    }

    /// Memory in one memfd holding the regions back to back, to be shared with a backend
    /// process by fd ([`GuestMemory::fd`]).
    pub fn shared(layout: &[(u64, u64)]) -> io::Result<GuestMemory> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let regions = regions_of(layout);
        let total: u64 = regions.iter().map(|r| r.size).sum();
        let fd =
            rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, total)?;
        // Sealed as QEMU's memfd backend does by default: the backend can then trust the
        // size (a frontend could otherwise shrink the file under its mappings).
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let file = Arc::new(File::from(fd));
        let ranges = regions
            .iter()
            .map(|r| {
                let offset = FileOffset::from_arc(Arc::clone(&file), r.file_offset);
                Ok((GuestAddress(r.guest_address), size_of(r)?, Some(offset)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(io::Error::other)?;
        Ok(GuestMemory {
            memory,
            file: Some(file),
            regions,
        })
    }

    /// The regions, in the order they were given.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The memfd behind every region, if the memory was made by [`GuestMemory::shared`].
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_deref().map(File::as_fd)
    }

    /// The memory as a device sees it.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Writes `bytes` at guest-physical `address`.
    ///
    /// # Panics
    ///
    /// When the bytes do not lie inside guest memory.
    pub fn write(&self, address: u64, bytes: &[u8]) {
        if let Err(e) = self.memory.write_slice(bytes, GuestAddress(address)) {
            panic!("the test writes {} bytes at {address:#x}: {e}", bytes.len());
        }
    }

    /// Reads `len` bytes at guest-physical `address`.
    ///
    /// # Panics
    ///
    /// When the bytes do not lie inside guest memory.
    pub fn read(&self, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        if let Err(e) = self.memory.read_slice(&mut bytes, GuestAddress(address)) {
            panic!("the test reads {len} bytes at {address:#x}: {e}");
        }
        bytes
    }

    /// Reads a little-endian `u16` at guest-physical `address`.
    ///
    /// # Panics
    ///
    /// When it does not lie inside guest memory.
    pub fn read_u16(&self, address: u64) -> u16 {
        let bytes = self.read(address, 2);
        u16::from_le_bytes([bytes[0], bytes[1]])
    }

    /// Stores a little-endian ring index with `order`, as a driver publishes indices.
    fn store_u16(&self, address: u64, value: u16, order: Ordering) {
        if let Err(e) = self
            .memory
            .store(value.to_le(), GuestAddress(address), order)
        {
            panic!("ring index at {address:#x}: {e}");
        }
    }

    /// Loads a little-endian ring index with `order`.
    fn load_u16(&self, address: u64, order: Ordering) -> u16 {
        match self.memory.load::<u16>(GuestAddress(address), order) {
            Ok(raw) => u16::from_le(raw),
            Err(e) => panic!("ring index at {address:#x}: {e}"),
        }
    }
}

/// The regions of `layout`, each at the next offset of a file that holds them all.
fn regions_of(layout: &[(u64, u64)]) -> Vec<Region> {
    let mut file_offset = 0;
    layout
        .iter()
        .map(|&(guest_address, size)| {
            let region = Region {
                guest_address,
                size,
                file_offset,
            };
            file_offset += size;
            region
        })
        .collect()
}

fn size_of(region: &Region) -> io::Result<usize> {
    usize::try_from(region.size).map_err(io::Error::other)
}

/// One split-ring descriptor (16 bytes: address, length, flags, next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// [`desc_flags`].
    pub flags: u16,
    /// Next descriptor of the chain, with [`desc_flags::NEXT`].
    pub next: u16,
}

impl Descriptor {
    /// The descriptor's 16-byte ring form.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// A descriptor from its 16-byte ring form.
    pub fn from_bytes(b: [u8; 16]) -> Descriptor {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            l0,
            l1,
            l2,
            l3,
            f0,
            f1,
            n0,
            n1,
        ] = b;
        Descriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// One used-ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head of the chain the device returned.
    pub id: u32,
    /// Bytes it wrote into the chain.
    pub len: u32,
}

/// Where a queue's rings and the buffers it hands out lie in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Ring size, a power of two.
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the available ring.
    pub avail: u64,
    /// Guest-physical address of the used ring.
    pub used: u64,
    /// Where [`GuestQueue::take_buffer`] finds room for the buffers it posts.
    pub buffers: Range<u64>,
}

impl Layout {
    /// The three parts of a ring of `size` back to back from `rings_at`, each at the
    /// alignment the specification asks for.
    pub fn packed(size: u16, rings_at: u64, buffers: Range<u64>) -> Layout {
        let desc = rings_at.next_multiple_of(16);
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        Layout {
            size,
            desc,
            avail,
            used,
            buffers,
        }
    }

    /// Address of the available ring's `idx`.
    fn avail_idx(&self) -> u64 {
        self.avail + 2
    }

    /// Address of available ring entry `n` (modulo the size).
    fn avail_entry(&self, n: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(n % self.size)
    }

    /// Address of `used_event`, after the available ring's entries.
    fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// Address of the used ring's `idx`.
    fn used_idx(&self) -> u64 {
        self.used + 2
    }

    /// Address of used ring entry `n` (modulo the size).
    fn used_entry(&self, n: u16) -> u64 {
        self.used + 4 + 8 * u64::from(n % self.size)
    }

    /// Address of `avail_event`, after the used ring's entries.
    fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// The driver's side of one split virtqueue.
#[derive(Debug)]
pub struct GuestQueue {
    layout: Layout,
    /// `EVENT_IDX` was negotiated: [`GuestQueue::take_used`] asks for a call on the next
    /// used entry.
    event_idx: bool,
    next_desc: u16,
    next_avail: u16,
    last_used: u16,
    /// Offset into `layout.buffers` of the next buffer [`GuestQueue::take_buffer`] hands out.
    buffer_next: u64,
    /// Receive buffers posted and not yet used: head → (address, length).
    posted: HashMap<u16, (u64, u32)>,
    /// Used entries read from the ring and not yet handed out by `next_received`.
    received: VecDeque<Used>,
}

impl GuestQueue {
    /// A queue at `layout`. Its rings are not touched: fresh memory is zeroed, and
    /// [`GuestQueue::lay_out`] zeroes used memory.
    ///
    /// # Panics
    ///
    /// When the size is not a power of two.
    pub fn new(layout: Layout) -> GuestQueue {
        assert!(
            layout.size.is_power_of_two(),
            "ring size {} is not a power of two",
            layout.size
        );
        GuestQueue {
            layout,
            event_idx: false,
            next_desc: 0,
            next_avail: 0,
            last_used: 0,
            buffer_next: 0,
            posted: HashMap::new(),
            received: VecDeque::new(),
        }
    }

    /// Where the rings and buffers are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Whether `EVENT_IDX` was negotiated (it changes what [`GuestQueue::take_used`] writes).
    pub fn set_event_idx(&mut self, negotiated: bool) {
        self.event_idx = negotiated;
    }

    /// Tells a device-side queue where this queue's rings are and readies it, as a
    /// frontend's `SET_VRING_NUM` and `SET_VRING_ADDR` do.
    pub fn configure(&self, queue: &mut Queue) -> Result<(), virtio_queue::Error> {
        queue.try_set_size(self.layout.size)?;
        queue.try_set_desc_table_address(GuestAddress(self.layout.desc))?;
        queue.try_set_avail_ring_address(GuestAddress(self.layout.avail))?;
        queue.try_set_used_ring_address(GuestAddress(self.layout.used))?;
        queue.set_ready(true);
        Ok(())
    }

    /// Zeroes the descriptor table and both rings.
    pub fn lay_out(&self, memory: &GuestMemory) {
        let size = usize::from(self.layout.size);
        memory.write(self.layout.desc, &vec![0; 16 * size]);
        memory.write(self.layout.avail, &vec![0; 6 + 2 * size]);
        memory.write(self.layout.used, &vec![0; 6 + 8 * size]);
    }

    /// Starts the queue over, as a guest driver does after a device reset: empty rings and
    /// every index back at 0. The device must be told again.
    pub fn reset(&mut self, memory: &GuestMemory) {
        self.lay_out(memory);
        self.next_desc = 0;
        self.next_avail = 0;
        self.last_used = 0;
        self.posted.clear();
        self.received.clear();
    }

    /// Writes descriptor `i` of the table (`i` may be out of range on purpose: the write
    /// then lands wherever the table's arithmetic puts it).
    pub fn write_descriptor(&self, memory: &GuestMemory, i: u16, d: Descriptor) {
        memory.write(self.layout.desc + 16 * u64::from(i), &d.to_bytes());
    }

    /// Reads descriptor `i` of the table.
    pub fn read_descriptor(&self, memory: &GuestMemory, i: u16) -> Descriptor {
        let bytes = memory.read(self.layout.desc + 16 * u64::from(i), 16);
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&bytes);
        Descriptor::from_bytes(raw)
    }

    /// Takes the next descriptor slot, round robin (tests post far fewer chains than the
    /// ring holds before the device returns them).
    pub fn take_descriptor(&mut self) -> u16 {
        let i = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.layout.size;
        i
    }

    /// Takes `len` bytes (16-aligned) of the layout's buffer area, wrapping around.
    ///
    /// # Panics
    ///
    /// When `len` is more than the whole area.
    pub fn take_buffer(&mut self, len: usize) -> u64 {
        let area = self.layout.buffers.end - self.layout.buffers.start;
        let len = (len as u64).next_multiple_of(16);
        assert!(len <= area, "a {len}-byte buffer in a {area}-byte area");
        if self.buffer_next + len > area {
            self.buffer_next = 0;
        }
        let address = self.layout.buffers.start + self.buffer_next;
        self.buffer_next += len;
        address
    }

    /// Puts `head` in the next available slot and publishes the new index.
    pub fn publish(&mut self, memory: &GuestMemory, head: u16) {
        self.publish_batch(memory, [head]);
    }

    /// Puts each of `heads` in the next available slots and publishes the new index once,
    /// as a driver does after filling a batch.
    pub fn publish_batch(&mut self, memory: &GuestMemory, heads: impl IntoIterator<Item = u16>) {
        for head in heads {
            let slot = self.layout.avail_entry(self.next_avail);
            memory.write(slot, &head.to_le_bytes());
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        self.set_avail_index(memory, self.next_avail);
    }

    /// Stores `idx` as the available index without touching the ring: the device reads
    /// entries up to it. Release, so the entries written before are visible first.
    pub fn set_avail_index(&self, memory: &GuestMemory, idx: u16) {
        memory.store_u16(self.layout.avail_idx(), idx, Ordering::Release);
    }

    /// The next available index this driver will publish.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Writes `packet` (header and frame) into `pieces` buffers and chains them, through an
    /// indirect table if asked; returns the head without publishing it.
    pub fn chain_tx(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        pieces: usize,
        indirect: bool,
    ) -> u16 {
        let piece_len = packet.len().div_ceil(pieces.max(1)).max(1);
        let lengths: Vec<usize> = packet.chunks(piece_len).map(<[u8]>::len).collect();
        self.chain_tx_cut(memory, packet, &lengths, indirect)
    }

    /// [`chain_tx`](GuestQueue::chain_tx) with the length of each piece given, to cut
    /// where a test wants, e.g. inside the header.
    ///
    /// # Panics
    ///
    /// When the lengths do not add up to the packet's.
    pub fn chain_tx_cut(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        lengths: &[usize],
        indirect: bool,
    ) -> u16 {
        assert_eq!(
            lengths.iter().sum::<usize>(),
            packet.len(),
            "pieces cover the packet"
        );
        let mut descriptors = Vec::with_capacity(lengths.len());
        let mut rest = packet;
        for &len in lengths {
            let (chunk, tail) = rest.split_at(len);
            rest = tail;
            let addr = self.take_buffer(chunk.len());
            memory.write(addr, chunk);
            descriptors.push(Descriptor {
                addr,
                len: chunk.len() as u32,
                flags: 0,
                next: 0,
            });
        }
        if indirect {
            let table = self.take_buffer(16 * descriptors.len());
            for (i, d) in descriptors.iter().enumerate() {
                let last = i + 1 == descriptors.len();
                let d = Descriptor {
                    flags: if last { 0 } else { desc_flags::NEXT },
                    next: if last { 0 } else { i as u16 + 1 },
                    ..*d
                };
                memory.write(table + 16 * i as u64, &d.to_bytes());
            }
            let head = self.take_descriptor();
            let d = Descriptor {
                addr: table,
                len: 16 * descriptors.len() as u32,
                flags: desc_flags::INDIRECT,
                next: 0,
            };
            self.write_descriptor(memory, head, d);
            return head;
        }
        let slots: Vec<u16> = descriptors.iter().map(|_| self.take_descriptor()).collect();
        for (i, d) in descriptors.iter().enumerate() {
            let next = slots.get(i + 1).copied();
            let d = Descriptor {
                flags: if next.is_some() { desc_flags::NEXT } else { 0 },
                next: next.unwrap_or(0),
                ..*d
            };
            self.write_descriptor(memory, slots[i], d);
        }
        slots[0]
    }

    /// Posts one device-writable receive buffer of `len` bytes and publishes it; returns
    /// its head. [`GuestQueue::next_received`] hands back what the device writes into it.
    pub fn post_receive_buffer(&mut self, memory: &GuestMemory, len: u32) -> u16 {
        let addr = self.take_buffer(len as usize);
        let head = self.take_descriptor();
        let d = Descriptor {
            addr,
            len,
            flags: desc_flags::WRITE,
            next: 0,
        };
        self.write_descriptor(memory, head, d);
        self.posted.insert(head, (addr, len));
        self.publish(memory, head);
        head
    }

    /// The used entries the device added since the last call. With `EVENT_IDX`, also
    /// asks for a call on the next one (`used_event`).
    pub fn take_used(&mut self, memory: &GuestMemory) -> Vec<Used> {
        // Acquire: the entries (and the buffers they describe) are written before the index.
        let idx = memory.load_u16(self.layout.used_idx(), Ordering::Acquire);
        let mut entries = Vec::new();
        while self.last_used != idx {
            entries.push(self.used_entry(memory, self.last_used));
            self.last_used = self.last_used.wrapping_add(1);
        }
        if self.event_idx {
            // SeqCst, as Linux's driver stores it (a store with a full barrier): the
            // store must not pass the driver's next look at the used index, or the
            // device could add an entry, see the old `used_event` and not call.
            memory.store_u16(self.layout.used_event(), self.last_used, Ordering::SeqCst);
        }
        entries
    }

    /// The next received frame, without waiting: the used length of the next used buffer
    /// posted by [`GuestQueue::post_receive_buffer`] and the bytes the device wrote into
    /// it. A frame merged over several buffers takes one call per buffer. Used entries for
    /// chains the test posted by hand (bad ones the device gave back) are passed over.
    pub fn next_received(&mut self, memory: &GuestMemory) -> Option<(u32, Vec<u8>)> {
        let used = self.take_used(memory);
        self.received.extend(used);
        while let Some(u) = self.received.pop_front() {
            let posted = u16::try_from(u.id)
                .ok()
                .and_then(|head| self.posted.remove(&head));
            let Some((addr, len)) = posted else {
                continue;
            };
            let written = u.len.min(len) as usize;
            return Some((u.len, memory.read(addr, written)));
        }
        None
    }

    /// The used ring's index as the device last published it.
    pub fn used_index(&self, memory: &GuestMemory) -> u16 {
        memory.load_u16(self.layout.used_idx(), Ordering::Acquire)
    }

    /// Used ring entry `n` (modulo the size), whether or not the device has published it.
    pub fn used_entry(&self, memory: &GuestMemory, n: u16) -> Used {
        let b = memory.read(self.layout.used_entry(n), 8);
        Used {
            id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The `avail_event` the device wrote: with `EVENT_IDX`, the available index whose
    /// publication it wants to be kicked for.
    pub fn avail_event(&self, memory: &GuestMemory) -> u16 {
        memory.load_u16(self.layout.avail_event(), Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_layout_aligns_each_part() {
        let layout = Layout::packed(16, 0x1001, 0x10000..0x20000);
        assert_eq!(
            (layout.desc, layout.avail, layout.used),
            (0x1010, 0x1110, 0x1138)
        );
    }

    #[test]
    fn descriptors_and_indices_sit_where_the_specification_says() {
        let memory = GuestMemory::anonymous(&[(0, 0x20000)]).unwrap();
        let mut queue = GuestQueue::new(Layout::packed(4, 0x1000, 0x10000..0x20000));
        let d = Descriptor {
            addr: 0x0102_0304_0506_0708,
            len: 0x0a0b_0c0d,
            flags: desc_flags::NEXT | desc_flags::WRITE,
            next: 3,
        };
        queue.write_descriptor(&memory, 1, d);
        assert_eq!(
            memory.read(0x1010, 16),
            [8, 7, 6, 5, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a, 3, 0, 3, 0]
        );
        assert_eq!(queue.read_descriptor(&memory, 1), d);
        queue.publish_batch(&memory, [1, 2]);
        // avail: flags, idx 2, ring [1, 2, …]
        assert_eq!(memory.read(0x1040, 8), [0, 0, 2, 0, 1, 0, 2, 0]);
        assert_eq!(queue.next_avail(), 2);
    }

    #[test]
    fn used_entries_are_read_once_and_received_buffers_matched_to_their_post() {
        let memory = GuestMemory::anonymous(&[(0, 0x20000)]).unwrap();
        let mut queue = GuestQueue::new(Layout::packed(4, 0x1000, 0x10000..0x20000));
        queue.set_event_idx(true);
        let head = queue.post_receive_buffer(&memory, 64);
        let addr = queue.read_descriptor(&memory, head).addr;
        memory.write(addr, b"hello");
        // The device uses an entry for a chain nobody posted, then the buffer.
        let used = queue.layout().used;
        memory.write(used + 4, &[9, 0, 0, 0, 0, 0, 0, 0]);
        memory.write(
            used + 12,
            &[u8::try_from(head).unwrap(), 0, 0, 0, 5, 0, 0, 0],
        );
        memory.write(used + 2, &2u16.to_le_bytes());
        assert_eq!(queue.used_index(&memory), 2);
        assert_eq!(queue.used_entry(&memory, 1), Used { id: 0, len: 5 });
        assert_eq!(queue.next_received(&memory), Some((5, b"hello".to_vec())));
        assert_eq!(queue.next_received(&memory), None);
        // used_event asks for a call on the entry after the two seen.
        assert_eq!(memory.read_u16(queue.layout().avail + 4 + 2 * 4), 2);
    }

    #[test]
    fn shared_memory_puts_its_regions_back_to_back_in_one_file() {
        let memory = GuestMemory::shared(&[(0, 0x1000), (0x1_0000_0000, 0x2000)]).unwrap();
        assert!(memory.fd().is_some());
        assert_eq!(memory.regions()[1].file_offset, 0x1000);
        memory.write(0x1_0000_0ffe, &[1, 2, 3, 4]);
        assert_eq!(memory.read(0x1_0000_0ffe, 4), [1, 2, 3, 4]);
        assert!(
            GuestMemory::anonymous(&[(0, 0x1000)])
                .unwrap()
                .fd()
                .is_none()
        );
    }

    #[test]
    fn a_device_queue_is_configured_at_the_rings() {
        let queue = GuestQueue::new(Layout::packed(16, 0x1000, 0x10000..0x20000));
        let mut device = Queue::new(256).unwrap();
        queue.configure(&mut device).unwrap();
        assert_eq!(device.size(), 16);
        assert_eq!(device.desc_table(), 0x1000);
        assert!(device.ready());
    }
}
