//! The receiving half of a lane: frames from the network into the guest's receive queues.
//!
//! One round: take the running receive queues, write the frames held over from the last
//! round, then up to [`RX_BUDGET`] frames from the peer's ring, each straight from the
//! network's copy into guest buffers; then signal each queue that got frames once (a round
//! with nothing held and nothing in the ring, the usual one for a guest whose frames come
//! straight from other lanes, only notes whether a queue runs, for the link). When
//! the guest has no buffers left, the frames taken are held (in order) and the lane is
//! *blocked*: the engine then sleeps on the receive queues' kicks rather than on the ring,
//! and frames behind those stay in the network's ring, where senders count them as
//! `ring_full` once it fills. With several queue pairs, a frame from the ring goes to the
//! queue its flow hashes to ([`crate::wire::flow::flow_hash`]), so a flow's frames stay in
//! order and conversations spread over the queues as they would over a NIC's; a frame
//! straight from another lane goes by the port's [`super::Steering`] (by default to the
//! queue numbered as the transmit queue it was sent on).

use std::collections::VecDeque;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;
use vm_memory::GuestMemoryMmap;

use super::MAX_QUEUE_PAIRS;
use super::datapath::{self, ChainFault, Placed, RxRules, Vring};
use super::split::SplitRing;
use super::state::{Shared, lock};
use super::status::Counters;
use crate::network::Receiver;
use crate::network::monotonic_ns;
use crate::wire::{VirtioNetHdr, flow};

/// Frames taken from the ring per round.
const RX_BUDGET: usize = 256;

/// A frame taken from the network that the guest had no room for yet.
struct Held {
    hdr: VirtioNetHdr,
    frame: Vec<u8>,
}

/// The receiving half of a lane.
pub struct RxHalf {
    receiver: Receiver,
    held: VecDeque<Held>,
    /// Buffers of frames held before, for reuse.
    spare: Vec<Vec<u8>>,
    work: datapath::Placement,
    faults: Vec<ChainFault>,
    /// The guest had no buffers for the last frame offered.
    blocked: bool,
}

impl RxHalf {
    /// The receiving half over `receiver`.
    pub fn new(receiver: Receiver) -> RxHalf {
        RxHalf {
            receiver,
            held: VecDeque::new(),
            spare: Vec::new(),
            work: datapath::Placement::default(),
            faults: Vec::new(),
            blocked: false,
        }
    }

    /// Whether frames wait for the guest to post buffers.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Where the receiver stands in the peer's ring.
    pub fn position(&self) -> u64 {
        self.receiver.position()
    }

    /// One round; returns the frames delivered or taken from the ring. `seen` is the
    /// count of the connection's changes the lane's state was taken at (the engine's
    /// word on the link goes with it, see [`Shared::engine_link`]).
    pub fn round(
        &mut self,
        shared: &Shared<'_>,
        mem: &GuestMemoryMmap,
        rules: &RxRules,
        enabled_by_default: bool,
        seen: u64,
    ) -> usize {
        // Nothing held and nothing in the ring: the usual round of a lane whose frames
        // come past the ring, straight from other lanes. The link is all there is to keep;
        // opening the queues (their locks, their rings looked up in guest memory) and
        // finishing them would cost more than the rest of the round. A queue whose ring
        // left guest memory is found the next time a frame is there to deliver.
        if self.held.is_empty() && self.receiver.ring_is_empty() {
            self.blocked = false;
            shared.engine_link(any_running(shared, enabled_by_default), seen);
            return 0;
        }
        let Some(mut delivery) = Delivery::open(shared, mem, enabled_by_default) else {
            shared.engine_link(false, seen);
            return 0;
        };
        shared.engine_link(true, seen);
        let RxHalf {
            receiver,
            held,
            spare,
            work,
            faults,
            blocked,
        } = self;
        *blocked = false;
        let mut offer = |hdr: &VirtioNetHdr, frame: &[u8], blocked: &mut bool| -> bool {
            if *blocked {
                return false;
            }
            let placed = delivery.place(rules, (hdr, frame), None, work, faults);
            *blocked = placed == Placed::NoBuffers;
            !*blocked
        };
        // Frames held from before go first, in order.
        while let Some(first) = held.front() {
            if !offer(&first.hdr, &first.frame, blocked) {
                break;
            }
            if let Some(done) = held.pop_front() {
                spare.push(done.frame);
            }
        }
        let mut received = 0;
        if !*blocked {
            received = receiver.receive_offloaded(RX_BUDGET, |hdr, frame| {
                if !offer(hdr, frame, blocked) {
                    let mut copy = spare.pop().unwrap_or_default();
                    copy.clear();
                    copy.extend_from_slice(frame);
                    held.push_back(Held {
                        hdr: *hdr,
                        frame: copy,
                    });
                }
            });
        }
        let delivered = delivery.finish(shared, faults, false);
        received.max(delivered as usize)
    }

    /// The receive queues opened for frames another lane of the engine hands over past
    /// the network's ring (see [`Direct`]), if that may happen now: nothing waits for the
    /// guest here or in the ring (so nothing is overtaken), the port is not quarantined,
    /// and a receive queue runs.
    pub fn open_direct<'x, 'a>(
        &'x mut self,
        shared: &'x Shared<'a>,
        mem: &'x GuestMemoryMmap,
        rules: RxRules,
        enabled_by_default: bool,
    ) -> Option<Direct<'x, 'a>> {
        if self.blocked
            || !self.held.is_empty()
            || shared.quarantined.load(Ordering::Acquire)
            || !self.receiver.ring_is_empty()
        {
            return None;
        }
        let delivery = Delivery::open(shared, mem, enabled_by_default)?;
        Some(Direct {
            rx: self,
            shared,
            rules,
            delivery,
        })
    }

    /// The peer slot and generation this lane receives for.
    pub fn peer(&self) -> (u16, u32) {
        self.receiver.peer()
    }

    /// Frames held for a guest that had no buffers go with its connection: counted, not
    /// lost silently.
    pub fn count_lost(&mut self, shared: &Shared<'_>) {
        Counters::add(
            &shared.socket.counters.rx_lost_on_disconnect,
            self.held.len() as u64,
        );
        self.held.clear();
    }
}

/// Whether any of the lane's receive queues runs.
fn any_running(shared: &Shared<'_>, enabled_by_default: bool) -> bool {
    shared
        .vrings
        .iter()
        .step_by(2)
        .any(|vring| lock(vring).running(enabled_by_default))
}

/// A lane's running receive queues, locked for a round of its own or for another lane's
/// batch, and the frames written into each.
struct Delivery<'x> {
    /// The running receive queues, each with its pair's number.
    queues: SmallVec<[Opened<'x>; 2]>,
    memory: &'x GuestMemoryMmap,
    delivered_to: [u64; MAX_QUEUE_PAIRS as usize],
    /// Queues found, at their first frame, to lie no longer in guest memory.
    lost_rings: u64,
}

/// One receive queue of a [`Delivery`].
struct Opened<'x> {
    pair: usize,
    vring: MutexGuard<'x, Vring>,
    /// Its ring in guest memory, found when the first frame for it comes, not when the
    /// delivery opens: a delivery opens every running queue whether or not a frame comes
    /// (steering needs their count), and each ring costs three lookups in guest
    /// memory. Its lines are asked for then too ([`datapath::prefetch_receive`]): asking
    /// for those of a queue no frame comes for takes them from the core of a frontend
    /// that is polling them.
    ring: Option<SplitRing<'x>>,
}

/// Which guest memory a ring was read through (the mapping's address), to tell whether an
/// index kept from an earlier round was read through the memory in use now.
fn memory_id(memory: &GuestMemoryMmap) -> usize {
    std::ptr::from_ref(memory).addr()
}

/// The available index an earlier round kept, if it was read through `memory`: a round
/// that began before a new memory table came, through the old one, may have kept its index
/// after the table's change cleared it.
fn kept_index(kept: Option<(u16, usize)>, memory: &GuestMemoryMmap) -> Option<u16> {
    kept.and_then(|(seen, through)| (through == memory_id(memory)).then_some(seen))
}

impl<'x> Delivery<'x> {
    /// Locks the running receive queues; none if no receive queue runs.
    fn open(
        shared: &'x Shared<'_>,
        memory: &'x GuestMemoryMmap,
        enabled_by_default: bool,
    ) -> Option<Delivery<'x>> {
        let mut queues = SmallVec::new();
        for (pair, vring) in shared.vrings.iter().step_by(2).enumerate() {
            let vring = lock(vring);
            if vring.running(enabled_by_default) {
                queues.push(Opened {
                    pair,
                    vring,
                    ring: None,
                });
            }
        }
        (!queues.is_empty()).then_some(Delivery {
            queues,
            memory,
            delivered_to: [0; MAX_QUEUE_PAIRS as usize],
            lost_rings: 0,
        })
    }

    /// Writes one frame into a queue (with several pairs): the one of number `source`
    /// (modulo the running queues' count), or without one the queue its flow hashes to.
    /// Bad chains met on the way, and the reason a frame was dropped, go to `faults`.
    fn place(
        &mut self,
        rules: &RxRules,
        (hdr, frame): (&VirtioNetHdr, &[u8]),
        source: Option<usize>,
        work: &mut datapath::Placement,
        faults: &mut Vec<ChainFault>,
    ) -> Placed {
        let count = self.queues.len();
        let q = match source {
            _ if count == 1 => 0,
            Some(pair) => pair % count,
            None => flow::choose(flow::flow_hash(frame), count),
        };
        let Some(Opened { vring, ring, .. }) = self.queues.get_mut(q) else {
            return Placed::NoBuffers;
        };
        let ring = match ring {
            Some(ring) => ring,
            None => match SplitRing::new(&vring.queue, self.memory) {
                Some(found) => {
                    let ring = ring.insert(found);
                    if let Some(seen) = kept_index(vring.rx_available, self.memory) {
                        ring.assume_available(seen);
                    }
                    datapath::prefetch_receive(vring, ring);
                    ring
                }
                None => {
                    // The frontend replaced the memory table under the ring: the queue
                    // stops, and is counted, until the frontend sets it up again. The
                    // frame waits, as for a guest out of buffers.
                    vring.started = false;
                    self.lost_rings += 1;
                    return Placed::NoBuffers;
                }
            },
        };
        let placed = datapath::place(vring, ring, rules, hdr, frame, work, |f| faults.push(f));
        match placed {
            Placed::Delivered => {
                if let Some(n) = self.delivered_to.get_mut(q) {
                    *n += 1;
                }
            }
            Placed::Dropped(fault) => faults.push(fault),
            Placed::NoBuffers => {}
        }
        placed
    }

    /// Ends the delivery: counts the frames (also as `rx_direct` when they came straight
    /// from another lane), publishes every queue's used entries and signals the guest
    /// (every queue, not only those that got frames: bad chains went back too), unlocks
    /// the queues, then reports the faults. Returns the frames delivered.
    fn finish(&mut self, shared: &Shared<'_>, faults: &mut Vec<ChainFault>, direct: bool) -> u64 {
        let counters = &shared.socket.counters;
        let delivered = self.delivered_to.iter().sum();
        Counters::add(&counters.rx_frames, delivered);
        if direct {
            Counters::add(&counters.rx_direct, delivered);
        }
        Counters::add(
            &counters.ring_access_failures,
            std::mem::take(&mut self.lost_rings),
        );
        for (Opened { pair, vring, ring }, n) in self.queues.iter_mut().zip(self.delivered_to) {
            if let (Some(queue), 1..) = (shared.socket.queues.get(*pair), n) {
                Counters::add(&queue.rx_frames, n);
            }
            if let Some(ring) = ring {
                vring.rx_available = Some((ring.seen_available(), memory_id(self.memory)));
            }
            vring.finish_round(self.memory);
            Counters::add(&counters.ring_access_failures, vring.take_access_failures());
        }
        self.queues.clear();
        self.delivered_to = [0; MAX_QUEUE_PAIRS as usize];
        if !faults.is_empty() {
            let now = monotonic_ns();
            for fault in faults.drain(..) {
                shared.fault(false, fault, now);
            }
        }
        delivered
    }
}

/// A lane's receive queues, locked for the length of another lane's transmit batch, taking
/// the frames that batch sends this guest straight from the sender's copy (one copy into
/// the guest, where the network's ring takes three). Frames land as a round's would: by
/// flow on a queue, checked chain by chain, counted on the port and on the peer as
/// received. When it is dropped, the used entries are published and the guest is
/// signalled, once.
pub struct Direct<'x, 'a> {
    rx: &'x mut RxHalf,
    shared: &'x Shared<'a>,
    rules: RxRules,
    delivery: Delivery<'x>,
}

impl Direct<'_, '_> {
    /// Writes one frame into the guest, into receive queue `source` if given (see
    /// [`Delivery::place`]); `false` when the guest has no buffers for it (it then goes
    /// through the ring, and so must every later frame for this guest).
    pub fn offer(&mut self, hdr: &VirtioNetHdr, frame: &[u8], source: Option<usize>) -> bool {
        let rx = &mut *self.rx;
        let placed = self.delivery.place(
            &self.rules,
            (hdr, frame),
            source,
            &mut rx.work,
            &mut rx.faults,
        );
        if placed == Placed::Delivered {
            rx.receiver.count_received(frame.len());
        }
        placed != Placed::NoBuffers
    }
}

impl Drop for Direct<'_, '_> {
    fn drop(&mut self) {
        self.delivery.finish(self.shared, &mut self.rx.faults, true);
        self.rx.receiver.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::vhost_user::mock::GuestMemory as MockMemory;

    #[test]
    fn a_kept_index_counts_only_through_the_memory_it_was_read_through() {
        let old = MockMemory::anonymous(&[(0, 0x1_0000)]).expect("memory");
        let new = MockMemory::anonymous(&[(0, 0x1_0000)]).expect("memory");
        let kept = Some((40, memory_id(old.mmap())));
        assert_eq!(kept_index(kept, old.mmap()), Some(40));
        assert_eq!(
            kept_index(kept, new.mmap()),
            None,
            "an index read through the old table says nothing of the new"
        );
        assert_eq!(kept_index(None, old.mmap()), None);
    }
}
