//! A peer: one member of a network, the handle that holds both its halves.
//!
//! A peer joins with [`JoinOptions`] (its kind, MAC, flags, offloads), sends through its
//! [`Sender`] and receives through its [`Receiver`]. The two halves can live on two
//! threads ([`Peer::split`]); the peer leaves the network when both are dropped.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::{MacAddress, VirtioNetHdr};

use super::counters::PeerCounters;
use super::error::Result;
use super::membership::{Control, JoinOptions, Membership};
use super::receive::Receiver;
use super::region::Region;
use super::send::{Sender, Sent};

/// A member of a network.
#[derive(Debug)]
pub struct Peer {
    sender: Sender,
    receiver: Receiver,
}

impl Peer {
    pub(super) fn join(region: Arc<Region>, options: JoinOptions) -> Result<Peer> {
        let (membership, tail) = Membership::join(region, &options)?;
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
