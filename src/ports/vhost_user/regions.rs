//! Copies to and from guest memory that remember the region the last one fell in, and
//! the cache-line hints given ahead of them.

use std::cell::Cell;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::shm::guest::GuestSpan;

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
/// region's span refuses anything past its end ([`GuestSpan`]), and an access that is not
/// wholly inside one region goes through `vm-memory`'s search of the whole memory.
pub struct Regions<'m> {
    memory: &'m GuestMemoryMmap,
    /// The last region used: its first guest address, and all of it.
    last: Cell<Option<(u64, GuestSpan<'m>)>>,
}

impl<'m> Regions<'m> {
    pub fn new(memory: &'m GuestMemoryMmap) -> Regions<'m> {
        Regions {
            memory,
            last: Cell::new(None),
        }
    }

    /// The `len` bytes at `address`, when they lie in one region.
    #[inline]
    pub fn locate(&self, address: GuestAddress, len: usize) -> Option<GuestSpan<'m>> {
        if let Some(found) = self.last.get().and_then(|r| within(r, address, len)) {
            return Some(found);
        }
        self.locate_afresh(address, len)
    }

    /// [`Regions::locate`] past the region remembered: searches the memory's regions.
    #[cold]
    fn locate_afresh(&self, address: GuestAddress, len: usize) -> Option<GuestSpan<'m>> {
        let region = self.memory.find_region(address)?;
        let start = region.start_addr().0;
        let whole = (start, GuestSpan::new(&region.as_volatile_slice().ok()?));
        self.last.set(Some(whole));
        within(whole, address, len)
    }

    /// Copies guest memory at `address` into `buf`.
    pub fn read(&self, buf: &mut [u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some(span) if span.copy_out(0, buf) => Ok(()),
            _ => self.memory.read_slice(buf, address).map_err(|_| ()),
        }
    }

    /// Copies `buf` into guest memory at `address`.
    pub fn write(&self, buf: &[u8], address: GuestAddress) -> Result<(), ()> {
        match self.locate(address, buf.len()) {
            Some(span) if span.copy_in(0, buf) => Ok(()),
            _ => self.memory.write_slice(buf, address).map_err(|_| ()),
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
    #[inline]
    pub fn prefetch(&self, address: GuestAddress, len: usize, access: Access) {
        let Some(span) = self.locate(address, 1) else {
            return;
        };
        let lines = len.max(super::split::FIRST_LINES).div_ceil(64);
        span.prefetch(0, lines, access == Access::Write);
    }
}

/// The `len` bytes at `address` in `region` (starting at guest address `start`), if they
/// all lie in it.
#[inline]
fn within<'m>(
    (start, region): (u64, GuestSpan<'m>),
    address: GuestAddress,
    len: usize,
) -> Option<GuestSpan<'m>> {
    let offset = usize::try_from(address.0.checked_sub(start)?).ok()?;
    region.sub(offset, len)
}
