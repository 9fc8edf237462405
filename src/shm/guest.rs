//! A guest's memory as the vhost-user port's data path reads and writes it: a span of
//! bytes another process (the VM) writes at any time, reached with one bounds check per
//! access.
//!
//! `vm-memory`'s [`VolatileSlice`] is the door the port's connection code goes through,
//! and the one a [`GuestSpan`] is made from; but each of its accesses builds a sub-slice,
//! checks it twice and goes through its dirty-page bookkeeping, and a switch makes a
//! dozen of them per frame (the available entry, each descriptor, the used entry, the
//! region of each buffer, the copies). Measured with `valgrind --tool=callgrind` on the
//! switch, that was a sixth of its instructions. A span keeps only where the bytes are and
//! how many, and every access checks its offset and length against that once.
//!
//! The rules are those of `vm-memory`'s own accesses: loads and stores of ring fields are
//! volatile (the guest changes them under us) and aligned, or refused; the avail index is
//! loaded with acquire; copies of frames are plain byte copies whose result is checked
//! after it is taken, since a guest rewriting a buffer while we copy it can only spoil
//! its own frame.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU16, Ordering};

use vm_memory::VolatileSlice;

use super::prefetch;

/// `len` bytes of a guest's memory, valid for `'m` (the borrow of the memory map they
/// came from).
#[derive(Debug, Clone, Copy)]
pub struct GuestSpan<'m> {
    base: *mut u8,
    len: usize,
    memory: PhantomData<&'m [u8]>,
}

impl<'m> GuestSpan<'m> {
    /// The bytes `slice` covers. (Its pointer stays valid for `'m` without a guard: the
    /// memory is a plain `mmap`, `vm-memory`'s Xen mappings are not built in.)
    pub fn new(slice: &VolatileSlice<'m, ()>) -> GuestSpan<'m> {
        GuestSpan {
            base: slice.ptr_guard_mut().as_ptr(),
            len: slice.len(),
            memory: PhantomData,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `len` bytes from `offset` on, if they are all inside.
    #[inline]
    pub fn sub(&self, offset: usize, len: usize) -> Option<GuestSpan<'m>> {
        self.fits(offset, len).then(|| GuestSpan {
            base: self.base.wrapping_add(offset),
            len,
            memory: PhantomData,
        })
    }

    #[inline]
    fn fits(&self, offset: usize, len: usize) -> bool {
        offset <= self.len && len <= self.len - offset
    }

    /// Where `N` bytes at `offset` are, when they are inside and aligned to `N`.
    #[inline]
    fn field<const N: usize>(&self, offset: usize) -> Option<*mut u8> {
        let at = self.base.wrapping_add(offset);
        (self.fits(offset, N) && (at as usize).is_multiple_of(N)).then_some(at)
    }

    /// The little-endian `u16` at `offset` (aligned).
    #[inline]
    pub fn load_u16(&self, offset: usize) -> Option<u16> {
        let at = self.field::<2>(offset)?;
        // SAFETY: the two bytes lie inside the span (checked), which `'m` keeps mapped, and
        // are aligned for a u16 (checked); any bit pattern is a u16.
        Some(u16::from_le(unsafe { at.cast::<u16>().read_volatile() }))
    }

    /// [`GuestSpan::load_u16`] with acquire: what the guest wrote before it stored this
    /// value is seen.
    #[inline]
    pub fn load_u16_acquire(&self, offset: usize) -> Option<u16> {
        let at = self.field::<2>(offset)?;
        // SAFETY: inside the span and aligned (checked), so a valid AtomicU16 for `'m`;
        // the guest's accesses to it are atomic or racy only on its own side.
        let atomic = unsafe { AtomicU16::from_ptr(at.cast()) };
        Some(u16::from_le(atomic.load(Ordering::Acquire)))
    }

    /// The two little-endian `u64`s at `offset` (aligned to 8): a virtqueue descriptor.
    #[inline]
    pub fn load_u64_pair(&self, offset: usize) -> Option<[u64; 2]> {
        let at = self.field::<8>(offset)?;
        if !self.fits(offset, 16) {
            return None;
        }
        let words = at.cast::<u64>();
        // SAFETY: sixteen bytes inside the span (checked), aligned to 8 (checked), kept
        // mapped by `'m`; any bit pattern is a u64.
        let (low, high) = unsafe { (words.read_volatile(), words.add(1).read_volatile()) };
        Some([u64::from_le(low), u64::from_le(high)])
    }

    /// Stores two little-endian `u32`s at `offset` (aligned to 4): a used-ring element.
    #[inline]
    pub fn store_u32_pair(&self, offset: usize, [first, second]: [u32; 2]) -> bool {
        let Some(at) = self.field::<4>(offset) else {
            return false;
        };
        if !self.fits(offset, 8) {
            return false;
        }
        let words = at.cast::<u32>();
        // SAFETY: eight bytes inside the span (checked), aligned to 4 (checked), kept
        // mapped and writable by `'m`.
        unsafe {
            words.write_volatile(first.to_le());
            words.add(1).write_volatile(second.to_le());
        }
        true
    }

    /// Copies `buf.len()` bytes from `offset` on into `buf`, if they are all inside.
    #[inline]
    pub fn copy_out(&self, offset: usize, buf: &mut [u8]) -> bool {
        if !self.fits(offset, buf.len()) {
            return false;
        }
        // SAFETY: the source lies inside the span (checked), kept mapped by `'m`; `buf` is
        // our own memory and cannot overlap the guest's. A guest writing the bytes while
        // they are copied spoils only its own frame, which is checked after the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(offset), buf.as_mut_ptr(), buf.len());
        }
        true
    }

    /// Copies `buf` to `offset` on, if it fits inside.
    #[inline]
    pub fn copy_in(&self, offset: usize, buf: &[u8]) -> bool {
        if !self.fits(offset, buf.len()) {
            return false;
        }
        // SAFETY: the destination lies inside the span (checked), kept mapped and
        // writable by `'m`; `buf` is our own memory and cannot overlap the guest's.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.base.add(offset), buf.len());
        }
        true
    }

    /// Asks for the `lines` cache lines from `offset` on, for writing or for reading (a
    /// hint: nothing past the span is named by the first line, and a prefetch cannot fault).
    #[inline]
    pub fn prefetch(&self, offset: usize, lines: usize, write: bool) {
        if offset >= self.len {
            return;
        }
        let at = self.base.wrapping_add(offset);
        if write {
            prefetch::lines_for_write(at, lines);
        } else {
            prefetch::lines_for_read(at, lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("memory")
    }

    fn span(memory: &GuestMemoryMmap) -> GuestSpan<'_> {
        let slice = memory.get_slice(GuestAddress(0), 0x1000).expect("slice");
        GuestSpan::new(&slice)
    }

    #[test]
    fn every_access_stays_inside_the_span() {
        let memory = memory();
        let whole = span(&memory);
        assert_eq!(whole.len(), 0x1000);
        let part = whole.sub(0x800, 0x100).expect("inside");
        assert!(whole.sub(0x800, 0x801).is_none());
        assert!(whole.sub(usize::MAX, 2).is_none());
        assert!(whole.sub(0x1000, 0).is_some_and(|s| s.is_empty()));
        assert_eq!(part.load_u16(0xfe), Some(0));
        assert_eq!(part.load_u16(0x100), None);
        assert_eq!(part.load_u64_pair(0xf8), None);
        assert!(part.load_u64_pair(0xf0).is_some());
        assert!(!part.store_u32_pair(0xfc, [1, 2]));
        assert!(!part.copy_in(0xff, &[1, 2]));
        assert!(!part.copy_out(usize::MAX, &mut [0; 2]));
        assert!(part.copy_in(0xfe, &[1, 2]));
        assert_eq!(
            memory.read_obj::<[u8; 2]>(GuestAddress(0x8fe)).ok(),
            Some([1, 2])
        );
    }

    #[test]
    fn fields_are_little_endian_and_refused_when_misaligned() {
        let memory = memory();
        let whole = span(&memory);
        memory
            .write_slice(
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
                GuestAddress(16),
            )
            .expect("write");
        assert_eq!(whole.load_u16(16), Some(0x0201));
        assert_eq!(whole.load_u16_acquire(18), Some(0x0403));
        assert_eq!(whole.load_u16(17), None);
        assert_eq!(
            whole.load_u64_pair(16),
            Some([0x0807_0605_0403_0201, 0x100f_0e0d_0c0b_0a09])
        );
        assert_eq!(whole.load_u64_pair(20), None);
        assert!(whole.store_u32_pair(36, [0x0403_0201, 0x0807_0605]));
        assert!(!whole.store_u32_pair(38, [0, 0]));
        let mut back = [0u8; 8];
        assert!(whole.copy_out(36, &mut back));
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
