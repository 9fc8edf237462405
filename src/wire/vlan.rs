//! IEEE 802.1Q VLAN tags: the four bytes a tagged frame carries after its addresses.
//!
//! ```text
//! 0      6      12       14      16          18
//! | dst  | src  | 0x8100 |  TCI  | EtherType | payload …
//!                         PCP(3) DEI(1) VID(12)
//! ```
//!
//! The tag control information (TCI) holds a priority (PCP), the drop-eligible bit (DEI)
//! and the VLAN identifier (VID). VID 0 means "no VLAN, only a priority" (a
//! *priority-tagged* frame, which a bridge treats as untagged) and VID 4095 is reserved,
//! so VLANs are numbered 1 to 4094.
//!
//! [`VlanTag`] is the checked view of a frame's tag, [`VlanTci`] its parsed value, and
//! [`retag_parts`] gives a frame with its tag removed, replaced or added, as parts to
//! write one after the other: what a port's egress does when a frame leaves a VLAN-aware
//! bridge, without copying the frame first.

use super::ethernet::{EtherType, EthernetFrame, HEADER_LEN, VLAN_TAG_LEN, WireError};

/// The lowest VLAN identifier a VLAN may have.
pub const VID_MIN: u16 = 1;
/// The highest VLAN identifier a VLAN may have (4095 is reserved).
pub const VID_MAX: u16 = 4094;
/// The VLAN of untagged frames on a port that says nothing else (IEEE 802.1Q's default).
pub const DEFAULT_VID: u16 = 1;
/// The tag protocol identifier of an 802.1Q tag.
pub const TPID: u16 = 0x8100;

/// Byte ranges of a tagged frame's fields.
mod field {
    use core::ops::Range;

    /// Where the tag starts: right after the two addresses.
    pub const TAG: usize = 12;
    /// The tag control information.
    pub const TCI: Range<usize> = 14..16;
}

/// The tag control information of one 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VlanTci {
    /// Priority code point, 0..=7.
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier, 0..=4095 (0: priority-tagged only).
    pub vid: u16,
}

impl VlanTci {
    /// Decodes the 16-bit field.
    pub const fn from_bits(bits: u16) -> VlanTci {
        VlanTci {
            pcp: (bits >> 13) as u8,
            dei: bits & 0x1000 != 0,
            vid: bits & 0x0fff,
        }
    }

    /// Encodes the 16-bit field; out-of-range values are cut to their bits.
    pub const fn to_bits(self) -> u16 {
        ((self.pcp as u16 & 7) << 13) | if self.dei { 0x1000 } else { 0 } | (self.vid & 0x0fff)
    }

    /// Whether the tag only carries a priority (VID 0): the frame counts as untagged.
    pub const fn is_priority_only(self) -> bool {
        self.vid == 0
    }
}

/// A checked view of a frame's outer 802.1Q tag.
///
/// After [`VlanTag::new_checked`] succeeds the frame is long enough for its tag, and no
/// accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T: AsRef<[u8]>> {
    frame: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// The tag of `frame`: `Ok(None)` for an untagged frame, an error for a frame too short
    /// for its header or its tag.
    pub fn new_checked(frame: T) -> Result<Option<VlanTag<T>>, WireError> {
        let view = EthernetFrame::new_checked(frame.as_ref())?;
        if view.ethertype() != EtherType::Vlan {
            return Ok(None);
        }
        if frame.as_ref().len() < HEADER_LEN + VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Some(VlanTag { frame }))
    }

    /// The tag control information.
    pub fn tci(&self) -> VlanTci {
        let b = &self.frame.as_ref()[field::TCI];
        VlanTci::from_bits(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Whether a frame's outer EtherType says it carries an 802.1Q tag (whether or not it is
/// long enough to hold one).
#[inline]
pub fn is_tagged(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&TPID.to_be_bytes()[..])
}

/// Whether a tagged frame carries a second 802.1Q tag right under its first.
pub fn is_tagged_under_tag(frame: &[u8]) -> bool {
    let inner = field::TAG + VLAN_TAG_LEN;
    is_tagged(frame) && frame.get(inner..inner + 2) == Some(&TPID.to_be_bytes()[..])
}

/// The tag of a frame, if it has one and is long enough to hold it.
pub fn tci_of(frame: &[u8]) -> Option<VlanTci> {
    VlanTag::new_checked(frame).ok().flatten().map(|t| t.tci())
}

/// The frame `frame` (a checked one: at least a header, and a whole tag if its EtherType
/// says 0x8100) with its outer tag removed, then `tag` inserted after the addresses if one
/// is given, as three consecutive parts for a gather write: the addresses, the new tag
/// (empty without one, its bytes kept in `tag_bytes`), and everything after the old tag.
/// Nothing is copied; the frame's length changes by +4, 0 or -4.
pub fn retag_parts<'a>(
    frame: &'a [u8],
    tag: Option<VlanTci>,
    tag_bytes: &'a mut [u8; VLAN_TAG_LEN],
) -> [&'a [u8]; 3] {
    let rest = match VlanTag::new_checked(frame) {
        Ok(Some(_)) => field::TAG + VLAN_TAG_LEN,
        _ => field::TAG,
    };
    let cut = field::TAG.min(frame.len());
    let rest = rest.min(frame.len());
    let tag_len = match tag {
        Some(tag) => {
            tag_bytes[..2].copy_from_slice(&TPID.to_be_bytes());
            tag_bytes[2..].copy_from_slice(&tag.to_bits().to_be_bytes());
            VLAN_TAG_LEN
        }
        None => 0,
    };
    [&frame[..cut], &tag_bytes[..tag_len], &frame[rest..]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ARP request tagged for VLAN 10 with priority 5, cut after the ARP header start.
    const TAGGED: [u8; 22] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source
        0x81, 0x00, // 802.1Q
        0xa0, 0x0a, // PCP 5, DEI 0, VID 10
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00,
    ];

    #[test]
    fn a_tag_is_read_field_by_field() {
        let tag = VlanTag::new_checked(&TAGGED[..]).unwrap().unwrap();
        assert_eq!(
            tag.tci(),
            VlanTci {
                pcp: 5,
                dei: false,
                vid: 10
            }
        );
        assert_eq!(tag.tci().to_bits(), 0xa00a);
        assert_eq!(VlanTci::from_bits(0x1fff).vid, 4095);
        assert!(VlanTci::from_bits(0x1fff).dei);
    }

    #[test]
    fn untagged_and_cut_off_frames() {
        let mut untagged = TAGGED;
        untagged[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(VlanTag::new_checked(&untagged[..]).unwrap().is_none());
        assert_eq!(
            VlanTag::new_checked(&TAGGED[..15]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            VlanTag::new_checked(&TAGGED[..10]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(tci_of(&TAGGED[..17]), None);
    }

    fn retag(frame: &[u8], tag: Option<VlanTci>) -> Vec<u8> {
        let mut bytes = [0; VLAN_TAG_LEN];
        retag_parts(frame, tag, &mut bytes).concat()
    }

    #[test]
    fn retag_removes_replaces_and_adds() {
        let out = retag(&TAGGED, None);
        assert_eq!(out.len(), TAGGED.len() - 4);
        assert_eq!(&out[..12], &TAGGED[..12]);
        assert_eq!(&out[12..], &TAGGED[16..]);

        let tag = VlanTci {
            pcp: 0,
            dei: false,
            vid: 20,
        };
        let again = retag(&out, Some(tag));
        assert_eq!(again.len(), out.len() + 4);
        assert_eq!(&again[12..16], &[0x81, 0x00, 0x00, 0x14]);
        assert_eq!(&again[16..], &TAGGED[16..]);

        let replaced = retag(&TAGGED, Some(tag));
        assert_eq!(replaced.len(), TAGGED.len());
        assert_eq!(&replaced[14..16], &[0x00, 0x14]);
        assert_eq!(retag(&out, None), out, "untagged stays untagged");
    }
}
