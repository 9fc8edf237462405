//! Copies to and from guest memory that remember the region the last one fell in, and
//! the cache-line hints given ahead of them.

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::shm::prefetch;

/// What a guest buffer fetched ahead is about to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read from (a transmit buffer).
    Read,
    /// Written into (a receive buffer).
    Write,
}

/// Our own copies to and from guest memory, remembering the region the last one fell in:
/// the buffers of a chain, and of a round, mostly lie in one region, and `vm-memory`
/// would search the regions again on every access. Every access stays checked: a region's
/// own `Bytes` refuses anything past its end, and an access that is not wholly inside one
/// region goes through the whole memory, as before.
pub struct Regions<'m> {
    memory: &'m GuestMemoryMmap,
    last: Option<&'m GuestRegionMmap>,
}

impl<'m> Regions<'m> {
    pub fn new(memory: &'m GuestMemoryMmap) -> Regions<'m> {
        Regions { memory, last: None }
    }

    /// The region holding all `len` bytes at `address`, and where in it they start.
    fn locate(
        &mut self,
        address: GuestAddress,
        len: usize,
    ) -> Option<(&'m GuestRegionMmap, MemoryRegionAddress)> {
        let within = |region: &GuestRegionMmap| {
            let offset = address.checked_offset_from(region.start_addr())?;
            let end = offset.checked_add(len as u64)?;
            (end <= region.len()).then_some(MemoryRegionAddress(offset))
        };
        if let Some(region) = self.last
            && let Some(offset) = within(region)
        {
            return Some((region, offset));
        }
        let region = self.memory.find_region(address)?;
        self.last = Some(region);
        within(region).map(|offset| (region, offset))
    }

    /// Copies guest memory at `address` into `buf`.
    pub fn read(&mut self, buf: &mut [u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some((region, offset)) => region.read_slice(buf, offset).map_err(|_| ()),
            None => self.memory.read_slice(buf, address).map_err(|_| ()),
        }
    }

    /// Copies `buf` into guest memory at `address`.
    pub fn write(&mut self, buf: &[u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some((region, offset)) => region.write_slice(buf, offset).map_err(|_| ()),
            None => self.memory.write_slice(buf, address).map_err(|_| ()),
        }
    }

    /// Whether all `len` bytes at `address` lie in guest memory.
    pub fn writable(&mut self, address: GuestAddress, len: usize) -> bool {
        self.locate(address, len).is_some()
            || GuestMemoryBackend::check_range(self.memory, address, len)
    }

    /// Asks for the first lines of the buffer the guest posted `ahead` chains after the
    /// next one of `queue`, for writing (a receive buffer) or reading (a transmit buffer),
    /// so that the copy into or out of it does not wait for the guest's core to give them
    /// up: the switch's stores otherwise fill the core's store buffer, and its loads stall
    /// the chain walk behind them. Only a hint: the available ring entry and the head
    /// descriptor are read through the same checked copies as everything else, and an
    /// entry not posted yet (or a bad one) only fetches a wrong line.
    pub fn prefetch_buffer(&mut self, queue: &Queue, ahead: u16, access: Access) {
        let size = queue.size();
        if size == 0 {
            return;
        }
        let slot = u64::from(queue.next_avail().wrapping_add(ahead) % size);
        let mut head = [0u8; 2];
        let entry = GuestAddress(queue.avail_ring()).checked_add(4 + 2 * slot);
        if entry.is_none_or(|at| self.read(&mut head, at).is_err()) {
            return;
        }
        let head = u16::from_le_bytes(head) % size;
        let mut address = [0u8; 8];
        let descriptor = GuestAddress(queue.desc_table()).checked_add(16 * u64::from(head));
        if descriptor.is_none_or(|at| self.read(&mut address, at).is_err()) {
            return;
        }
        let address = GuestAddress(u64::from_le_bytes(address));
        let Some(host) = self
            .locate(address, 1)
            .and_then(|(region, offset)| region.get_host_address(offset).ok())
        else {
            return;
        };
        for line in [host, host.wrapping_add(64)] {
            match access {
                Access::Write => prefetch::for_write(line),
                Access::Read => prefetch::for_read(line),
            }
        }
    }
}
