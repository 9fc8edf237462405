//! A way past the ring, for ports that serve some receivers themselves.

use crate::wire::virtio_net::VirtioNetHdr;

/// A way past the ring, for a port that serves some of the receivers itself (a
/// vhost-user port with several VMs): a copy its routing decided to write into one of
/// those receivers' rings may be handed to it directly instead: one copy into the
/// receiving guest, where the ring takes three (into the ring, out into the receiver's
/// private copy, on into the guest), lguest's single copy. Everything before the copy is
/// the same: the checks,
/// learning, VLANs, policy, rate limit and the receiver's admission; so is the count of a
/// delivery. Only copies that need no retagging are offered.
///
/// The port keeps each receiver's frames in order: [`Shortcut::queued`] tells it that a
/// copy for a receiver went into its ring after all, and no later copy for that receiver
/// may then overtake it.
pub trait Shortcut {
    /// Offers one copy for the receiver at peer slot `index` joined as `generation`
    /// (`peer`), with its offload header and `needed`, the offload bits
    /// ([`crate::network::offloads`]) a receiver must take to get it as it is, every bit
    /// for work the network does not do (`copy`). Returns whether it was taken: written to
    /// the receiver (and counted on its side), or dropped there and counted. A copy not
    /// taken goes into the receiver's ring.
    fn offer(&mut self, peer: (u16, u32), copy: (&VirtioNetHdr, u32), frame: &[u8]) -> bool;

    /// A copy for the receiver at peer slot `index` went into its ring.
    fn queued(&mut self, index: u16);

    /// Whether this port itself reads the ring of the receiver at peer slot `index`: a
    /// frame for a full ring it reads must never wait for room there (see
    /// [`super::Sender::set_hold_back`]), which would be waiting for itself.
    fn serves(&mut self, index: u16) -> bool;
}

/// No way past the ring: every copy goes into a ring.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoShortcut;

impl Shortcut for NoShortcut {
    #[inline]
    fn offer(&mut self, _: (u16, u32), _: (&VirtioNetHdr, u32), _: &[u8]) -> bool {
        false
    }

    #[inline]
    fn queued(&mut self, _: u16) {}

    #[inline]
    fn serves(&mut self, _: u16) -> bool {
        false
    }
}
