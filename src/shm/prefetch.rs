//! Cache-line prefetches: hints to the CPU, which read and write no memory and cannot
//! fault, whatever the address.
//!
//! The one that matters is [`for_write`]. A sender that copies a frame into a ring slot
//! the receiver's core read last makes its stores wait for that core to give the lines up,
//! and the compare-and-swap that publishes the frame waits for those stores; asking for the
//! lines of a slot a few ahead (x86's `PREFETCHW`) overlaps that wait with the copies
//! before it. An ordinary prefetch does not help there: it fetches the line shared, and the
//! store still has to ask the other core to drop it.

use std::sync::OnceLock;

/// Fetches the cache line holding `address` ready for writing, where the processor can
/// (x86-64 with `PREFETCHW`); otherwise does nothing.
#[inline]
pub fn for_write(address: *const u8) {
    lines_for_write(address, 1);
}

/// Fetches the cache line holding `address` for reading (x86-64's `PREFETCHT0`); elsewhere
/// does nothing.
#[inline]
pub fn for_read(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, part of x86-64) is a hint: it reads and writes no memory
    // and raises no fault, even for an unmapped address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// [`for_write`] for the `lines` cache lines from `address` on, asking the processor once
/// whether it has the instruction.
#[inline]
pub fn lines_for_write(address: *const u8, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        for line in 0..lines {
            let at = address.wrapping_add(64 * line);
            // SAFETY: PREFETCHW is a hint: it reads and writes no memory and raises no
            // fault, even for an unmapped address; it is only run where CPUID says it
            // exists.
            unsafe {
                std::arch::asm!(
                    "prefetchw [{0}]",
                    in(reg) at,
                    options(nostack, preserves_flags, readonly),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (address, lines);
}

/// [`for_read`] for the `lines` cache lines from `address` on.
#[inline]
pub fn lines_for_read(address: *const u8, lines: usize) {
    for line in 0..lines {
        for_read(address.wrapping_add(64 * line));
    }
}

/// Whether the processor has `PREFETCHW` (CPUID leaf 0x8000_0001, ECX bit 8), asked once.
fn has_prefetchw() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            let highest = __cpuid(0x8000_0000).eax;
            highest >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing_and_never_faults() {
        let mut bytes = [7u8; 256];
        for offset in [0, 63, 64, 255] {
            for_write(bytes[offset..].as_ptr());
            for_read(bytes[offset..].as_ptr());
        }
        // Addresses nothing is mapped at: a hint, so no fault.
        for_write(std::ptr::null());
        for_write(usize::MAX as *const u8);
        for_read(std::ptr::null());
        // Runs of lines, the last ones past the buffer's end.
        lines_for_write(bytes.as_ptr(), 8);
        lines_for_read(bytes[192..].as_ptr(), 4);
        lines_for_write(usize::MAX as *const u8, 2);
        bytes[0] = 8;
        assert_eq!(bytes[0], 8);
        assert!(bytes[1..].iter().all(|&b| b == 7));
    }
}
