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
//! ARP reply or a TCP acknowledgement is on the device's queue by then. So the writer,
//! after the frames it drained, reads the device itself (unless the reader is at it) and
//! sends what it finds: the answer leaves with no wake-up of the reader. A ping between
//! two namespaces otherwise crosses four thread wake-ups (each side's reader and writer),
//! and on a virtual machine's idle cores a wake-up costs tens of microseconds. Both threads
//! read the device under one lock ([`Inbound`]), each reading and sending its batch in one
//! go, so frames enter the network in the order the device gave them.
//!
//! Frames longer than the network's MTU (the interface's MTU raised above it) are refused
//! by the network and counted as `invalid` on this peer.

use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use tun_rs::SyncDevice;

use crate::network::counters::DropReason;
use crate::network::rate::Admission;
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

/// The port's data path, shared by its reader and writer threads.
pub(super) struct Frames<'p> {
    device: &'p SyncDevice,
    /// The device speaks the virtio-net header.
    offload: bool,
    ifname: &'p str,
    /// Device → network: whichever thread holds it reads the device.
    inbound: Mutex<Inbound>,
}

/// What reading the device needs: the peer's sending half and the batch's buffers.
struct Inbound {
    sender: Sender,
    buffer: Vec<u8>,
    batch: FrameBatch,
    headers: Vec<VirtioNetHdr>,
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

impl<'p> Frames<'p> {
    pub(super) fn new(
        device: &'p SyncDevice,
        offload: bool,
        mut sender: Sender,
        ifname: &'p str,
    ) -> Frames<'p> {
        sender.set_hold_back(HOLD_BACK);
        Frames {
            device,
            offload,
            ifname,
            inbound: Mutex::new(Inbound {
                sender,
                buffer: vec![0u8; READ_BUFFER],
                batch: FrameBatch::default(),
                headers: Vec::with_capacity(READ_BATCH),
            }),
        }
    }

    /// The reader: device → network, a batch per wake-up, until a doorbell rings or the
    /// device goes.
    pub(super) fn read_device(&self, stop: &Doorbell, closed: &Doorbell) {
        loop {
            match wait_readable(self.device, stop, closed) {
                Ok(Wake::Ready) => {}
                Ok(Wake::Stop) => return,
                Err(e) => {
                    tracing::warn!(port = self.ifname, error = %e, "cannot wait for the device");
                    return;
                }
            }
            let read = self.read(&mut lock(&self.inbound));
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
    pub(super) fn write_device(&self, mut receiver: Receiver, stop: &Doorbell, closed: &Doorbell) {
        let mut failed: Option<io::ErrorKind> = None;
        while !stop.is_rung() && !closed.is_rung() {
            if !receiver.wait(WRITER_WAIT) {
                continue;
            }
            let written = receiver.receive_offloaded(WRITE_BUDGET, |hdr, frame| {
                // A frame the device refuses is lost at the kernel's edge, as on a wire:
                // an interface just brought down (before the peer's link-down flag is
                // seen) answers EIO, and the kernel counts it. Logged once per kind of
                // error.
                if let Err(e) = to_device(self.device, self.offload, hdr, frame)
                    && failed != Some(e.kind())
                {
                    failed = Some(e.kind());
                    tracing::debug!(port = self.ifname, error = %e, "the device refused a frame");
                }
            });
            if written == 0 {
                continue;
            }
            // The stack's answers, if the reader is not reading already. A hold by the
            // rate limit is the reader's to sleep out: what is left keeps the device
            // readable.
            if let Some(mut inbound) = try_lock(&self.inbound)
                && self.read(&mut inbound) == Read::Ended
            {
                return;
            }
        }
    }

    /// Reads every frame waiting on the device (up to [`READ_BATCH`], and as many as the
    /// rate limit lets through) and sends them into the network as one batch.
    fn read(&self, inbound: &mut Inbound) -> Read {
        let Inbound {
            sender,
            buffer,
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
            match self.device.recv(buffer) {
                Ok(len) => match from_device(&buffer[..len.min(buffer.len())], self.offload) {
                    Ok((hdr, frame)) => {
                        batch_bytes += frame.len() as u64;
                        headers.push(hdr);
                        batch.push(frame);
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
            outcome
        } else {
            sender.send_batch_offloaded(headers.iter().copied().zip(batch.iter()));
            // Frames were read: a hold starts with the next read.
            match outcome {
                Read::Held(_) => Read::Done,
                other => other,
            }
        }
    }
}

/// The frame inside what was read from the device, and its offload header when the
/// device speaks one. A read too short to hold the header is counted as invalid.
fn from_device(read: &[u8], offload: bool) -> Result<(VirtioNetHdr, &[u8]), DropReason> {
    if !offload {
        return Ok((VirtioNetHdr::default(), read));
    }
    let hdr = VirtioNetHdr::parse(read, LEGACY_HEADER_LEN).map_err(|_| DropReason::Invalid)?;
    Ok((hdr, &read[LEGACY_HEADER_LEN..]))
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
