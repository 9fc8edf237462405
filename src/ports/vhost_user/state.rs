//! What a socket's threads share: the socket's status, and per connection the state its
//! connection thread writes and the port's data path reads (queues, guest memory, what was
//! negotiated, quarantine, the ring watch's arming).
//!
//! The connection thread (`connection`) writes this state as messages come and counts each
//! change in `changes`; the engine (`engine`) reads it again when that count moves.
//! Neither imports the other: both meet here.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::datapath::{ChainFault, Vring, feature};
use super::memory::GuestMemory;
use super::status::{Counters, QueueCounters, SocketStatus, State};
use crate::network::Control;
use crate::ports::socket::Doorbell;
use crate::wire::MacAddress;

/// Bad chains within one second that quarantine a port.
pub const QUARANTINE_FAULTS: u64 = 64;

pub use crate::ports::locks::lock;

/// What changes about a socket while it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// The peer's slot while a frontend is connected.
    pub slot: Option<u16>,
    /// Where the frontend stands.
    pub state: State,
    /// Features the frontend acked.
    pub acked_features: u64,
    /// Protocol features the frontend acked.
    pub acked_protocol_features: u64,
}

impl Info {
    /// No frontend.
    pub const LISTENING: Info = Info {
        slot: None,
        state: State::Listening,
        acked_features: 0,
        acked_protocol_features: 0,
    };
}

/// One socket: its path, status and counters.
#[derive(Debug)]
pub struct Socket {
    /// The socket's path.
    pub path: PathBuf,
    /// The MAC to publish; `None`: learn the guest's.
    pub mac: Option<MacAddress>,
    /// Where the frontend stands.
    pub info: Mutex<Info>,
    /// Counters since the port started.
    pub counters: Counters,
    /// Frames by queue pair, one for each pair the port offers.
    pub queues: Vec<QueueCounters>,
    /// Rung when `info` changes, so the status file follows promptly.
    pub changed: Arc<Doorbell>,
}

impl Socket {
    /// Changes the socket's info, ringing `changed` if that changed anything.
    pub fn update(&self, change: impl FnOnce(&mut Info)) {
        let mut info = lock(&self.info);
        let before = *info;
        change(&mut info);
        if *info != before {
            self.changed.ring();
        }
    }

    /// The socket's status, as the status file has it.
    pub fn status(&self, queue_pairs: u16) -> SocketStatus {
        let info = *lock(&self.info);
        SocketStatus {
            pid: std::process::id(),
            socket: self.path.clone(),
            slot: info.slot,
            state: info.state,
            acked_features: info.acked_features,
            acked_protocol_features: info.acked_protocol_features,
            queue_pairs,
            counters: self.counters.values(),
            queues: self.queues.iter().map(QueueCounters::values).collect(),
        }
    }
}

/// What the frontend agreed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Negotiated {
    /// Acked features, once `SET_FEATURES` came.
    pub features: Option<u64>,
    /// Acked protocol features.
    pub protocol: u64,
}

impl Negotiated {
    /// virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else the legacy 10.
    pub fn header_len(features: u64) -> usize {
        if features & (feature::VERSION_1 | feature::MRG_RXBUF) != 0 {
            crate::wire::virtio_net::HEADER_LEN
        } else {
            crate::wire::virtio_net::LEGACY_HEADER_LEN
        }
    }

    /// Whether rings run without `SET_VRING_ENABLE` (protocol features not negotiated).
    pub fn enabled_by_default(&self) -> bool {
        self.features
            .is_some_and(|f| f & feature::PROTOCOL_FEATURES == 0)
    }
}

/// Counts bad chains over one-second windows to decide on quarantine.
#[derive(Debug, Default)]
struct Meter {
    window_start_ns: u64,
    faults: u64,
}

/// The state a connection's thread and the port's data path share.
pub struct Shared<'a> {
    /// Queues: `2k` receives, `2k + 1` transmits, for queue pair `k`.
    pub vrings: Vec<Mutex<Vring>>,
    memory: Mutex<Option<Arc<GuestMemory>>>,
    negotiated: Mutex<Negotiated>,
    /// Set once the port is quarantined.
    pub quarantined: AtomicBool,
    /// Set when the connection ends; the engine drops its lane and the ring watch stops.
    pub closing: AtomicBool,
    /// Counts the changes the connection thread made (messages applied): the engine takes
    /// the state again when it moves.
    pub changes: AtomicU64,
    /// The ring watch should sleep on the ring, for a receiver at `watch_position`.
    watch_armed: AtomicBool,
    watch_position: AtomicU64,
    /// The peer's link is up (a receive queue runs).
    link_up: AtomicBool,
    /// Held while `link_up` and the peer's published link state change together: two
    /// threads (the connection's and the engine's) set the link, and without it one's flag
    /// and the other's published state could be left disagreeing for good.
    link_change: Mutex<()>,
    meter: Mutex<Meter>,
    /// The peer's control half.
    pub control: Control,
    /// Status and counters.
    pub socket: &'a Socket,
}

impl<'a> Shared<'a> {
    /// A connection's state before its first message: no memory, nothing negotiated, the
    /// link down.
    pub fn new(vrings: Vec<Mutex<Vring>>, control: Control, socket: &'a Socket) -> Shared<'a> {
        Shared {
            vrings,
            memory: Mutex::new(None),
            negotiated: Mutex::new(Negotiated::default()),
            quarantined: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            watch_armed: AtomicBool::new(false),
            watch_position: AtomicU64::new(0),
            link_up: AtomicBool::new(false),
            link_change: Mutex::new(()),
            meter: Mutex::new(Meter::default()),
            control,
            socket,
        }
    }
}

impl Shared<'_> {
    /// The current guest memory.
    pub fn memory(&self) -> Option<Arc<GuestMemory>> {
        lock(&self.memory).clone()
    }

    /// Replaces the guest memory (`None`: forgets it).
    pub fn set_memory(&self, memory: Option<GuestMemory>) {
        for vring in &self.vrings {
            lock(vring).reconfigured();
        }
        *lock(&self.memory) = memory.map(Arc::new);
    }

    /// What was negotiated so far.
    pub fn negotiated(&self) -> Negotiated {
        *lock(&self.negotiated)
    }

    /// Records the features the frontend acked.
    pub fn set_features(&self, features: u64) {
        lock(&self.negotiated).features = Some(features);
    }

    /// Records the protocol features the frontend acked.
    pub fn set_protocol_features(&self, features: u64) {
        lock(&self.negotiated).protocol = features;
    }

    /// Forgets what was negotiated (the frontend reset its ownership).
    pub fn forget_negotiation(&self) {
        *lock(&self.negotiated) = Negotiated::default();
    }

    /// Arms the ring watch for a receiver standing at `position` (the engine is about to
    /// sleep).
    pub fn arm_watch(&self, position: u64) {
        self.watch_position.store(position, Ordering::Relaxed);
        // Release: the watch that sees the flag sees the position.
        self.watch_armed.store(true, Ordering::Release);
    }

    /// Stands the ring watch down (the engine is awake).
    pub fn disarm_watch(&self) {
        self.watch_armed.store(false, Ordering::Release);
    }

    /// Where the receiver stands, if the watch is armed.
    pub fn armed_at(&self) -> Option<u64> {
        self.watch_armed
            .load(Ordering::Acquire)
            .then(|| self.watch_position.load(Ordering::Relaxed))
    }

    /// Disarms the watch; returns whether it was armed (then it is the one to wake the
    /// engine).
    pub fn take_watch(&self) -> bool {
        self.watch_armed.swap(false, Ordering::AcqRel)
    }

    /// Counts a refused chain and quarantines the port when they come too fast.
    pub fn fault(&self, transmit: bool, fault: ChainFault, now_ns: u64) {
        let c = &self.socket.counters;
        let counter = match (transmit, fault) {
            (true, ChainFault::BadChain) => &c.tx_bad_chains,
            (true, ChainFault::WrongDirection) => &c.tx_wrong_direction,
            (true, ChainFault::BadLength) => &c.tx_bad_length,
            (true, ChainFault::BadHeader) => &c.tx_bad_header,
            (false, ChainFault::WrongDirection) => &c.rx_wrong_direction,
            (false, ChainFault::BadLength) => &c.rx_no_room,
            (false, _) => &c.rx_bad_chains,
        };
        Counters::add(counter, 1);
        // A frame too big for the guest's buffers is the network's doing, not the guest's.
        if !transmit && fault == ChainFault::BadLength {
            return;
        }
        let quarantine = {
            let mut meter = lock(&self.meter);
            if now_ns.saturating_sub(meter.window_start_ns) >= 1_000_000_000 {
                meter.window_start_ns = now_ns;
                meter.faults = 0;
            }
            meter.faults += 1;
            meter.faults > QUARANTINE_FAULTS
        };
        if quarantine && !self.quarantined.swap(true, Ordering::AcqRel) {
            Counters::add(&c.quarantines, 1);
            tracing::warn!(socket = %self.socket.path.display(), "quarantined: the guest keeps posting bad descriptors");
            if let Err(e) = self.control.set_quarantined(true) {
                tracing::warn!(error = %e, "cannot mark the peer quarantined");
            }
            self.refresh_state();
        }
    }

    /// Recomputes the socket's state for `status`, and the peer's link: up exactly while a
    /// receive queue runs. Called by the connection thread after every message, so the
    /// link is up by the time the frontend has its acknowledgement (the engine sets the
    /// link itself each round). Takes the vring locks: callers must hold none.
    pub fn refresh_state(&self) {
        let negotiated = self.negotiated();
        let enabled_by_default = negotiated.enabled_by_default();
        let running: Vec<bool> = self
            .vrings
            .iter()
            .map(|v| lock(v).running(enabled_by_default))
            .collect();
        let quarantined = self.quarantined.load(Ordering::Acquire);
        let receiving = running.iter().step_by(2).any(|&r| r)
            && negotiated.features.is_some()
            && self.memory().is_some();
        self.set_link(receiving && !quarantined);
        let state = if quarantined {
            State::Quarantined
        } else if running.iter().any(|&r| r) {
            State::Running
        } else {
            State::Connected
        };
        self.socket.update(|info| {
            info.state = state;
            info.acked_features = negotiated.features.unwrap_or(0);
            info.acked_protocol_features = negotiated.protocol;
        });
    }

    /// Marks the peer's link up or down when that changes: down, senders count
    /// `link_down` instead of filling a ring nobody drains. What the connection's state
    /// says (the connection thread after each message, a quarantine, a lane let go).
    pub fn set_link(&self, up: bool) {
        let _change = lock(&self.link_change);
        self.write_link(up);
    }

    /// The engine's word on the link, from the state it took when `changes` was `seen`
    /// (a receive queue opened, or none runs). It is passed over when the connection has
    /// changed something since: the connection's own [`Shared::set_link`] for that change
    /// follows (it counts the change before it looks) and decides, so an engine a message
    /// behind never lowers a link the frontend has just been told is up.
    pub fn engine_link(&self, up: bool, seen: u64) {
        if self.link_up.load(Ordering::Acquire) == up {
            return;
        }
        let _change = lock(&self.link_change);
        if self.changes.load(Ordering::Acquire) == seen {
            self.write_link(up);
        }
    }

    /// Writes the flag and the peer's state; the caller holds `link_change`.
    fn write_link(&self, up: bool) {
        if self.link_up.swap(up, Ordering::AcqRel) != up
            && let Err(e) = self.control.set_link_down(!up)
        {
            tracing::warn!(error = %e, "cannot change the peer's link state");
        }
    }
}

/// Tells a connection that the engine let go of its lane: everything the lane held (the
/// peer's halves, its share of the connection's state) is gone by then. Kept apart from
/// [`Shared`], which the lane also holds.
#[derive(Debug, Default)]
pub struct Released {
    done: Mutex<bool>,
    signal: Condvar,
}

impl Released {
    /// The engine let go.
    pub fn release(&self) {
        *lock(&self.done) = true;
        self.signal.notify_all();
    }

    /// Waits up to `timeout` for the engine to let go; returns whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let done = lock(&self.done);
        let (done, _) = self
            .signal
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *done
    }
}

/// Whether `fd` is an eventfd (a kick or call descriptor must be one: anything else
/// could block us or never stop being readable).
pub fn is_eventfd(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}

/// Reads an eventfd's count, clearing it. Only called when `poll` said it is readable.
pub fn drain_eventfd(fd: &impl AsFd) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(fd, &mut count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{CreateOptions, JoinOptions, Network, Peer};

    /// A network, a peer, and a connection's shared state for it with no queues.
    fn lab(dir: &tempfile::TempDir) -> (Network, Peer, Socket) {
        let net = Network::create(dir.path(), "lab", CreateOptions::default()).unwrap();
        let peer = net.join(JoinOptions::default()).unwrap();
        let socket = Socket {
            path: dir.path().join("s"),
            mac: None,
            info: Mutex::new(Info::LISTENING),
            counters: Counters::default(),
            queues: Vec::new(),
            changed: Arc::new(Doorbell::new().unwrap()),
        };
        (net, peer, socket)
    }

    /// Whether the network shows peer `index`'s link down.
    fn published_down(net: &Network, index: u16) -> bool {
        net.status()
            .peers
            .iter()
            .find(|p| p.slot == index)
            .expect("the peer")
            .link_down
    }

    #[test]
    fn new_guest_memory_makes_the_rings_forget_the_available_index_they_saw() {
        let dir = tempfile::tempdir().unwrap();
        let (_net, peer, socket) = lab(&dir);
        let vrings = (0..2)
            .map(|_| Mutex::new(Vring::new().expect("a ring")))
            .collect();
        let shared = Shared::new(vrings, peer.control(), &socket);
        for vring in &shared.vrings {
            lock(vring).rx_available = Some((5, 1));
        }
        shared.set_memory(None);
        assert!(
            shared
                .vrings
                .iter()
                .all(|vring| lock(vring).rx_available.is_none()),
            "an index seen in the old memory says nothing of the new"
        );
    }

    #[test]
    fn an_engine_a_change_behind_never_lowers_a_link_the_connection_raised() {
        let dir = tempfile::tempdir().unwrap();
        let (net, peer, socket) = lab(&dir);
        let shared = Shared::new(Vec::new(), peer.control(), &socket);
        shared.set_link(false);
        // The engine took the state at 0; then a message came (counted first) and the
        // connection raised the link.
        let seen = shared.changes.load(Ordering::Acquire);
        shared.changes.fetch_add(1, Ordering::AcqRel);
        shared.set_link(true);
        shared.engine_link(false, seen);
        assert!(
            !published_down(&net, peer.index()),
            "the stale word is passed over"
        );
        // With the engine up to date, its word counts.
        shared.engine_link(false, seen + 1);
        assert!(published_down(&net, peer.index()));
        shared.engine_link(true, seen + 1);
        assert!(!published_down(&net, peer.index()));
    }
}
