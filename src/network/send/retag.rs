//! How a receiver's copy of a frame is tagged: the tag its port wants for the frame's VLAN
//! ([`egress_tag`]), and what changes between the frame as sent and that copy
//! ([`Retag`]): its length, and the offsets its offload header counts from the frame's
//! start.

use crate::network::counters::DropReason;
use crate::network::forward::{self, PeerView};
use crate::network::vlan::Classified;
use crate::wire::ethernet::VLAN_TAG_LEN;
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::vlan::VlanTci;

/// How a receiver's copy differs from the frame as sent: its tag replaced, removed or
/// added (see [`crate::wire::vlan::retag_parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retag {
    /// The copy's tag, if it has one.
    pub(super) tag: Option<VlanTci>,
    /// Bytes the copy is longer than the frame: +4, 0 or -4.
    pub(super) delta: isize,
}

impl Retag {
    /// The change from a frame tagged `from` to one tagged `to`, if there is one.
    pub(super) fn between(from: Option<VlanTci>, to: Option<VlanTci>) -> Option<Retag> {
        let len = |tag: Option<VlanTci>| {
            if tag.is_some() {
                VLAN_TAG_LEN as isize
            } else {
                0
            }
        };
        (from != to).then(|| Retag {
            tag: to,
            delta: len(to) - len(from),
        })
    }

    /// The offload header of the copy: `csum_start` and `hdr_len` count from the frame's
    /// start, so they move with the tag. The header was checked against the frame (its
    /// checksum starts after the Ethernet header and tag), so the moved one holds for the
    /// copy; a value that would not fit is refused all the same.
    pub(super) fn header(self, hdr: &VirtioNetHdr) -> Result<VirtioNetHdr, DropReason> {
        let shift = |value: u16| u16::try_from(value as isize + self.delta).ok();
        let mut moved = *hdr;
        if hdr.needs_checksum() {
            moved.csum_start = shift(hdr.csum_start).ok_or(DropReason::Invalid)?;
        }
        if hdr.hdr_len != 0 {
            moved.hdr_len = shift(hdr.hdr_len).unwrap_or(0);
        }
        Ok(moved)
    }
}

/// The tag `receiver`'s copy of a frame classified as `class` carries: its VLAN's, keeping
/// the priority the frame came with, or none.
#[inline]
pub(super) fn egress_tag(receiver: &PeerView, class: Classified) -> Option<VlanTci> {
    forward::egress_tagged(receiver, class.vid).then(|| VlanTci {
        vid: class.vid,
        ..class.tag.unwrap_or_default()
    })
}
