//! The fence around shared memory: the only module of guestnet that uses `unsafe`.
//!
//! A network lives in a file on a memory file system that every peer maps with
//! `MAP_SHARED`. Everything else in the crate reaches that memory through the few checked
//! doors this module opens:
//!
//! - [`Mapping::get`] hands out a shared reference to a [`ShmSafe`] structure (one made only
//!   of atomics, so any bit pattern another process writes is a valid value) after checking
//!   that it lies inside the mapping and is aligned;
//! - [`Mapping::read_bytes`] and [`Mapping::write_bytes`] copy frame bytes in and out of a
//!   checked range. Readers copy out *before* they validate, so a peer that rewrites a slot
//!   while it is read can only spoil the copy, never the reader's own memory or its checks;
//! - [`RangeLock`] takes, probes and releases open-file-description (OFD) byte-range locks on
//!   the region file. The kernel drops such a lock the moment its owner dies, which is what
//!   makes `kill -9` of a peer detectable without heartbeats (the same trick lguest's
//!   `--sharenet` used, with a write lock on one byte per slot).
//!
//! The layout of the structures is in [`layout`]; it is plain safe code. A few more things
//! need `unsafe` and live here so that every `unsafe` block of the crate stays in this
//! module: [`socket`], the few socket calls rustix does not wrap (a packet socket's filter,
//! virtio-net header and bind, for the VXLAN port), [`prefetch`], the cache-line hints the
//! ring's senders and the vhost-user port give ahead of their copies, [`guest`], the
//! vhost-user data path's checked loads, stores and copies in a guest's memory,
//! [`restore_default_sigpipe`], a process-wide setting the command needs, and
//! [`end_with_parent`], for the children `guestnet up` supervises.
#![allow(unsafe_code)]

pub mod guest;
pub mod layout;
pub mod prefetch;
pub mod socket;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

/// A type that may be viewed in place in shared memory.
///
/// # Safety
///
/// The type must be `#[repr(C)]`, contain only `AtomicU64`/`AtomicU32` fields (or arrays of
/// them), so that every bit pattern is a valid value and every access is atomic, and have
/// no padding whose reading would be undefined.
pub unsafe trait ShmSafe: Sized {}

// SAFETY: a lone atomic is valid for any bit pattern and is accessed atomically.
unsafe impl ShmSafe for AtomicU64 {}
// SAFETY: as above.
unsafe impl ShmSafe for AtomicU32 {}
// SAFETY: layout::Header is repr(C) and made only of AtomicU64/AtomicU32 (checked by its tests).
unsafe impl ShmSafe for layout::Header {}
// SAFETY: layout::PeerEntry is repr(C) and made only of atomics and arrays of them.
unsafe impl ShmSafe for layout::PeerEntry {}
// SAFETY: layout::RingControl is repr(C) and made only of atomics.
unsafe impl ShmSafe for layout::RingControl {}
// SAFETY: layout::SlotHeader is repr(C) and made only of atomics.
unsafe impl ShmSafe for layout::SlotHeader {}
// SAFETY: layout::FdbEntry is repr(C) and made only of atomics.
unsafe impl ShmSafe for layout::FdbEntry {}
// SAFETY: layout::LargeHeader is repr(C) and made only of atomics.
unsafe impl ShmSafe for layout::LargeHeader {}
// SAFETY: layout::VlanEntry is repr(C) and made only of an array of atomics.
unsafe impl ShmSafe for layout::VlanEntry {}

/// A read-write `MAP_SHARED` mapping of a whole region file. Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; all access goes through atomics or explicit copies,
// so sharing it between threads is no different from sharing it between processes.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared and writable.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty region"));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object;
        // we only ever create references into it to ShmSafe types, which tolerate
        // concurrent modification by other processes.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true for a mapping that exists).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn checked_range(&self, offset: usize, len: usize, align: usize) -> Option<usize> {
        let end = offset.checked_add(len)?;
        if end > self.len || !offset.is_multiple_of(align) {
            return None;
        }
        Some(offset)
    }

    /// A reference to the `T` at `offset`, or `None` when it would not lie wholly inside the
    /// mapping or would be misaligned.
    pub fn get<T: ShmSafe>(&self, offset: usize) -> Option<&T> {
        let offset =
            self.checked_range(offset, std::mem::size_of::<T>(), std::mem::align_of::<T>())?;
        // The mapping is page-aligned, so an aligned offset gives an aligned pointer.
        // SAFETY: the range [offset, offset + size_of::<T>()) lies inside the live mapping
        // (checked above), the pointer is aligned for T, T is ShmSafe (any bit pattern is
        // valid and every access is atomic), and the reference cannot outlive `self`.
        Some(unsafe { &*self.base.as_ptr().add(offset).cast::<T>() })
    }

    /// A view of `count` structures `T` placed `stride` bytes apart from `offset`, checked
    /// once here so that [`Strided::at`] needs no check per access.
    pub fn strided<T: ShmSafe>(
        &self,
        offset: usize,
        stride: usize,
        count: usize,
    ) -> Option<Strided<'_, T>> {
        if count == 0
            || stride < std::mem::size_of::<T>()
            || !stride.is_multiple_of(std::mem::align_of::<T>())
        {
            return None;
        }
        let last = offset.checked_add(stride.checked_mul(count - 1)?)?;
        self.checked_range(offset, std::mem::size_of::<T>(), std::mem::align_of::<T>())?;
        self.checked_range(last, std::mem::size_of::<T>(), std::mem::align_of::<T>())?;
        Some(Strided {
            mapping: self,
            offset,
            stride,
            count: count as u64,
            _marker: std::marker::PhantomData,
        })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let offset = self.checked_range(offset, dst.len(), 1)?;
        // Another process may write the source concurrently; the copy may then be torn,
        // which is why callers validate the copy and never the shared bytes.
        // SAFETY: the source range is inside the mapping (checked above) and cannot overlap
        // `dst`, which is private memory borrowed mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Some(())
    }

    /// Asks for the cache line holding `offset` ready for writing ([`prefetch::for_write`]);
    /// nothing happens for an offset outside the mapping.
    #[inline]
    pub fn prefetch_for_write(&self, offset: usize) {
        if offset < self.len {
            prefetch::for_write(self.base.as_ptr().wrapping_add(offset));
        }
    }

    /// Copies `src` into the mapping at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Option<()> {
        let offset = self.checked_range(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside the mapping (checked above); `src` is
        // private memory and cannot overlap it. No Rust reference to these bytes exists
        // (only ShmSafe headers are referenced, never frame data).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(offset), src.len());
        }
        Some(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe a mapping made by Mapping::map and not unmapped
        // elsewhere; every reference into it borrows `self`, so none outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Structures at a fixed stride in a mapping, bounds-checked once at creation.
pub struct Strided<'a, T> {
    mapping: &'a Mapping,
    offset: usize,
    stride: usize,
    count: u64,
    _marker: std::marker::PhantomData<&'a T>,
}

impl<T> Clone for Strided<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Strided<'_, T> {}

impl<'a, T: ShmSafe> Strided<'a, T> {
    /// Number of structures.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Offset in the mapping of structure `index % count`.
    pub fn offset_of(&self, index: u64) -> usize {
        // The reduction keeps every index inside the range checked by Mapping::strided;
        // the product fits because that check computed it with checked arithmetic. Rings
        // and most tables have power-of-two sizes: a mask spares the hot path a division.
        let reduced = if self.count.is_power_of_two() {
            index & (self.count - 1)
        } else {
            index % self.count
        };
        self.offset + reduced as usize * self.stride
    }

    /// The structure at `index % count`: an index can never leave the checked range.
    pub fn at(&self, index: u64) -> &'a T {
        let offset = self.offset_of(index);
        // Mapping::strided checked that the first and last structures lie inside the
        // mapping and are aligned; `offset` is one of the `count` positions between them.
        // SAFETY: so it is in bounds and aligned (stride is a multiple of T's alignment);
        // T is ShmSafe, and the reference lives no longer than the mapping borrow.
        unsafe { &*self.mapping.base.as_ptr().add(offset).cast::<T>() }
    }
}

/// Open-file-description byte-range locks on a region file.
///
/// OFD locks belong to an open file description, not to a process: two [`RangeLock`]
/// users in one process conflict as two processes would (each peer opens the file anew),
/// and the kernel releases them when the description is closed, including at death.
pub struct RangeLock;

/// What a lock probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Nobody else holds a lock on the range.
    Free,
    /// Another open file description holds a lock on it.
    Held,
}

fn flock_for(kind: libc::c_short, start: u64, len: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(start).map_err(|_| io::Error::other("lock offset"))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("lock length"))?;
    // SAFETY: libc::flock is a plain C struct of integers; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = len;
    lock.l_pid = 0; // required to be 0 for OFD locks
    Ok(lock)
}

fn fcntl_lock(fd: BorrowedFd<'_>, command: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor borrowed for the call and `lock` points to a valid,
    // exclusively borrowed flock structure that the kernel may read and (for GETLK) write.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), command, lock as *mut libc::flock) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl RangeLock {
    /// Tries to take an exclusive lock on `[start, start + len)`; `Ok(false)` if another
    /// description holds it.
    pub fn try_lock(fd: impl AsFd, start: u64, len: u64) -> io::Result<bool> {
        let mut lock = flock_for(libc::F_WRLCK as libc::c_short, start, len)?;
        match fcntl_lock(fd.as_fd(), libc::F_OFD_SETLK, &mut lock) {
            Ok(()) => Ok(true),
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    || e.raw_os_error() == Some(libc::EACCES) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes an exclusive lock on `[start, start + len)`, waiting for it.
    pub fn lock(fd: impl AsFd, start: u64, len: u64) -> io::Result<()> {
        let mut lock = flock_for(libc::F_WRLCK as libc::c_short, start, len)?;
        loop {
            match fcntl_lock(fd.as_fd(), libc::F_OFD_SETLKW, &mut lock) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Releases a lock taken through the same descriptor.
    pub fn unlock(fd: impl AsFd, start: u64, len: u64) -> io::Result<()> {
        let mut lock = flock_for(libc::F_UNLCK as libc::c_short, start, len)?;
        fcntl_lock(fd.as_fd(), libc::F_OFD_SETLK, &mut lock)
    }

    /// Whether some other open file description holds a lock on the range.
    pub fn probe(fd: impl AsFd, start: u64, len: u64) -> io::Result<LockState> {
        let mut lock = flock_for(libc::F_WRLCK as libc::c_short, start, len)?;
        fcntl_lock(fd.as_fd(), libc::F_OFD_GETLK, &mut lock)?;
        if lock.l_type == libc::F_UNLCK as libc::c_short {
            Ok(LockState::Free)
        } else {
            Ok(LockState::Held)
        }
    }
}

/// Gives `SIGPIPE` back its default action, ending the process when it writes to a pipe
/// nobody reads any more.
///
/// Rust starts programs with `SIGPIPE` ignored, so such a write fails with `EPIPE` instead,
/// and `println!` turns that into a panic. A command that only prints a report should
/// rather end quietly, as `ls | head -1` does. Processes that serve sockets must not call
/// this: a client closing its end would kill every port the process hosts.
pub fn restore_default_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs in signal context;
    // changing a disposition is process-wide and safe to do from any thread.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Has the child `command` starts receive `SIGTERM` when the thread that starts it ends
/// (Linux's parent-death signal), so that the ports a supervisor runs stop, and clean up,
/// even when the supervisor is killed with `SIGKILL` and cannot stop them itself. The
/// kernel sends it when the *thread* that forked the child exits: call this from a thread
/// that lives as long as the children should.
pub fn end_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes two system calls (prctl, getppid)
    // through rustix, which allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died before the call above: then no signal would come.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
