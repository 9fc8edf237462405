//! Moving frames between a guest's virtqueues and the network.
//!
//! Everything here reads descriptors the guest wrote and may rewrite at any moment, so
//! nothing a descriptor says is believed until checked: every address goes through
//! `vm-memory`'s checked accessors (an address outside guest memory is an error, never a
//! fault), a chain that does not end (a loop, an index past the table) ends the walk of
//! [`SplitRing`], which reads the rings in place, and the direction of every descriptor is
//! checked against the queue's. A bad chain is returned to the guest with
//! nothing written (`used` length 0), counted by reason, and fed to the port's quarantine
//! meter; the frame it carried is dropped. Nothing here panics on what a guest wrote.
//!
//! **Transmit** (guest → network): each available chain of a transmit queue holds one
//! frame behind its virtio-net header. The frames of a round are copied out into one
//! [`TxBatch`] and sent into the network as a single batch, so the receivers are woken
//! once per round, not once per frame.
//!
//! **Receive** (network → guest): a frame is written straight from the network's copy into
//! the guest's buffers. With `MRG_RXBUF` it may span several chains (`num_buffers` says how
//! many); without it one chain must hold it whole. When the guest has not posted enough
//! buffers the frame is not dropped but handed back ([`Placed::NoBuffers`]) for the port to
//! hold until the guest posts more.

use std::ops::Range;
use std::sync::atomic::{Ordering, fence};

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::regions::{Access, Regions};
use super::split::{FIRST_LINES, SplitRing};
pub use super::vring::Vring;
use crate::network::offloads;
use crate::wire::virtio_net::{FLAG_DATA_VALID, FLAG_NEEDS_CSUM};
use crate::wire::{GsoType, VirtioNetHdr};

/// Largest ring a frontend may set up (the virtio maximum for split rings).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Largest frame, without its virtio-net header, a guest may send: a 64 KiB TSO
/// super-frame plus its Ethernet header and a VLAN tag.
pub const MAX_TX_FRAME: usize = 65550;

/// Transmit chains whose buffers a round fetches ahead before it reads the first.
const TX_AHEAD: u16 = 8;

/// Receive chains whose buffers' first lines are fetched writable ahead of the frames
/// written into them: a window opened with a round's first frame for the queue
/// ([`prefetch_receive`]) that slides one chain per frame. At 100 ns a frame, one chain
/// ahead left too little time for the lines to come from the guest's core (`bench --vhost-user`, alternated pairs, together
/// with a large frame's whole buffer fetched before its first store: 64 B 10.0–11.3
/// against 9.2–9.9 Mpps with one chain ahead, 1514 B 4.6–4.9 against 4.3–4.7).
const RX_AHEAD: u16 = 8;

/// Used entries of a receive queue whose lines a round fetches writable with its first
/// frame for the queue, about a round's frames (64 entries were no better; the same for
/// transmit queues gained nothing).
const RX_USED_AHEAD: u16 = 32;

/// Bytes of the next transmit buffer fetched whole while the current one is copied: a
/// full-sized frame with its header.
const TX_WHOLE: usize = 1536;

/// Feature bits (virtio-net and transport), as the virtio specification numbers them.
pub mod feature {
    /// `VIRTIO_NET_F_CSUM`: the guest may send frames with a partial checksum.
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`: the guest takes frames with a partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_GUEST_TSO4`.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// `VIRTIO_NET_F_GUEST_TSO6`.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// `VIRTIO_NET_F_HOST_TSO4`: the guest may send TCP/IPv4 super-frames.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// `VIRTIO_NET_F_HOST_TSO6`.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// `VIRTIO_NET_F_MRG_RXBUF`: a received frame may span several buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `VIRTIO_NET_F_MQ`: several queue pairs.
    pub const MQ: u64 = 1 << 22;
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u64 = 1 << 32;
    /// `VIRTIO_F_IN_ORDER`: the device uses buffers in the order they were made available.
    pub const IN_ORDER: u64 = 1 << 35;
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFault {
    /// A descriptor outside guest memory, a loop, an index past the table, a bad indirect
    /// table, or an available index that ran ahead of the ring.
    BadChain,
    /// A write-only descriptor in a transmit chain, or a read-only one in a receive chain.
    WrongDirection,
    /// A frame too short or too long.
    BadLength,
    /// An offload header asking for what was not negotiated.
    BadHeader,
}

/// Frames copied out of transmit chains, sent to the network together.
#[derive(Debug, Default)]
pub struct TxBatch {
    /// Storage, only ever grown: `end` says how much of it this batch uses, so refilling
    /// it costs no zeroing once it has reached the size of a round.
    bytes: Vec<u8>,
    end: usize,
    frames: Vec<(VirtioNetHdr, Range<usize>)>,
    /// The heads of the round's chains, to return once all are read.
    heads: Vec<u16>,
}

impl TxBatch {
    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.end = 0;
        self.frames.clear();
    }

    /// The frames, with their headers.
    pub fn iter(&self) -> impl Iterator<Item = (&VirtioNetHdr, &[u8])> {
        self.frames
            .iter()
            .filter_map(|(hdr, range)| Some((hdr, self.bytes.get(range.clone())?)))
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether it holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// `len` more bytes at the end of the batch, to be filled.
    fn extend(&mut self, len: usize) -> &mut [u8] {
        let start = self.end;
        self.end += len;
        if self.bytes.len() < self.end {
            self.bytes.resize(self.end, 0);
        }
        &mut self.bytes[start..self.end]
    }
}

/// What a transmit queue may carry, from the negotiated features.
#[derive(Debug, Clone, Copy)]
pub struct TxRules {
    /// virtio-net header length (12 or 10).
    pub header_len: usize,
    /// Longest frame without segmentation offload.
    pub max_frame: usize,
    /// Acked features.
    pub features: u64,
}

impl TxRules {
    /// The longest frame (without its virtio-net header) the guest may send: a
    /// super-frame when it negotiated segmentation offload, else the port's longest.
    pub fn largest_frame(&self) -> usize {
        if self.features & (feature::HOST_TSO4 | feature::HOST_TSO6) != 0 {
            self.max_frame.max(MAX_TX_FRAME)
        } else {
            self.max_frame
        }
    }
}

/// Takes up to `budget` chains off a transmit queue into `batch`, returning each to the
/// guest as it goes. Calls `fault` for each refused chain. Returns the number of chains
/// taken.
pub fn transmit(
    vring: &mut Vring,
    memory: &GuestMemoryMmap,
    rules: &TxRules,
    budget: usize,
    batch: &mut TxBatch,
    fault: impl FnMut(ChainFault),
) -> usize {
    transmit_within(vring, memory, rules, budget, batch, |_| true, fault)
}

/// [`transmit`], asking `admit` before each chain with the bytes of the frames taken so
/// far; when it says no, that chain and those behind it stay available (neither consumed
/// nor used), so a guest held back by a rate limit sees its queue fill and stops.
pub fn transmit_within(
    vring: &mut Vring,
    memory: &GuestMemoryMmap,
    rules: &TxRules,
    budget: usize,
    batch: &mut TxBatch,
    mut admit: impl FnMut(u64) -> bool,
    mut fault: impl FnMut(ChainFault),
) -> usize {
    // The round's chains are read first and returned after: one look at the available
    // index per round, not per chain.
    let mut heads = std::mem::take(&mut batch.heads);
    heads.clear();
    let Some(ring) = SplitRing::new(&vring.queue, memory) else {
        // The ring no longer lies in guest memory: unusable until the frontend sets it up
        // again.
        fault(ChainFault::BadChain);
        vring.started = false;
        batch.heads = heads;
        return 0;
    };
    let start = vring.queue.next_avail();
    match ring.available(start) {
        Ok(pending) => {
            for ahead in 0..TX_AHEAD.min(pending) {
                ring.prefetch(start, ahead, Access::Read);
            }
            let mut bytes = 0u64;
            for position in 0..pending.min(u16::try_from(budget).unwrap_or(u16::MAX)) {
                // Only the head's index was read when the admission says no: the chain
                // stays available for a later round.
                if !admit(bytes) {
                    break;
                }
                // The buffer TX_AHEAD chains on, so that the window fetched ahead slides
                // with the round.
                if position + TX_AHEAD < pending {
                    ring.prefetch(start, position + TX_AHEAD, Access::Read);
                }
                // And the rest of the next one's first buffer (its first lines were
                // fetched with the window), whose copy follows this one's.
                if position + 1 < pending {
                    ring.prefetch_rest(start, position + 1, Access::Read, TX_WHOLE);
                }
                let head = ring.head(start.wrapping_add(position)).unwrap_or(u16::MAX);
                heads.push(head);
                let begin = batch.end;
                let limit = rules.header_len + MAX_TX_FRAME;
                match read_chain(&ring, head, batch, limit)
                    .and_then(|()| check_frame(&batch.bytes[begin..batch.end], rules))
                {
                    Ok(hdr) => {
                        let range = begin + rules.header_len..batch.end;
                        bytes += range.len() as u64;
                        batch.frames.push((hdr, range));
                    }
                    Err(f) => {
                        batch.end = begin;
                        fault(f);
                    }
                }
            }
            vring
                .queue
                .set_next_avail(start.wrapping_add(heads.len() as u16));
        }
        Err(_) => {
            // The available index ran more than a ring ahead: the ring is unusable until
            // the frontend sets it up again.
            fault(ChainFault::BadChain);
            vring.started = false;
        }
    }
    for &head in &heads {
        // A head past the table cannot be returned; the guest has lost that entry.
        if head < vring.queue.size() {
            vring.add_used(&ring, head, 0);
        }
    }
    vring.publish_used(memory);
    let taken = heads.len();
    batch.heads = heads;
    taken
}

/// Copies the bytes of the transmit chain at `head` onto the end of `out`.
fn read_chain(
    ring: &SplitRing<'_>,
    head: u16,
    out: &mut TxBatch,
    limit: usize,
) -> Result<(), ChainFault> {
    // The usual chain, one descriptor of the table: read once, copied at once.
    if let Some(buffer) = ring.single(head)
        && !buffer.write_only
        && buffer.len as usize <= limit
    {
        return ring
            .regions()
            .read(out.extend(buffer.len as usize), buffer.addr)
            .map_err(|()| ChainFault::BadChain);
    }
    let start = out.end;
    ring.walk(head, |buffer| {
        if buffer.write_only {
            return Err(ChainFault::WrongDirection);
        }
        let len = buffer.len as usize;
        if out.end - start + len > limit {
            return Err(ChainFault::BadLength);
        }
        ring.regions()
            .read(out.extend(len), buffer.addr)
            .map_err(|()| ChainFault::BadChain)
    })
}

/// Checks the header and frame a guest sent against what was negotiated.
fn check_frame(bytes: &[u8], rules: &TxRules) -> Result<VirtioNetHdr, ChainFault> {
    let hdr = VirtioNetHdr::parse(bytes, rules.header_len).map_err(|_| ChainFault::BadLength)?;
    let frame_len = bytes.len() - rules.header_len;
    if frame_len < crate::wire::ethernet::HEADER_LEN {
        return Err(ChainFault::BadLength);
    }
    let allowed = |bit: u64| rules.features & bit != 0;
    if hdr.needs_checksum() && !allowed(feature::CSUM) {
        return Err(ChainFault::BadHeader);
    }
    match hdr.gso_type {
        GsoType::None if frame_len > rules.max_frame => return Err(ChainFault::BadLength),
        GsoType::None => {}
        GsoType::TcpV4 if allowed(feature::HOST_TSO4) => {}
        GsoType::TcpV6 if allowed(feature::HOST_TSO6) => {}
        _ => return Err(ChainFault::BadHeader),
    }
    // The network keeps its own form of the header; num_buffers means nothing on transmit.
    Ok(VirtioNetHdr {
        num_buffers: 0,
        ..hdr
    })
}

/// The offloads the network may leave to this guest, from its acked features.
pub fn guest_offloads(features: u64) -> u32 {
    let mut bits = 0;
    if features & feature::GUEST_CSUM != 0 {
        bits |= offloads::CHECKSUM;
        // Segmentation offloads come with checksum offload (the spec makes GUEST_TSO*
        // depend on GUEST_CSUM).
        if features & feature::GUEST_TSO4 != 0 {
            bits |= offloads::TSO4;
        }
        if features & feature::GUEST_TSO6 != 0 {
            bits |= offloads::TSO6;
        }
    }
    bits
}

/// What became of a frame offered to a receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Written into the guest's buffers.
    Delivered,
    /// The guest has not posted enough buffers; nothing was consumed. Try again later.
    NoBuffers,
    /// Dropped: no buffers the guest could ever post would take it, or they were bad.
    Dropped(ChainFault),
}

/// How a receive queue takes frames, from the negotiated features.
#[derive(Debug, Clone, Copy)]
pub struct RxRules {
    /// virtio-net header length (12 or 10).
    pub header_len: usize,
    /// `MRG_RXBUF` was negotiated.
    pub mergeable: bool,
    /// `GUEST_CSUM` was negotiated (else no checksum flags reach the guest).
    pub guest_csum: bool,
}

/// Most buffers one merged frame may take (a 64 KiB frame in the smallest buffers Linux
/// posts, with room to spare).
const MAX_MERGED: usize = 256;

/// What [`place`] keeps between frames: the chains taken for the frame at hand, so that
/// receiving allocates nothing per frame once these have grown to the guest's buffers.
#[derive(Debug, Default)]
pub struct Placement {
    /// Per chain taken: its head and how many of `parts` are its.
    chains: Vec<(u16, usize)>,
    /// The writable parts of those chains, in order, each checked to lie in guest memory.
    parts: Vec<(GuestAddress, usize)>,
}

impl Placement {
    fn clear(&mut self) {
        self.chains.clear();
        self.parts.clear();
    }

    /// Returns every chain taken for this frame to the guest unused.
    fn give_back(&mut self, vring: &mut Vring, ring: &SplitRing<'_>) {
        for &(head, _) in &self.chains {
            vring.add_used(ring, head, 0);
        }
        self.clear();
    }
}

/// Writes one frame with its header into a receive queue, whose ring in guest memory is
/// `ring`. Bad chains met on the way are returned to the guest unused and reported through
/// `fault`; a dropped frame's reason is the return value's.
pub fn place(
    vring: &mut Vring,
    ring: &SplitRing<'_>,
    rules: &RxRules,
    hdr: &VirtioNetHdr,
    frame: &[u8],
    work: &mut Placement,
    mut fault: impl FnMut(ChainFault),
) -> Placed {
    let needed = rules.header_len + frame.len();
    // Where this frame's chains start, and the next chain to look at; the queue's own
    // position moves only when the frame is placed or dropped, or past a bad chain.
    let mut start = vring.queue.next_avail();
    // The usual case: the next chain is one buffer, in one region, that holds the frame
    // (every frame under merged 2 KiB buffers, and every frame of an unmerged ring). Its
    // descriptor is read once and the header and the frame go in back to back; any other
    // chain takes the general way below, which reads it again and judges it.
    if let Ok(1..) = ring.available(start)
        && let Some(head) = ring.head(start)
        && let Some(buffer) = ring.single(head)
        && buffer.write_only
        && buffer.len as usize >= needed
        && let Some(span) = ring.regions().locate(buffer.addr, buffer.len as usize)
    {
        // Its lines past the two fetched ahead, all asked for before the first store:
        // stores complete in order, so each line that has to come from the guest's core
        // would hold up every store behind it.
        if needed > FIRST_LINES {
            span.prefetch(FIRST_LINES, (needed - FIRST_LINES).div_ceil(64), true);
        }
        let header = header_bytes(hdr, rules, 1);
        let header = &header[..rules.header_len];
        if span.copy_in(0, header) && span.copy_in(header.len(), frame) {
            let next = start.wrapping_add(1);
            vring.queue.set_next_avail(next);
            ring.prefetch(next, RX_AHEAD - 1, Access::Write);
            vring.add_used(ring, head, needed as u32);
            return Placed::Delivered;
        }
    }
    let mut next = start;
    work.clear();
    let mut capacity = 0;
    while capacity < needed {
        match ring.available(next) {
            Ok(0) => {
                // Out of buffers: give back what was taken for this frame, and remember
                // how far the guest had posted, for `ask_for_buffers`.
                vring.posted_up_to = next;
                vring.queue.set_next_avail(start);
                return Placed::NoBuffers;
            }
            Ok(_) => {}
            Err(_) => {
                // The available index ran more than a ring ahead. Reported by the return
                // value alone, as the other reasons for dropping the frame are.
                vring.started = false;
                vring.queue.set_next_avail(start);
                return Placed::Dropped(ChainFault::BadChain);
            }
        }
        let head = ring.head(next).unwrap_or(u16::MAX);
        next = next.wrapping_add(1);
        match writable_parts(ring, head, &mut work.parts) {
            Ok((count, room)) => {
                capacity += room;
                work.chains.push((head, count));
            }
            Err(f) => {
                // The bad chain goes back unused, and so do the ones taken before it for
                // this frame: a rewind on running out of buffers must start past the bad
                // chain, or it would be read (and counted) again on every retry. Those
                // first, then the bad one: buffers are used in the order they came
                // (`IN_ORDER` is offered).
                fault(f);
                work.give_back(vring, ring);
                if head < vring.queue.size() {
                    vring.add_used(ring, head, 0);
                }
                capacity = 0;
                start = next;
                vring.queue.set_next_avail(start);
                continue;
            }
        }
        // Without merging, one chain must hold the frame; this one cannot, and the guest
        // posts buffers of one size, so no later chain would either. With merging: every
        // buffer of the ring taken, or more than any sane frame needs, and waiting for
        // more would wait forever.
        let limit = MAX_MERGED.min(usize::from(vring.queue.size()));
        let hopeless = !rules.mergeable || work.chains.len() >= limit;
        if hopeless && capacity < needed {
            work.give_back(vring, ring);
            vring.queue.set_next_avail(next);
            return Placed::Dropped(ChainFault::BadLength);
        }
    }
    vring.queue.set_next_avail(next);

    ring.prefetch(next, RX_AHEAD - 1, Access::Write);
    vring.rx_prefetched_to = next.wrapping_add(RX_AHEAD);
    let header = header_bytes(hdr, rules, work.chains.len() as u16);
    let pieces = [&header[..rules.header_len], frame];
    let mut written_total = 0;
    let mut parts = work.parts.iter();
    for &(head, count) in &work.chains {
        let mut written = 0;
        for &(address, len) in parts.by_ref().take(count) {
            match write_span(ring.regions(), address, len, pieces, written_total) {
                Ok(n) => {
                    written += n;
                    written_total += n;
                }
                // Checked when the chain was taken; a write can still fail if the frontend
                // replaced the memory table meanwhile, which only loses this frame.
                Err(()) => fault(ChainFault::BadChain),
            }
        }
        vring.add_used(ring, head, written as u32);
    }
    Placed::Delivered
}

/// Before a round's first frame for a receive queue: asks for the lines of the used
/// entries the round is about to write and of the first `RX_AHEAD` buffers the guest
/// posted, writable. The used entries sit in lines the guest's driver read last, and the
/// buffers in lines its core may hold; each store into one would otherwise wait for that
/// core to give it up, and stores complete in order, so the frame copies behind it would
/// wait too. Buffers the rounds before already asked for (their windows slid up to
/// `rx_prefetched_to`) are not asked for again: with a frame a round, asking for the same
/// eight chains every round was a tenth of the switch's instructions.
pub fn prefetch_receive(vring: &mut Vring, ring: &SplitRing<'_>) {
    ring.prefetch_used(vring.queue.next_used(), RX_USED_AHEAD);
    let next = vring.queue.next_avail();
    for ahead in window_start(vring.rx_prefetched_to, next)..RX_AHEAD {
        ring.prefetch(next, ahead, Access::Write);
    }
    vring.rx_prefetched_to = next.wrapping_add(RX_AHEAD);
}

/// The first chain, counted from `next`, of a receive window not asked for yet, when
/// the buffers up to `prefetched_to` were: from there if that lies in the window, else
/// (the queue was reset, or the position ran a lap) from `next`.
fn window_start(prefetched_to: u16, next: u16) -> u16 {
    let asked = prefetched_to.wrapping_sub(next);
    if asked <= RX_AHEAD { asked } else { 0 }
}

/// The header of a frame placed in `buffers` receive buffers: `hdr` as the network
/// carried it, less the checksum flags a guest that did not negotiate them must not see.
fn header_bytes(hdr: &VirtioNetHdr, rules: &RxRules, buffers: u16) -> [u8; 12] {
    let mut header = *hdr;
    header.num_buffers = buffers;
    if !rules.guest_csum {
        header.flags &= !(FLAG_NEEDS_CSUM | FLAG_DATA_VALID);
    }
    header.to_bytes()
}

/// After [`place`] ran out of buffers: asks the guest to kick as soon as it posts any
/// buffer beyond those it had posted then, and returns whether it already has.
///
/// A frame may need more merged buffers than the guest has posted, so "some buffers are
/// posted" is not a reason to try again, only "more than last time" is; else the receive
/// thread would spin until the guest posts more. With `EVENT_IDX`, `avail_event` is set to
/// that index (the ring crate's own notification call would set it to where the frame
/// started, before buffers the guest already posted, and no kick would come).
pub fn ask_for_buffers(vring: &mut Vring, memory: &GuestMemoryMmap) -> bool {
    let posted_up_to = vring.posted_up_to;
    if vring.queue.event_idx_enabled() {
        let size = u64::from(vring.queue.size());
        // avail_event follows the used ring's entries: flags, idx, 8 bytes per entry.
        let at = vring.queue.used_ring().checked_add(4 + 8 * size);
        let asked = at.is_some_and(|at| {
            memory
                .store(posted_up_to.to_le(), GuestAddress(at), Ordering::Release)
                .is_ok()
        });
        if !asked {
            // A used ring outside memory: nothing to ask; the caller sleeps its bounded
            // slice and looks again.
            return false;
        }
    } else {
        if vring.queue.enable_notification(memory).is_err() {
            vring.access_failures += 1;
        }
    }
    // Pairs with the guest's barrier between adding a buffer and reading avail_event.
    fence(Ordering::SeqCst);
    vring
        .queue
        .avail_idx(memory, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != posted_up_to)
}

/// Writes up to `len` bytes at `address` from the concatenation of `pieces`, starting at
/// byte `from` of it; returns how many (fewer once the pieces run out).
fn write_span(
    regions: &Regions<'_>,
    address: GuestAddress,
    len: usize,
    pieces: [&[u8]; 2],
    from: usize,
) -> Result<usize, ()> {
    let [first, second] = pieces;
    let total = first.len() + second.len();
    let n = len.min(total.saturating_sub(from));
    let mut done = 0;
    while done < n {
        let at = from + done;
        let (piece, offset) = if at < first.len() {
            (first, at)
        } else {
            (second, at - first.len())
        };
        let take = (n - done).min(piece.len() - offset);
        let target = address.checked_add(done as u64).ok_or(())?;
        regions.write(&piece[offset..offset + take], target)?;
        done += take;
    }
    Ok(n)
}

/// Appends the writable parts of the receive chain at `head` to `parts`, each checked to
/// lie in guest memory; returns how many and their total length. On a fault, `parts` is
/// as it was.
fn writable_parts(
    ring: &SplitRing<'_>,
    head: u16,
    parts: &mut Vec<(GuestAddress, usize)>,
) -> Result<(usize, usize), ChainFault> {
    let before = parts.len();
    let mut capacity = 0usize;
    let walked = ring.walk(head, |buffer| {
        if !buffer.write_only {
            return Err(ChainFault::WrongDirection);
        }
        let len = buffer.len as usize;
        if !ring.regions().writable(buffer.addr, len) {
            return Err(ChainFault::BadChain);
        }
        capacity = capacity.saturating_add(len);
        parts.push((buffer.addr, len));
        Ok(())
    });
    match walked {
        Ok(()) => Ok((parts.len() - before, capacity)),
        Err(fault) => {
            parts.truncate(before);
            Err(fault)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::ports::vhost_user::mock::{Descriptor, GuestMemory, GuestQueue, Layout, desc_flags};
    use crate::wire::virtio_net::HEADER_LEN;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x10000;
    const MEMORY: usize = 0x40000;
    const SIZE: u16 = 16;
    const NEXT: u16 = desc_flags::NEXT;
    const WRITE: u16 = desc_flags::WRITE;

    /// A guest with one ring of 16 at fixed addresses in 256 KiB of memory, and the port's
    /// side of that ring.
    struct Guest {
        memory: GuestMemory,
        queue: GuestQueue,
        vring: Vring,
    }

    impl Guest {
        fn new() -> Guest {
            Guest::in_regions(&[(0, MEMORY as u64)])
        }

        /// The same ring in guest memory made of `regions` (start, length).
        fn in_regions(regions: &[(u64, u64)]) -> Guest {
            let memory = GuestMemory::anonymous(regions).unwrap();
            let queue = GuestQueue::new(Layout {
                size: SIZE,
                desc: DESC,
                avail: AVAIL,
                used: USED,
                buffers: DATA..MEMORY as u64,
            });
            let vring = Vring::running_on(&queue);
            Guest {
                memory,
                queue,
                vring,
            }
        }

        fn descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = Descriptor {
                addr,
                len,
                flags,
                next,
            };
            self.queue.write_descriptor(&self.memory, index, d);
        }

        /// Offers the chain starting at `head`.
        fn offer(&mut self, head: u16) {
            self.queue.publish(&self.memory, head);
        }

        fn used(&self, n: u16) -> (u32, u32) {
            let used = self.queue.used_entry(&self.memory, n);
            (used.id, used.len)
        }

        fn used_idx(&self) -> u16 {
            self.queue.used_index(&self.memory)
        }

        /// Offers `frame` (plain header) to the ring as a receive queue.
        fn place(&mut self, frame: &[u8], mergeable: bool) -> (Placed, Vec<ChainFault>) {
            let mut faults = Vec::new();
            let ring = SplitRing::new(&self.vring.queue, self.memory.mmap()).expect("a ring");
            let placed = place(
                &mut self.vring,
                &ring,
                &rx_rules(mergeable),
                &VirtioNetHdr::default(),
                frame,
                &mut Placement::default(),
                |f| faults.push(f),
            );
            self.vring.publish_used(self.memory.mmap());
            (placed, faults)
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        frame
    }

    fn tx_rules(features: u64) -> TxRules {
        TxRules {
            header_len: HEADER_LEN,
            max_frame: 1518,
            features,
        }
    }

    /// Transmits what is offered; returns the frames and the faults.
    fn transmit_all(
        guest: &mut Guest,
        rules: &TxRules,
    ) -> (Vec<(VirtioNetHdr, Vec<u8>)>, Vec<ChainFault>) {
        let mut batch = TxBatch::default();
        let mut faults = Vec::new();
        transmit(
            &mut guest.vring,
            guest.memory.mmap(),
            rules,
            64,
            &mut batch,
            |f| faults.push(f),
        );
        let frames = batch.iter().map(|(h, f)| (*h, f.to_vec())).collect();
        (frames, faults)
    }

    #[test]
    fn a_frame_split_over_descriptors_is_sent_whole() {
        let mut guest = Guest::new();
        let payload = frame(100);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&payload);
        guest.memory.write(DATA, &bytes[..40]);
        guest.memory.write(DATA + 0x1000, &bytes[40..]);
        guest.descriptor(0, DATA, 40, NEXT, 5);
        guest.descriptor(5, DATA + 0x1000, (bytes.len() - 40) as u32, 0, 0);
        guest.offer(0);
        let (frames, faults) = transmit_all(&mut guest, &tx_rules(0));
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(frames, vec![(VirtioNetHdr::default(), payload)]);
        assert_eq!(guest.used_idx(), 1);
        assert_eq!(guest.used(0), (0, 0));
    }

    #[test]
    fn a_used_ring_moved_outside_guest_memory_costs_counted_ring_access_failures() {
        let mut guest = Guest::new();
        let payload = frame(100);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&payload);
        guest.memory.write(DATA, &bytes);
        guest.descriptor(0, DATA, bytes.len() as u32, 0, 0);
        guest.offer(0);
        // The used ring now lies past the end of guest memory (as after the frontend
        // replaced the memory table under a running ring): returning the chain fails.
        guest
            .vring
            .queue
            .set_used_ring_address(Some(MEMORY as u32 + 0x1000), Some(0));
        let (frames, _) = transmit_all(&mut guest, &tx_rules(0));
        assert_eq!(frames.len(), 1, "the frame itself was read");
        assert_eq!(guest.vring.take_access_failures(), 1);
        assert_eq!(guest.vring.take_access_failures(), 0, "taken once");
    }

    #[test]
    fn bad_transmit_chains_are_refused_by_kind_and_still_returned() {
        let mut guest = Guest::new();
        let mut good = vec![0u8; HEADER_LEN];
        good.extend_from_slice(&frame(60));
        guest.memory.write(DATA, &good);
        // 0: a loop (0 → 1 → 0).
        guest.descriptor(0, DATA, 8, NEXT, 1);
        guest.descriptor(1, DATA, 8, NEXT, 0);
        // 2: a write-only descriptor.
        guest.descriptor(2, DATA, good.len() as u32, WRITE, 0);
        // 3: outside guest memory.
        guest.descriptor(3, MEMORY as u64 - 8, 64, 0, 0);
        // 4: next index past the table.
        guest.descriptor(4, DATA, 8, NEXT, SIZE + 3);
        // 6: a runt.
        guest.descriptor(6, DATA, (HEADER_LEN + 10) as u32, 0, 0);
        // 7: a good one after all that.
        guest.descriptor(7, DATA, good.len() as u32, 0, 0);
        for head in [0, 2, 3, 4, 6, 7] {
            guest.offer(head);
        }
        let (frames, faults) = transmit_all(&mut guest, &tx_rules(0));
        assert_eq!(
            faults,
            vec![
                ChainFault::BadChain,
                ChainFault::WrongDirection,
                ChainFault::BadChain,
                ChainFault::BadChain,
                ChainFault::BadLength
            ]
        );
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, frame(60));
        // Every chain went back to the guest.
        assert_eq!(guest.used_idx(), 6);
    }

    #[test]
    fn offloads_the_guest_did_not_negotiate_are_refused() {
        let mut guest = Guest::new();
        let tso = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        let mut bytes = tso.to_bytes().to_vec();
        bytes.extend_from_slice(&frame(3000));
        guest.memory.write(DATA, &bytes);
        guest.descriptor(0, DATA, bytes.len() as u32, 0, 0);
        guest.descriptor(1, DATA, bytes.len() as u32, 0, 0);
        let mut plain = vec![0u8; HEADER_LEN];
        plain.extend_from_slice(&frame(3000));
        guest.memory.write(DATA + 0x8000, &plain);
        guest.descriptor(2, DATA + 0x8000, plain.len() as u32, 0, 0);
        guest.offer(0);
        let (frames, faults) = transmit_all(&mut guest, &tx_rules(feature::CSUM));
        assert!(frames.is_empty());
        assert_eq!(faults, vec![ChainFault::BadHeader]);
        // With HOST_TSO4 the same super-frame goes, header and all.
        guest.offer(1);
        let (frames, faults) =
            transmit_all(&mut guest, &tx_rules(feature::CSUM | feature::HOST_TSO4));
        assert!(faults.is_empty());
        assert_eq!(frames[0].0, tso);
        // A plain frame longer than the MTU is not a super-frame.
        guest.offer(2);
        let (_, faults) = transmit_all(&mut guest, &tx_rules(feature::CSUM | feature::HOST_TSO4));
        assert_eq!(faults, vec![ChainFault::BadLength]);
    }

    /// Gives the guest's ring a call eventfd; returns a duplicate to count the signals.
    fn with_call(guest: &mut Guest) -> OwnedFd {
        let call = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
        let count = call.try_clone().unwrap();
        guest.vring.call = Some(call);
        count
    }

    /// Signals since the last look (the eventfd's count, cleared).
    fn signals(count: &OwnedFd) -> u64 {
        let mut value = [0u8; 8];
        match rustix::io::read(count, &mut value) {
            Ok(8) => u64::from_ne_bytes(value),
            _ => 0,
        }
    }

    /// Offers `n` transmit chains of one small frame each, from descriptor `first` on.
    fn offer_frames(guest: &mut Guest, first: u16, n: u16) {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&frame(60));
        guest.memory.write(DATA, &bytes);
        for i in first..first + n {
            guest.descriptor(i, DATA, bytes.len() as u32, 0, 0);
            guest.offer(i);
        }
    }

    #[test]
    fn a_round_moves_the_used_index_once_and_signals_once() {
        let mut guest = Guest::new();
        let count = with_call(&mut guest);
        offer_frames(&mut guest, 0, 5);
        let (frames, _) = transmit_all(&mut guest, &tx_rules(0));
        assert_eq!(frames.len(), 5);
        assert_eq!(guest.used_idx(), 5, "published at the end of the round");
        assert_eq!(signals(&count), 0, "not before the round ends");
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 1);
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 0, "nothing new, no signal");
    }

    #[test]
    fn a_guest_that_asks_for_no_interrupts_is_not_signalled() {
        let mut guest = Guest::new();
        let count = with_call(&mut guest);
        // VRING_AVAIL_F_NO_INTERRUPT, as a polling driver sets it.
        guest.memory.write(AVAIL, &1u16.to_le_bytes());
        offer_frames(&mut guest, 0, 3);
        transmit_all(&mut guest, &tx_rules(0));
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 0);
        // The flag cleared: the next round's chains are signalled.
        guest.memory.write(AVAIL, &0u16.to_le_bytes());
        offer_frames(&mut guest, 3, 1);
        transmit_all(&mut guest, &tx_rules(0));
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 1);
    }

    #[test]
    fn with_event_idx_the_guest_is_signalled_when_the_used_index_passes_used_event() {
        let mut guest = Guest::new();
        guest.vring.queue.set_event_idx(true);
        let count = with_call(&mut guest);
        // used_event (after the avail ring's 16 entries) = 6: signal once entry 6 is used.
        let used_event = AVAIL + 4 + 2 * u64::from(SIZE);
        guest.memory.write(used_event, &6u16.to_le_bytes());
        offer_frames(&mut guest, 0, 4);
        transmit_all(&mut guest, &tx_rules(0));
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 0, "used index 4 has not passed 6");
        offer_frames(&mut guest, 4, 4);
        transmit_all(&mut guest, &tx_rules(0));
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 1, "used index 8 passed 6");
        offer_frames(&mut guest, 8, 2);
        transmit_all(&mut guest, &tx_rules(0));
        guest.vring.finish_round(guest.memory.mmap());
        assert_eq!(signals(&count), 0, "6 was passed before this round");
    }

    fn rx_rules(mergeable: bool) -> RxRules {
        RxRules {
            header_len: HEADER_LEN,
            mergeable,
            guest_csum: true,
        }
    }

    #[test]
    fn a_frame_spans_merged_buffers_and_says_how_many() {
        let mut guest = Guest::new();
        for i in 0..4u16 {
            guest.descriptor(i, DATA + 0x1000 * u64::from(i), 512, WRITE, 0);
            guest.offer(i);
        }
        let payload = frame(1200);
        let (placed, faults) = guest.place(&payload, true);
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(placed, Placed::Delivered);
        // 12 + 1200 bytes in 512-byte buffers: three of them.
        assert_eq!(guest.used_idx(), 3);
        assert_eq!(guest.used(0), (0, 512));
        assert_eq!(guest.used(1), (1, 512));
        assert_eq!(guest.used(2), (2, 1212 - 1024));
        let num_buffers = guest.memory.read_u16(DATA + 10);
        assert_eq!(num_buffers, 3);
        let mut back = Vec::with_capacity(1212);
        for i in 0..3u64 {
            let len = if i == 2 { 1212 - 1024 } else { 512 };
            back.extend(guest.memory.read(DATA + 0x1000 * i, len));
        }
        assert_eq!(&back[HEADER_LEN..], &payload[..]);
    }

    #[test]
    fn a_buffer_across_two_regions_carries_its_frame_whole_both_ways() {
        // Two regions back to back; buffer 0 starts 40 bytes before the second.
        let half = MEMORY as u64 / 2;
        let mut guest = Guest::in_regions(&[(0, half), (half, half)]);
        guest.descriptor(0, half - 40, 2048, WRITE, 0);
        guest.offer(0);
        let payload = frame(200);
        let (placed, faults) = guest.place(&payload, false);
        assert_eq!((placed, faults), (Placed::Delivered, vec![]));
        assert_eq!(guest.used(0), (0, 212));
        let back = guest.memory.read(half - 40, 212);
        assert_eq!(u16::from_le_bytes([back[10], back[11]]), 1, "num_buffers");
        assert_eq!(&back[HEADER_LEN..], &payload[..]);

        // The same bytes sent back out of a transmit chain over the boundary.
        let mut guest = Guest::in_regions(&[(0, half), (half, half)]);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&payload);
        guest.memory.write(half - 40, &bytes);
        guest.descriptor(0, half - 40, bytes.len() as u32, 0, 0);
        guest.offer(0);
        let (frames, faults) = transmit_all(&mut guest, &tx_rules(0));
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, payload);
    }

    #[test]
    fn a_header_split_over_small_buffers_lands_whole() {
        let mut guest = Guest::new();
        // One chain of 5 + 9 + 2000 bytes: the 12-byte header spans the first two.
        guest.descriptor(0, DATA, 5, WRITE | NEXT, 1);
        guest.descriptor(1, DATA + 0x100, 9, WRITE | NEXT, 2);
        guest.descriptor(2, DATA + 0x200, 2000, WRITE, 0);
        guest.offer(0);
        let payload = frame(300);
        let (placed, faults) = guest.place(&payload, true);
        assert_eq!((placed, faults), (Placed::Delivered, vec![]));
        assert_eq!(guest.used(0), (0, 312));
        let mut back = guest.memory.read(DATA, 5);
        back.extend(guest.memory.read(DATA + 0x100, 9));
        back.extend(guest.memory.read(DATA + 0x200, 312 - 14));
        assert_eq!(u16::from_le_bytes([back[10], back[11]]), 1, "num_buffers");
        assert_eq!(&back[HEADER_LEN..], &payload[..]);
    }

    #[test]
    fn without_enough_buffers_nothing_is_consumed() {
        let mut guest = Guest::new();
        guest.descriptor(0, DATA, 512, WRITE, 0);
        guest.offer(0);
        let (placed, faults) = guest.place(&frame(1200), true);
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(placed, Placed::NoBuffers);
        assert_eq!(guest.used_idx(), 0);
        assert_eq!(guest.vring.queue.next_avail(), 0);
        // More buffers come; now it fits.
        guest.descriptor(1, DATA + 0x1000, 1024, WRITE, 0);
        guest.offer(1);
        let (placed, faults) = guest.place(&frame(1200), true);
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(placed, Placed::Delivered);
        assert_eq!(guest.used_idx(), 2);
    }

    #[test]
    fn too_few_buffers_are_not_a_reason_to_try_again() {
        for event_idx in [true, false] {
            let mut guest = Guest::new();
            guest.vring.queue.set_event_idx(event_idx);
            guest.descriptor(0, DATA, 512, WRITE, 0);
            guest.offer(0);
            // 1212 bytes need three 512-byte buffers; one is posted.
            let (placed, _) = guest.place(&frame(1200), true);
            assert_eq!(placed, Placed::NoBuffers);
            assert!(
                !ask_for_buffers(&mut guest.vring, guest.memory.mmap()),
                "nothing new was posted (event_idx {event_idx})"
            );
            if event_idx {
                // The guest is asked to kick when it posts the buffer after the first.
                assert_eq!(guest.queue.avail_event(&guest.memory), 1);
            }
            guest.descriptor(1, DATA + 0x1000, 512, WRITE, 0);
            guest.offer(1);
            assert!(ask_for_buffers(&mut guest.vring, guest.memory.mmap()));
        }
    }

    #[test]
    fn bad_receive_buffers_are_skipped_and_counted() {
        let mut guest = Guest::new();
        // A read-only buffer, one outside memory, then a good one.
        guest.descriptor(0, DATA, 2048, 0, 0);
        guest.descriptor(1, MEMORY as u64 - 100, 2048, WRITE, 0);
        guest.descriptor(2, DATA, 2048, WRITE, 0);
        for head in 0..3 {
            guest.offer(head);
        }
        let (placed, faults) = guest.place(&frame(100), false);
        assert_eq!(placed, Placed::Delivered);
        assert_eq!(
            faults,
            vec![ChainFault::WrongDirection, ChainFault::BadChain]
        );
        assert_eq!(guest.used_idx(), 3);
        assert_eq!(guest.used(0), (0, 0));
        assert_eq!(guest.used(1), (1, 0));
        assert_eq!(guest.used(2), (2, 112));
    }

    #[test]
    fn a_receive_window_starts_past_what_was_asked_for() {
        // Nothing asked for in the window (a fresh queue, or one that ran a lap): all of it.
        assert_eq!(window_start(0, 0), 0);
        assert_eq!(window_start(100, 200), 0);
        assert_eq!(window_start(300, 200), 0);
        // The last frame placed slid the window to 8 past where the queue stands: all of
        // it was asked for, nothing is asked for again.
        assert_eq!(window_start(208, 200), RX_AHEAD);
        // Chains taken since without sliding the window (a frame dropped for a bad chain
        // returns before the slide): go on from where it ended.
        assert_eq!(window_start(203, 200), 3);
        assert_eq!(window_start(200, 200), 0);
        // Across the 16-bit wrap of the available index.
        assert_eq!(window_start(5, 65533), RX_AHEAD);
        assert_eq!(window_start(2, 65533), 5);
        assert_eq!(window_start(65530, 65533), 0);
    }

    #[test]
    fn receive_chains_are_used_in_the_order_they_were_made_available() {
        // IN_ORDER is offered: the guest's driver may find a used buffer by its position
        // in the used ring alone. A merged frame takes a small buffer, then meets a bad
        // one: the small one goes back first, then the bad one, then the frame's.
        let mut guest = Guest::new();
        guest.descriptor(0, DATA, 64, WRITE, 0);
        guest.descriptor(1, DATA + 0x1000, 2048, 0, 0);
        guest.descriptor(2, DATA + 0x2000, 2048, WRITE, 0);
        for head in 0..3 {
            guest.offer(head);
        }
        let (placed, faults) = guest.place(&frame(100), true);
        assert_eq!(placed, Placed::Delivered);
        assert_eq!(faults, vec![ChainFault::WrongDirection]);
        assert_eq!(guest.used_idx(), 3);
        assert_eq!(guest.used(0), (0, 0));
        assert_eq!(guest.used(1), (1, 0));
        assert_eq!(guest.used(2), (2, 112));
    }

    #[test]
    fn a_frame_larger_than_an_unmerged_buffer_is_dropped() {
        let mut guest = Guest::new();
        guest.descriptor(0, DATA, 256, WRITE, 0);
        guest.offer(0);
        let (placed, faults) = guest.place(&frame(1000), false);
        assert!(faults.is_empty(), "{faults:?}");
        assert_eq!(placed, Placed::Dropped(ChainFault::BadLength));
    }

    proptest::proptest! {
        /// Whatever the guest wrote in its descriptor table and rings, transmitting and
        /// receiving neither panic nor lose track: every chain taken is a frame or a fault.
        #[test]
        fn any_ring_contents_are_survived(
            table in proptest::collection::vec(proptest::prelude::any::<u8>(), 16 * SIZE as usize),
            avail in proptest::collection::vec(proptest::prelude::any::<u8>(), 4 + 2 * SIZE as usize),
            mergeable in proptest::prelude::any::<bool>(),
        ) {
            let mut guest = Guest::new();
            guest.memory.write(DESC, &table);
            guest.memory.write(AVAIL, &avail);
            let mut batch = TxBatch::default();
            let mut faults = 0;
            let taken = transmit(&mut guest.vring, guest.memory.mmap(), &tx_rules(u64::MAX), 64, &mut batch, |_| faults += 1);
            proptest::prop_assert!(taken == batch.len() + faults || faults > 0 && taken == 0);
            let mut fresh = Guest::new();
            fresh.memory.write(DESC, &table);
            fresh.memory.write(AVAIL, &avail);
            let mut work = Placement::default();
            for _ in 0..4 {
                let Some(ring) = SplitRing::new(&fresh.vring.queue, fresh.memory.mmap()) else {
                    break;
                };
                let _ = place(&mut fresh.vring, &ring, &rx_rules(mergeable), &VirtioNetHdr::default(), &frame(1500), &mut work, |_| {});
            }
        }
    }
}
