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
//! **Offloads.** A frame may come with a virtio-net header asking for work still to be
//! done: a checksum to complete, a 64 KiB super-frame to cut into segments. Such a frame
//! travels as it is to receivers that advertise the same offloads (a TAP or a VM that will
//! let its kernel finish it) and is finished in software, once per frame, for the others
//! (stream and dgram ports, captures), so a mixed network never hands a peer something it
//! cannot take. Segments are cut to the network's MTU whatever the sender asked for.
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
use crate::shm::layout::LARGE_FRAME;
use crate::shm::layout::{PeerEntry, flags, status};
use crate::wire::offload::{self, Segmenter};
use crate::wire::virtio_net::{self, GsoType, VirtioNetHdr};
use crate::wire::{EthernetFrame, EthernetRepr, MacAddress, ethernet};

use super::counters::{self, DropReason, PeerCounters, Pending, slot};
use super::forward::{self, PeerView, Route, Rules};
use super::ring::{self, Pop, Push, SlotMeta};
use super::{Error, PortKind, Region, Result, SWEEP_INTERVAL_NS, fdb, monotonic_ns};

/// Offloads a peer can take from the network: frames that still need this work arrive at
/// it as they are, with their virtio-net header; everyone else gets them finished.
pub mod offloads {
    /// Frames whose TCP/UDP checksum is still to be completed (`NEEDS_CSUM`).
    pub const CHECKSUM: u32 = 1 << 0;
    /// TCP over IPv4 super-frames (TSO4).
    pub const TSO4: u32 = 1 << 1;
    /// TCP over IPv6 super-frames (TSO6).
    pub const TSO6: u32 = 1 << 2;
    /// UDP super-frames cut into datagrams (USO).
    pub const USO: u32 = 1 << 3;
    /// Everything guestnet can carry.
    pub const ALL: u32 = CHECKSUM | TSO4 | TSO6 | USO;
}

/// The offloads a receiver needs to take a frame with this header as it is, or `None`
/// for work guestnet does not do (UFO, unknown GSO types).
fn needed_offloads(hdr: &VirtioNetHdr) -> Option<u32> {
    let checksum = if hdr.needs_checksum() {
        offloads::CHECKSUM
    } else {
        0
    };
    match hdr.gso_type {
        GsoType::None => Some(checksum),
        GsoType::TcpV4 => Some(checksum | offloads::TSO4),
        GsoType::TcpV6 => Some(checksum | offloads::TSO6),
        GsoType::UdpL4 => Some(checksum | offloads::USO),
        GsoType::Udp | GsoType::Unknown(_) => None,
    }
}

/// The header as the three words a slot carries.
fn header_words(hdr: &VirtioNetHdr) -> [u32; 3] {
    if hdr.is_plain() {
        return [0; 3];
    }
    let bytes = hdr.to_bytes();
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8)]
}

/// The header back from a slot's words (all zeros: a plain frame).
fn header_from_words(words: [u32; 3]) -> VirtioNetHdr {
    if words == [0; 3] {
        return VirtioNetHdr::default();
    }
    let mut bytes = [0u8; virtio_net::HEADER_LEN];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    VirtioNetHdr::parse(&bytes, virtio_net::HEADER_LEN).unwrap_or_default()
}

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
    /// Offloads it takes ([`offloads`]); none by default.
    pub offloads: u32,
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
            offloads: 0,
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

    /// Changes the offloads this peer takes ([`offloads`]). Frames already in its ring
    /// keep the form they were sent in; [`Receiver::receive`] finishes them if needed.
    pub fn set_offloads(&self, bits: u32) -> Result<()> {
        let membership = &self.membership;
        membership
            .region
            .with_control_lock(&membership.lock_file, || {
                membership
                    .entry()
                    .offloads
                    .store(bits & offloads::ALL, Ordering::Relaxed);
            })
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
                .offloads
                .store(options.offloads & offloads::ALL, Ordering::Relaxed);
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

    /// Sends one frame with offload work; see [`Sender::send_offloaded`].
    pub fn send_offloaded(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> Sent {
        self.sender.send_offloaded(hdr, frame)
    }

    /// Receives frames with their offload headers; see [`Receiver::receive_offloaded`].
    pub fn receive_offloaded(
        &mut self,
        budget: usize,
        on_frame: impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> usize {
        self.receiver.receive_offloaded(budget, on_frame)
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
    /// Software offload: the current frame cut into segments (once, for all receivers
    /// that need it), and where each segment ends.
    segmenter: Segmenter,
    segments: Vec<u8>,
    segment_ends: Vec<usize>,
    segmented: Option<std::result::Result<(), DropReason>>,
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
            segmenter: Segmenter::new(),
            segments: Vec::new(),
            segment_ends: Vec::new(),
            segmented: None,
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
        self.send_offloaded(&VirtioNetHdr::default(), frame)
    }

    /// Sends one frame whose virtio-net header asks for offload work (checksum,
    /// segmentation); receivers that take those offloads get it as it is, the others get
    /// it finished in software.
    pub fn send_offloaded(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> Sent {
        self.begin_batch(monotonic_ns());
        let sent = self.send_frame(frame, hdr);
        self.end_batch();
        sent
    }

    /// Sends frames with their virtio-net headers as one batch; returns how many were
    /// accepted. See [`Sender::send_offloaded`].
    pub fn send_batch_offloaded<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (VirtioNetHdr, &'a [u8])>,
    ) -> usize {
        self.begin_batch(monotonic_ns());
        let mut accepted = 0;
        for (hdr, frame) in frames {
            if matches!(self.send_frame(frame, &hdr), Sent::Routed { .. }) {
                accepted += 1;
            }
        }
        self.end_batch();
        accepted
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
        let plain = VirtioNetHdr::default();
        for frame in frames {
            if matches!(self.send_frame(frame, &plain), Sent::Routed { .. }) {
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

    fn send_frame(&mut self, frame: &[u8], hdr: &VirtioNetHdr) -> Sent {
        let (repr, hdr) = match self.check_outgoing(frame, hdr) {
            Ok(checked) => checked,
            Err(reason) => return self.refuse(reason),
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
        self.segmented = None;
        // A plain frame needs nothing; any receiver takes it as it is.
        let needed = needed_offloads(&hdr).unwrap_or(u32::MAX);
        let words = header_words(&hdr);
        let (mut delivered, mut dropped) = (0, 0);
        for i in 0..self.destinations.len() {
            let destination = self.view[self.destinations[i]];
            let (copies, drops, reason) =
                if destination.offloads & needed == needed && self.fits(frame) {
                    match self
                        .admit(destination)
                        .and_then(|()| self.push(destination, frame, words))
                    {
                        Ok(()) => (1, 0, None),
                        Err(reason) => (0, 1, Some(reason)),
                    }
                } else {
                    match self
                        .admit(destination)
                        .and_then(|()| self.segment(frame, &hdr))
                    {
                        Ok(()) => self.push_segments(destination),
                        Err(reason) => (0, 1, Some(reason)),
                    }
                };
            delivered += copies;
            dropped += drops;
            if let Some(reason) = reason {
                for _ in 0..drops {
                    self.pending.tx_drop(reason);
                }
            }
        }
        Sent::Routed { delivered, dropped }
    }

    /// Checks a frame and its offload header against the network's rules; returns the
    /// frame's addresses and the header to forward (its segment size cut to the MTU).
    fn check_outgoing(
        &self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
    ) -> std::result::Result<(EthernetRepr, VirtioNetHdr), DropReason> {
        if hdr.gso_type == GsoType::None {
            let repr =
                ethernet::validate_frame(frame, self.mtu).map_err(|_| DropReason::Invalid)?;
            if hdr.needs_checksum() {
                let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
                if field > frame.len() {
                    return Err(DropReason::Invalid);
                }
            }
            return Ok((repr, *hdr));
        }
        // A super-frame: its own length limit, and the MTU rule applies to its segments.
        if needed_offloads(hdr).is_none() || frame.len() > LARGE_FRAME {
            return Err(DropReason::Invalid);
        }
        let repr = EthernetFrame::new_checked(frame)
            .and_then(|f| EthernetRepr::parse(&f))
            .map_err(|_| DropReason::Invalid)?;
        let mss = offload::mss_for_mtu(frame, hdr, self.mtu).map_err(|_| DropReason::Invalid)?;
        if mss == 0 || hdr.gso_size == 0 {
            return Err(DropReason::Invalid);
        }
        let mut forwarded = *hdr;
        forwarded.gso_size = hdr.gso_size.min(u16::try_from(mss).unwrap_or(u16::MAX));
        Ok((repr, forwarded))
    }

    /// Whether a frame fits the receivers' rings as it is (a slot, or a large buffer).
    fn fits(&self, frame: &[u8]) -> bool {
        let layout = &self.membership.region.layout;
        frame.len() <= layout.max_frame || layout.geometry.gso_buffers > 0
    }

    /// Finishes the current frame in software (cuts it into segments with complete
    /// checksums), once per frame whatever the number of receivers that need it.
    fn segment(&mut self, frame: &[u8], hdr: &VirtioNetHdr) -> std::result::Result<(), DropReason> {
        if let Some(done) = self.segmented {
            return done;
        }
        self.segments.clear();
        self.segment_ends.clear();
        let (segments, ends) = (&mut self.segments, &mut self.segment_ends);
        let done = self
            .segmenter
            .segment(frame, hdr, usize::MAX, &mut |segment: &[u8]| {
                segments.extend_from_slice(segment);
                ends.push(segments.len());
            })
            .map(|_| ())
            .map_err(|_| DropReason::Invalid);
        self.segmented = Some(done);
        done
    }

    /// Sends the current frame's segments to one receiver; returns the copies delivered,
    /// the copies dropped and why (the last reason, if several).
    fn push_segments(&mut self, destination: PeerView) -> (u32, u32, Option<DropReason>) {
        let (segments, ends) = (
            std::mem::take(&mut self.segments),
            std::mem::take(&mut self.segment_ends),
        );
        let (mut delivered, mut dropped, mut reason) = (0, 0, None);
        let mut start = 0;
        for &end in &ends {
            match self.push(destination, &segments[start..end], [0; 3]) {
                Ok(()) => delivered += 1,
                Err(why) => {
                    dropped += 1;
                    reason = Some(why);
                }
            }
            start = end;
        }
        (self.segments, self.segment_ends) = (segments, ends);
        (delivered, dropped, reason)
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

    /// Whether `destination` may be sent to at all; a refusal is counted on its side.
    fn admit(&self, destination: PeerView) -> std::result::Result<(), DropReason> {
        let entry = self.membership.region.peers().at(destination.index as u64);
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
        match refused {
            Some(reason) => {
                counters::count_rx_drop(entry, reason);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    /// Copies one frame into `destination`'s ring. A refusal is counted on the
    /// receiver's side here, and on ours by the caller.
    fn push(
        &mut self,
        destination: PeerView,
        frame: &[u8],
        offload: [u32; 3],
    ) -> std::result::Result<(), DropReason> {
        let region = &self.membership.region;
        let meta = SlotMeta {
            generation: destination.generation,
            offload,
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
            // Checked against the same network before, so only a region whose geometry
            // was scribbled on gets here.
            Push::TooLarge => DropReason::Invalid,
            // The receiver counts abandoned slots when it skips them.
            Push::Abandoned => return Err(DropReason::Abandoned),
        };
        counters::count_rx_drop(region.peers().at(destination.index as u64), reason);
        Err(reason)
    }
}

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
    fn new(membership: Arc<Membership>, tail: u64) -> Receiver {
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
