//! A peer: one member of a network, with a sending half and a receiving half.
//!
//! **Sending** happens in batches. At the start of a batch the sender compares the table
//! version with the one its cached view was taken at and refreshes the view if needed
//! (one atomic load when nothing changed). Each frame is checked, its source address
//! learned, its receivers resolved ([`forward::resolve`]) and copied once into each
//! receiver's ring. At the end of the batch the sender wakes, once, each receiver that
//! went to sleep, and writes its counters.
//!
//! **Receiving** is NAPI-style: [`Receiver::receive`] drains up to a budget of frames
//! without any system call; [`Receiver::wait`] sleeps on the ring's futex word until a
//! sender wakes it. A receiver that is busy never sleeps, so senders never make the wake
//! system call while traffic flows: wake-ups are batched by construction.
//!
//! The two halves can live on two threads ([`Peer::split`]); the peer leaves the network
//! when both are dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use crate::shm::RangeLock;
use crate::shm::layout::{PeerEntry, flags, status};
use crate::wire::{MacAddress, ethernet};

use super::counters::{self, DropReason, PeerCounters, Pending, slot};
use super::forward::{self, PeerView, Route, Rules};
use super::ring::{self, Pop, Push, SlotMeta};
use super::{Error, PortKind, Region, Result, SWEEP_INTERVAL_NS, fdb, monotonic_ns};

/// How a peer joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// What kind of port it is (shown in `status`).
    pub kind: PortKind,
    /// MAC to publish; by default one derived from the slot, `02:00:<slot LE>:<tag>`.
    pub mac: Option<MacAddress>,
    /// Receive every frame.
    pub promiscuous: bool,
    /// Receive every multicast frame (on by default, as most stacks need IPv6 ND).
    pub all_multicast: bool,
    /// Fronts many addresses (TAP to a bridge, tunnel).
    pub uplink: bool,
    /// Short description shown in `status`.
    pub label: String,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            kind: PortKind::Process,
            mac: None,
            promiscuous: false,
            all_multicast: true,
            uplink: false,
            label: String::new(),
        }
    }
}

/// What happened to one frame given to [`Sender::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Accepted and routed: `delivered` copies went into rings, `dropped` were counted.
    Routed {
        /// Copies published.
        delivered: u32,
        /// Copies dropped (ring full, link down, …).
        dropped: u32,
    },
    /// Refused before routing, and counted.
    Refused(DropReason),
}

/// State shared by the two halves; leaving happens when the last half drops it.
#[derive(Debug)]
struct Membership {
    region: Arc<Region>,
    /// Our own open file description of the region, holding our slot's lock.
    lock_file: File,
    index: u16,
    generation: u32,
}

impl Membership {
    fn entry(&self) -> &PeerEntry {
        self.region.peers().at(self.index as u64)
    }

    fn maintain(&self, now_ns: u64) {
        self.region
            .sweep(&self.lock_file, Some(self.index), now_ns, false);
    }

    fn update_flags(&self, set: u32, clear: u32) -> Result<()> {
        self.region.with_control_lock(&self.lock_file, || {
            let entry = self.entry();
            let old = entry.flags.load(Ordering::Relaxed);
            entry.flags.store((old | set) & !clear, Ordering::Relaxed);
        })
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let left = self.region.with_control_lock(&self.lock_file, || {
            self.region.clear_entry(self.index);
        });
        if let Err(e) = left {
            tracing::warn!(slot = self.index, error = %e, "leaving the network failed; the slot will be reclaimed by a sweep");
        }
        let _ = RangeLock::unlock(
            &self.lock_file,
            self.region.layout.peer_lock_byte(self.index as usize),
            1,
        );
    }
}

/// Control operations either half can make.
#[derive(Debug, Clone)]
pub struct Control {
    membership: Arc<Membership>,
}

impl Control {
    /// Slot index.
    pub fn index(&self) -> u16 {
        self.membership.index
    }

    /// Join generation of this peer.
    pub fn generation(&self) -> u32 {
        self.membership.generation
    }

    /// The published MAC.
    pub fn mac(&self) -> MacAddress {
        MacAddress::from_u64(self.membership.entry().mac.load(Ordering::Relaxed))
    }

    /// Changes the published MAC while running; refused if another peer publishes it.
    pub fn set_mac_address(&self, mac: MacAddress) -> Result<()> {
        if mac.is_multicast() || mac.is_zero() {
            return Err(Error::BadMac(mac));
        }
        let membership = &self.membership;
        membership
            .region
            .with_control_lock(&membership.lock_file, || {
                if let Some(slot) = holder_of(&membership.region, mac, membership.index) {
                    return Err(Error::MacInUse { mac, slot });
                }
                membership
                    .entry()
                    .mac
                    .store(mac.to_u64(), Ordering::Relaxed);
                Ok(())
            })?
    }

    /// Turns promiscuous mode on or off.
    pub fn set_promiscuous(&self, on: bool) -> Result<()> {
        self.set_flag(flags::PROMISCUOUS, on)
    }

    /// Turns all-multicast mode on or off.
    pub fn set_all_multicast(&self, on: bool) -> Result<()> {
        self.set_flag(flags::ALL_MULTICAST, on)
    }

    /// Marks the link down (frames to this peer are dropped and counted) or up.
    pub fn set_link_down(&self, down: bool) -> Result<()> {
        self.set_flag(flags::LINK_DOWN, down)
    }

    /// Quarantines the port (nothing it sends is taken, nothing reaches it) or lifts it.
    pub fn set_quarantined(&self, on: bool) -> Result<()> {
        self.set_flag(flags::QUARANTINED, on)
    }

    fn set_flag(&self, flag: u32, on: bool) -> Result<()> {
        if on {
            self.membership.update_flags(flag, 0)
        } else {
            self.membership.update_flags(0, flag)
        }
    }

    /// Subscribes to a multicast group (without all-multicast mode).
    pub fn subscribe_multicast(&self, group: MacAddress) -> Result<()> {
        let bit = forward::multicast_filter_bit(group);
        let membership = &self.membership;
        membership
            .region
            .with_control_lock(&membership.lock_file, || {
                membership
                    .entry()
                    .multicast_filter
                    .fetch_or(bit, Ordering::Relaxed);
            })
    }

    /// This peer's counters.
    pub fn counters(&self) -> PeerCounters {
        PeerCounters::read(self.membership.entry())
    }
}

/// The up peer other than `except` that publishes `mac`.
fn holder_of(region: &Region, mac: MacAddress, except: u16) -> Option<u16> {
    let peers = region.peers();
    (0..peers.count() as u16).find(|&i| {
        let entry = peers.at(i as u64);
        i != except
            && entry.status.load(Ordering::Relaxed) == status::UP
            && entry.mac.load(Ordering::Relaxed) == mac.to_u64()
    })
}

/// A member of a network.
#[derive(Debug)]
pub struct Peer {
    sender: Sender,
    receiver: Receiver,
}

impl Peer {
    pub(super) fn join(region: Arc<Region>, options: JoinOptions) -> Result<Peer> {
        if let Some(mac) = options.mac
            && (mac.is_multicast() || mac.is_zero())
        {
            return Err(Error::BadMac(mac));
        }
        // A new open file description of the same inode (the name may since point to
        // another network): our slot lock must be ours alone.
        let lock_file = reopen(&region)?;
        region.sweep(&lock_file, None, monotonic_ns(), true);
        let max_peers = region.layout.geometry.max_peers as u16;
        let mut claimed = None;
        for index in 0..max_peers {
            if region
                .peers()
                .at(index as u64)
                .status
                .load(Ordering::Acquire)
                != status::FREE
            {
                continue;
            }
            let byte = region.layout.peer_lock_byte(index as usize);
            if RangeLock::try_lock(&lock_file, byte, 1)
                .map_err(super::io_error("lock a peer slot"))?
            {
                claimed = Some(index);
                break;
            }
        }
        let Some(index) = claimed else {
            return Err(Error::Full(region.name.clone()));
        };
        // Not yet up: no sender starts a new frame for us, but one that started before the
        // slot was freed may still be copying. Let live ones finish (they take
        // microseconds; the bound covers a writer that was descheduled), then start the
        // ring afresh.
        let ring = region.ring(index);
        let deadline = monotonic_ns().saturating_add(HANDOVER_GRACE_NS);
        while ring::writers_in_progress(&ring) && monotonic_ns() < deadline {
            std::thread::yield_now();
        }
        let tail = ring::reset_ahead(&ring);
        ring.control().consumed.store(tail, Ordering::Relaxed);
        let published = region.with_control_lock(&lock_file, || {
            let mac = options
                .mac
                .unwrap_or_else(|| MacAddress::for_slot(index, region.network_tag()));
            if let Some(slot) = holder_of(&region, mac, index) {
                return Err(Error::MacInUse { mac, slot });
            }
            let entry = region.peers().at(index as u64);
            let generation = entry
                .generation
                .load(Ordering::Relaxed)
                .wrapping_add(1)
                .max(1);
            entry.generation.store(generation, Ordering::Relaxed);
            entry.mac.store(mac.to_u64(), Ordering::Relaxed);
            let mut bits = 0;
            if options.promiscuous {
                bits |= flags::PROMISCUOUS;
            }
            if options.all_multicast {
                bits |= flags::ALL_MULTICAST;
            }
            if options.uplink {
                bits |= flags::UPLINK;
            }
            entry.flags.store(bits, Ordering::Relaxed);
            entry.kind.store(options.kind.code(), Ordering::Relaxed);
            entry.pid.store(std::process::id(), Ordering::Relaxed);
            entry.multicast_filter.store(0, Ordering::Relaxed);
            entry
                .joined_unix_ns
                .store(super::unix_ns(), Ordering::Relaxed);
            super::write_label(entry, &options.label);
            for counter in entry.owner_counters.iter().chain(entry.rx_drops.iter()) {
                counter.store(0, Ordering::Relaxed);
            }
            entry.status.store(status::UP, Ordering::Release);
            Ok(generation)
        });
        let generation = match published {
            Ok(Ok(generation)) => generation,
            Ok(Err(e)) | Err(e) => {
                let _ =
                    RangeLock::unlock(&lock_file, region.layout.peer_lock_byte(index as usize), 1);
                return Err(e);
            }
        };

        let membership = Arc::new(Membership {
            region,
            lock_file,
            index,
            generation,
        });
        Ok(Peer {
            sender: Sender::new(Arc::clone(&membership)),
            receiver: Receiver::new(membership, tail),
        })
    }

    /// Control operations (MAC, flags, counters).
    pub fn control(&self) -> Control {
        self.sender.control()
    }

    /// Slot index.
    pub fn index(&self) -> u16 {
        self.sender.membership.index
    }

    /// Published MAC.
    pub fn mac(&self) -> MacAddress {
        self.control().mac()
    }

    /// Changes the published MAC; see [`Control::set_mac_address`].
    pub fn set_mac_address(&self, mac: MacAddress) -> Result<()> {
        self.control().set_mac_address(mac)
    }

    /// This peer's counters.
    pub fn counters(&self) -> PeerCounters {
        self.control().counters()
    }

    /// Sends one frame; see [`Sender::send`].
    pub fn send(&mut self, frame: &[u8]) -> Sent {
        self.sender.send(frame)
    }

    /// Sends a batch; see [`Sender::send_batch`].
    pub fn send_batch<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) -> usize {
        self.sender.send_batch(frames)
    }

    /// Receives up to `budget` frames; see [`Receiver::receive`].
    pub fn receive(&mut self, budget: usize, on_frame: impl FnMut(&[u8])) -> usize {
        self.receiver.receive(budget, on_frame)
    }

    /// Sleeps until frames arrive or `timeout` passes; see [`Receiver::wait`].
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.receiver.wait(timeout)
    }

    /// Splits the peer into halves that may run on two threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}

fn reopen(region: &Region) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&region.path)
        .map_err(super::io_error(format!("open {}", region.path.display())))
}

/// The sending half of a peer.
#[derive(Debug)]
pub struct Sender {
    membership: Arc<Membership>,
    view: Vec<PeerView>,
    view_version: u64,
    own_mac: MacAddress,
    quarantined: bool,
    rules: Rules,
    mtu: usize,
    destinations: Vec<usize>,
    touched: Vec<u16>,
    touched_bits: Vec<u64>,
    pending: Pending,
    /// When each foreign source address was last written to the learned table.
    learned_at: HashMap<MacAddress, u64>,
    now_ms: u64,
    last_maintenance_ns: u64,
}

/// How long a joining peer waits for writers still copying into its ring.
const HANDOVER_GRACE_NS: u64 = 100_000_000;

/// Bound on the private cache of learned addresses (a guest spraying random source
/// addresses must not grow our memory; the shared table has its own bound).
const LEARN_CACHE_LIMIT: usize = 4096;

impl Sender {
    fn new(membership: Arc<Membership>) -> Sender {
        let max_peers = membership.region.layout.geometry.max_peers as usize;
        let rules = Rules {
            drop_unknown_unicast: membership.region.drop_unknown_unicast(),
        };
        let mtu = membership.region.layout.geometry.mtu as usize;
        Sender {
            membership,
            view: Vec::with_capacity(max_peers),
            view_version: u64::MAX,
            own_mac: MacAddress::ZERO,
            quarantined: false,
            rules,
            mtu,
            destinations: Vec::with_capacity(max_peers),
            touched: Vec::with_capacity(max_peers),
            touched_bits: vec![0; max_peers.div_ceil(64)],
            pending: Pending::default(),
            learned_at: HashMap::new(),
            now_ms: 0,
            last_maintenance_ns: 0,
        }
    }

    /// Control operations.
    pub fn control(&self) -> Control {
        Control {
            membership: Arc::clone(&self.membership),
        }
    }

    /// Sends one frame (a batch of one: it wakes the receivers and writes the counters).
    pub fn send(&mut self, frame: &[u8]) -> Sent {
        self.begin_batch(monotonic_ns());
        let sent = self.send_frame(frame);
        self.end_batch();
        sent
    }

    /// Sends frames as one batch; returns how many were accepted (routed). Each refusal
    /// and each dropped copy is counted in the peer's counters.
    pub fn send_batch<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) -> usize {
        self.send_batch_at(frames, monotonic_ns())
    }

    /// [`Sender::send_batch`] with the time passed in (monotonic nanoseconds).
    pub fn send_batch_at<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a [u8]>,
        now_ns: u64,
    ) -> usize {
        self.begin_batch(now_ns);
        let mut accepted = 0;
        for frame in frames {
            if matches!(self.send_frame(frame), Sent::Routed { .. }) {
                accepted += 1;
            }
        }
        self.end_batch();
        accepted
    }

    fn begin_batch(&mut self, now_ns: u64) {
        self.now_ms = now_ns / 1_000_000;
        if now_ns.saturating_sub(self.last_maintenance_ns) >= SWEEP_INTERVAL_NS {
            self.last_maintenance_ns = now_ns;
            self.membership.maintain(now_ns);
        }
        let version = self
            .membership
            .region
            .header()
            .table_version
            .load(Ordering::Acquire);
        if version != self.view_version {
            self.view_version = self.membership.region.snapshot(&mut self.view);
            let me = self.membership.index;
            let own = self.view.iter().find(|p| p.index == me);
            self.own_mac = own.map_or(MacAddress::ZERO, |p| p.mac);
            self.quarantined = own.is_none_or(|p| p.flags & flags::QUARANTINED != 0);
        }
    }

    fn end_batch(&mut self) {
        if !self.touched.is_empty() {
            // Pairs with the fence in Receiver::wait: either we see its `sleeping` flag,
            // or it sees the frames we published before going to sleep.
            fence(Ordering::SeqCst);
            for &index in &self.touched {
                let control = self.membership.region.ring(index).control();
                if control.sleeping.load(Ordering::Relaxed) != 0
                    && control.sleeping.swap(0, Ordering::AcqRel) != 0
                {
                    control.wake.fetch_add(1, Ordering::Release);
                    let _ = rustix::thread::futex::wake(
                        &control.wake,
                        rustix::thread::futex::Flags::empty(),
                        1,
                    );
                }
                self.touched_bits[index as usize / 64] &= !(1 << (index % 64));
            }
            self.touched.clear();
        }
        self.pending.flush(self.membership.entry());
    }

    fn send_frame(&mut self, frame: &[u8]) -> Sent {
        let repr = match ethernet::validate_frame(frame, self.mtu) {
            Ok(repr) => repr,
            Err(_) => return self.refuse(DropReason::Invalid),
        };
        if self.quarantined {
            return self.refuse(DropReason::Quarantined);
        }
        if repr.src != self.own_mac {
            self.learn(repr.src);
        }
        let region = &self.membership.region;
        let now_ms = self.now_ms;
        let route = forward::resolve(
            repr.dst,
            self.membership.index,
            &self.view,
            |mac| fdb::lookup(region.fdb(), mac, now_ms),
            self.rules,
            &mut self.destinations,
        );
        if route == Route::NoRoute {
            return self.refuse(DropReason::NoRoute);
        }
        self.pending.add(slot::TX_PACKETS, 1);
        self.pending.add(slot::TX_BYTES, frame.len() as u64);
        let (mut delivered, mut dropped) = (0, 0);
        for i in 0..self.destinations.len() {
            let destination = self.view[self.destinations[i]];
            match self.deliver(destination, frame) {
                Ok(()) => delivered += 1,
                Err(reason) => {
                    dropped += 1;
                    self.pending.tx_drop(reason);
                }
            }
        }
        Sent::Routed { delivered, dropped }
    }

    /// Counts a frame the port refused before it could be sent (a runt announced by a
    /// stream client, a datagram from a sender that cannot be answered, …). The count is
    /// written at the end of the next batch, or by [`Sender::flush`].
    pub fn count_drop(&mut self, reason: DropReason) {
        self.pending.tx_drop(reason);
    }

    /// Writes counts accumulated outside a batch.
    pub fn flush(&mut self) {
        self.pending.flush(self.membership.entry());
    }

    fn refuse(&mut self, reason: DropReason) -> Sent {
        self.pending.tx_drop(reason);
        Sent::Refused(reason)
    }

    fn learn(&mut self, source: MacAddress) {
        let now_ms = self.now_ms;
        if self
            .learned_at
            .get(&source)
            .is_some_and(|&at| now_ms.saturating_sub(at) < fdb::REFRESH_MS)
        {
            return;
        }
        if self.learned_at.len() >= LEARN_CACHE_LIMIT {
            self.learned_at.clear();
        }
        self.learned_at.insert(source, now_ms);
        fdb::learn(
            self.membership.region.fdb(),
            source,
            self.membership.index,
            now_ms,
        );
    }

    fn deliver(
        &mut self,
        destination: PeerView,
        frame: &[u8],
    ) -> std::result::Result<(), DropReason> {
        let region = &self.membership.region;
        let entry = region.peers().at(destination.index as u64);
        let refused = if entry.status.load(Ordering::Relaxed) != status::UP
            || entry.generation.load(Ordering::Relaxed) != destination.generation
        {
            Some(DropReason::PeerGone)
        } else if destination.flags & flags::QUARANTINED != 0 {
            Some(DropReason::Quarantined)
        } else if destination.flags & flags::LINK_DOWN != 0 {
            Some(DropReason::LinkDown)
        } else {
            None
        };
        if let Some(reason) = refused {
            counters::count_rx_drop(entry, reason);
            return Err(reason);
        }
        let meta = SlotMeta {
            generation: destination.generation,
            ..SlotMeta::default()
        };
        let reason = match ring::push(
            &region.ring(destination.index),
            self.membership.index,
            meta,
            frame,
        ) {
            Push::Delivered => {
                self.pending.add(slot::TX_DELIVERIES, 1);
                let index = destination.index;
                let (word, bit) = (index as usize / 64, 1u64 << (index % 64));
                if self.touched_bits[word] & bit == 0 {
                    self.touched_bits[word] |= bit;
                    self.touched.push(index);
                }
                return Ok(());
            }
            Push::Full => DropReason::RingFull,
            Push::Busy => DropReason::RingBusy,
            // Bigger than the receiver's network can carry: the sender checked the frame
            // against the same network, so only a frame the offload checks let through
            // (a super-frame on a network without large buffers) ends here.
            Push::TooLarge => DropReason::Invalid,
            // The receiver counts abandoned slots when it skips them.
            Push::Abandoned => return Err(DropReason::Abandoned),
        };
        counters::count_rx_drop(entry, reason);
        Err(reason)
    }
}

/// The receiving half of a peer.
#[derive(Debug)]
pub struct Receiver {
    membership: Arc<Membership>,
    tail: u64,
    buffer: Vec<u8>,
    pending: Pending,
    mtu: usize,
    last_maintenance_ns: u64,
}

/// Longest single sleep: a sleeping receiver still takes part in liveness sweeps.
const WAIT_SLICE: Duration = Duration::from_millis(250);

impl Receiver {
    fn new(membership: Arc<Membership>, tail: u64) -> Receiver {
        let max_frame = membership.region.layout.max_frame;
        let mtu = membership.region.layout.geometry.mtu as usize;
        Receiver {
            membership,
            tail,
            buffer: vec![0; max_frame],
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
    /// network's rules; frames that fail the checks are counted and skipped.
    pub fn receive(&mut self, budget: usize, mut on_frame: impl FnMut(&[u8])) -> usize {
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
                    Ok(len) => {
                        self.pending.add(slot::RX_PACKETS, 1);
                        self.pending.add(slot::RX_BYTES, len as u64);
                        on_frame(&self.buffer[..len]);
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

    fn check(&self, meta: SlotMeta) -> std::result::Result<usize, DropReason> {
        if meta.generation != self.membership.generation {
            return Err(DropReason::Stale);
        }
        let len = meta.len as usize;
        if len > self.buffer.len() {
            return Err(DropReason::Invalid);
        }
        // Checked on our private copy: the sender (or a scribbler) cannot change it now.
        ethernet::validate_frame(&self.buffer[..len], self.mtu)
            .map(|_| len)
            .map_err(|_| DropReason::Invalid)
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
