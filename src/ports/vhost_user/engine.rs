//! The data path: one thread moves the frames of every VM the port serves.
//!
//! Each connected frontend hands the engine a [`Lane`]: its peer's sending and receiving
//! halves and the connection's [`Shared`] state. The engine's thread runs to completion
//! over all lanes, round after round: per lane, it drains each transmit queue (up to a
//! budget) and sends the frames into the network as one batch, then drains the peer's ring
//! (up to a budget) into the guest's receive queues, signalling each guest once per round.
//! A frame from one VM to another served by the same port thus crosses inside one round,
//! with no thread hand-off.
//!
//! **Straight across.** Such a frame need not go through the network's ring at all. The
//! sender's routing (checks, learning, VLANs, policy, rate limit, the receiver's admission)
//! runs as for any frame; where it would then copy into the ring of a peer this engine
//! serves, it hands the copy to that lane instead ([`Shortcut`]), which writes it straight
//! into its guest's receive buffers: one copy from the sender's batch into the receiving
//! guest, where the ring takes a copy in, a private copy out and the copy into the guest,
//! plus two compare-and-swaps on the ring. Only while nothing waits for that guest (no
//! frame held for it, none in its ring), so no frame overtakes another; once a copy for it
//! goes into its ring (no buffers, a retagged copy), the rest of the batch's follow. A
//! promiscuous peer still gets its copy through its ring, and both peers count the frame
//! as they would have (`rx_direct` counts the frames that went straight across). With
//! several queue pairs the port's [`Steering`] picks the receive queue: by default the
//! one numbered as the transmit queue the batch came from, so that a batch opens one of
//! the receiving guest's queues, not all of them.
//!
//! **Polling, then sleeping.** While frames flow the thread polls: the guests are told not
//! to kick (`VIRTQ_USED_F_NO_NOTIFY`, or with `EVENT_IDX` an event index left behind), and
//! nothing makes a system call but the network's own batch wake-ups of receivers that
//! sleep. After [`IDLE_POLL`] without a frame it asks every guest to kick again, arms each
//! lane's ring watch (a thread per connection that sleeps on the peer's ring futex and
//! rings the engine's bell when frames arrive), looks once more, and sleeps in one `poll`
//! on the bell, the stop doorbell and every kick eventfd. Idle, the port costs nothing.
//!
//! **Full rings.** A unicast frame for a full ring waits for room there, up to
//! [`HOLD_BACK`], before its receiver is marked congested (as a TAP port's does): the
//! guest's transmit queue fills meanwhile and its TCP slows down instead of losing frames.
//! Never for the ring of another lane of this engine ([`Shortcut::serves`]): the engine is
//! its reader, and would wait for itself. The other lanes wait with the one that waits.
//!
//! **Rate limits.** Under the peer's rate limit (`--rate`) a lane takes a chain off a
//! transmit queue only while the bucket holds the frames taken so far plus the largest one
//! the guest may send, so the network never has to refuse one. When it has no room, the
//! lane is *held back*: the chains stay in the guest's ring (neither consumed nor used), its
//! driver sees a full queue and stops, and its TCP slows down instead of losing frames. The
//! lane looks at its transmit queues again once the bucket has room for the largest frame
//! and a millisecond of traffic more (so frames go in batches, not one per wake-up); the
//! engine's sleep ends by then, and its other lanes, and the lane's receive side, move on
//! meanwhile.
//!
//! **Locks.** The connection threads change a connection's state only between rounds'
//! looks at it: a round takes each queue's lock once, and reads the negotiated state and
//! guest memory only when the connection says they changed (one atomic load per round).
//!
//! **Leaving.** A connection that ends marks itself closing and rings the bell; the engine
//! drops its lane at the start of the next round (frames held for the guest are counted
//! lost), which releases the connection thread waiting for it. So the peer never leaves
//! while the engine still sends or receives as it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use smallvec::SmallVec;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::Steering;
use super::datapath::{self, ChainFault, RxRules, TxBatch, TxRules, Vring, feature};
use super::memory::GuestMemory;
use super::rx::RxHalf;
use super::state::{Negotiated, Released, Shared, drain_eventfd, lock};
use super::status::Counters;
use crate::network::counters::DropReason;
use crate::network::rate::Admission;
use crate::network::send::Shortcut;
use crate::network::{Receiver, RingWatch, Sender, monotonic_ns};
use crate::ports::mac::MacLearner;
use crate::ports::socket::Doorbell;
use crate::wire::VirtioNetHdr;

/// Chains taken from one transmit queue per round.
const TX_BUDGET: usize = 256;

/// How long the engine keeps polling after the last frame before it sleeps: long enough
/// to ride out the gap between a frontend's bursts, short against any human notion of
/// idle.
pub const IDLE_POLL: Duration = Duration::from_micros(100);

/// How long a unicast frame for a full ring waits for room there before its receiver is
/// marked congested ([`Sender::set_hold_back`]), as a TAP port's does: meanwhile the
/// guest's transmit queue fills and its TCP slows down instead of losing frames. Never for
/// a ring this engine reads itself (another of its lanes), which would wait on itself; and
/// the other lanes wait with it, at most this long per congested receiver.
const HOLD_BACK: Duration = Duration::from_millis(10);

/// Longest sleep: a sleeping engine, and a parked ring watch, look at least this often.
const IDLE_SLICE: Duration = Duration::from_millis(250);

/// Busy rounds between two looks at the stop doorbell (a system call).
const STOP_CHECK_ROUNDS: u32 = 4096;

/// The port's data path, shared by its connection threads (which hand it lanes) and run
/// by one thread ([`Engine::run`]).
pub struct Engine<'a> {
    /// Lanes handed over and not yet taken by the engine's thread.
    inbox: Mutex<Inbox<'a>>,
    /// Set with every lane put in the inbox: the thread looks at the inbox when it is.
    arrived: AtomicBool,
    /// Rung when a lane arrives, a connection's state changes or a ring watch sees frames.
    bell: Doorbell,
    /// Which receive queue a frame from one lane to another takes.
    steering: Steering,
}

struct Inbox<'a> {
    lanes: Vec<Lane<'a>>,
    /// The engine's thread ended: a lane handed over now is dropped at once.
    stopped: bool,
}

impl<'a> Engine<'a> {
    /// An engine with no lanes, steering frames between them by `steering`.
    pub fn new(steering: Steering) -> std::io::Result<Engine<'a>> {
        Ok(Engine {
            inbox: Mutex::new(Inbox {
                lanes: Vec::new(),
                stopped: false,
            }),
            arrived: AtomicBool::new(false),
            bell: Doorbell::new()?,
            steering,
        })
    }

    /// Hands a connection's lane to the engine.
    pub fn attach(&self, lane: Lane<'a>) {
        let mut inbox = lock(&self.inbox);
        if inbox.stopped {
            return;
        }
        inbox.lanes.push(lane);
        self.arrived.store(true, Ordering::Release);
        drop(inbox);
        self.bell.ring();
    }

    /// Tells the engine a connection's state changed (or that it is closing).
    pub fn notify(&self, shared: &Shared<'_>) {
        shared.changes.fetch_add(1, Ordering::AcqRel);
        self.bell.ring();
    }

    /// The doorbell a ring watch rings when its ring has frames.
    pub fn bell(&self) -> &Doorbell {
        &self.bell
    }

    /// Moves frames for every lane until `stop` rings.
    pub fn run(&self, stop: &Doorbell) {
        let mut lanes: Vec<Lane<'a>> = Vec::new();
        let mut idle_since: Option<u64> = None;
        let mut rounds = 0u32;
        loop {
            if self.arrived.swap(false, Ordering::AcqRel) {
                lanes.append(&mut lock(&self.inbox).lanes);
            }
            // Dropping a closing lane releases its connection thread.
            lanes.retain(|lane| !lane.shared.closing.load(Ordering::Acquire));
            let mut work = 0;
            let now = monotonic_ns();
            for i in 0..lanes.len() {
                let (before, rest) = lanes.split_at_mut(i);
                if let Some((lane, after)) = rest.split_first_mut() {
                    work += lane.round(now, [before, after], self.steering);
                }
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(STOP_CHECK_ROUNDS) && stop.is_rung() {
                break;
            }
            if work > 0 {
                idle_since = None;
                continue;
            }
            let now = monotonic_ns();
            let since = *idle_since.get_or_insert(now);
            if now.saturating_sub(since) < IDLE_POLL.as_nanos() as u64 {
                std::hint::spin_loop();
                continue;
            }
            idle_since = None;
            if !self.sleep(&mut lanes, stop) {
                break;
            }
        }
        let mut inbox = lock(&self.inbox);
        inbox.stopped = true;
        inbox.lanes.clear();
        drop(inbox);
        lanes.clear();
    }

    /// Asks every guest to kick, arms the ring watches, looks once more, and sleeps until
    /// something happens; returns false when `stop` rang.
    fn sleep(&self, lanes: &mut [Lane<'a>], stop: &Doorbell) -> bool {
        let now = monotonic_ns();
        let mut work = false;
        for lane in lanes.iter_mut() {
            work |= lane.arm(now);
        }
        // A lane held back by its rate limit is looked at again when its tokens are there.
        let held = lanes.iter().filter_map(|lane| lane.held_for(now)).min();
        let slice = held.map_or(IDLE_SLICE, |ns| IDLE_SLICE.min(Duration::from_nanos(ns)));
        if !work {
            let mut fds = Vec::with_capacity(2 + 2 * lanes.len());
            fds.push(PollFd::new(stop, PollFlags::IN));
            fds.push(PollFd::new(&self.bell, PollFlags::IN));
            for lane in lanes.iter() {
                for kick in lane.kicks() {
                    fds.push(PollFd::new(kick, PollFlags::IN));
                }
            }
            let timeout = crate::network::timespec(slice);
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the vhost-user data path cannot poll");
                    return false;
                }
            }
            if !fds[0].revents().is_empty() {
                return false;
            }
            if !fds[1].revents().is_empty() {
                self.bell.drain();
            }
            // Clear the kicks that woke us, so the next sleep does not end at once.
            let mut ready = fds[2..].iter().map(|fd| !fd.revents().is_empty());
            for lane in lanes.iter() {
                for kick in lane.kicks() {
                    if ready.next() == Some(true) {
                        drain_eventfd(kick);
                    }
                }
            }
        }
        for lane in lanes.iter_mut() {
            lane.disarm();
        }
        true
    }
}

/// What a lane knows of its connection's negotiated state, taken again whenever the
/// connection says it changed.
struct View {
    memory: Arc<GuestMemory>,
    tx_rules: TxRules,
    rx_rules: RxRules,
    enabled_by_default: bool,
    /// The queues' kick eventfds, for the engine's sleep: transmit queues always, receive
    /// queues while the guest has no buffers for what waits.
    tx_kicks: Vec<Arc<OwnedFd>>,
    rx_kicks: Vec<Arc<OwnedFd>>,
}

/// One connection as the engine serves it.
pub struct Lane<'a> {
    shared: Arc<Shared<'a>>,
    sender: Sender,
    rx: RxHalf,
    learner: MacLearner,
    label: String,
    max_frame: usize,
    batch: TxBatch,
    faults: Vec<ChainFault>,
    /// The connection's `changes` count the view was taken at.
    seen_changes: u64,
    view: Option<View>,
    /// Notifications are off on the running queues (set while polling).
    quiet: bool,
    /// Held back by the rate limit: the transmit queues are not read before this time
    /// (monotonic nanoseconds; 0: not held).
    held_until: u64,
    /// Which transmit queue goes first in the next round (they take turns, so that under a
    /// rate limit one queue cannot take every token).
    tx_turn: usize,
    /// The connection's ring watch, woken when armed.
    watcher: Thread,
    /// Last: tells the connection thread, once everything above is dropped (the peer's
    /// halves and this lane's share of the connection's state), that the engine let go.
    _release: Release,
}

/// Dropped last in a lane: marks it released and wakes the connection thread waiting.
struct Release(Arc<Released>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<'a> Lane<'a> {
    /// A lane for a connection; `watcher` is the thread running its [`watch`];
    /// `released` is told when the engine has dropped the lane.
    pub fn new(
        shared: Arc<Shared<'a>>,
        released: Arc<Released>,
        (sender, receiver): (Sender, Receiver),
        learn_mac: bool,
        label: String,
        max_frame: usize,
        watcher: Thread,
    ) -> Lane<'a> {
        let mut sender = sender;
        sender.set_hold_back(HOLD_BACK);
        // The sender reads its rate limit now, before the first round takes frames it
        // would have to refuse.
        sender.refresh_at(monotonic_ns());
        Lane {
            _release: Release(released),
            shared,
            sender,
            rx: RxHalf::new(receiver),
            learner: MacLearner::new(!learn_mac),
            label,
            max_frame,
            batch: TxBatch::default(),
            faults: Vec::new(),
            seen_changes: u64::MAX,
            view: None,
            quiet: false,
            held_until: 0,
            tx_turn: 0,
            watcher,
        }
    }

    /// Takes the connection's state again if it changed since the last look.
    fn refresh(&mut self) {
        let changes = self.shared.changes.load(Ordering::Acquire);
        if changes == self.seen_changes {
            return;
        }
        self.seen_changes = changes;
        self.quiet = false;
        let negotiated = self.shared.negotiated();
        let (Some(features), Some(memory)) = (negotiated.features, self.shared.memory()) else {
            self.view = None;
            return;
        };
        let header_len = Negotiated::header_len(features);
        let mut tx_kicks = Vec::new();
        let mut rx_kicks = Vec::new();
        for (index, vring) in self.shared.vrings.iter().enumerate() {
            let vring = lock(vring);
            if let Some(kick) = vring.kick.clone() {
                if index % 2 == 1 {
                    tx_kicks.push(kick);
                } else {
                    rx_kicks.push(kick);
                }
            }
        }
        self.view = Some(View {
            memory,
            tx_rules: TxRules {
                header_len,
                max_frame: self.max_frame,
                features,
            },
            rx_rules: RxRules {
                header_len,
                mergeable: features & feature::MRG_RXBUF != 0,
                guest_csum: features & feature::GUEST_CSUM != 0,
            },
            enabled_by_default: negotiated.enabled_by_default(),
            tx_kicks,
            rx_kicks,
        });
    }

    /// One round at `now`: the transmit queues (unless held back), then the receive
    /// queues. `others` are the engine's other lanes, whose guests this one's frames may
    /// reach past the network's ring. Returns the frames moved.
    fn round(&mut self, now: u64, mut others: [&mut [Lane<'a>]; 2], steering: Steering) -> usize {
        self.refresh();
        if self.shared.quarantined.load(Ordering::Acquire) {
            self.shared.set_link(false);
            return 0;
        }
        let Some(view) = &self.view else {
            self.shared.engine_link(false, self.seen_changes);
            return 0;
        };
        if !self.quiet {
            quiet_queues(&self.shared, view);
            self.quiet = true;
        }
        let mut moved = 0;
        if self.held_until <= now {
            if self.held_until != 0 {
                // The hold is over: the sender reads its limit again, in case it was
                // changed or lifted meanwhile.
                self.held_until = 0;
                self.sender.refresh_at(now);
            }
            let queues = self.shared.vrings.len() / 2;
            let first = self.tx_turn % queues.max(1);
            self.tx_turn = self.tx_turn.wrapping_add(1);
            for turn in 0..queues {
                let index = 2 * ((first + turn) % queues) + 1;
                moved += self.transmit(index, now, &mut others, steering);
            }
        }
        let Some(view) = &self.view else {
            return moved;
        };
        moved
            + self.rx.round(
                &self.shared,
                view.memory.memory(),
                &view.rx_rules,
                view.enabled_by_default,
                self.seen_changes,
            )
    }

    /// How long from `now` the lane is still held back by its rate limit, if it is.
    fn held_for(&self, now: u64) -> Option<u64> {
        (self.held_until > now).then(|| self.held_until - now)
    }

    /// Drains one round of transmit queue `index` into the network (as much of it as the
    /// rate limit lets through); returns the chains taken.
    fn transmit(
        &mut self,
        index: usize,
        now: u64,
        others: &mut [&mut [Lane<'a>]; 2],
        steering: Steering,
    ) -> usize {
        if self.held_until > now {
            return 0;
        }
        let (Some(view), Some(vring)) = (&self.view, self.shared.vrings.get(index)) else {
            return 0;
        };
        let mem = view.memory.memory();
        let counters = &self.shared.socket.counters;
        self.batch.clear();
        let faults = &mut self.faults;
        let (taken, hold) = {
            let mut vring = lock(vring);
            if !vring.running(view.enabled_by_default) {
                return 0;
            }
            let taken = take_round(
                &mut vring,
                mem,
                &view.tx_rules,
                (&self.sender, now),
                &mut self.batch,
                |f| faults.push(f),
            );
            vring.finish_round(mem);
            Counters::add(&counters.ring_access_failures, vring.take_access_failures());
            taken
        };
        if hold > 0 {
            self.held_until = now.saturating_add(hold);
        }
        if !self.faults.is_empty() {
            for fault in self.faults.drain(..) {
                self.shared.fault(true, fault, now);
                self.sender.count_drop(DropReason::Invalid);
            }
            self.sender.flush();
        }
        if !self.batch.is_empty() {
            let sender = &self.sender;
            for (_, frame) in self.batch.iter() {
                self.learner
                    .observe(|| sender.control(), frame, &self.label);
            }
            Counters::add(&counters.tx_frames, self.batch.len() as u64);
            if let Some(queue) = self.shared.socket.queues.get(index / 2) {
                Counters::add(&queue.tx_frames, self.batch.len() as u64);
            }
            if others.iter().all(|lanes| lanes.is_empty()) {
                self.sender.send_batch_offloaded_at(self.batch.iter(), now);
            } else {
                let [before, after] = others;
                // The queue pair this batch was sent on, for steering by queue.
                let source = (steering == Steering::Queue).then_some(index / 2);
                let mut neighbours =
                    Neighbours::new(before.iter_mut().chain(after.iter_mut()), source);
                self.sender
                    .send_batch_via(self.batch.iter(), now, &mut neighbours);
            }
        }
        taken
    }

    /// Before the engine sleeps: asks the guest to kick when it adds frames (or, if frames
    /// wait for its buffers, when it posts buffers) and arms the ring watch. Returns
    /// whether there is work after all. Transmit queues held back by the rate limit are
    /// left quiet: the engine's sleep ends when the hold does.
    fn arm(&mut self, now: u64) -> bool {
        let held = self.held_until > now;
        self.quiet = false;
        if self.shared.closing.load(Ordering::Acquire) {
            return true;
        }
        let Some(view) = &self.view else {
            return false;
        };
        if self.shared.quarantined.load(Ordering::Acquire) {
            return false;
        }
        let mem = view.memory.memory();
        let counters = &self.shared.socket.counters;
        let mut work = false;
        for (index, vring) in self.shared.vrings.iter().enumerate() {
            let mut vring = lock(vring);
            if !vring.running(view.enabled_by_default) {
                continue;
            }
            if index % 2 == 1 {
                // Turn kicks back on and look once more, so a frame added meanwhile is
                // not missed. A queue held back stays quiet: the engine comes back for
                // it when the hold ends, and its kicks would only wake it early.
                if !held {
                    work |= vring.queue.enable_notification(mem).unwrap_or_else(|_| {
                        Counters::add(&counters.ring_access_failures, 1);
                        false
                    });
                }
            } else if self.rx.blocked() {
                work |= datapath::ask_for_buffers(&mut vring, mem);
            }
            Counters::add(&counters.ring_access_failures, vring.take_access_failures());
        }
        if !self.rx.blocked() {
            self.shared.arm_watch(self.rx.position());
            self.watcher.unpark();
        }
        work
    }

    /// After the engine woke: the watch stands down (the engine polls the ring itself).
    fn disarm(&mut self) {
        self.shared.disarm_watch();
    }

    /// The kick eventfds the engine sleeps on for this lane: none once it is quarantined,
    /// so a guest that keeps kicking a port that no longer reads it cannot keep waking the
    /// engine (each wake costs an idle poll).
    fn kicks(&self) -> impl Iterator<Item = &OwnedFd> {
        let blocked = self.rx.blocked();
        let quarantined = self.shared.quarantined.load(Ordering::Acquire);
        self.view
            .iter()
            .filter(move |_| !quarantined)
            .flat_map(move |view| {
                view.tx_kicks
                    .iter()
                    .chain(view.rx_kicks.iter().filter(move |_| blocked))
                    .map(|kick| &**kick)
            })
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        self.rx.count_lost(&self.shared);
        self.shared.set_link(false);
    }
}

/// The engine's other lanes as one lane's way past the network's ring to their guests
/// ([`Shortcut`]): a frame routed to one of them is written straight into its receive
/// queues, which stay locked until the batch ends. A lane is opened on its first frame,
/// only if nothing waits for its guest (see [`RxHalf::open_direct`]); once one of its
/// frames has gone into its ring (no buffers, a retagged copy), the rest of the batch's
/// follow it there.
struct Neighbours<'x, 'a> {
    /// Kept inline for the few VMs a port process usually serves: a batch allocates
    /// nothing (with one frame a batch, an allocation and its free were a tenth of a
    /// frame's instructions).
    lanes: SmallVec<[Neighbour<'x, 'a>; NEIGHBOURS_INLINE]>,
    /// The queue pair the batch was sent on, when frames are steered by queue
    /// ([`Steering::Queue`]); `None`: by flow.
    source: Option<usize>,
}

/// Other lanes a batch's [`Neighbours`] holds without a heap allocation: a port process
/// serving up to three VMs. (Each is a few hundred bytes, moved as the batch begins.)
const NEIGHBOURS_INLINE: usize = 2;

struct Neighbour<'x, 'a> {
    /// Peer slot and generation of the lane's receiver.
    peer: (u16, u32),
    /// The offloads its guest negotiated (the sender went by those the peer table
    /// advertises, which may lag a renegotiation).
    offloads: u32,
    /// Until its first frame in this batch: what opening it takes.
    closed: Option<Closed<'x, 'a>>,
    /// Once opened, while its frames go straight into its guest. When both are `None`
    /// its frames go through the ring for the rest of the batch.
    open: Option<super::rx::Direct<'x, 'a>>,
}

/// A lane not written to yet in this batch.
struct Closed<'x, 'a> {
    rx: &'x mut RxHalf,
    shared: &'x Shared<'a>,
    view: &'x View,
}

impl<'x, 'a> Neighbours<'x, 'a> {
    fn new(
        lanes: impl Iterator<Item = &'x mut Lane<'a>>,
        source: Option<usize>,
    ) -> Neighbours<'x, 'a> {
        let lanes = lanes
            .filter_map(|lane| {
                // The lane's own round may not have seen its connection's latest change
                // (a new memory table, a queue started): write with what it says now.
                lane.refresh();
                let Lane {
                    shared, rx, view, ..
                } = lane;
                let view = view.as_ref()?;
                Some(Neighbour {
                    peer: rx.peer(),
                    offloads: datapath::guest_offloads(view.tx_rules.features),
                    closed: Some(Closed { rx, shared, view }),
                    open: None,
                })
            })
            .collect();
        Neighbours { lanes, source }
    }

    fn door(&mut self, index: u16) -> Option<&mut Neighbour<'x, 'a>> {
        self.lanes.iter_mut().find(|n| n.peer.0 == index)
    }
}

impl Shortcut for Neighbours<'_, '_> {
    fn offer(&mut self, peer: (u16, u32), copy: (&VirtioNetHdr, u32), frame: &[u8]) -> bool {
        let ((index, generation), (hdr, needed)) = (peer, copy);
        let source = self.source;
        let Some(neighbour) = self.door(index) else {
            return false;
        };
        if neighbour.peer.1 != generation {
            return false;
        }
        // Offload work the guest did not negotiate is finished in software on the ring's
        // way (its receiver checks what the peer accepts now); never hand it over as is.
        if needed & neighbour.offloads != needed {
            return false;
        }
        // The first frame for it in this batch opens it, if it may be opened now.
        if let Some(Closed { rx, shared, view }) = neighbour.closed.take() {
            neighbour.open = rx.open_direct(
                shared,
                view.memory.memory(),
                view.rx_rules,
                view.enabled_by_default,
            );
        }
        let Some(direct) = &mut neighbour.open else {
            return false;
        };
        if direct.offer(hdr, frame, source) {
            return true;
        }
        neighbour.open = None;
        false
    }

    fn queued(&mut self, index: u16) {
        if let Some(neighbour) = self.door(index) {
            neighbour.closed = None;
            neighbour.open = None;
        }
    }

    fn serves(&mut self, index: u16) -> bool {
        self.door(index).is_some()
    }
}

/// Takes one round of a transmit queue into `batch`: as much as the sender's rate limit
/// lets through at `now` (see [`Sender::rate_admission`]). Returns the chains taken and, when the
/// queue is held back, for how long (0: it is not).
fn take_round(
    vring: &mut Vring,
    memory: &GuestMemoryMmap,
    rules: &TxRules,
    (sender, now): (&Sender, u64),
    batch: &mut TxBatch,
    fault: impl FnMut(ChainFault),
) -> (usize, u64) {
    let largest = rules.largest_frame() as u64;
    let mut hold = 0;
    let admit = |taken| match sender.rate_admission(taken, largest, now) {
        Admission::Take => true,
        Admission::EndBatch => false,
        Admission::HoldFor(ns) => {
            hold = ns;
            false
        }
    };
    let taken = datapath::transmit_within(vring, memory, rules, TX_BUDGET, batch, admit, fault);
    (taken, hold)
}

/// Turns the guest's kicks off on every running queue while the engine polls: it looks at
/// the rings anyway, and each kick would cost the guest a system call. (With `EVENT_IDX`
/// the event index stays where the last sleep put it, and the guest kicks once when it
/// passes it, then not again until the index wraps.)
fn quiet_queues(shared: &Shared<'_>, view: &View) {
    let mem = view.memory.memory();
    for vring in &shared.vrings {
        let mut vring = lock(vring);
        if vring.running(view.enabled_by_default) && vring.queue.disable_notification(mem).is_err()
        {
            Counters::add(&shared.socket.counters.ring_access_failures, 1);
        }
    }
}

/// A connection's ring watch: while the engine sleeps, sleeps on the peer's ring and rings
/// the engine's bell when frames arrive; while the engine polls, parks. Runs until the
/// connection closes.
pub fn watch(shared: &Shared<'_>, mut ring: RingWatch, bell: &Doorbell) {
    while !shared.closing.load(Ordering::Acquire) {
        let Some(position) = shared.armed_at() else {
            std::thread::park_timeout(IDLE_SLICE);
            continue;
        };
        if ring.wait(position, IDLE_SLICE) && shared.take_watch() {
            bell.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{CreateOptions, JoinOptions, Network, Peer};
    use crate::ports::vhost_user::mock::{GuestMemory as MockMemory, GuestQueue, Layout};
    use crate::wire::MacAddress;
    use crate::wire::virtio_net::HEADER_LEN;

    const MS: u64 = 1_000_000;

    /// A guest's transmit queue of 64 in 1 MiB of memory, and the port's side of it.
    struct Guest {
        memory: MockMemory,
        queue: GuestQueue,
        vring: Vring,
    }

    impl Guest {
        fn new() -> Guest {
            let memory = MockMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
            let queue = GuestQueue::new(Layout::packed(64, 0x1000, 0x1_0000..0x10_0000));
            queue.lay_out(&memory);
            let vring = Vring::running_on(&queue);
            Guest {
                memory,
                queue,
                vring,
            }
        }

        /// Offers `n` frames of `len` bytes from `src` to `dst`, each behind a plain header.
        fn offer(&mut self, n: usize, len: usize, (dst, src): (MacAddress, MacAddress)) {
            for i in 0..n {
                let mut packet = vec![0u8; HEADER_LEN];
                packet.extend_from_slice(&dst.0);
                packet.extend_from_slice(&src.0);
                packet.extend_from_slice(&[0x88, 0xb5, i as u8]);
                packet.resize(HEADER_LEN + len, 0);
                let head = self.queue.chain_tx(&self.memory, &packet, 1, false);
                self.queue.publish(&self.memory, head);
            }
        }

        /// One round of the queue at `now`, sent into the network as the engine does:
        /// (chains taken, hold).
        fn round(&mut self, sender: &mut Sender, now: u64) -> (usize, u64) {
            let rules = TxRules {
                header_len: HEADER_LEN,
                max_frame: 1518,
                features: 0,
            };
            let mut batch = TxBatch::default();
            let mut faults = Vec::new();
            let (taken, hold) = take_round(
                &mut self.vring,
                self.memory.mmap(),
                &rules,
                (sender, now),
                &mut batch,
                |f| faults.push(f),
            );
            self.vring.finish_round(self.memory.mmap());
            assert!(faults.is_empty(), "{faults:?}");
            sender.send_batch_offloaded_at(batch.iter(), now);
            (taken, hold)
        }

        fn used_index(&self) -> u16 {
            self.queue.used_index(&self.memory)
        }
    }

    /// A network with a sender limited to `rate` bit/s and `burst` bytes (as of time 0),
    /// and a receiver.
    fn limited(
        dir: &tempfile::TempDir,
        rate: u64,
        burst: u64,
    ) -> (Network, Sender, u16, MacAddress, Peer) {
        let net = Network::create(dir.path(), "lab", CreateOptions::default()).unwrap();
        let peer = net.join(JoinOptions::default()).unwrap();
        let receiver = net.join(JoinOptions::default()).unwrap();
        peer.control().set_rate(rate, burst).unwrap();
        let (index, mac) = (peer.index(), peer.mac());
        let (mut sender, _) = peer.split();
        // As a lane does when it is made: the sender reads its limit.
        sender.refresh_at(0);
        (net, sender, index, mac, receiver)
    }

    fn rate_limited(net: &Network, index: u16) -> u64 {
        net.counters(index)
            .unwrap()
            .tx_dropped(DropReason::RateLimited)
    }

    #[test]
    fn a_guest_over_its_rate_is_held_back_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // 8 Mbit/s: a byte a microsecond; a burst of 4000 bytes.
        let (net, mut sender, index, mac, mut receiver) = limited(&dir, 8_000_000, 4000);
        let mut guest = Guest::new();
        guest.offer(10, 1000, (receiver.mac(), mac));
        // While the bucket holds the frames taken plus the largest (1518 bytes): three.
        assert_eq!(guest.round(&mut sender, 0), (3, 0));
        assert_eq!(guest.used_index(), 3);
        assert_eq!(guest.vring.queue.next_avail(), 3, "the rest stay available");
        // 1000 bytes left, less than the largest frame: held back, nothing taken, until
        // there is room for it and a millisecond (1000 bytes) more.
        let (taken, hold) = guest.round(&mut sender, 0);
        assert_eq!(taken, 0);
        assert_eq!(hold, 1_518_001);
        assert_eq!(guest.used_index(), 3, "no chain returned while held back");
        assert_eq!(guest.vring.queue.next_avail(), 3);
        assert_eq!(rate_limited(&net, index), 0);
        let mut received = 0;
        receiver.receive(usize::MAX, |_| received += 1);
        assert_eq!(received, 3);
        // After the wait the rest goes, a batch per hold, and nothing is refused.
        let mut now = hold;
        let mut rounds = 0;
        while guest.used_index() < 10 {
            let (taken, hold) = guest.round(&mut sender, now);
            assert!(taken > 0 || hold > 0, "a round either takes or holds");
            now += hold;
            rounds += 1;
            assert!(rounds < 100, "the queue drains");
        }
        receiver.receive(usize::MAX, |_| received += 1);
        assert_eq!(received, 10);
        assert_eq!(rate_limited(&net, index), 0);
        // 6000 bytes beyond the burst at a byte a microsecond; the last hold may end up
        // to a millisecond after the bytes it waited for.
        assert!((6 * MS..=8 * MS).contains(&now), "took {now} ns");
    }

    #[test]
    fn a_long_hold_is_cut_to_a_slice_and_a_lifted_limit_lets_all_through() {
        let dir = tempfile::tempdir().unwrap();
        // 8 kbit/s: a byte a millisecond, and a burst of 2000 bytes.
        let (net, mut sender, index, mac, mut receiver) = limited(&dir, 8_000, 2000);
        let mut guest = Guest::new();
        guest.offer(20, 400, (receiver.mac(), mac));
        assert_eq!(guest.round(&mut sender, 0), (2, 0));
        // 1200 bytes left: 319 ms until there is room for 1518 and a byte more.
        let (taken, hold) = guest.round(&mut sender, 0);
        assert_eq!(taken, 0);
        assert_eq!(hold, IDLE_SLICE.as_nanos() as u64);
        // The operator lifts the limit; the sender reads it again (as the engine has it
        // do when a hold ends).
        sender.control().set_rate(0, 0).unwrap();
        sender.refresh_at(hold);
        assert_eq!(guest.round(&mut sender, hold), (18, 0));
        let mut received = 0;
        receiver.receive(usize::MAX, |_| received += 1);
        assert_eq!(received, 20);
        assert_eq!(rate_limited(&net, index), 0);
    }

    #[test]
    fn a_burst_smaller_than_the_largest_frame_holds_until_the_bucket_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (net, mut sender, index, mac, receiver) = limited(&dir, 8_000_000, 1000);
        let mut guest = Guest::new();
        guest.offer(3, 600, (receiver.mac(), mac));
        // A full bucket lets one frame go at a time, however small.
        assert_eq!(guest.round(&mut sender, 0), (1, 0));
        let (taken, hold) = guest.round(&mut sender, 0);
        assert_eq!(taken, 0);
        assert_eq!(hold, 600_001, "until the bucket is full again");
        assert_eq!(guest.round(&mut sender, hold), (1, 0));
        assert_eq!(rate_limited(&net, index), 0);
    }

    #[test]
    fn without_a_limit_a_round_takes_its_whole_budget() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::create(dir.path(), "lab", CreateOptions::default()).unwrap();
        let peer = net.join(JoinOptions::default()).unwrap();
        let receiver = net.join(JoinOptions::default()).unwrap();
        let mac = peer.mac();
        let (mut sender, _) = peer.split();
        let mut guest = Guest::new();
        guest.offer(40, 1500, (receiver.mac(), mac));
        assert_eq!(guest.round(&mut sender, 0), (40, 0));
    }
}
