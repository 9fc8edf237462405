//! Frames between the device and the network.
//!
//! Two threads move them, each woken by its own side: the **reader** sleeps in `poll` on
//! the device, the **writer** on the peer's ring. The writer writes each frame it drains
//! to the device (a TAP takes one frame per `write`); the reader reads every frame waiting
//! (up to [`READ_BATCH`]) and sends them into the network as one batch, so receivers are
//! woken once per batch, not once per frame.
//!
//! **Answers read at once.** A kernel stack often answers a frame before the `write` that
//! delivered it returns: the write runs the stack's receive path, and an echo reply, an
//! ARP reply or a TCP acknowledgement is on the device's queue by then. So whichever
//! thread wrote frames to a device reads that device itself afterwards (unless its reader
//! is at it) and sends what it finds: the answer leaves with no wake-up of the reader.
//! Both threads read the device under one lock ([`Inbound`]), each reading and sending
//! its batch in one go, so frames enter the network in the order the device gave them.
//!
//! **Devices of one process.** A process serving several TAPs ([`super::TapPort::serve_all`])
//! writes a frame routed from one of its devices to another straight to that device
//! ([`Siblings`], the network's [`Shortcut`]): one copy less than through the receiver's
//! ring, and no wake-up of its writer. Then the answer is read at once as above, and may
//! go straight back the same way. A ping between two namespaces served by one process
//! thus crosses one thread wake-up (the first device's reader) where through the rings it
//! crosses three (each side's reader or writer), and on a virtual machine's idle cores a
//! wake-up costs tens of microseconds; a TCP stream's data and acknowledgements move
//! without hand-offs between threads. Everything before the write is the network's, as
//! for any copy: the checks, learning, VLANs, policy, rate limit and the receiver's
//! admission (a link that is down, a full ring's congestion); the frame is counted as
//! received by its receiver. Only a copy needing no retagging, no offload work the device
//! does not take, and for a receiver with nothing in its ring goes that way, under the
//! receiver's writer lock ([`Outbound`]): no frame overtakes one queued before it.
//!
//! Frames longer than the network's MTU (the interface's MTU raised above it) are refused
//! by the network and counted as `invalid` on this peer.

use std::io;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use tun_rs::SyncDevice;

use crate::network::counters::DropReason;
use crate::network::rate::Admission;
use crate::network::send::Shortcut;
use crate::network::{Receiver, Sender, monotonic_ns};
use crate::ports::batch::FrameBatch;
use crate::ports::doorbell::Doorbell;
use crate::ports::locks::{lock, try_lock};
use crate::ports::wait;
use crate::wire::virtio_net::{LEGACY_HEADER_LEN, VirtioNetHdr};

use super::{Wake, wait_readable};

/// Frames read from the device per batch, at most.
pub const READ_BATCH: usize = 64;

/// Frames the writer takes from the ring per wake-up, at most.
const WRITE_BUDGET: usize = 64;

/// Longest sleep of the writer before it looks at the doorbells again.
const WRITER_WAIT: Duration = Duration::from_millis(250);

/// How long a unicast frame read from the device may wait for room in its receiver's
/// full ring before that receiver is marked congested ([`Sender::set_hold_back`]).
/// Meanwhile the guest's frames wait in the kernel's queue, and its TCP slows down instead
/// of losing them; a few scheduler ticks of a shared machine.
const HOLD_BACK: Duration = Duration::from_millis(10);

/// Largest frame a TAP can hand over (its MTU is a 16-bit quantity), plus the header.
const READ_BUFFER: usize = LEGACY_HEADER_LEN + crate::shm::layout::LARGE_FRAME;

/// Devices one thread reads in a row for answers to what it wrote (each read a batch),
/// before it goes back to its own wait: a TCP stream between two devices of the process
/// could otherwise keep one thread answering for ever while the others wait for the
/// locks. What is left stays readable, and the device's own reader wakes for it.
const ANSWER_READS: usize = 8;

/// Devices of one process whose frames may go straight to each other: the first 64 (a
/// bit each in a batch's bookkeeping); any beyond take the ring.
const SIBLINGS: usize = 64;

/// The port's data path, shared by its reader and writer threads and, for frames
/// between the devices of one process, by the other ports' threads.
pub(super) struct Frames<'p> {
    device: &'p SyncDevice,
    /// The device speaks the virtio-net header.
    offload: bool,
    ifname: &'p str,
    /// The peer slot and generation the port receives for, as senders name it.
    peer: (u16, u32),
    /// The offload work the device takes (what the peer advertises).
    takes: u32,
    /// Rung when the port ends (its device gone), so its threads stop.
    closed: &'p Doorbell,
    /// Device → network: whichever thread holds it reads the device. Empty once the port
    /// has ended (its peer left).
    inbound: Mutex<Option<Inbound>>,
    /// Network → device: whichever thread holds it writes the device.
    outbound: Mutex<Option<Outbound>>,
}

/// What reading the device needs: the peer's sending half and the batch's buffers.
struct Inbound {
    sender: Sender,
    batch: FrameBatch,
    headers: Vec<VirtioNetHdr>,
}

/// What writing the device needs: the peer's receiving half, and the last kind of write
/// error logged.
struct Outbound {
    receiver: Receiver,
    failed: Option<io::ErrorKind>,
}

/// How a read of the device ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Nothing more waits, or a batch was read.
    Done,
    /// The rate limit has no room for another frame for this long (ns); the frames stay
    /// in the kernel's queue.
    Held(u64),
    /// The device has gone (deleted under us).
    Ended,
}

/// The devices of a process that one batch wrote to, one bit per place in the port list.
type Written = u64;

impl<'p> Frames<'p> {
    pub(super) fn new(
        device: &'p SyncDevice,
        (offload, takes): (bool, u32),
        (mut sender, receiver): (Sender, Receiver),
        ifname: &'p str,
        closed: &'p Doorbell,
    ) -> Frames<'p> {
        sender.set_hold_back(HOLD_BACK);
        Frames {
            device,
            offload,
            ifname,
            peer: receiver.peer(),
            takes,
            closed,
            inbound: Mutex::new(Some(Inbound {
                sender,
                batch: FrameBatch::default(),
                headers: Vec::with_capacity(READ_BATCH),
            })),
            outbound: Mutex::new(Some(Outbound {
                receiver,
                failed: None,
            })),
        }
    }

    /// The port has ended: its peer leaves the network (the halves are dropped), and
    /// other ports' threads no longer write to or read its device.
    pub(super) fn end(&self) {
        drop(lock(&self.inbound).take());
        drop(lock(&self.outbound).take());
    }

    /// The reader: device → network, a batch per wake-up, until a doorbell rings or the
    /// device goes. `all` is the process's ports, this one among them.
    pub(super) fn read_device(&self, all: &[Frames<'_>], stop: &Doorbell) {
        let closed = self.closed;
        loop {
            match wait_readable(self.device, stop, closed) {
                Ok(Wake::Ready) => {}
                Ok(Wake::Stop) => return,
                Err(e) => {
                    tracing::warn!(port = self.ifname, error = %e, "cannot wait for the device");
                    return;
                }
            }
            let (read, written) = match lock(&self.inbound).as_mut() {
                Some(inbound) => self.read(inbound, all),
                None => return,
            };
            answers(all, written);
            match read {
                Read::Done => {}
                Read::Ended => return,
                Read::Held(ns) => {
                    // Held back by the rate limit: sleep until the tokens are there (or a
                    // stop).
                    let doorbells = [(stop.as_fd(), Wake::Stop), (closed.as_fd(), Wake::Stop)];
                    match wait::first_ready(doorbells, Some(Duration::from_nanos(ns))) {
                        Ok(Some(Wake::Stop)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(port = self.ifname, error = %e, "cannot wait for the rate limit");
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The writer: network → device, until a doorbell rings or the device goes. After
    /// the frames it writes, it reads the device's answers itself (see the module's
    /// documentation).
    pub(super) fn write_device(&self, all: &[Frames<'_>], stop: &Doorbell) {
        let Some(mut watch) = lock(&self.outbound).as_ref().map(|o| o.receiver.watch()) else {
            return;
        };
        while !stop.is_rung() && !self.closed.is_rung() {
            let Some(position) = lock(&self.outbound).as_ref().map(|o| o.receiver.position())
            else {
                return;
            };
            if !watch.wait(position, WRITER_WAIT) {
                continue;
            }
            let written = match lock(&self.outbound).as_mut() {
                Some(outbound) => self.drain(outbound),
                None => return,
            };
            if written == 0 {
                continue;
            }
            // The stack's answers, if the reader is not reading already. A hold by the
            // rate limit is the reader's to sleep out: what is left keeps the device
            // readable.
            let Some((read, written)) = self.read_answers(all) else {
                continue;
            };
            if read == Read::Ended {
                return;
            }
            answers(all, written);
        }
    }

    /// Reads the device unless another thread is reading it (or the port has ended):
    /// how the read ended and the devices it wrote frames to directly.
    fn read_answers(&self, all: &[Frames<'_>]) -> Option<(Read, Written)> {
        let mut inbound = try_lock(&self.inbound)?;
        Some(self.read(inbound.as_mut()?, all))
    }

    /// Writes up to [`WRITE_BUDGET`] frames from the ring to the device; returns how many.
    fn drain(&self, outbound: &mut Outbound) -> usize {
        let Outbound { receiver, failed } = outbound;
        receiver.receive_offloaded(WRITE_BUDGET, |hdr, frame| {
            self.write(failed, hdr, frame);
        })
    }

    /// Writes one frame to the device. A frame the device refuses is lost at the kernel's
    /// edge, as on a wire: an interface just brought down (before the peer's link-down
    /// flag is seen) answers EIO, and the kernel counts it. Logged once per kind of error.
    fn write(&self, failed: &mut Option<io::ErrorKind>, hdr: &VirtioNetHdr, frame: &[u8]) {
        if let Err(e) = to_device(self.device, self.offload, hdr, frame)
            && *failed != Some(e.kind())
        {
            *failed = Some(e.kind());
            tracing::debug!(port = self.ifname, error = %e, "the device refused a frame");
        }
    }

    /// Reads every frame waiting on the device (up to [`READ_BATCH`], and as many as the
    /// rate limit lets through) and sends them into the network as one batch; returns
    /// how it ended and the devices of `all` it wrote frames to directly.
    fn read(&self, inbound: &mut Inbound, all: &[Frames<'_>]) -> (Read, Written) {
        let Inbound {
            sender,
            batch,
            headers,
        } = inbound;
        batch.clear();
        headers.clear();
        let mut outcome = Read::Done;
        let mut batch_bytes = 0u64;
        for _ in 0..READ_BATCH {
            // Under a rate limit, read a frame only when the largest one would still fit:
            // the guest's frames wait in the kernel, and its TCP slows down instead of
            // losing them.
            match sender.rate_admission(batch_bytes, READ_BUFFER as u64, monotonic_ns()) {
                Admission::Take => {}
                Admission::EndBatch => break,
                Admission::HoldFor(ns) => {
                    outcome = Read::Held(ns);
                    break;
                }
            }
            // Read straight into the batch: the read is the frame's one copy on its way
            // into the network (and to a device of this process, past the ring).
            let room = batch.room(READ_BUFFER);
            match self.device.recv(room) {
                Ok(len) => match from_device(&room[..len.min(room.len())], self.offload) {
                    Ok((hdr, frame)) => {
                        batch_bytes += frame.len() as u64;
                        headers.push(hdr);
                        batch.keep(frame);
                    }
                    Err(reason) => sender.count_drop(reason),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EBADFD once the interface was deleted under us.
                    tracing::info!(port = self.ifname, error = %e, "the device has gone; stopping");
                    outcome = Read::Ended;
                    break;
                }
            }
        }
        if batch.is_empty() {
            sender.flush();
            return (outcome, 0);
        }
        let mut siblings = Siblings {
            all,
            shut: 0,
            written: 0,
        };
        sender.send_batch_via(
            headers.iter().zip(batch.iter()),
            monotonic_ns(),
            &mut siblings,
        );
        siblings.flush();
        // Frames were read: a hold starts with the next read.
        let outcome = match outcome {
            Read::Held(_) => Read::Done,
            other => other,
        };
        (outcome, siblings.written)
    }
}

/// One bit for place `index` in the port list (none past [`SIBLINGS`]).
fn bit(index: usize) -> Written {
    if index < SIBLINGS { 1 << index } else { 0 }
}

/// Reads the answers on the devices in `todo` (places in `all`) and on those the answers
/// were written to, up to [`ANSWER_READS`] reads; a device whose reader (or another
/// thread) is reading it already is left to it.
fn answers(all: &[Frames<'_>], mut todo: Written) {
    for _ in 0..ANSWER_READS {
        if todo == 0 {
            return;
        }
        let index = todo.trailing_zeros() as usize;
        todo &= todo - 1;
        let Some(port) = all.get(index) else {
            return;
        };
        let Some((read, written)) = port.read_answers(all) else {
            continue;
        };
        if read == Read::Ended {
            port.closed.ring();
        }
        todo |= written;
    }
}

/// The process's other devices as a batch's way past their rings (see the module's
/// documentation).
struct Siblings<'s, 'p> {
    all: &'s [Frames<'p>],
    /// Devices whose copies go through the ring for the rest of the batch: one went there.
    shut: Written,
    /// Devices written to directly.
    written: Written,
}

impl Siblings<'_, '_> {
    /// After the batch: the receptions counted for each device written to go to its
    /// peer's counters, one write each.
    fn flush(&self) {
        let mut written = self.written;
        while written != 0 {
            let place = written.trailing_zeros() as usize;
            written &= written - 1;
            if let Some(outbound) = lock(&self.all[place].outbound).as_mut() {
                outbound.receiver.flush();
            }
        }
    }

    /// The place in the port list of the device receiving for peer slot `index`.
    fn place(&self, index: u16) -> Option<usize> {
        self.all
            .iter()
            .take(SIBLINGS)
            .position(|port| port.peer.0 == index)
    }
}

impl Shortcut for Siblings<'_, '_> {
    fn offer(&mut self, peer: (u16, u32), copy: (&VirtioNetHdr, u32), frame: &[u8]) -> bool {
        let ((index, generation), (hdr, needed)) = (peer, copy);
        let Some(place) = self.place(index) else {
            return false;
        };
        let port = &self.all[place];
        if port.peer.1 != generation || self.shut & bit(place) != 0 {
            return false;
        }
        if needed & port.takes != needed {
            return false;
        }
        // Its writer is at work, its port has ended, or its ring holds frames: this copy
        // and the batch's next ones for it go through the ring, behind them.
        let mut outbound = try_lock(&port.outbound);
        let Some(Outbound { receiver, failed }) = outbound
            .as_deref_mut()
            .and_then(Option::as_mut)
            .filter(|o| o.receiver.ring_is_empty())
        else {
            self.shut |= bit(place);
            return false;
        };
        port.write(failed, hdr, frame);
        // Written to the peer's counters once per batch ([`Siblings::flush`]).
        receiver.count_received(frame.len());
        self.written |= bit(place);
        true
    }

    fn queued(&mut self, index: u16) {
        if let Some(place) = self.place(index) {
            self.shut |= bit(place);
        }
    }

    fn serves(&mut self, _: u16) -> bool {
        // Each device's ring is read by its own writer thread, which waiting for room
        // there does not hold up.
        false
    }
}

/// Where the frame lies in what was read from the device, and its offload header when
/// the device speaks one. A read too short to hold the header is counted as invalid.
fn from_device(read: &[u8], offload: bool) -> Result<(VirtioNetHdr, Range<usize>), DropReason> {
    if !offload {
        return Ok((VirtioNetHdr::default(), 0..read.len()));
    }
    let hdr = VirtioNetHdr::parse(read, LEGACY_HEADER_LEN).map_err(|_| DropReason::Invalid)?;
    Ok((hdr, LEGACY_HEADER_LEN..read.len()))
}

/// Writes one frame from the network to the device, behind its offload header when the
/// device speaks one (header and frame in one `writev`, no copy).
fn to_device(
    device: &SyncDevice,
    offload: bool,
    hdr: &VirtioNetHdr,
    frame: &[u8],
) -> io::Result<usize> {
    if !offload {
        return device.send(frame);
    }
    let bytes = hdr.to_bytes();
    device.send_vectored(&[
        io::IoSlice::new(&bytes[..LEGACY_HEADER_LEN]),
        io::IoSlice::new(frame),
    ])
}
