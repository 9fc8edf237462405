//! Copies to and from guest memory that remember the region the last one fell in, and
//! the cache-line hints given ahead of them.

use std::cell::Cell;

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    VolatileSlice,
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
/// would search the regions again on every access. Every access stays checked: the
/// region's slice refuses anything past its end, and an access that is not wholly inside
/// one region goes through the whole memory, as before.
pub struct Regions<'m> {
    memory: &'m GuestMemoryMmap,
    /// The last region used: where it starts, and all of it.
    last: Cell<Option<(GuestAddress, VolatileSlice<'m, ()>)>>,
}

impl<'m> Regions<'m> {
    pub fn new(memory: &'m GuestMemoryMmap) -> Regions<'m> {
        Regions {
            memory,
            last: Cell::new(None),
        }
    }

    /// The `len` bytes at `address`, when they lie in one region.
    pub fn locate(&self, address: GuestAddress, len: usize) -> Option<VolatileSlice<'m, ()>> {
        let within = |(start, region): (GuestAddress, VolatileSlice<'m, ()>)| {
            let offset = usize::try_from(address.checked_offset_from(start)?).ok()?;
            region.subslice(offset, len).ok()
        };
        if let Some(found) = self.last.get().and_then(within) {
            return Some(found);
        }
        let region = self.memory.find_region(address)?;
        let whole = (region.start_addr(), region.as_volatile_slice().ok()?);
        self.last.set(Some(whole));
        within(whole)
    }

    /// Copies guest memory at `address` into `buf`.
    pub fn read(&self, buf: &mut [u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some(slice) => {
                slice.copy_to(buf);
                Ok(())
            }
            None => self.memory.read_slice(buf, address).map_err(|_| ()),
        }
    }

    /// Copies `buf` into guest memory at `address`.
    pub fn write(&self, buf: &[u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some(slice) => {
                slice.copy_from(buf);
                Ok(())
            }
            None => self.memory.write_slice(buf, address).map_err(|_| ()),
        }
    }

    /// Whether all `len` bytes at `address` lie in guest memory.
    pub fn writable(&self, address: GuestAddress, len: usize) -> bool {
        self.locate(address, len).is_some()
            || GuestMemoryBackend::check_range(self.memory, address, len)
    }

    /// Asks for the lines of the first `len` bytes at `address` (two at least), for
    /// writing (a receive buffer) or reading (a transmit buffer), so that the copy into or
    /// out of it does not wait for the guest's core to give them up: the switch's stores
    /// otherwise fill the core's store buffer, and its loads stall the chain walk behind
    /// them. Only a hint: an address outside guest memory fetches nothing (and a line past
    /// the end of its region, which a prefetch may name, is never touched).
    pub fn prefetch(&self, address: GuestAddress, len: usize, access: Access) {
        let Some(slice) = self.locate(address, 1) else {
            return;
        };
        let host = slice.ptr_guard().as_ptr();
        let lines = len.max(128).div_ceil(64);
        match access {
            Access::Write => prefetch::lines_for_write(host, lines),
            Access::Read => prefetch::lines_for_read(host, lines),
        }
    }
}
