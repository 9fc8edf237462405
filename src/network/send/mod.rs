//! The sending half of a peer: forwarding happens here, in the sender.
//!
//! Sending happens in batches. At the start of a batch the sender compares the table
//! version with the one its cached view was taken at and refreshes the view if needed
//! (one atomic load when nothing changed). Each frame is checked, its source address
//! learned, its receivers resolved ([`forward::resolve`]) and copied once into each
//! receiver's ring. At the end of the batch the sender wakes, once, each receiver that
//! went to sleep, and writes its counters.
//!
//! **Offloads.** A frame may come with a virtio-net header asking for work still to be
//! done: a checksum to complete, a 64 KiB super-frame to cut into segments. Such a frame
//! travels as it is to receivers that advertise the same offloads (a TAP or a VM that will
//! let its kernel finish it) and is finished in software, once per frame, for the others
//! (stream and dgram ports, captures), so a mixed network never hands a peer something it
//! cannot take. Segments are cut to the network's MTU whatever the sender asked for.
//!
//! **VLANs.** Each frame is given its VLAN on the way in, from the sender's own
//! membership ([`classify`](super::vlan::VlanMembership::classify); refused as
//! `vlan_filtered` when the port may not send it), learned and resolved within that VLAN
//! (with no VLAN map looked at while every peer is in every VLAN), and each receiver's
//! copy is written in the form its port wants ([`forward::egress_tagged`]). A copy whose
//! form is the frame's own (always so on a network without VLANs) is pushed as it is;
//! another is
//! pushed as three parts written one after the other into the receiver's ring — the
//! addresses, the receiver's tag (or none), the rest after the frame's own tag — so that
//! retagging costs no extra copy, with an offload header's `csum_start` and `hdr_len`
//! moved by the four bytes. A frame finished in software is cut once, and each of its
//! segments is retagged the same way.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use crate::shm::layout::LARGE_FRAME;
use crate::shm::layout::{flags, status};
use crate::wire::ethernet::VLAN_TAG_LEN;
use crate::wire::offload::{self, Segmenter};
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::vlan as wire_vlan;
use crate::wire::{EthernetFrame, EthernetRepr, MacAddress, ethernet};

use super::clock::monotonic_ns;
use super::counters::{self, DropReason, Pending, slot};
use super::fdb;
use super::forward::{self, PeerView, Route, Rules};
use super::membership::{Control, Membership};
use super::offloads::{header_words, needed_offloads};
use super::rate::{Admission, TokenBucket};
use super::receive::MIN_GSO_SIZE;
use super::region::SWEEP_INTERVAL_NS;
use super::ring::{self, Push, SlotMemory, SlotMeta};
use super::vlan::VlanSet;

mod hold_back;
mod retag;
mod shortcut;

use hold_back::HoldBack;
use retag::{Retag, egress_tag};
pub use shortcut::{NoShortcut, Shortcut};

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

/// The sending half of a peer.
#[derive(Debug)]
pub struct Sender {
    pub(super) membership: Arc<Membership>,
    view: Vec<PeerView>,
    /// The VLANs of each peer in `view`, at the same index.
    view_vlans: Vec<VlanSet>,
    view_version: u64,
    /// Every peer in `view` is in every VLAN: nobody's frames need a VLAN map looked at.
    all_in_every_vlan: bool,
    own_mac: MacAddress,
    quarantined: bool,
    /// Frames from sources other than the published MAC are refused.
    mac_locked: bool,
    /// The peer's rate limit, if it has one.
    bucket: Option<TokenBucket>,
    /// Waiting for room in a full ring, for a port that can hold its guest back.
    hold_back: HoldBack,
    /// The current frame was routed as unicast (to the peer publishing or behind its
    /// destination): the only kind that may wait for room.
    unicast: bool,
    rules: Rules,
    mtu: usize,
    destinations: Vec<usize>,
    touched: Vec<u16>,
    touched_bits: Vec<u64>,
    pending: Pending,
    /// When each foreign source address was last written to the learned table; at most
    /// `learn_quota` of them.
    learned_at: HashMap<(u16, MacAddress), u64>,
    learn_quota: usize,
    learned_pruned_ms: u64,
    now_ms: u64,
    last_maintenance_ns: u64,
    /// Software offload: the current frame cut into segments (once, for all receivers
    /// that need it), and where each segment ends.
    segmenter: Segmenter,
    segments: Vec<u8>,
    segment_ends: Vec<usize>,
    segmented: Option<std::result::Result<(), DropReason>>,
}

/// Addresses a peer may keep learned behind it in the shared table at once: plenty for a
/// VM or a namespace (a handful of MACs), a sixteenth of the table.
pub const LEARN_QUOTA: usize = 256;
/// The same for an uplink (a TAP to a bridge, a tunnel), which fronts many hosts: a
/// quarter of the table.
pub const UPLINK_LEARN_QUOTA: usize = 1024;

impl Sender {
    pub(super) fn new(membership: Arc<Membership>) -> Sender {
        let uplink = membership.entry().flags.load(Ordering::Relaxed) & flags::UPLINK != 0;
        let learn_quota = if uplink {
            UPLINK_LEARN_QUOTA
        } else {
            LEARN_QUOTA
        };
        let max_peers = membership.region.layout.geometry.max_peers as usize;
        let rules = Rules {
            drop_unknown_unicast: membership.region.drop_unknown_unicast(),
            isolated_sender: false,
        };
        let mtu = membership.region.layout.geometry.mtu as usize;
        Sender {
            membership,
            view: Vec::with_capacity(max_peers),
            view_vlans: Vec::with_capacity(max_peers),
            view_version: u64::MAX,
            all_in_every_vlan: true,
            own_mac: MacAddress::ZERO,
            quarantined: false,
            mac_locked: false,
            bucket: None,
            hold_back: HoldBack::new(max_peers),
            unicast: false,
            rules,
            mtu,
            destinations: Vec::with_capacity(max_peers),
            touched: Vec::with_capacity(max_peers),
            touched_bits: vec![0; max_peers.div_ceil(64)],
            pending: Pending::default(),
            learned_at: HashMap::new(),
            learn_quota,
            learned_pruned_ms: 0,
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
        let sent = self.send_frame(frame, hdr, &mut NoShortcut);
        self.end_batch();
        sent
    }

    /// Sends frames with their virtio-net headers as one batch; returns how many were
    /// accepted. See [`Sender::send_offloaded`].
    pub fn send_batch_offloaded<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (impl Borrow<VirtioNetHdr>, &'a [u8])>,
    ) -> usize {
        self.send_batch_offloaded_at(frames, monotonic_ns())
    }

    /// [`Sender::send_batch_offloaded`] with the time passed in (monotonic nanoseconds).
    pub fn send_batch_offloaded_at<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (impl Borrow<VirtioNetHdr>, &'a [u8])>,
        now_ns: u64,
    ) -> usize {
        self.send_batch_via(frames, now_ns, &mut NoShortcut)
    }

    /// [`Sender::send_batch_offloaded_at`], handing copies for the receivers the port
    /// serves itself to `shortcut` (see [`Shortcut`]).
    ///
    /// The headers may be lent (`&VirtioNetHdr`) or given: a port that keeps its batch's
    /// headers lends them, so none is copied on the way. A header is 14 bytes, and a copy
    /// of it is two overlapping 8-byte stores that the next read of it cannot be forwarded
    /// from: the core waits for both stores to reach its cache, once per frame (`perf
    /// annotate` of the vhost-user switch found a tenth of its samples on such reads).
    pub fn send_batch_via<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (impl Borrow<VirtioNetHdr>, &'a [u8])>,
        now_ns: u64,
        shortcut: &mut impl Shortcut,
    ) -> usize {
        self.begin_batch(now_ns);
        let mut accepted = 0;
        for (hdr, frame) in frames {
            if matches!(
                self.send_frame(frame, hdr.borrow(), shortcut),
                Sent::Routed { .. }
            ) {
                accepted += 1;
            }
        }
        self.end_batch();
        accepted
    }

    /// Reads the peer table and the rate limit again at `now_ns`, as a batch's start does,
    /// without sending anything: for a port about to take frames under a limit that may
    /// have changed (a vhost-user lane when it starts and when a hold ends).
    pub fn refresh_at(&mut self, now_ns: u64) {
        self.begin_batch(now_ns);
        self.end_batch();
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
            if matches!(
                self.send_frame(frame, &plain, &mut NoShortcut),
                Sent::Routed { .. }
            ) {
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
            self.view_version = self
                .membership
                .region
                .snapshot(&mut self.view, &mut self.view_vlans);
            self.all_in_every_vlan = self.view.iter().all(|p| p.all_vlans);
            let me = self.membership.index;
            let own = self.view.iter().find(|p| p.index == me);
            self.own_mac = own.map_or(MacAddress::ZERO, |p| p.mac);
            self.quarantined = own.is_none_or(|p| p.flags & flags::QUARANTINED != 0);
            self.mac_locked = own.is_some_and(|p| p.flags & flags::LOCK_MAC != 0);
            self.rules.isolated_sender = own.is_some_and(|p| p.flags & flags::ISOLATED != 0);
            self.refresh_rate(now_ns);
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.refill(now_ns);
        }
    }

    /// Takes the rate limit from our entry when it changed (a control operation, which
    /// also moved the table version); a new limit starts with a full bucket.
    fn refresh_rate(&mut self, now_ns: u64) {
        let entry = self.membership.entry();
        let rate = entry.rate_bps.load(Ordering::Relaxed);
        let burst = entry.burst_bytes.load(Ordering::Relaxed);
        let unchanged = self
            .bucket
            .is_some_and(|b| b.rate_bps() == rate && b.burst() == burst);
        if rate == 0 {
            self.bucket = None;
        } else if !unchanged {
            self.bucket = Some(TokenBucket::new(rate, burst.max(1), now_ns));
        }
    }

    /// For a port that can hold its guest back instead of losing frames: whether it may
    /// take one more frame after `taken` bytes at `now_ns` under the peer's rate limit
    /// (see [`TokenBucket::admission`]; without a limit, always).
    pub fn rate_admission(&self, taken: u64, largest: u64, now_ns: u64) -> Admission {
        self.bucket.map_or(Admission::Take, |bucket| {
            bucket.admission(taken, largest, now_ns)
        })
    }

    /// Lets a unicast frame wait up to `limit` for room in its receiver's full ring, for
    /// a port that can hold its guest back (a TAP: while the reader waits, the kernel
    /// queues the guest's frames and its TCP slows down instead of losing them). A
    /// receiver whose ring stays full for the whole `limit` is marked congested: its
    /// frames are then dropped (counted `ring_full`) without waiting until it has read
    /// half a ring. Broadcast, multicast and flooded frames never wait, so one slow or
    /// stopped receiver never holds up the sender's traffic to everyone else.
    /// `Duration::ZERO` (the default) never waits.
    pub fn set_hold_back(&mut self, limit: std::time::Duration) {
        self.hold_back.set_limit(limit);
    }

    fn end_batch(&mut self) {
        if !self.touched.is_empty() {
            // Pairs with the fence in Receiver::wait: either we see its `sleeping` flag,
            // or it sees the frames we published before going to sleep.
            fence(Ordering::SeqCst);
            for &index in &self.touched {
                let control = self.membership.region.ring(index).control();
                if control.sleeping.load(Ordering::Relaxed) != 0 {
                    wake(control);
                }
                self.touched_bits[index as usize / 64] &= !(1 << (index % 64));
            }
            self.touched.clear();
        }
        self.pending.flush(self.membership.entry());
    }

    fn send_frame(
        &mut self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        shortcut: &mut impl Shortcut,
    ) -> Sent {
        let (repr, hdr) = match self.check_outgoing(frame, hdr) {
            Ok(checked) => checked,
            Err(reason) => return self.refuse(reason),
        };
        if self.quarantined {
            return self.refuse(DropReason::Quarantined);
        }
        let Some(class) = self.membership.vlans.classify(frame) else {
            return self.refuse(DropReason::VlanFiltered);
        };
        if self.mac_locked && repr.src != self.own_mac && repr.src != self.published_mac() {
            return self.refuse(DropReason::Spoofed);
        }
        if let Some(bucket) = &mut self.bucket
            && !bucket.take(frame.len() as u64)
        {
            return self.refuse(DropReason::RateLimited);
        }
        if repr.src != self.own_mac {
            self.learn(class.vid, repr.src);
        }
        let region = &self.membership.region;
        let now_ms = self.now_ms;
        let (view, view_vlans, vid) = (&self.view, &self.view_vlans, class.vid);
        let lookup = |mac| fdb::lookup(region.fdb(), vid, mac, now_ms);
        let (sender, rules, out) = (self.membership.index, self.rules, &mut self.destinations);
        let route = if self.all_in_every_vlan {
            forward::resolve(repr.dst, sender, view, |_| true, lookup, rules, out)
        } else {
            let member = |i: usize| view[i].all_vlans || view_vlans[i].contains(vid);
            forward::resolve(repr.dst, sender, view, member, lookup, rules, out)
        };
        if route == Route::NoRoute {
            return self.refuse(DropReason::NoRoute);
        }
        self.unicast = matches!(route, Route::Published | Route::Learned);
        self.pending.add(slot::TX_PACKETS, 1);
        self.pending.add(slot::TX_BYTES, frame.len() as u64);
        self.segmented = None;
        // A plain frame needs nothing; any receiver takes it as it is.
        let needed = needed_offloads(&hdr).unwrap_or(u32::MAX);
        let (mut delivered, mut dropped) = (0, 0);
        // A tag right under the frame's own would be read as the frame's VLAN by anyone
        // receiving it with its own tag taken off: double tagging, the classic way to hop
        // from a port's native VLAN into another. Such copies are never sent untagged.
        let tag_under_tag = class.tag.is_some() && wire_vlan::is_tagged_under_tag(frame);
        for i in 0..self.destinations.len() {
            let destination = self.view[self.destinations[i]];
            let egress = egress_tag(&destination, class);
            if tag_under_tag && egress.is_none() {
                let entry = self.membership.region.peers().at(destination.index as u64);
                counters::count_rx_drop(entry, DropReason::VlanFiltered);
                self.pending.tx_drop(DropReason::VlanFiltered);
                dropped += 1;
                continue;
            }
            let retag = Retag::between(class.tag, egress);
            let (copies, drops, reason) =
                self.deliver(destination, frame, (&hdr, needed), retag, shortcut);
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

    /// Copies the current frame, retagged for `destination`, into its ring: as it is when
    /// the receiver takes its offloads, else finished in software. `hdr` is the frame's
    /// offload header, `needed` the offload work it leaves to the receiver.
    fn deliver(
        &mut self,
        destination: PeerView,
        frame: &[u8],
        (hdr, needed): (&VirtioNetHdr, u32),
        retag: Option<Retag>,
        shortcut: &mut impl Shortcut,
    ) -> (u32, u32, Option<DropReason>) {
        let len = frame
            .len()
            .saturating_add_signed(retag.map_or(0, |r| r.delta));
        if destination.offloads & needed == needed && self.fits(len) {
            let moved = match retag.map(|r| r.header(hdr)) {
                None => None,
                Some(Ok(moved)) => Some(moved),
                Some(Err(reason)) => return (0, 1, Some(reason)),
            };
            if let Err(reason) = self.admit(destination) {
                return (0, 1, Some(reason));
            }
            let index = destination.index;
            if retag.is_none()
                && shortcut.offer((index, destination.generation), (hdr, needed), frame)
            {
                self.pending.add(slot::TX_DELIVERIES, 1);
                return (1, 0, None);
            }
            // The header's words as a slot carries them, only for a copy that takes a slot.
            let words = header_words(moved.as_ref().unwrap_or(hdr));
            shortcut.queued(index);
            let may_wait = !shortcut.serves(index);
            match self.push(destination, frame, retag, words, may_wait) {
                Ok(()) => (1, 0, None),
                Err(reason) => (0, 1, Some(reason)),
            }
        } else {
            shortcut.queued(destination.index);
            let may_wait = !shortcut.serves(destination.index);
            match self
                .admit(destination)
                .and_then(|()| self.segment(frame, hdr))
            {
                Ok(()) => self.push_segments(destination, retag, may_wait),
                Err(reason) => (0, 1, Some(reason)),
            }
        }
    }

    /// Checks a frame and its offload header against the network's rules; returns the
    /// frame's addresses and the header to forward (its segment size cut to the MTU).
    // Inlined: returned through memory, its result (addresses and header, in pieces of 2,
    // 6 and 8 bytes) was read back in other widths than it was written, and each such
    // read waited for the stores to drain instead of being forwarded from them.
    #[inline(always)]
    fn check_outgoing(
        &self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
    ) -> std::result::Result<(EthernetRepr, VirtioNetHdr), DropReason> {
        // Whoever completes the checksum (we, or a receiver that takes the offload) writes
        // where the header says: inside the frame, never over the addresses it is routed on.
        if hdr.needs_checksum() {
            offload::checksum_field(frame, hdr).map_err(|_| DropReason::Invalid)?;
        }
        if hdr.gso_type == GsoType::None {
            let repr =
                ethernet::validate_frame(frame, self.mtu).map_err(|_| DropReason::Invalid)?;
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
        // A segment size below the floor would multiply one frame into thousands.
        if mss < usize::from(MIN_GSO_SIZE) || hdr.gso_size < MIN_GSO_SIZE {
            return Err(DropReason::Invalid);
        }
        let mut forwarded = *hdr;
        forwarded.gso_size = hdr.gso_size.min(u16::try_from(mss).unwrap_or(u16::MAX));
        Ok((repr, forwarded))
    }

    /// Whether a frame of `len` bytes fits the receivers' rings as it is (a slot, or a
    /// large buffer).
    fn fits(&self, len: usize) -> bool {
        let layout = &self.membership.region.layout;
        len <= layout.max_frame || layout.geometry.gso_buffers > 0
    }

    /// Finishes the current frame in software (cuts it into segments with complete
    /// checksums), once per frame whatever the number of receivers that need it; each
    /// receiver's copies are retagged as they are pushed.
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
    fn push_segments(
        &mut self,
        destination: PeerView,
        retag: Option<Retag>,
        may_wait: bool,
    ) -> (u32, u32, Option<DropReason>) {
        let (segments, ends) = (
            std::mem::take(&mut self.segments),
            std::mem::take(&mut self.segment_ends),
        );
        let (mut delivered, mut dropped, mut reason) = (0, 0, None);
        let mut start = 0;
        for &end in &ends {
            match self.push(destination, &segments[start..end], retag, [0; 3], may_wait) {
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

    /// The MAC published now: the cached view may predate a change made in this batch
    /// (a port publishing its guest's address from the very frame being sent).
    fn published_mac(&self) -> MacAddress {
        MacAddress::from_u64(self.membership.entry().mac.load(Ordering::Relaxed))
    }

    fn refuse(&mut self, reason: DropReason) -> Sent {
        self.pending.tx_drop(reason);
        Sent::Refused(reason)
    }

    /// Learns `source` behind this peer, within its quota: a guest spraying made-up
    /// source addresses must not fill the shared table and push everyone else's
    /// addresses out (which would flood their unicast to every peer). Addresses over the
    /// quota are not learned, and counted (`learn_refused`); their frames still go out.
    fn learn(&mut self, vid: u16, source: MacAddress) {
        let now_ms = self.now_ms;
        match self.learned_at.get(&(vid, source)) {
            Some(&at) if now_ms.saturating_sub(at) < fdb::REFRESH_MS => return,
            Some(_) => {}
            None if self.learned_at.len() >= self.learn_quota => {
                // Forget what has aged out of the shared table by now (at most once a
                // second: a flood must not make every frame walk the whole map).
                if now_ms.saturating_sub(self.learned_pruned_ms) >= fdb::REFRESH_MS {
                    self.learned_pruned_ms = now_ms;
                    self.learned_at
                        .retain(|_, at| now_ms.saturating_sub(*at) < fdb::AGE_MS);
                }
                if self.learned_at.len() >= self.learn_quota {
                    self.pending.add(slot::LEARN_REFUSED, 1);
                    return;
                }
            }
            None => {}
        }
        self.learned_at.insert((vid, source), now_ms);
        fdb::learn(
            self.membership.region.fdb(),
            vid,
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
            // The receiver's counters went to the retired totals when it left; count there.
            Some(DropReason::PeerGone) => {
                let retired = &self.membership.region.header().retired;
                counters::count_retired_rx(DropReason::PeerGone, 1, retired);
                Err(DropReason::PeerGone)
            }
            Some(reason) => {
                counters::count_rx_drop(entry, reason);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    /// Copies one frame, retagged if need be, into `destination`'s ring; a unicast frame
    /// for a full ring waits for room there (up to the hold-back) if `may_wait`. A refusal
    /// is counted on the receiver's side here, and on ours by the caller.
    fn push(
        &mut self,
        destination: PeerView,
        frame: &[u8],
        retag: Option<Retag>,
        offload: [u32; 3],
        may_wait: bool,
    ) -> std::result::Result<(), DropReason> {
        let region = &self.membership.region;
        let meta = SlotMeta {
            generation: destination.generation,
            offload,
            ..SlotMeta::default()
        };
        let ring = region.ring(destination.index);
        let writer = self.membership.index;
        let mut pushed = push_copy(&ring, writer, meta, frame, retag);
        if pushed == Push::Full
            && self.unicast
            && may_wait
            && self.hold_back.may_wait(&ring, destination.index)
        {
            pushed = self.hold_back.wait(&ring, destination.index, || {
                push_copy(&ring, writer, meta, frame, retag)
            });
            if pushed != Push::Full {
                self.pending.add(slot::TX_HELD_BACK, 1);
            }
        }
        let reason = match pushed {
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
            // The receiver counted it when it passed over the slot.
            Push::PassedOver => return Err(DropReason::Stalled),
        };
        counters::count_rx_drop(region.peers().at(destination.index as u64), reason);
        Err(reason)
    }
}

/// Wakes the receiver of the ring `control` belongs to if it sleeps (or is about to).
/// The caller has fenced after publishing, pairing with the fence in `Receiver::wait`.
fn wake(control: &crate::shm::layout::RingControl) {
    if control.sleeping.swap(0, Ordering::AcqRel) != 0 {
        control.wake.fetch_add(1, Ordering::Release);
        let _ =
            rustix::thread::futex::wake(&control.wake, rustix::thread::futex::Flags::empty(), 1);
    }
}

/// Pushes one copy of `frame` into `ring`, retagged if need be.
#[inline]
fn push_copy(
    ring: &impl SlotMemory,
    writer: u16,
    meta: SlotMeta,
    frame: &[u8],
    retag: Option<Retag>,
) -> Push {
    match retag {
        None => ring::push(ring, writer, meta, frame),
        Some(retag) => {
            let mut tag_bytes = [0; VLAN_TAG_LEN];
            let parts = wire_vlan::retag_parts(frame, retag.tag, &mut tag_bytes);
            ring::push_parts(ring, writer, meta, &parts)
        }
    }
}
