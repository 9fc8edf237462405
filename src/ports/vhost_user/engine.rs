//! The data path: one thread moves the frames of every VM the port serves.
//!
//! Each connected frontend hands the engine a [`Lane`]: its peer's sending and receiving
//! halves and the connection's [`Shared`] state. The engine's thread runs to completion
//! over all lanes, round after round: per lane, it drains each transmit queue (up to a
//! budget) and sends the frames into the network as one batch, then drains the peer's ring
//! (up to a budget) into the guest's receive queues, signalling each guest once per round.
//! A frame from one VM to another served by the same port thus crosses the network's ring
//! inside one round, with no thread hand-off.
//!
//! **Polling, then sleeping.** While frames flow the thread polls: the guests are told not
//! to kick (`VIRTQ_USED_F_NO_NOTIFY`, or with `EVENT_IDX` an event index left behind), and
//! nothing makes a system call but the network's own batch wake-ups of receivers that
//! sleep. After [`IDLE_POLL`] without a frame it asks every guest to kick again, arms each
//! lane's ring watch (a thread per connection that sleeps on the peer's ring futex and
//! rings the engine's bell when frames arrive), looks once more, and sleeps in one `poll`
//! on the bell, the stop doorbell and every kick eventfd. Idle, the port costs nothing.
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
use virtio_queue::QueueT;

use super::datapath::{self, ChainFault, RxRules, TxBatch, TxRules, feature};
use super::memory::GuestMemory;
use super::rx::RxHalf;
use super::state::{Negotiated, Released, Shared, drain_eventfd, lock};
use super::status::Counters;
use crate::network::counters::DropReason;
use crate::network::{Receiver, RingWatch, Sender, monotonic_ns};
use crate::ports::mac::MacLearner;
use crate::ports::socket::Doorbell;

/// Chains taken from one transmit queue per round.
const TX_BUDGET: usize = 256;

/// How long the engine keeps polling after the last frame before it sleeps: long enough
/// to ride out the gap between a frontend's bursts, short against any human notion of
/// idle.
pub const IDLE_POLL: Duration = Duration::from_micros(100);

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
}

struct Inbox<'a> {
    lanes: Vec<Lane<'a>>,
    /// The engine's thread ended: a lane handed over now is dropped at once.
    stopped: bool,
}

impl<'a> Engine<'a> {
    /// An engine with no lanes.
    pub fn new() -> std::io::Result<Engine<'a>> {
        Ok(Engine {
            inbox: Mutex::new(Inbox {
                lanes: Vec::new(),
                stopped: false,
            }),
            arrived: AtomicBool::new(false),
            bell: Doorbell::new()?,
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
            for lane in &mut lanes {
                work += lane.round();
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
        let mut work = false;
        for lane in lanes.iter_mut() {
            work |= lane.arm();
        }
        if !work {
            let mut fds = Vec::with_capacity(2 + 2 * lanes.len());
            fds.push(PollFd::new(stop, PollFlags::IN));
            fds.push(PollFd::new(&self.bell, PollFlags::IN));
            for lane in lanes.iter() {
                for kick in lane.kicks() {
                    fds.push(PollFd::new(kick, PollFlags::IN));
                }
            }
            let timeout = crate::network::timespec(IDLE_SLICE);
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

    /// One round: the transmit queues, then the receive queues. Returns the frames moved.
    fn round(&mut self) -> usize {
        self.refresh();
        if self.shared.quarantined.load(Ordering::Acquire) {
            self.shared.set_link(false);
            return 0;
        }
        let Some(view) = &self.view else {
            self.shared.set_link(false);
            return 0;
        };
        if !self.quiet {
            quiet_queues(&self.shared, view);
            self.quiet = true;
        }
        let mut moved = 0;
        for index in (1..self.shared.vrings.len()).step_by(2) {
            moved += self.transmit(index);
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
            )
    }

    /// Drains one round of transmit queue `index` into the network; returns the chains
    /// taken.
    fn transmit(&mut self, index: usize) -> usize {
        let (Some(view), Some(vring)) = (&self.view, self.shared.vrings.get(index)) else {
            return 0;
        };
        let mem = view.memory.memory();
        let counters = &self.shared.socket.counters;
        self.batch.clear();
        let faults = &mut self.faults;
        let taken = {
            let mut vring = lock(vring);
            if !vring.running(view.enabled_by_default) {
                return 0;
            }
            let taken = datapath::transmit(
                &mut vring,
                mem,
                &view.tx_rules,
                TX_BUDGET,
                &mut self.batch,
                |f| faults.push(f),
            );
            vring.finish_round(mem);
            Counters::add(&counters.ring_access_failures, vring.take_access_failures());
            taken
        };
        if !self.faults.is_empty() {
            let now = monotonic_ns();
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
            self.sender.send_batch_offloaded(self.batch.iter());
        }
        taken
    }

    /// Before the engine sleeps: asks the guest to kick when it adds frames (or, if frames
    /// wait for its buffers, when it posts buffers) and arms the ring watch. Returns
    /// whether there is work after all.
    fn arm(&mut self) -> bool {
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
                // not missed.
                work |= vring.queue.enable_notification(mem).unwrap_or_else(|_| {
                    Counters::add(&counters.ring_access_failures, 1);
                    false
                });
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
