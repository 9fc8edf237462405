//! The receiving half of a peer, NAPI-style.
//!
//! [`Receiver::receive`] drains up to a budget of frames without any system call;
//! [`Receiver::wait`] sleeps on the ring's futex word until a sender wakes it. A receiver
//! that is busy never sleeps, so senders never make the wake system call while traffic
//! flows: wake-ups are batched by construction. Every frame is copied out of the ring
//! before it is checked, so the sender (or a scribbler) cannot change it afterwards.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use crate::shm::layout::LARGE_FRAME;
use crate::wire::offload::Segmenter;
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::{EthernetFrame, EthernetRepr, ethernet};

use super::clock::monotonic_ns;
use super::counters::{self, DropReason, Pending, slot};
use super::membership::{Control, Membership};
use super::offloads::header_from_words;
use super::region::SWEEP_INTERVAL_NS;
use super::ring::{self, Pop, SlotMeta};

/// The receiving half of a peer.
#[derive(Debug)]
pub struct Receiver {
    membership: Arc<Membership>,
    tail: u64,
    buffer: Vec<u8>,
    segmenter: Segmenter,
    pending: Pending,
    mtu: usize,
    last_maintenance_ns: u64,
}

/// Longest single sleep: a sleeping receiver still takes part in liveness sweeps.
const WAIT_SLICE: Duration = Duration::from_millis(250);

impl Receiver {
    pub(super) fn new(membership: Arc<Membership>, tail: u64) -> Receiver {
        let layout = &membership.region.layout;
        // Room for a super-frame when the network carries them.
        let max_frame = if layout.geometry.gso_buffers > 0 {
            layout.max_frame.max(LARGE_FRAME)
        } else {
            layout.max_frame
        };
        let mtu = membership.region.layout.geometry.mtu as usize;
        Receiver {
            membership,
            tail,
            buffer: vec![0; max_frame],
            segmenter: Segmenter::new(),
            pending: Pending::default(),
            mtu,
            last_maintenance_ns: 0,
        }
    }

    /// Control operations.
    pub fn control(&self) -> Control {
        Control {
            membership: Arc::clone(&self.membership),
        }
    }

    /// Hands up to `budget` received frames to `on_frame`, in ring order, and returns how
    /// many. Never blocks. Each frame is a private copy, already checked against the
    /// network's rules and finished: a frame that still carried offload work (sent while
    /// this peer advertised offloads it has since turned off) is completed in software
    /// and handed over as its segments. Frames that fail the checks are counted and
    /// skipped.
    pub fn receive(&mut self, budget: usize, mut on_frame: impl FnMut(&[u8])) -> usize {
        let mut segmenter = std::mem::take(&mut self.segmenter);
        let mut unfinishable = 0;
        let received = self.receive_offloaded(budget, |hdr, frame| {
            if hdr.is_plain() {
                on_frame(frame);
            } else if segmenter
                .segment(frame, hdr, usize::MAX, &mut |segment: &[u8]| {
                    on_frame(segment)
                })
                .is_err()
            {
                unfinishable += 1;
            }
        });
        self.segmenter = segmenter;
        let entry = self.membership.entry();
        for _ in 0..unfinishable {
            counters::count_rx_drop(entry, DropReason::Invalid);
        }
        received
    }

    /// Like [`Receiver::receive`], but hands each frame over with its virtio-net header,
    /// for ports that pass offload work on (a TAP with offloads, a VM): a frame may be a
    /// super-frame of up to 64 KiB, or need its checksum completed, but only of the kinds
    /// this peer advertised. Plain frames come with an all-zero header.
    pub fn receive_offloaded(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> usize {
        let membership = Arc::clone(&self.membership);
        let ring = membership.region.ring(membership.index);
        let entry = membership.entry();
        let mut received = 0;
        // Bounded even if every slot is junk: at most one lap beyond the budget.
        let mut steps = budget.saturating_add(ring::SlotMemory::slot_count(&ring) as usize);
        while received < budget && steps > 0 {
            steps -= 1;
            let step = ring::pop(&ring, self.tail, &mut self.buffer);
            if step.advances() {
                self.tail = ring::advance(self.tail, 1);
            }
            match step {
                Pop::Frame(meta) => match self.check(meta) {
                    Ok((hdr, len)) => {
                        self.pending.add(slot::RX_PACKETS, 1);
                        self.pending.add(slot::RX_BYTES, len as u64);
                        on_frame(&hdr, &self.buffer[..len]);
                        received += 1;
                    }
                    Err(reason) => counters::count_rx_drop(entry, reason),
                },
                Pop::Empty | Pop::InProgress { .. } => break,
                Pop::Abandoned => counters::count_rx_drop(entry, DropReason::Abandoned),
                Pop::Corrupt => counters::count_rx_drop(entry, DropReason::Corrupt),
                Pop::AlreadyConsumed => {}
            }
        }
        ring.control().consumed.store(self.tail, Ordering::Release);
        self.pending.flush(entry);
        received
    }

    /// Checks a frame copied out of the ring, on our private copy: the sender (or a
    /// scribbler) cannot change it any more.
    fn check(&self, meta: SlotMeta) -> std::result::Result<(VirtioNetHdr, usize), DropReason> {
        if meta.generation != self.membership.generation {
            return Err(DropReason::Stale);
        }
        let len = meta.len as usize;
        if len > self.buffer.len() {
            return Err(DropReason::Invalid);
        }
        let frame = &self.buffer[..len];
        let hdr = header_from_words(meta.offload);
        if hdr.gso_type == GsoType::None {
            ethernet::validate_frame(frame, self.mtu).map_err(|_| DropReason::Invalid)?;
        } else {
            // A super-frame: only its Ethernet header is ours to check; the segments it
            // becomes were checked against the MTU by its sender.
            EthernetFrame::new_checked(frame)
                .and_then(|f| EthernetRepr::parse(&f))
                .map_err(|_| DropReason::Invalid)?;
        }
        Ok((hdr, len))
    }

    /// Sleeps until a frame waits or `timeout` passes; returns whether work waits. Takes
    /// part in the network's liveness sweeps while it sleeps.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let start = monotonic_ns();
        let limit = timeout.as_nanos().min(u64::MAX as u128) as u64;
        let membership = Arc::clone(&self.membership);
        let ring = membership.region.ring(membership.index);
        let control = ring.control();
        loop {
            let seen = control.wake.load(Ordering::Acquire);
            control.sleeping.store(1, Ordering::Relaxed);
            // Pairs with the fence in Sender::end_batch (see there).
            fence(Ordering::SeqCst);
            if ring::has_work(&ring, self.tail) {
                control.sleeping.store(0, Ordering::Relaxed);
                return true;
            }
            let now = monotonic_ns();
            let elapsed = now.saturating_sub(start);
            if elapsed >= limit {
                control.sleeping.store(0, Ordering::Relaxed);
                return false;
            }
            let slice = Duration::from_nanos(limit - elapsed).min(WAIT_SLICE);
            let timespec = rustix::time::Timespec {
                tv_sec: slice.as_secs() as i64,
                tv_nsec: slice.subsec_nanos() as i64,
            };
            let woken = rustix::thread::futex::wait(
                &control.wake,
                rustix::thread::futex::Flags::empty(),
                seen,
                Some(&timespec),
            );
            control.sleeping.store(0, Ordering::Relaxed);
            if woken.is_ok() || control.wake.load(Ordering::Relaxed) != seen {
                self.pending.add(slot::WAKEUPS, 1);
                self.pending.flush(membership.entry());
            }
            let now = monotonic_ns();
            if now.saturating_sub(self.last_maintenance_ns) >= SWEEP_INTERVAL_NS {
                self.last_maintenance_ns = now;
                membership.maintain(now);
            }
        }
    }
}
