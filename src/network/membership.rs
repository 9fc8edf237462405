//! Membership: joining a network, leaving it, and the control operations of a member.
//!
//! Joining claims a free slot (by taking its lock), takes over the slot's ring (letting
//! writers that started before the slot was freed finish), and publishes the entry under
//! the control lock. Leaving clears the entry and drops the lock; a member that dies
//! instead is reclaimed by the next sweep. [`Control`] changes what a
//! member publishes (MAC, flags, offloads, multicast filter) while it runs. What a member
//! declares when it joins ([`JoinOptions`], its [`PortKind`], its label, its VLANs) lives
//! here too. A MAC is unique per VLAN: joining and changing a MAC are refused only when
//! another peer publishes the address in a VLAN both are in.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::shm::RangeLock;
use crate::shm::layout::{PeerEntry, flags, status};
use crate::wire::MacAddress;

use super::clock::{monotonic_ns, unix_ns};
use super::counters::PeerCounters;
use super::error::{Error, Result};
use super::region::Region;
use super::vlan::{VlanMembership, VlanSet};
use super::{fdb, forward, offloads, ring};

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
    /// Offloads it takes ([`offloads`](super::offloads)); none by default.
    pub offloads: u32,
    /// Its 802.1Q VLANs ([`vlan`](super::vlan)); by default a trunk of every VLAN with
    /// native VLAN 1, which is a network without VLANs. Fixed at join, so the peer never
    /// sees a frame of a VLAN it is not in.
    pub vlans: VlanMembership,
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
            vlans: VlanMembership::default(),
        }
    }
}

/// What kind of port a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// A process using the library.
    Process,
    /// A `-netdev stream` connection.
    Stream,
    /// A `-netdev dgram` sender.
    Dgram,
    /// A pcap capture.
    Capture,
    /// A TAP device.
    Tap,
    /// A vhost-user VM.
    VhostUser,
    /// A VXLAN tunnel.
    Vxlan,
    /// A benchmark process.
    Bench,
    /// A value this version does not know.
    Unknown,
}

impl PortKind {
    /// Stored code.
    pub const fn code(self) -> u32 {
        match self {
            PortKind::Process => 1,
            PortKind::Stream => 2,
            PortKind::Dgram => 3,
            PortKind::Capture => 4,
            PortKind::Tap => 5,
            PortKind::VhostUser => 6,
            PortKind::Vxlan => 7,
            PortKind::Bench => 8,
            PortKind::Unknown => 0,
        }
    }

    /// Decodes a stored code.
    pub const fn from_code(code: u32) -> PortKind {
        match code {
            1 => PortKind::Process,
            2 => PortKind::Stream,
            3 => PortKind::Dgram,
            4 => PortKind::Capture,
            5 => PortKind::Tap,
            6 => PortKind::VhostUser,
            7 => PortKind::Vxlan,
            8 => PortKind::Bench,
            _ => PortKind::Unknown,
        }
    }

    /// Name shown in `status`.
    pub const fn name(self) -> &'static str {
        match self {
            PortKind::Process => "process",
            PortKind::Stream => "stream",
            PortKind::Dgram => "dgram",
            PortKind::Capture => "capture",
            PortKind::Tap => "tap",
            PortKind::VhostUser => "vhost-user",
            PortKind::Vxlan => "vxlan",
            PortKind::Bench => "bench",
            PortKind::Unknown => "unknown",
        }
    }
}

pub(crate) fn read_label(entry: &PeerEntry) -> String {
    let mut bytes = Vec::with_capacity(32);
    for word in &entry.label {
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub(crate) fn write_label(entry: &PeerEntry, label: &str) {
    let mut bytes = [0u8; 32];
    // Cut at a character boundary so the label stays valid UTF-8.
    let mut end = label.len().min(32);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    bytes[..end].copy_from_slice(&label.as_bytes()[..end]);
    for (word, chunk) in entry.label.iter().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        word.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// State shared by the two halves; leaving happens when the last half drops it.
#[derive(Debug)]
pub(super) struct Membership {
    pub(super) region: Arc<Region>,
    /// Our own open file description of the region, holding our slot's lock.
    pub(super) lock_file: File,
    pub(super) index: u16,
    pub(super) generation: u32,
    /// Our VLANs as we joined with them: our own copy, never re-read from the region.
    pub(super) vlans: VlanMembership,
}

impl Membership {
    /// Joins `region`: claims a free slot, takes over its ring and publishes the entry.
    /// Returns the membership and the ring position the receiver starts at.
    pub(super) fn join(
        region: Arc<Region>,
        options: &JoinOptions,
    ) -> Result<(Arc<Membership>, u64)> {
        if let Some(mac) = options.mac
            && (mac.is_multicast() || mac.is_zero())
        {
            return Err(Error::BadMac(mac));
        }
        // A new open file description of the same inode (the name may since point to
        // another network): our slot lock must be ours alone.
        let lock_file = region.reopen()?;
        region.sweep(&lock_file, None, monotonic_ns(), true);
        let index = region.claim_slot(&lock_file)?;
        if let Err(e) = reserve_large_buffers(&region, &lock_file, index) {
            let _ = RangeLock::unlock(&lock_file, region.layout.peer_lock_byte(index as usize), 1);
            return Err(e);
        }
        let tail = take_over_ring(&region, index);
        let generation = match region
            .with_control_lock(&lock_file, || publish(&region, index, options))
            .and_then(|published| published)
        {
            Ok(generation) => generation,
            Err(e) => {
                let _ =
                    RangeLock::unlock(&lock_file, region.layout.peer_lock_byte(index as usize), 1);
                return Err(e);
            }
        };
        let membership = Membership {
            region,
            lock_file,
            index,
            generation,
            vlans: options.vlans,
        };
        Ok((Arc::new(membership), tail))
    }

    pub(super) fn entry(&self) -> &PeerEntry {
        self.region.peers().at(self.index as u64)
    }

    pub(super) fn maintain(&self, now_ns: u64) {
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
    pub(super) membership: Arc<Membership>,
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
                if let Some(slot) = holder_of(
                    &membership.region,
                    mac,
                    membership.index,
                    membership.vlans.members(),
                ) {
                    return Err(Error::MacInUse { mac, slot });
                }
                membership
                    .entry()
                    .mac
                    .store(mac.to_u64(), Ordering::Relaxed);
                Ok(())
            })?
    }

    /// Publishes a MAC taken from a guest's own traffic, as ports do when nobody told them
    /// the guest's address: like [`Control::set_mac_address`], but also refused when the
    /// address was learned a moment ago behind another peer in one of our VLANs (a host
    /// behind an uplink, a VM that spoke first), so that a guest cannot take another
    /// host's unicast by sending with its address.
    pub fn publish_guest_mac(&self, mac: MacAddress) -> Result<()> {
        let membership = &self.membership;
        let region = &membership.region;
        let now_ms = monotonic_ns() / 1_000_000;
        // At most 4094 lookups of 8 buckets each, on a control operation.
        for vid in membership.vlans.members().iter() {
            if let Some(slot) = fdb::lookup(region.fdb(), vid, mac, now_ms)
                && slot != membership.index
            {
                return Err(Error::MacLearnedElsewhere { mac, slot });
            }
        }
        self.set_mac_address(mac)
    }

    /// This peer's VLANs.
    pub fn vlans(&self) -> VlanMembership {
        self.membership.vlans
    }

    /// Locks the peer's sources to its published MAC: frames from any other source are
    /// refused and counted (`spoofed`). A port sets it for a guest that must not send as
    /// anyone else.
    pub fn set_mac_locked(&self, on: bool) -> Result<()> {
        self.set_flag(flags::LOCK_MAC, on)
    }

    /// Isolates the peer (or lifts it): an isolated peer exchanges frames with
    /// non-isolated peers only (an uplink, a gateway, a DHCP server), never with another
    /// isolated one, as the Linux bridge's `isolated on` does.
    pub fn set_isolated(&self, on: bool) -> Result<()> {
        self.set_flag(flags::ISOLATED, on)
    }

    /// Limits what the peer sends to `rate_bps` bits per second with a burst of
    /// `burst_bytes` (see [`rate`](super::rate)); frames over it are refused and counted
    /// (`rate_limited`), and ports that can wait hold their guest back. A rate of 0 lifts
    /// the limit.
    pub fn set_rate(&self, rate_bps: u64, burst_bytes: u64) -> Result<()> {
        let membership = &self.membership;
        membership
            .region
            .with_control_lock(&membership.lock_file, || {
                let entry = membership.entry();
                entry.rate_bps.store(rate_bps, Ordering::Relaxed);
                entry.burst_bytes.store(burst_bytes, Ordering::Relaxed);
            })
    }

    /// Whether the peer's sources are locked to its published MAC.
    pub fn mac_locked(&self) -> bool {
        self.membership.entry().flags.load(Ordering::Relaxed) & flags::LOCK_MAC != 0
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
    /// keep the form they were sent in; [`Receiver::receive`](super::Receiver::receive) finishes them if needed.
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

/// The up peer other than `except` that publishes `mac` in one of the VLANs `vlans`: a
/// MAC is unique per VLAN, so peers in disjoint VLANs may publish the same one.
fn holder_of(region: &Region, mac: MacAddress, except: u16, vlans: &VlanSet) -> Option<u16> {
    let peers = region.peers();
    let maps = region.vlans();
    (0..peers.count() as u16).find(|&i| {
        let entry = peers.at(i as u64);
        i != except
            && entry.status.load(Ordering::Relaxed) == status::UP
            && entry.mac.load(Ordering::Relaxed) == mac.to_u64()
            && VlanSet::read(maps.at(u64::from(i))).overlaps(vlans)
    })
}

/// Gives the large buffers of ring `index` their memory before anyone may write them.
///
/// `create` reserves everything but the rings' large buffers, which senders write only into
/// the ring of a peer that is up; they are reserved here, when a peer first joins the slot
/// (the file keeps them afterwards). On a full file system the join fails cleanly instead
/// of a sender dying of SIGBUS on its first super-frame to this peer.
fn reserve_large_buffers(region: &Region, lock_file: &File, index: u16) -> Result<()> {
    let layout = &region.layout;
    let len = layout.geometry.gso_buffers as u64 * crate::shm::layout::LARGE_STRIDE as u64;
    if len == 0 {
        return Ok(());
    }
    let offset = (layout.ring_offset(index as usize) + layout.large_offset_in_ring) as u64;
    super::reserve_range(lock_file, offset, len).map_err(|source| Error::ReserveRing {
        name: region.name.clone(),
        slot: index,
        needed_bytes: len,
        source,
    })
}

/// How long a joining peer waits for writers still copying into its ring.
const HANDOVER_GRACE_NS: u64 = 100_000_000;

/// Starts the ring of a freshly claimed slot afresh and returns its consumer position.
///
/// The slot is not yet up, so no sender starts a new frame for it, but one that started
/// before the slot was freed may still be copying. Live ones are let finish (they take
/// microseconds; the bound covers a writer that was descheduled).
fn take_over_ring(region: &Region, index: u16) -> u64 {
    let ring = region.ring(index);
    let deadline = monotonic_ns().saturating_add(HANDOVER_GRACE_NS);
    while ring::writers_in_progress(&ring) && monotonic_ns() < deadline {
        std::thread::yield_now();
    }
    let (tail, discarded) = ring::reset_ahead(&ring);
    region.retire_discarded(discarded);
    ring.control().consumed.store(tail, Ordering::Relaxed);
    tail
}

/// Fills in and publishes the entry of claimed slot `index`; returns its new generation.
/// Under the control lock.
fn publish(region: &Region, index: u16, options: &JoinOptions) -> Result<u32> {
    let mac = options
        .mac
        .unwrap_or_else(|| MacAddress::for_slot(index, region.network_tag()));
    if let Some(slot) = holder_of(region, mac, index, options.vlans.members()) {
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
    entry.rate_bps.store(0, Ordering::Relaxed);
    entry.burst_bytes.store(0, Ordering::Relaxed);
    entry
        .offloads
        .store(options.offloads & offloads::ALL, Ordering::Relaxed);
    options
        .vlans
        .write(entry, region.vlans().at(u64::from(index)));
    entry.joined_unix_ns.store(unix_ns(), Ordering::Relaxed);
    write_label(entry, &options.label);
    for counter in entry.owner_counters.iter().chain(entry.rx_drops.iter()) {
        counter.store(0, Ordering::Relaxed);
    }
    entry.status.store(status::UP, Ordering::Release);
    Ok(generation)
}
