//! Carrying a batch of frames or datagrams between a socket and the network without
//! allocating per round.

use std::os::fd::AsFd;

/// Frames copied out of a decoder or a ring, stored back to back so that a batch costs
/// no allocation once warmed up.
#[derive(Debug, Default)]
pub(crate) struct FrameBatch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FrameBatch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ends.push(self.bytes.len());
    }

    /// Pushes one frame given as parts written one after the other (a frame retagged on
    /// its way in, see [`crate::wire::vlan::retag_parts`]).
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.ends.push(self.bytes.len());
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// One datagram of a round: who sent it and where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Received<A> {
    /// The sender, as the port wants to know it.
    pub from: A,
    start: usize,
    end: usize,
    /// Longer than its slot: the socket cut it short.
    pub oversize: bool,
}

/// The datagrams a port takes from its socket in one round, each in its own slot of one
/// buffer, so that a round costs no allocation and its frames can go into the network as
/// one batch.
#[derive(Debug)]
pub(crate) struct DatagramBatch<A> {
    buffer: Vec<u8>,
    slot: usize,
    datagrams: Vec<Received<A>>,
}

impl<A> DatagramBatch<A> {
    /// Room for `slots` datagrams of up to `slot` bytes each.
    pub fn new(slots: usize, slot: usize) -> Self {
        DatagramBatch {
            buffer: vec![0; slots * slot],
            slot,
            datagrams: Vec::with_capacity(slots),
        }
    }

    /// Replaces the round with the datagrams waiting on `socket`, without waiting for
    /// more: at most one attempt per slot, whatever each attempt turns out to be.
    /// `sender` turns the source address into what the port wants to know, or `None` to
    /// drop the datagram (the caller counts it if it can). `MSG_TRUNC` reports a
    /// datagram's real length, so one longer than a slot is kept, flagged `oversize`.
    pub fn receive(
        &mut self,
        socket: impl AsFd,
        mut sender: impl FnMut(Option<rustix::net::SocketAddrAny>) -> Option<A>,
    ) {
        use rustix::io::Errno;
        use rustix::net::RecvFlags;
        self.datagrams.clear();
        let slots = self.buffer.len() / self.slot.max(1);
        for _ in 0..slots {
            let start = self.datagrams.len() * self.slot;
            let Some(space) = self.buffer.get_mut(start..start + self.slot) else {
                break;
            };
            match rustix::net::recvfrom(&socket, space, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
                Ok((stored, announced, from)) => {
                    if let Some(from) = sender(from) {
                        self.datagrams.push(Received {
                            from,
                            start,
                            end: start + stored,
                            oversize: announced > stored,
                        });
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    if e != Errno::AGAIN {
                        tracing::warn!(error = %e, "receiving a datagram failed");
                    }
                    break;
                }
            }
        }
    }

    /// The round's datagrams, in the order they arrived.
    pub fn datagrams(&self) -> &[Received<A>] {
        &self.datagrams
    }

    /// The bytes of one of the round's datagrams (at most a slot).
    pub fn bytes(&self, datagram: &Received<A>) -> &[u8] {
        &self.buffer[datagram.start..datagram.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_hands_back_the_frames_it_was_given() {
        let mut batch = FrameBatch::default();
        assert!(batch.is_empty());
        batch.push(b"first");
        batch.push(b"");
        batch.push(b"third!");
        let frames: Vec<&[u8]> = batch.iter().collect();
        assert_eq!(frames, vec![&b"first"[..], b"", b"third!"]);
        batch.clear();
        assert_eq!(batch.iter().count(), 0);
    }
}
