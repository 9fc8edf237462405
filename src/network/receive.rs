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
use crate::shm::layout::status as entry_status;
use crate::wire::offload::{self, Segmenter};
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::{EthernetFrame, EthernetRepr, ethernet};

use super::clock::{monotonic_ns, timespec};
use super::counters::{self, DropReason, Pending, slot};
use super::membership::{Control, Membership};
use super::offloads::{header_from_words, needed_offloads};
use super::region::SWEEP_INTERVAL_NS;
use super::ring::{self, LateList, LateStep, Pop, SlotMeta};
use super::shm_ring::ShmRing;

/// The receiving half of a peer. Besides the network's frame rules it checks that each
/// frame has the form its VLANs allow (tagged only for a member VLAN other than its
/// native one), which only a writer that bypassed the sender's rules can break
/// (`vlan_filtered`).
#[derive(Debug)]
pub struct Receiver {
    membership: Arc<Membership>,
    tail: u64,
    buffer: Vec<u8>,
    segmenter: Segmenter,
    /// A frame finished in software, as its segments, and where each one ends (kept
    /// between frames so that nothing allocates once they have grown).
    segments: Vec<u8>,
    segment_ends: Vec<usize>,
    pending: Pending,
    mtu: usize,
    /// Bytes a ring slot holds; a frame in a slot claiming more is a lie.
    slot_capacity: usize,
    /// The position whose writer we are waiting for, and since when.
    in_progress: Option<(u64, u64)>,
    /// Slots passed over late, read when their writers publish (see [`ring::LateList`]).
    late: LateList,
    last_maintenance_ns: u64,
}

/// Longest single sleep: a sleeping receiver still takes part in liveness sweeps.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// How long the receiver waits for a writer that holds the slot at its cursor before it
/// passes over it. Copying a frame takes microseconds; a writer that holds a slot this long
/// is stopped (`SIGSTOP`, a debugger) or starved of CPU, and every frame behind it waits
/// too. Half of the 100 ms that a stopped member may cost the others, leaving the rest for
/// wake-up and scheduling latency.
pub const PASS_OVER_NS: u64 = 50_000_000;

/// How many slots a receiver passes over late at most: writers descheduled mid-copy at
/// once. A writer holds one claim at a time, so this is how many of its senders may be
/// off their cores together before the receiver waits at its cursor again.
const LATE_SLOTS: usize = 16;

/// How long a writer may hold the slot at the receiver's cursor before the receiver
/// considers passing it over late. A writer on another core copies a frame in well under
/// this, and looking past its slot sooner would pull the lines it is about to write into
/// the receiver's cache on every frame; a writer that lost its core holds the slot for a
/// scheduler slice, milliseconds.
const LATE_AFTER_NS: u64 = 5_000;

/// The smallest segment size a super-frame may ask for: TCP's minimum MSS for IPv4
/// (RFC 9293's 536 less options is the usual floor; Linux takes 88). Anything smaller
/// would let one frame multiply into thousands.
pub const MIN_GSO_SIZE: u16 = 88;

impl Receiver {
    pub(super) fn new(membership: Arc<Membership>, tail: u64) -> Receiver {
        let layout = &membership.region.layout;
        // Room for a super-frame when the network carries them.
        let max_frame = if layout.geometry.gso_buffers > 0 {
            layout.max_frame.max(LARGE_FRAME)
        } else {
            layout.max_frame
        };
        let mtu = layout.geometry.mtu as usize;
        let slot_capacity = layout.max_frame;
        Receiver {
            membership,
            tail,
            buffer: vec![0; max_frame],
            segmenter: Segmenter::new(),
            segments: Vec::new(),
            segment_ends: Vec::new(),
            pending: Pending::default(),
            mtu,
            slot_capacity,
            in_progress: None,
            late: LateList::new(LATE_SLOTS),
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
    /// network's rules and finished: a frame that still carries offload work is completed
    /// in software and handed over as its segments, each checked against the MTU. Frames
    /// that fail the checks are counted and skipped.
    pub fn receive(&mut self, budget: usize, mut on_frame: impl FnMut(&[u8])) -> usize {
        self.drain(budget, 0, |_, frame| on_frame(frame))
    }

    /// Like [`Receiver::receive`], but hands each frame over with its virtio-net header,
    /// for ports that pass offload work on (a TAP with offloads, a VM): a frame may be a
    /// super-frame of up to 64 KiB, or need its checksum completed, but only of the kinds
    /// this peer advertises; anything else (a frame sent while it advertised more, or a
    /// forged slot) is finished in software first. Plain frames come with an all-zero
    /// header.
    pub fn receive_offloaded(
        &mut self,
        budget: usize,
        on_frame: impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> usize {
        let accepted = self.membership.entry().offloads.load(Ordering::Relaxed);
        self.drain(budget, accepted, on_frame)
    }

    /// Drains up to `budget` frames, handing over as they are those whose offload work is
    /// within `accepted` and finishing the others.
    fn drain(
        &mut self,
        budget: usize,
        accepted: u32,
        mut on_frame: impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> usize {
        let membership = Arc::clone(&self.membership);
        let ring = membership.region.ring(membership.index);
        let entry = membership.entry();
        let mut received = 0;
        // Late frames whose writers published since we last looked (or that we give up
        // on). Read before the count is noted seen: one published after is looked for again.
        let control = ring.control();
        let late_published = control.late_published.load(Ordering::Acquire);
        if late_published != control.late_seen.load(Ordering::Relaxed) || !self.late.is_empty() {
            self.take_late(&ring, None, budget, accepted, &mut received, &mut on_frame);
            control.late_seen.store(late_published, Ordering::Relaxed);
        }
        // Bounded even if every slot is junk: at most one lap beyond the budget.
        let mut steps = budget.saturating_add(ring::SlotMemory::slot_count(&ring) as usize);
        while received < budget && steps > 0 {
            steps -= 1;
            let position = self.tail;
            let state = ring::peek(&ring, position);
            // A frame of a writer we passed over late: its late frame is published (it
            // claimed this one after), and goes first.
            if let Some(writer) = self.late.owed_before(state, position)
                && !self.take_late(
                    &ring,
                    Some(writer),
                    budget,
                    accepted,
                    &mut received,
                    &mut on_frame,
                )
            {
                break;
            }
            let step = ring::pop_seen(&ring, position, state, &mut self.buffer);
            if step.advances() {
                self.tail = ring::advance(position, 1);
            }
            match step {
                Pop::Frame(meta) => match self.check(meta) {
                    Ok((hdr, len)) => {
                        received += self.hand_over(&hdr, len, accepted, &mut on_frame);
                    }
                    Err(reason) => counters::count_rx_drop(entry, reason),
                },
                Pop::Empty => break,
                Pop::InProgress { writer } => {
                    if !self.wait_for_writer(&ring, position, writer) {
                        break;
                    }
                }
                Pop::Void { held_by } => {
                    // A reservation by a writer that is not there will never be given back
                    // by it: give it back on its behalf.
                    if let Some(writer) = held_by
                        && !self.writer_exists(writer)
                    {
                        ring::release_reservation(&ring, position, writer);
                    }
                    if self.late.release_forged(&ring, state) {
                        counters::count_rx_drop(entry, DropReason::Corrupt);
                    }
                }
                Pop::Abandoned => counters::count_rx_drop(entry, DropReason::Abandoned),
                Pop::Corrupt => counters::count_rx_drop(entry, DropReason::Corrupt),
                Pop::AlreadyConsumed => {}
            }
        }
        ring.control().consumed.store(self.tail, Ordering::Release);
        self.pending.flush(entry);
        received
    }

    /// Hands one checked frame over, as it is or finished in software; returns how many
    /// frames `on_frame` got. It counts once, received or `invalid`: a frame one of whose
    /// segments would break the network's rules is dropped whole, so a forged header can
    /// neither smuggle a giant through nor multiply a frame beyond what the MTU allows.
    fn hand_over(
        &mut self,
        hdr: &VirtioNetHdr,
        len: usize,
        accepted: u32,
        on_frame: &mut impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> usize {
        let frame = &self.buffer[..len];
        let needed = needed_offloads(hdr);
        if needed.is_some_and(|needed| needed & accepted == needed) {
            self.pending.add(slot::RX_PACKETS, 1);
            self.pending.add(slot::RX_BYTES, len as u64);
            on_frame(hdr, frame);
            return 1;
        }
        let plain = VirtioNetHdr::default();
        let mtu = self.mtu;
        let entry = self.membership.entry();
        // Segments are cut to the MTU whatever the sender asked for, and never below the
        // floor: a header that leaves no room for a sane segment is refused.
        let mss = if hdr.gso_type == GsoType::None {
            usize::MAX
        } else {
            match offload::mss_for_mtu(frame, hdr, mtu) {
                Ok(mss) if mss >= usize::from(MIN_GSO_SIZE) => mss,
                _ => {
                    counters::count_rx_drop(entry, DropReason::Invalid);
                    return 0;
                }
            }
        };
        // All or nothing, so that one frame from the ring is one outcome in the counters:
        // cut it into segments aside, check every one, then hand them all over, or none.
        let (segments, ends) = (&mut self.segments, &mut self.segment_ends);
        segments.clear();
        ends.clear();
        let mut valid = true;
        let finished = self
            .segmenter
            .segment(frame, hdr, mss, &mut |segment: &[u8]| {
                valid &= ethernet::validate_frame(segment, mtu).is_ok();
                segments.extend_from_slice(segment);
                ends.push(segments.len());
            });
        if finished.is_err() || !valid || ends.is_empty() {
            counters::count_rx_drop(entry, DropReason::Invalid);
            return 0;
        }
        let mut start = 0;
        for &end in ends.iter() {
            on_frame(&plain, &segments[start..end]);
            start = end;
        }
        self.pending.add(slot::RX_PACKETS, 1);
        self.pending.add(slot::RX_BYTES, len as u64);
        ends.len()
    }

    /// Passes over late the writer holding the slot at our cursor, when frames published
    /// after its claim wait behind it: returns true when the ring may be read on (passed
    /// over, or published meanwhile).
    fn pass_late(&mut self, ring: &ShmRing<'_>, position: u64, writer: u16, now: u64) -> bool {
        if !self.late.worth_passing(ring, position) {
            return false;
        }
        if self.late.pass(ring, position, writer, now) {
            self.tail = ring::advance(position, 1);
            self.in_progress = None;
            return true;
        }
        // The list is full, or the writer published meanwhile (then read it now).
        ring::in_progress(ring, position) != Some(writer)
    }

    /// Reads the late frames that are published (of `only` that writer, if given) while
    /// the budget lasts, and gives up on those waited for too long; returns false when
    /// the budget ran out first.
    fn take_late(
        &mut self,
        ring: &ShmRing<'_>,
        only: Option<u16>,
        budget: usize,
        accepted: u32,
        received: &mut usize,
        on_frame: &mut impl FnMut(&VirtioNetHdr, &[u8]),
    ) -> bool {
        let membership = Arc::clone(&self.membership);
        let entry = membership.entry();
        let now = monotonic_ns();
        let due = |writer: u16, since: u64| {
            now.saturating_sub(since) >= PASS_OVER_NS || !writer_exists(&membership, writer)
        };
        loop {
            if *received >= budget {
                return false;
            }
            let Some(step) = self.late.next(ring, only, &mut self.buffer, due) else {
                return true;
            };
            match step {
                LateStep::Frame(meta) => match self.check(meta) {
                    Ok((hdr, len)) => *received += self.hand_over(&hdr, len, accepted, on_frame),
                    Err(reason) => counters::count_rx_drop(entry, reason),
                },
                LateStep::GaveUp => counters::count_rx_drop(entry, DropReason::Stalled),
                LateStep::Lost => counters::count_rx_drop(entry, DropReason::Abandoned),
                LateStep::Corrupt => counters::count_rx_drop(entry, DropReason::Corrupt),
            }
        }
    }

    /// Decides what to do about a writer that holds the slot at `position`: returns true
    /// when the slot was dealt with (abandoned or passed over) and the ring may be read on,
    /// false to wait for the writer a little longer.
    fn wait_for_writer(&mut self, ring: &ShmRing<'_>, position: u64, writer: u16) -> bool {
        if !self.writer_exists(writer) {
            // Nobody can ever publish it; the next pop counts it as abandoned.
            ring::abandon_nonexistent(ring, position, writer);
            return true;
        }
        let now = monotonic_ns();
        let waited = now.saturating_sub(self.waiting_since(position, now));
        if waited >= LATE_AFTER_NS && self.pass_late(ring, position, writer, now) {
            return true;
        }
        if waited < PASS_OVER_NS {
            return false;
        }
        if ring::pass_over(ring, position, writer) {
            self.tail = ring::advance(position, 1);
            self.in_progress = None;
            counters::count_rx_drop(self.membership.entry(), DropReason::Stalled);
        }
        // Passed over, or the writer published at the last moment: read on.
        true
    }

    /// When we first saw the writer at `position` hold its slot.
    fn waiting_since(&mut self, position: u64, now: u64) -> u64 {
        waiting_since(&mut self.in_progress, position, now)
    }

    /// Whether `writer` names a peer that is up.
    fn writer_exists(&self, writer: u16) -> bool {
        writer_exists(&self.membership, writer)
    }

    /// Checks a frame copied out of the ring, on our private copy: the sender (or a
    /// scribbler) cannot change it any more. The length must be what was copied, and an
    /// offload header must describe work that can be done within the network's rules.
    fn check(&self, meta: SlotMeta) -> std::result::Result<(VirtioNetHdr, usize), DropReason> {
        if meta.generation != self.membership.generation {
            return Err(DropReason::Stale);
        }
        let len = meta.len as usize;
        // The copy was clamped to the slot (or the large buffer): a longer claim would
        // hand over stale bytes of earlier frames.
        let copied = if meta.large == 0 {
            self.slot_capacity
        } else {
            LARGE_FRAME
        };
        if len > copied.min(self.buffer.len()) {
            return Err(DropReason::Invalid);
        }
        let frame = &self.buffer[..len];
        let hdr = header_from_words(meta.offload);
        if hdr.needs_checksum() {
            offload::checksum_field(frame, &hdr).map_err(|_| DropReason::Invalid)?;
        }
        if hdr.gso_type == GsoType::None {
            ethernet::validate_frame(frame, self.mtu).map_err(|_| DropReason::Invalid)?;
        } else {
            // A super-frame: its Ethernet header is checked here, its segment size against
            // the floor, and each segment it becomes against the MTU when it is cut.
            if hdr.gso_size < MIN_GSO_SIZE || needed_offloads(&hdr).is_none() {
                return Err(DropReason::Invalid);
            }
            EthernetFrame::new_checked(frame)
                .and_then(|f| EthernetRepr::parse(&f))
                .map_err(|_| DropReason::Invalid)?;
        }
        // Senders tag each copy for us; a copy of a VLAN we are not in, or in a form our
        // port does not carry, can only come from a writer that broke the rules.
        if !self.membership.vlans.accepts_received(frame) {
            return Err(DropReason::VlanFiltered);
        }
        Ok((hdr, len))
    }

    /// Sleeps until a frame waits or `timeout` passes; returns whether work waits. Takes
    /// part in the network's liveness sweeps while it sleeps.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let mut sleep = Sleep {
            membership: &self.membership,
            in_progress: &mut self.in_progress,
            late_room: self.late.room(),
            pending: &mut self.pending,
            last_maintenance_ns: &mut self.last_maintenance_ns,
        };
        sleep.until_work(self.tail, timeout)
    }

    /// The peer slot and generation this receiver reads for, as senders name it.
    pub fn peer(&self) -> (u16, u32) {
        (self.membership.index, self.membership.generation)
    }

    /// Whether nothing waits in the ring, nor is being written into it: the position
    /// read next is still free, and no slot passed over late is waited for. A port that hands this peer frames past its ring (see
    /// [`crate::network::send::Shortcut`]) may do so only then, so that no frame overtakes
    /// one sent before it.
    pub fn ring_is_empty(&self) -> bool {
        let ring = self.membership.region.ring(self.membership.index);
        let slots = ring::SlotMemory::slot_count(&ring);
        let word = ring::SlotMemory::state(&ring, self.tail & (slots - 1));
        let state = ring::SlotState::decode(ring::AtomicWord::load(word, Ordering::Acquire));
        state.tag == ring::Tag::Free && state.position == self.tail && self.late.is_empty()
    }

    /// Counts a frame of `len` bytes handed to this peer past its ring, as if it had been
    /// received from it; written with the next receive or [`Receiver::flush`].
    pub fn count_received(&mut self, len: usize) {
        self.pending.add(slot::RX_PACKETS, 1);
        self.pending.add(slot::RX_BYTES, len as u64);
    }

    /// Writes counts accumulated outside a receive.
    pub fn flush(&mut self) {
        self.pending.flush(self.membership.entry());
    }

    /// The ring position this receiver reads next, for a [`RingWatch`] to sleep on.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// A handle that sleeps on this receiver's ring from another thread (see
    /// [`RingWatch`]).
    pub fn watch(&self) -> RingWatch {
        RingWatch {
            membership: Arc::clone(&self.membership),
            in_progress: None,
            pending: Pending::default(),
            last_maintenance_ns: 0,
        }
    }
}

/// Sleeps on a receiver's ring for a thread that does not own the [`Receiver`]: a port
/// whose one thread polls many rings and guest queues, and while idle sleeps in `poll` on
/// their eventfds, leaves the futex sleep on each ring to a watch, which wakes it when
/// frames arrive. The receiver tells the watch where it stands
/// ([`Receiver::position`]); the watch reads nothing from the ring but its state words.
/// Its wake-ups are counted as the receiver's would be.
#[derive(Debug)]
pub struct RingWatch {
    membership: Arc<Membership>,
    in_progress: Option<(u64, u64)>,
    pending: Pending,
    last_maintenance_ns: u64,
}

impl RingWatch {
    /// Sleeps until a frame waits at `position` or `timeout` passes; returns whether work
    /// waits. Exactly [`Receiver::wait`], for a receiver standing at `position`.
    pub fn wait(&mut self, position: u64, timeout: Duration) -> bool {
        let mut sleep = Sleep {
            membership: &self.membership,
            in_progress: &mut self.in_progress,
            // The receiver's list is not ours to see; a full one costs at worst a few
            // early returns until the writer publishes or is passed over.
            late_room: LATE_SLOTS,
            pending: &mut self.pending,
            last_maintenance_ns: &mut self.last_maintenance_ns,
        };
        sleep.until_work(position, timeout)
    }
}

/// What sleeping on a ring needs: the receiver's, or a watch's.
struct Sleep<'r> {
    membership: &'r Arc<Membership>,
    in_progress: &'r mut Option<(u64, u64)>,
    /// Room left in the receiver's late list.
    late_room: usize,
    pending: &'r mut Pending,
    last_maintenance_ns: &'r mut u64,
}

impl Sleep<'_> {
    fn until_work(&mut self, tail: u64, timeout: Duration) -> bool {
        let start = monotonic_ns();
        let limit = timeout.as_nanos().min(u64::MAX as u128) as u64;
        let membership = Arc::clone(self.membership);
        let ring = membership.region.ring(membership.index);
        let control = ring.control();
        loop {
            let seen = control.wake.load(Ordering::Acquire);
            control.sleeping.store(1, Ordering::Relaxed);
            // Pairs with the fence in Sender::end_batch (see there).
            fence(Ordering::SeqCst);
            if ring::has_work(&ring, tail)
                || control.late_published.load(Ordering::Acquire)
                    != control.late_seen.load(Ordering::Relaxed)
            {
                control.sleeping.store(0, Ordering::Relaxed);
                return true;
            }
            let now = monotonic_ns();
            let elapsed = now.saturating_sub(start);
            if elapsed >= limit {
                control.sleeping.store(0, Ordering::Relaxed);
                return false;
            }
            let mut slice = Duration::from_nanos(limit - elapsed).min(WAIT_SLICE);
            // A writer holds the slot at our cursor: sleep no longer than our patience
            // with it, then report work, so that `receive` passes over it. Frames
            // published behind a writer that has held it a while are work too: `receive`
            // passes over that writer late and reads them. (Senders wake us as they
            // publish them.)
            if let Some(writer) = ring::in_progress(&ring, tail) {
                let since = waiting_since(self.in_progress, tail, now);
                let due = since.saturating_add(PASS_OVER_NS);
                let late_due = now.saturating_sub(since) >= LATE_AFTER_NS
                    && ring::published_behind(&ring, tail, self.late_room);
                if now >= due || late_due || !writer_exists(&membership, writer) {
                    control.sleeping.store(0, Ordering::Relaxed);
                    return true;
                }
                slice = slice.min(Duration::from_nanos(due - now));
            }
            let timespec = timespec(slice);
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
            if now.saturating_sub(*self.last_maintenance_ns) >= SWEEP_INTERVAL_NS {
                *self.last_maintenance_ns = now;
                membership.maintain(now);
            }
        }
    }
}

/// When the writer at `position` was first seen holding its slot (`in_progress` remembers
/// it between looks).
fn waiting_since(in_progress: &mut Option<(u64, u64)>, position: u64, now: u64) -> u64 {
    match *in_progress {
        Some((waiting_at, since)) if waiting_at == position => since,
        _ => {
            *in_progress = Some((position, now));
            now
        }
    }
}

/// Whether `writer` names a peer that is up: only such a peer can finish a frame.
fn writer_exists(membership: &Membership, writer: u16) -> bool {
    let region = &membership.region;
    u32::from(writer) < region.layout.geometry.max_peers
        && region
            .peers()
            .at(u64::from(writer))
            .status
            .load(Ordering::Acquire)
            == entry_status::UP
}
