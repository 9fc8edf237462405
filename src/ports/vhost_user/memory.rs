//! The guest's memory, as the frontend shares it: regions of memfds (or hugetlbfs files)
//! that this process maps, and the table that turns the frontend's own addresses — which
//! `SET_VRING_ADDR` uses — into guest-physical ones, which descriptors use.
//!
//! The mapping itself is `vm-memory`'s: every access to guest memory afterwards goes
//! through its checked `Bytes` interface, which refuses an address outside every region
//! instead of touching it. What `vm-memory` cannot know is whether the file behind a region
//! is as long as the frontend claims; a mapping past the end of a file faults (`SIGBUS`) on
//! first touch, so each region's file is measured before it is mapped.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::wire::vhost_user::MemoryRegion;

/// Most regions mapped at once (`GET_MAX_MEM_SLOTS`).
pub const MAX_MEM_SLOTS: usize = 32;

/// Why a region or table was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region of zero length, or one whose end overflows.
    #[error("region {0:x?} is empty or wraps around")]
    BadRegion(MemoryRegion),
    /// The file is shorter than the region needs.
    #[error("region {region:x?} needs {needed} bytes of its file, which has {length}")]
    ShortFile {
        /// The region.
        region: MemoryRegion,
        /// Bytes the region reaches into the file.
        needed: u64,
        /// The file's length.
        length: u64,
    },
    /// More regions than [`MAX_MEM_SLOTS`].
    #[error("more than {MAX_MEM_SLOTS} memory regions")]
    TooManyRegions,
    /// No region with that address and size (`REM_MEM_REG`).
    #[error("no region {0:x?} to remove")]
    NoSuchRegion(MemoryRegion),
    /// Measuring or mapping failed, or the regions overlap.
    #[error("{0}")]
    Map(String),
}

/// One mapped region and where the frontend has it.
#[derive(Debug)]
struct Mapped {
    region: MemoryRegion,
    mapping: Arc<GuestRegionMmap>,
    /// The file cannot shrink (a memfd with `F_SEAL_SHRINK`, which QEMU's memfd backend
    /// sets by default).
    sealed: bool,
}

/// The guest memory of one frontend connection. Immutable: a new table makes a new value,
/// so the data path keeps using the one it holds until its batch ends.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Mapped>,
    memory: GuestMemoryMmap,
}

impl GuestMemory {
    /// Maps a whole `SET_MEM_TABLE`: one file per region, in order.
    pub fn from_table(
        regions: &[MemoryRegion],
        fds: Vec<OwnedFd>,
    ) -> Result<GuestMemory, MemoryError> {
        if regions.len() > MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let mapped = regions
            .iter()
            .zip(fds)
            .map(|(region, fd)| map(*region, fd))
            .collect::<Result<Vec<_>, _>>()?;
        GuestMemory::assemble(mapped)
    }

    /// This memory with one more region (`ADD_MEM_REG`).
    pub fn with_region(
        &self,
        region: MemoryRegion,
        fd: OwnedFd,
    ) -> Result<GuestMemory, MemoryError> {
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let mut mapped = self.copy_regions();
        mapped.push(map(region, fd)?);
        GuestMemory::assemble(mapped)
    }

    /// A first region for a connection that had none.
    pub fn single(region: MemoryRegion, fd: OwnedFd) -> Result<GuestMemory, MemoryError> {
        GuestMemory::assemble(vec![map(region, fd)?])
    }

    /// This memory without the region at `region`'s guest address and size (`REM_MEM_REG`);
    /// `None` when it was the last one.
    pub fn without_region(&self, region: MemoryRegion) -> Result<Option<GuestMemory>, MemoryError> {
        let mut mapped = self.copy_regions();
        let before = mapped.len();
        mapped.retain(|m| {
            !(m.region.guest_phys_addr == region.guest_phys_addr
                && m.region.memory_size == region.memory_size)
        });
        if mapped.len() == before {
            return Err(MemoryError::NoSuchRegion(region));
        }
        if mapped.is_empty() {
            return Ok(None);
        }
        GuestMemory::assemble(mapped).map(Some)
    }

    fn copy_regions(&self) -> Vec<Mapped> {
        self.regions
            .iter()
            .map(|m| Mapped {
                region: m.region,
                mapping: Arc::clone(&m.mapping),
                sealed: m.sealed,
            })
            .collect()
    }

    fn assemble(mut mapped: Vec<Mapped>) -> Result<GuestMemory, MemoryError> {
        mapped.sort_by_key(|m| m.region.guest_phys_addr);
        let memory = GuestMemoryMmap::from_arc_regions(
            mapped.iter().map(|m| Arc::clone(&m.mapping)).collect(),
        )
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok(GuestMemory {
            regions: mapped,
            memory,
        })
    }

    /// The mapped memory, for checked reads and writes.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Turns an address in the frontend's address space into a guest-physical one, if
    /// `len` bytes from it lie inside one region.
    pub fn frontend_to_guest(&self, address: u64, len: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|m| {
            let offset = address.checked_sub(m.region.userspace_addr)?;
            let end = offset.checked_add(len)?;
            (end <= m.region.memory_size).then(|| GuestAddress(m.region.guest_phys_addr + offset))
        })
    }

    /// Whether every region's file is sealed against shrinking. A frontend that can
    /// truncate a mapped file can make this process fault (`SIGBUS`) on its next access,
    /// taking the other sockets of the process with it.
    pub fn sealed(&self) -> bool {
        self.regions.iter().all(|m| m.sealed)
    }

    /// Number of regions.
    #[cfg(test)]
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }
}

/// Maps one region of `fd`, after checking the file is long enough for it.
fn map(region: MemoryRegion, fd: OwnedFd) -> Result<Mapped, MemoryError> {
    let bad = || MemoryError::BadRegion(region);
    if region.memory_size == 0
        || region
            .guest_phys_addr
            .checked_add(region.memory_size)
            .is_none()
        || region
            .userspace_addr
            .checked_add(region.memory_size)
            .is_none()
    {
        return Err(bad());
    }
    let needed = region
        .mmap_offset
        .checked_add(region.memory_size)
        .ok_or_else(bad)?;
    let size = usize::try_from(region.memory_size).map_err(|_| bad())?;
    let sealed = rustix::fs::fcntl_get_seals(&fd)
        .is_ok_and(|seals| seals.contains(rustix::fs::SealFlags::SHRINK));
    let file = File::from(fd);
    let length = file
        .metadata()
        .map_err(|e| MemoryError::Map(format!("measure the region's file: {e}")))?
        .len();
    // A hugetlbfs file or memfd reports its length; a device (or anything whose length is
    // not the memory behind it) cannot be checked, so it is refused.
    if length < needed {
        return Err(MemoryError::ShortFile {
            region,
            needed,
            length,
        });
    }
    let mapping = GuestRegionMmap::from_range(
        GuestAddress(region.guest_phys_addr),
        size,
        Some(FileOffset::new(file, region.mmap_offset)),
    )
    .map_err(|e| MemoryError::Map(format!("map region {region:x?}: {e}")))?;
    Ok(Mapped {
        region,
        mapping: Arc::new(mapping),
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn memfd(len: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    fn region(gpa: u64, size: u64, uva: u64, offset: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: uva,
            mmap_offset: offset,
        }
    }

    #[test]
    fn frontend_addresses_translate_within_one_region() {
        let memory = GuestMemory::from_table(
            &[
                region(0, 0x10000, 0x7000_0000, 0),
                region(0x100000, 0x10000, 0x7010_0000, 0x10000),
            ],
            vec![memfd(0x20000), memfd(0x20000)],
        )
        .unwrap();
        assert_eq!(
            memory.frontend_to_guest(0x7000_1000, 16),
            Some(GuestAddress(0x1000))
        );
        assert_eq!(
            memory.frontend_to_guest(0x7010_0010, 16),
            Some(GuestAddress(0x100010))
        );
        // Runs off the end of the first region.
        assert_eq!(memory.frontend_to_guest(0x7000_fff8, 16), None);
        assert_eq!(memory.frontend_to_guest(0x1000, 1), None);
        // The mapping is live: what is written reads back, and outside is refused.
        memory
            .memory()
            .write_obj(0xabcdu16, GuestAddress(0x100020))
            .unwrap();
        assert_eq!(
            memory
                .memory()
                .read_obj::<u16>(GuestAddress(0x100020))
                .unwrap(),
            0xabcd
        );
        assert!(
            memory
                .memory()
                .read_obj::<u16>(GuestAddress(0x20000))
                .is_err()
        );
    }

    #[test]
    fn only_a_memfd_sealed_against_shrinking_counts_as_sealed() {
        let plain = GuestMemory::single(region(0, 0x10000, 0, 0), memfd(0x10000)).unwrap();
        assert!(!plain.sealed());
        let fd = rustix::fs::memfd_create(
            "guest",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 0x10000).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
        let sealed = GuestMemory::single(region(0, 0x10000, 0, 0), fd).unwrap();
        assert!(sealed.sealed());
    }

    #[test]
    fn a_file_shorter_than_its_region_is_refused() {
        let result =
            GuestMemory::from_table(&[region(0, 0x20000, 0, 0x1000)], vec![memfd(0x20000)]);
        assert!(
            matches!(result, Err(MemoryError::ShortFile { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn overlapping_and_empty_regions_are_refused() {
        let overlap = GuestMemory::from_table(
            &[
                region(0, 0x10000, 0, 0),
                region(0x8000, 0x10000, 0x100000, 0),
            ],
            vec![memfd(0x10000), memfd(0x10000)],
        );
        assert!(matches!(overlap, Err(MemoryError::Map(_))), "{overlap:?}");
        let empty = GuestMemory::from_table(&[region(0, 0, 0, 0)], vec![memfd(0x1000)]);
        assert!(matches!(empty, Err(MemoryError::BadRegion(_))));
    }

    #[test]
    fn regions_come_and_go_one_by_one() {
        let memory =
            GuestMemory::single(region(0, 0x10000, 0x1000_0000, 0), memfd(0x10000)).unwrap();
        let memory = memory
            .with_region(region(0x20000, 0x10000, 0x2000_0000, 0), memfd(0x10000))
            .unwrap();
        assert_eq!(memory.region_count(), 2);
        let memory = memory
            .without_region(region(0, 0x10000, 0, 0))
            .unwrap()
            .unwrap();
        assert_eq!(memory.region_count(), 1);
        assert_eq!(memory.frontend_to_guest(0x1000_0000, 1), None);
        assert!(memory.without_region(region(0, 0x10000, 0, 0)).is_err());
    }
}
