//! A virtqueue as the port keeps it: the ring the frontend set up (`virtio-queue`'s
//! [`Queue`]), its eventfds, whether it runs, and what the data path
//! ([`super::datapath`]) carries from one round to the next: used entries not yet
//! published or signalled, how far receive buffers were asked for, the available index
//! last seen.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::datapath::MAX_QUEUE_SIZE;
use super::split::SplitRing;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks not to be signalled (virtio 1.x, 2.7.7).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One virtqueue and what the frontend told us about it.
#[derive(Debug)]
pub struct Vring {
    /// The ring itself (addresses are guest-physical).
    pub queue: Queue,
    /// The guest kicks this when it adds buffers.
    pub kick: Option<Arc<OwnedFd>>,
    /// We signal this when we used buffers (absent: the guest polls).
    pub call: Option<OwnedFd>,
    /// `SET_VRING_ENABLE` said so.
    pub enabled: bool,
    /// A kick descriptor arrived and no `GET_VRING_BASE` stopped the ring since.
    pub started: bool,
    /// `SET_VRING_ADDR` gave valid addresses.
    pub addressed: bool,
    /// Writes to the ring (returning a chain, asking for kicks) and signals of the call
    /// eventfd that failed since the port last took the count: the ring no longer lies
    /// in guest memory (the frontend replaced the memory table under it). Counted, never
    /// fatal: the guest sees a chain it must not reuse, or a missed interrupt.
    pub access_failures: u64,
    /// The guest's available index when [`place`](super::datapath::place) last ran out of buffers.
    pub posted_up_to: u16,
    /// The available-ring position up to which (not included) a receive queue's buffers
    /// were last asked for ([`prefetch_receive`](super::datapath::prefetch_receive) and the window [`place`](super::datapath::place) slides): a
    /// round's window starts past what the rounds before it already asked for.
    pub(super) rx_prefetched_to: u16,
    /// A receive queue's available index as the last round read it, kept for the next
    /// round ([`SplitRing::assume_available`]): the guest posts its buffers well ahead, so
    /// most rounds need not read the index, whose line the guest's core has just written
    /// (it adds a buffer for each it takes back). Kept with the address of the guest
    /// memory it was read through, and used only through the same; forgotten whenever the
    /// frontend reconfigures the ring or the memory ([`Vring::reconfigured`]).
    pub rx_available: Option<(u16, usize)>,
    /// Used entries written since the used index was last published.
    unpublished: u16,
    /// Used entries published since the guest was last signalled.
    unsignalled: u16,
}

impl Vring {
    /// A ring in its reset state.
    pub fn new() -> Result<Vring, virtio_queue::Error> {
        Ok(Vring {
            queue: Queue::new(MAX_QUEUE_SIZE)?,
            kick: None,
            call: None,
            enabled: false,
            started: false,
            addressed: false,
            access_failures: 0,
            posted_up_to: 0,
            rx_prefetched_to: 0,
            rx_available: None,
            unpublished: 0,
            unsignalled: 0,
        })
    }

    /// Returns chain `head` to the guest with `written` bytes; a failure is counted. The
    /// entry is written at once, the used index only by [`Vring::publish_used`]: a guest
    /// polling that index (its cache line) sees it move once per round, not once per
    /// chain, and the port pays one store to a line the guest reads instead of one per
    /// chain.
    pub(super) fn add_used(&mut self, ring: &SplitRing<'_>, head: u16, written: u32) {
        let next = self.queue.next_used();
        if head < self.queue.size() && ring.put_used(next, head, written) {
            self.queue.set_next_used(next.wrapping_add(1));
            self.unpublished = self.unpublished.wrapping_add(1);
        } else {
            self.access_failures += 1;
        }
    }

    /// Makes the used entries written since the last call visible to the guest: one store
    /// of the used index.
    pub fn publish_used(&mut self, memory: &GuestMemoryMmap) {
        if self.unpublished == 0 {
            return;
        }
        // Release: a guest that sees the new index sees the entries written before it.
        let stored = self.queue.used_ring().checked_add(2).is_some_and(|at| {
            memory
                .store(
                    self.queue.next_used().to_le(),
                    GuestAddress(at),
                    Ordering::Release,
                )
                .is_ok()
        });
        if !stored {
            self.access_failures += 1;
        }
        self.unsignalled = self.unsignalled.wrapping_add(self.unpublished);
        self.unpublished = 0;
    }

    /// Ends a round on this queue: publishes the used entries and signals the guest if
    /// there were any and it wants to know.
    pub fn finish_round(&mut self, memory: &GuestMemoryMmap) {
        self.publish_used(memory);
        if self.unsignalled > 0 {
            self.signal(memory);
        }
    }

    /// The frontend changed the ring (its size, addresses or base, stopped or started it)
    /// or the guest memory: what the data path remembered of it no longer holds.
    pub fn reconfigured(&mut self) {
        self.rx_available = None;
    }

    /// The failed ring accesses counted since the last call, for the port's counters.
    pub fn take_access_failures(&mut self) -> u64 {
        std::mem::take(&mut self.access_failures)
    }

    /// Whether frames move on it: set up, started, enabled (`enabled_by_default` when the
    /// frontend did not negotiate `SET_VRING_ENABLE`).
    pub fn running(&self, enabled_by_default: bool) -> bool {
        self.addressed && self.started && (self.enabled || enabled_by_default)
    }

    /// Signals the guest that the buffers published since the last signal were used, if
    /// it wants to know: with `EVENT_IDX` when the used index passed the guest's
    /// `used_event`, without it unless the guest set `VRING_AVAIL_F_NO_INTERRUPT` (a
    /// polling driver, such as DPDK's, does; the ring crate ignores that flag, which would
    /// cost a system call per round).
    fn signal(&mut self, memory: &GuestMemoryMmap) {
        let added = std::mem::take(&mut self.unsignalled);
        let Some(call) = &self.call else {
            return;
        };
        // Pairs with the driver's barrier between publishing `used_event` (or the flag)
        // and reading the used index: either it sees our entries or we see its request.
        fence(Ordering::SeqCst);
        let avail = self.queue.avail_ring();
        let needed = if self.queue.event_idx_enabled() {
            // used_event follows the available ring's entries: flags, idx, 2 bytes each.
            let at = avail.checked_add(4 + 2 * u64::from(self.queue.size()));
            let event: Option<u16> =
                at.and_then(|at| memory.load(GuestAddress(at), Ordering::Acquire).ok());
            // The split ring's rule (virtio 1.x, 2.7.10): signal when the index passed
            // used_event since the last signal, `added` entries ago.
            let new = self.queue.next_used();
            event.is_none_or(|event| new.wrapping_sub(u16::from_le(event)).wrapping_sub(1) < added)
        } else {
            let flags: Option<u16> = memory.load(GuestAddress(avail), Ordering::Acquire).ok();
            flags.is_none_or(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
        };
        if needed && rustix::io::write(call, &1u64.to_ne_bytes()).is_err() {
            self.access_failures += 1;
        }
    }
}

#[cfg(test)]
impl Vring {
    /// A running vring on `queue`'s rings, as after a frontend's setup messages (tests).
    pub(crate) fn running_on(queue: &crate::ports::vhost_user::mock::GuestQueue) -> Vring {
        let mut vring = Vring::new().expect("a vring");
        queue
            .configure(&mut vring.queue)
            .expect("configure the queue");
        vring.addressed = true;
        vring.started = true;
        vring.enabled = true;
        vring
    }
}
