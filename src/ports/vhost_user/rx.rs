//! The receive thread: frames from the network into the guest's receive queues.
//!
//! One round: take the running receive queues, write the frames held over from the last
//! round, then up to [`RX_BUDGET`] frames from the peer's ring, each straight from the
//! network's copy into guest buffers; then signal each queue that got frames once. When
//! the guest has no buffers left, the frames taken are held (in order) and the thread
//! sleeps on the receive queues' kick eventfds until the guest posts more; otherwise it
//! sleeps on the ring. With several queue pairs, a frame goes to the queue its flow
//! hashes to, so a flow's frames stay in order.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use super::datapath::{self, ChainFault, Placed, RxRules, feature};
use super::state::{Negotiated, Shared, drain_eventfd, lock};
use super::status::Counters;
use crate::network::Receiver;
use crate::network::monotonic_ns;
use crate::wire::VirtioNetHdr;

/// Frames taken from the ring per round.
const RX_BUDGET: usize = 64;

/// Longest sleep: the thread checks whether its connection ended at least this often.
const IDLE_SLICE: Duration = Duration::from_millis(250);

/// A frame taken from the network that the guest had no room for yet.
struct Held {
    hdr: VirtioNetHdr,
    frame: Vec<u8>,
}

/// Runs until the connection closes.
pub fn run(shared: &Shared<'_>, mut receiver: Receiver) {
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut work = datapath::Placement::default();
    let counters = &shared.socket.counters;
    while !shared.closing.load(Ordering::Acquire) {
        let negotiated = shared.negotiated();
        let (Some(features), Some(memory)) = (negotiated.features, shared.memory()) else {
            shared.set_link(false);
            std::thread::park_timeout(IDLE_SLICE);
            continue;
        };
        if shared.quarantined.load(Ordering::Acquire) {
            shared.set_link(false);
            std::thread::park_timeout(IDLE_SLICE);
            continue;
        }
        let mem = memory.memory();
        let rules = RxRules {
            header_len: Negotiated::header_len(features),
            mergeable: features & feature::MRG_RXBUF != 0,
            guest_csum: features & feature::GUEST_CSUM != 0,
        };
        let enabled_by_default = negotiated.enabled_by_default();
        let mut queues: Vec<_> = shared
            .vrings
            .iter()
            .step_by(2)
            .map(lock)
            .filter(|vring| vring.running(enabled_by_default))
            .collect();
        if queues.is_empty() {
            drop(queues);
            shared.set_link(false);
            std::thread::park_timeout(IDLE_SLICE);
            continue;
        }
        shared.set_link(true);
        let mut faults: Vec<ChainFault> = Vec::new();
        // Bit q: queue q got frames this round (at most 16 queue pairs).
        let mut used = 0u32;
        let mut delivered = 0u64;
        let mut blocked = false;
        let count = queues.len();
        let mut offer = |hdr: &VirtioNetHdr, frame: &[u8], blocked: &mut bool| -> bool {
            if *blocked {
                return false;
            }
            let q = if count == 1 {
                0
            } else {
                usize::from(crate::wire::vxlan::source_port(frame)) % count
            };
            match datapath::place(&mut queues[q], mem, &rules, hdr, frame, &mut work, |f| {
                faults.push(f)
            }) {
                Placed::Delivered => {
                    used |= 1 << q;
                    delivered += 1;
                    true
                }
                Placed::Dropped(fault) => {
                    faults.push(fault);
                    true
                }
                Placed::NoBuffers => {
                    *blocked = true;
                    false
                }
            }
        };
        // Frames held from before go first, in order.
        while let Some(first) = held.front() {
            if !offer(&first.hdr, &first.frame, &mut blocked) {
                break;
            }
            if let Some(done) = held.pop_front() {
                spare.push(done.frame);
            }
        }
        let mut received = 0;
        if !blocked {
            received = receiver.receive_offloaded(RX_BUDGET, |hdr, frame| {
                if !offer(hdr, frame, &mut blocked) {
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
        Counters::add(&counters.rx_frames, delivered);
        for (q, vring) in queues.iter_mut().enumerate() {
            if used & (1 << q) != 0 {
                vring.signal(mem);
            }
        }
        // Before sleeping on the guest, ask it to kick when it posts more buffers, and look
        // once more in case it did just now.
        let mut kicks: Vec<OwnedFd> = Vec::new();
        let mut posted = false;
        if blocked {
            for vring in queues.iter_mut() {
                posted |= datapath::ask_for_buffers(vring, mem);
                if let Some(kick) = vring.kick.as_ref().and_then(|k| k.try_clone().ok()) {
                    kicks.push(kick);
                }
            }
        }
        let failures: u64 = queues.iter_mut().map(|v| v.take_access_failures()).sum();
        Counters::add(&counters.ring_access_failures, failures);
        drop(queues);
        let now = monotonic_ns();
        for fault in faults {
            shared.fault(false, fault, now);
        }
        if blocked {
            if !posted {
                wait_for_kicks(&kicks);
            }
        } else if received == 0 && held.is_empty() {
            receiver.wait(IDLE_SLICE);
        }
    }
    // Frames held for a guest that had no buffers go with its connection: counted, not
    // lost silently.
    Counters::add(&counters.rx_lost_on_disconnect, held.len() as u64);
    shared.set_link(false);
}

/// Sleeps until a receive queue is kicked, at most [`IDLE_SLICE`], and clears the kicks.
fn wait_for_kicks(kicks: &[OwnedFd]) {
    let mut fds: Vec<PollFd<'_>> = kicks
        .iter()
        .map(|k| PollFd::new(k, PollFlags::IN))
        .collect();
    let timeout = crate::network::timespec(IDLE_SLICE);
    if rustix::event::poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0) {
        for (fd, kick) in fds.iter().zip(kicks) {
            if !fd.revents().is_empty() {
                drain_eventfd(kick);
            }
        }
    }
}
