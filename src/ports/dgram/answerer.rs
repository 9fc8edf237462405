//! A datagram client's thread: network → the client's address.
//!
//! It sleeps on its peer's ring and sends what arrives to the client's address, one
//! datagram per frame. Every wait is bounded by [`WRITER_WAIT`], so that it notices within
//! that time when the port stops or the client expires; a client whose address no longer
//! answers is reported gone.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{SendFlags, SocketAddrUnix};

use crate::network::Receiver;
use crate::ports::batch::FrameBatch;
use crate::ports::doorbell::Doorbell;

/// Longest a client's thread waits, in its ring or in a blocked send, before it looks
/// whether the port is stopping or the client expired (see
/// [`stream::WRITER_WAIT`](crate::ports::stream::WRITER_WAIT)).
pub const WRITER_WAIT: Duration = crate::ports::stream::WRITER_WAIT;

/// Frames a client's thread takes from its ring per round.
const WRITE_BUDGET: usize = 64;

/// A client's thread: network → its address.
pub(super) struct Answerer {
    /// The receiving half of the client's peer; the peer leaves when the thread ends.
    pub(super) receiver: Receiver,
    /// A handle on the port's socket, to send from.
    pub(super) socket: UnixDatagram,
    /// The client's address.
    pub(super) address: SocketAddrUnix,
    /// The client's label, for logs.
    pub(super) label: String,
    /// Set when the address stopped answering (and `client_gone` rung).
    pub(super) gone: Arc<AtomicBool>,
    /// Set when the client expired: the thread ends, and rings `client_gone` so that the
    /// serving thread joins it.
    pub(super) retired: Arc<AtomicBool>,
    /// Set when the port stops.
    pub(super) stopping: Arc<AtomicBool>,
    /// Rung when the thread ends on its own (the client gone or expired).
    pub(super) client_gone: Arc<Doorbell>,
}

/// What became of one frame sent to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The client's socket took it.
    Sent,
    /// The address no longer answers.
    Gone,
    /// The port is stopping, or the client expired.
    Ending,
}

impl Answerer {
    /// Sends what the network delivers until the client is gone or expired, or the port
    /// stops.
    pub(super) fn run(mut self) {
        let mut batch = FrameBatch::default();
        while !self.should_end() {
            if !self.receiver.wait(WRITER_WAIT) {
                continue;
            }
            batch.clear();
            self.receiver
                .receive(WRITE_BUDGET, |frame| batch.push(frame));
            for frame in batch.iter() {
                match self.deliver(frame) {
                    Delivery::Sent => {}
                    Delivery::Ending => break,
                    Delivery::Gone => {
                        self.gone.store(true, Ordering::Relaxed);
                        self.client_gone.ring();
                        return;
                    }
                }
            }
        }
        if self.retired.load(Ordering::Relaxed) {
            // The peer leaves as the receiver drops on return; the bell wakes the serving
            // thread to join this one (if it looks before this thread has quite finished,
            // it joins it on a later turn).
            self.client_gone.ring();
        }
    }

    /// Whether the port is stopping or this client expired.
    fn should_end(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) || self.retired.load(Ordering::Relaxed)
    }

    fn deliver(&self, frame: &[u8]) -> Delivery {
        // Bounded by the stop and retire flags: each blocked attempt lasts at most
        // WRITER_WAIT.
        loop {
            match rustix::net::sendto(&self.socket, frame, SendFlags::NOSIGNAL, &self.address) {
                Ok(_) => return Delivery::Sent,
                // The send timed out on a full queue (the client is not reading), or a
                // signal interrupted it: try again unless the thread should end.
                Err(Errno::AGAIN | Errno::INTR) => {
                    if self.should_end() {
                        return Delivery::Ending;
                    }
                }
                Err(Errno::CONNREFUSED | Errno::NOENT) => return Delivery::Gone,
                Err(e) => {
                    tracing::warn!(port = %self.label, error = %e, "cannot send to the client; its peer leaves");
                    return Delivery::Gone;
                }
            }
        }
    }
}
