//! Holding a unicast frame back for room in its receiver's full ring, for a port that can
//! make its guest wait instead of losing frames (see [`super::Sender::set_hold_back`]).
//!
//! The wait is bounded per receiver: a receiver still full after it is marked *congested*,
//! and frames to it are dropped at once (counted `ring_full` by the caller) until it has
//! read half a ring since. Its ring's read position only bounds how long we wait, so a
//! receiver that lies about it gains nothing but waiting time.

use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use super::super::clock::monotonic_ns;
use super::super::ring::{Push, SlotMemory};
use super::super::shm_ring::ShmRing;

/// The mark of a receiver that is not congested.
const NOT_CONGESTED: u64 = u64::MAX;

/// Quick retries before the waiting sender starts to sleep between them.
const SPINS: u32 = 16;
/// The sleep between later retries: the receiver may need this core.
const RETRY_SLEEP: Duration = Duration::from_micros(20);

/// A sender's hold-back: its limit and the receivers it found congested.
#[derive(Debug)]
pub(super) struct HoldBack {
    /// How long a frame may wait (0: never).
    limit_ns: u64,
    /// Per slot, for a congested receiver: where its reader stood when it was marked.
    marks: Vec<u64>,
}

impl HoldBack {
    pub(super) fn new(max_peers: usize) -> HoldBack {
        HoldBack {
            limit_ns: 0,
            marks: vec![NOT_CONGESTED; max_peers],
        }
    }

    pub(super) fn set_limit(&mut self, limit: Duration) {
        self.limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    }

    /// Whether a frame for `index`, whose ring `ring` is full, may wait: there is a limit
    /// and the receiver is not congested (a mark is cleared once it has read half a ring).
    pub(super) fn may_wait(&mut self, ring: &ShmRing<'_>, index: u16) -> bool {
        if self.limit_ns == 0 {
            return false;
        }
        let Some(mark) = self.marks.get_mut(index as usize) else {
            return false;
        };
        if *mark != NOT_CONGESTED {
            let consumed = ring.control().consumed.load(Ordering::Relaxed);
            if consumed.wrapping_sub(*mark) < ring.slot_count() / 2 {
                return false;
            }
            *mark = NOT_CONGESTED;
        }
        true
    }

    /// Waits, up to the limit, for room in `ring` (of receiver `index`): wakes the
    /// receiver now (its wake-up would otherwise wait for the end of the batch), then
    /// retries `push` until the ring is no longer full. Marks the receiver congested when
    /// it stays full, and returns what the last push did.
    pub(super) fn wait(
        &mut self,
        ring: &ShmRing<'_>,
        index: u16,
        mut push: impl FnMut() -> Push,
    ) -> Push {
        let deadline = monotonic_ns().saturating_add(self.limit_ns);
        let control = ring.control();
        // Pairs with the fence in Receiver::wait, as at the end of a batch.
        fence(Ordering::SeqCst);
        super::wake(control);
        let mut tries = 0u32;
        loop {
            if tries < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(RETRY_SLEEP);
            }
            tries += 1;
            let pushed = push();
            if pushed != Push::Full {
                return pushed;
            }
            if monotonic_ns() >= deadline {
                if let Some(mark) = self.marks.get_mut(index as usize) {
                    *mark = control.consumed.load(Ordering::Relaxed);
                }
                return Push::Full;
            }
        }
    }
}
