//! Carrying a batch of frames or datagrams between a socket and the network without
//! allocating per round.

use std::ops::Range;
use std::os::fd::AsFd;

/// Frames stored one after the other in one buffer, so that a batch costs no allocation
/// once warmed up: copied in ([`FrameBatch::push`], from a decoder or a ring), or read
/// straight into it ([`FrameBatch::room`] then [`FrameBatch::keep`], from a device), in
/// which case the read is the frame's only copy on its way into the network.
#[derive(Debug, Default)]
pub(crate) struct FrameBatch {
    /// Storage, only ever grown: `end` says how much of it the batch uses, so filling it
    /// costs no zeroing once it has reached the size of a round.
    bytes: Vec<u8>,
    end: usize,
    /// The length of the room last handed out.
    room: usize,
    frames: Vec<Range<usize>>,
}

impl FrameBatch {
    pub fn clear(&mut self) {
        self.end = 0;
        self.room = 0;
        self.frames.clear();
    }

    pub fn push(&mut self, frame: &[u8]) {
        self.push_parts(&[frame]);
    }

    /// Pushes one frame given as parts written one after the other (a frame retagged on
    /// its way in, see [`crate::wire::vlan::retag_parts`]).
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        let len = parts.iter().map(|part| part.len()).sum();
        let room = self.room(len);
        let mut at = 0;
        for part in parts {
            room[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.keep(0..len);
    }

    /// Room for one read of up to `len` bytes, after the batch's last frame. Until
    /// [`FrameBatch::keep`], what is read there is not part of the batch.
    pub fn room(&mut self, len: usize) -> &mut [u8] {
        let needed = self.end + len;
        if self.bytes.len() < needed {
            self.bytes.resize(needed, 0);
        }
        self.room = len;
        &mut self.bytes[self.end..needed]
    }

    /// Keeps bytes `frame` of the last room (clamped to it) as the batch's next frame,
    /// leaving out whatever header the read brought in front of it; the room past it is
    /// free for the next read.
    pub fn keep(&mut self, frame: Range<usize>) {
        let end = frame.end.min(self.room);
        let start = frame.start.min(end);
        self.frames.push(self.end + start..self.end + end);
        self.end += end;
        self.room = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().map(|frame| &self.bytes[frame.clone()])
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

    /// Reads `bytes` into a room of `room` bytes, as a device read would.
    fn read(batch: &mut FrameBatch, room: usize, bytes: &[u8]) -> usize {
        let space = batch.room(room);
        let n = bytes.len().min(space.len());
        space[..n].copy_from_slice(&bytes[..n]);
        n
    }

    #[test]
    fn frames_read_behind_headers_come_back_whole_and_in_order() {
        let mut batch = FrameBatch::default();
        for round in 0..3u8 {
            batch.clear();
            // A header of 2 bytes in front of each frame; one read is refused (not kept),
            // and its room is used again by the next.
            let n = read(&mut batch, 64, &[0xee, 0xee, round, 1, 1, 1]);
            batch.keep(2..n);
            read(&mut batch, 64, &[0xee, 0xee, 9, 9]);
            let n = read(&mut batch, 64, &[0xee, 0xee, round, 2]);
            batch.keep(2..n);
            // A frame as long as its room.
            let long = vec![round; 100];
            let n = read(&mut batch, 100, &long);
            batch.keep(0..n);
            let frames: Vec<Vec<u8>> = batch.iter().map(<[u8]>::to_vec).collect();
            assert_eq!(
                frames,
                vec![vec![round, 1, 1, 1], vec![round, 2], long],
                "round {round}"
            );
        }
    }

    #[test]
    fn a_kept_range_past_its_room_is_cut_to_it() {
        let mut batch = FrameBatch::default();
        read(&mut batch, 4, &[1, 2, 3, 4]);
        batch.keep(2..1000);
        read(&mut batch, 4, &[5, 6, 7, 8]);
        // Reversed: starts past its end (and past the room).
        let (start, end) = (9, 3);
        batch.keep(start..end);
        let frames: Vec<Vec<u8>> = batch.iter().map(<[u8]>::to_vec).collect();
        assert_eq!(frames, vec![vec![3, 4], vec![]]);
    }
}
