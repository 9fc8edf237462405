//! 802.1Q VLANs: which VLANs a peer is in, and how its frames are tagged.
//!
//! The network behaves as one VLAN-aware bridge (IEEE 802.1Q). Each peer has a
//! [`VlanMembership`], fixed when it joins:
//!
//! - an **access** port is in one VLAN; its frames are untagged on the port, and a tagged
//!   frame it sends is dropped (`vlan_filtered`);
//! - a **trunk** is in a set of VLANs; its frames carry their VLAN's tag, except those of
//!   its *native* VLAN, if it has one, which are untagged. An untagged frame on a trunk
//!   without a native VLAN is dropped, and so is one tagged for a VLAN it is not in;
//! - a peer that says nothing is a trunk of every VLAN with native VLAN 1: untagged frames
//!   are VLAN 1 and leave untagged, tagged ones travel in their own VLAN with their tag,
//!   which is exactly what a network without VLANs did.
//!
//! Ingress ([`VlanMembership::classify`]) gives every frame a sender accepts one VLAN;
//! a priority-tagged frame (VID 0) counts as untagged. Forwarding then stays inside that
//! VLAN, and egress tags the copy for each receiver: tagged iff the VLAN is not the
//! receiver's native one ([`VlanMembership::native`]; an access port's native VLAN is its
//! only one).
//!
//! In the region, a peer's VLANs are a 4096-bit map in its own table
//! ([`VlanEntry`]) and its mode and native VLAN sit in its
//! peer entry; both are written at join, under the control lock, before the peer is up.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use crate::shm::layout::{PeerEntry, VlanEntry};
use crate::wire::vlan::{self, DEFAULT_VID, VID_MAX, VID_MIN, VlanTci};

/// Words of a VLAN bitmap: one bit per VID 0..=4095.
pub const VLAN_WORDS: usize = 64;

/// A set of VLANs, 1..=4094.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VlanSet {
    bits: [u64; VLAN_WORDS],
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VlanSet({self})")
    }
}

impl VlanSet {
    /// No VLAN.
    pub const fn empty() -> VlanSet {
        VlanSet {
            bits: [0; VLAN_WORDS],
        }
    }

    /// Every VLAN, 1 to 4094.
    pub const fn all() -> VlanSet {
        let mut bits = [u64::MAX; VLAN_WORDS];
        // VID 0 (priority tag only) and 4095 (reserved) are never members.
        bits[0] &= !1;
        bits[VLAN_WORDS - 1] &= !(1 << 63);
        VlanSet { bits }
    }

    /// The set of one VLAN.
    pub fn single(vid: u16) -> VlanSet {
        let mut set = VlanSet::empty();
        set.insert(vid);
        set
    }

    /// Adds `vid` (ignored outside 1..=4094).
    pub fn insert(&mut self, vid: u16) {
        if (VID_MIN..=VID_MAX).contains(&vid) {
            self.bits[usize::from(vid / 64)] |= 1 << (vid % 64);
        }
    }

    /// Whether `vid` is in the set.
    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        usize::from(vid / 64) < VLAN_WORDS
            && self.bits[usize::from(vid / 64)] >> (vid % 64) & 1 != 0
    }

    /// Whether every VLAN is in the set.
    pub fn is_all(&self) -> bool {
        *self == VlanSet::all()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// Whether the two sets share a VLAN.
    pub fn overlaps(&self, other: &VlanSet) -> bool {
        self.bits.iter().zip(&other.bits).any(|(a, b)| a & b != 0)
    }

    /// The VLANs in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (VID_MIN..=VID_MAX).filter(|&vid| self.contains(vid))
    }

    /// Reads a set from a peer's shared bitmap, keeping only valid VIDs (a scribbled
    /// 0 or 4095 bit is ignored).
    pub(crate) fn read(entry: &VlanEntry) -> VlanSet {
        let mut bits = [0u64; VLAN_WORDS];
        for (word, shared) in bits.iter_mut().zip(&entry.bits) {
            *word = shared.load(Ordering::Relaxed);
        }
        let all = VlanSet::all();
        for (word, allowed) in bits.iter_mut().zip(all.bits) {
            *word &= allowed;
        }
        VlanSet { bits }
    }

    /// Writes the set into a peer's shared bitmap.
    pub(crate) fn write(&self, entry: &VlanEntry) {
        for (shared, word) in entry.bits.iter().zip(self.bits) {
            shared.store(word, Ordering::Relaxed);
        }
    }
}

/// Lists the set as `all`, or as VIDs and ranges: `10,20,30-40`.
impl fmt::Display for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let mut first = true;
        let mut vid = VID_MIN;
        while vid <= VID_MAX {
            if !self.contains(vid) {
                vid += 1;
                continue;
            }
            let start = vid;
            while vid < VID_MAX && self.contains(vid + 1) {
                vid += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == vid {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{vid}")?;
            }
            vid += 1;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// Parses one VLAN identifier, refusing 0 and 4095 with the reason.
pub fn parse_vid(text: &str) -> Result<u16, String> {
    let text = text.trim();
    let vid: u16 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a VLAN ID (a number from 1 to 4094)"))?;
    check_vid(vid)
}

/// Checks that `vid` names a VLAN (1..=4094), saying why not.
pub fn check_vid(vid: u16) -> Result<u16, String> {
    match vid {
        0 => Err("VLAN ID 0 only marks a frame's priority and is not a VLAN: use 1 to 4094".into()),
        4095 => Err("VLAN ID 4095 is reserved by IEEE 802.1Q: use 1 to 4094".into()),
        VID_MIN..=VID_MAX => Ok(vid),
        _ => Err(format!("VLAN ID {vid} is out of range: use 1 to 4094")),
    }
}

/// Parses `all` or a comma-separated list of VIDs and ranges (`10,20,30-40`).
impl FromStr for VlanSet {
    type Err = String;

    fn from_str(text: &str) -> Result<VlanSet, String> {
        if text.trim() == "all" {
            return Ok(VlanSet::all());
        }
        let mut set = VlanSet::empty();
        for item in text.split(',') {
            match item.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (parse_vid(low)?, parse_vid(high)?);
                    if low > high {
                        return Err(format!(
                            "VLAN range {low}-{high} runs backwards: write {high}-{low}"
                        ));
                    }
                    (low..=high).for_each(|vid| set.insert(vid));
                }
                None => set.insert(parse_vid(item)?),
            }
        }
        Ok(set)
    }
}

/// How a port carries its VLANs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanMode {
    /// One VLAN, untagged on the port.
    Access,
    /// Several VLANs, tagged on the port (but its native VLAN).
    Trunk,
}

impl VlanMode {
    /// Name shown in `status`.
    pub const fn name(self) -> &'static str {
        match self {
            VlanMode::Access => "access",
            VlanMode::Trunk => "trunk",
        }
    }
}

/// Stored values of a peer entry's `vlan_mode`.
const MODE_TRUNK: u32 = 0;
const MODE_ACCESS: u32 = 1;

/// The VLANs of one peer, and how its frames are tagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanMembership {
    mode: VlanMode,
    members: VlanSet,
    native: Option<u16>,
}

/// A trunk of every VLAN with native VLAN 1: a network without VLANs.
impl Default for VlanMembership {
    fn default() -> Self {
        VlanMembership {
            mode: VlanMode::Trunk,
            members: VlanSet::all(),
            native: Some(DEFAULT_VID),
        }
    }
}

/// What a frame's ingress decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The frame's VLAN.
    pub vid: u16,
    /// The tag it arrived with, priority-only tags included.
    pub tag: Option<VlanTci>,
}

impl VlanMembership {
    /// An access port of VLAN `vid` (1..=4094).
    pub fn access(vid: u16) -> Result<VlanMembership, String> {
        let vid = check_vid(vid)?;
        Ok(VlanMembership {
            mode: VlanMode::Access,
            members: VlanSet::single(vid),
            native: Some(vid),
        })
    }

    /// A trunk of `members`, with untagged frames in `native` (which joins the set), or
    /// dropped without one.
    pub fn trunk(members: VlanSet, native: Option<u16>) -> Result<VlanMembership, String> {
        let mut members = members;
        if let Some(vid) = native {
            members.insert(check_vid(vid)?);
        }
        if members.is_empty() {
            return Err("a trunk needs at least one VLAN".into());
        }
        Ok(VlanMembership {
            mode: VlanMode::Trunk,
            members,
            native,
        })
    }

    /// A trunk of every VLAN without a native VLAN: sees every frame, tagged (a capture).
    pub fn trunk_all() -> VlanMembership {
        VlanMembership {
            mode: VlanMode::Trunk,
            members: VlanSet::all(),
            native: None,
        }
    }

    /// Access or trunk.
    pub fn mode(&self) -> VlanMode {
        self.mode
    }

    /// Its VLANs.
    pub fn members(&self) -> &VlanSet {
        &self.members
    }

    /// The VLAN whose frames are untagged on the port (an access port's only VLAN).
    pub fn native(&self) -> Option<u16> {
        self.native
    }

    /// Whether it is in VLAN `vid`.
    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        self.members.contains(vid)
    }

    /// Whether this is the membership of a port with no VLAN options.
    pub fn is_default(&self) -> bool {
        *self == VlanMembership::default()
    }

    /// Ingress: the VLAN of a frame the port sends, or `None` when it must be dropped
    /// (`vlan_filtered`). `frame` is a checked one (a whole tag if it claims one).
    #[inline]
    pub fn classify(&self, frame: &[u8]) -> Option<Classified> {
        if !vlan::is_tagged(frame) {
            // The common case, and a network without VLANs' only one: one comparison.
            return self.native.map(|vid| Classified { vid, tag: None });
        }
        let tag = vlan::tci_of(frame);
        let vid = match tag {
            Some(tci) if !tci.is_priority_only() => {
                if self.mode == VlanMode::Access || !self.members.contains(tci.vid) {
                    return None;
                }
                tci.vid
            }
            _ => self.native?,
        };
        Some(Classified { vid, tag })
    }

    /// Egress check on the receiving side, for a frame found in its ring: whether it has
    /// the form a sender must give it (tagged only for a member VLAN other than the native
    /// one). A hostile writer's frame fails it.
    #[inline]
    pub fn accepts_received(&self, frame: &[u8]) -> bool {
        match vlan::tci_of(frame) {
            None => self.native.is_some(),
            Some(tci) => {
                self.mode == VlanMode::Trunk
                    && self.members.contains(tci.vid)
                    && Some(tci.vid) != self.native
            }
        }
    }

    /// Writes the membership into a joining peer's entries.
    pub(crate) fn write(&self, entry: &PeerEntry, vlans: &VlanEntry) {
        self.members.write(vlans);
        let mode = match self.mode {
            VlanMode::Access => MODE_ACCESS,
            VlanMode::Trunk => MODE_TRUNK,
        };
        entry.vlan_mode.store(mode, Ordering::Relaxed);
        entry
            .vlan_native
            .store(u32::from(self.native.unwrap_or(0)), Ordering::Relaxed);
    }

    /// Reads a peer's membership from the region (untrusted: out-of-range values become
    /// a harmless membership, never a panic).
    pub(crate) fn read(entry: &PeerEntry, vlans: &VlanEntry) -> VlanMembership {
        let members = VlanSet::read(vlans);
        let native = u16::try_from(entry.vlan_native.load(Ordering::Relaxed))
            .ok()
            .filter(|vid| members.contains(*vid));
        let mode = if entry.vlan_mode.load(Ordering::Relaxed) == MODE_ACCESS {
            VlanMode::Access
        } else {
            VlanMode::Trunk
        };
        VlanMembership {
            mode,
            members,
            native,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        if let Some(tci) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn lists_parse_and_print_as_ranges() {
        let set: VlanSet = "10,20,30-40".parse().unwrap();
        assert!(set.contains(10) && set.contains(35) && !set.contains(11));
        assert_eq!(set.to_string(), "10,20,30-40");
        assert_eq!("all".parse::<VlanSet>().unwrap().to_string(), "all");
        assert_eq!("1-4094".parse::<VlanSet>().unwrap(), VlanSet::all());
        assert_eq!("7,5,6".parse::<VlanSet>().unwrap().to_string(), "5-7");
    }

    #[test]
    fn reserved_and_bad_vids_are_refused_with_a_reason() {
        assert!(parse_vid("0").unwrap_err().contains("priority"));
        assert!(parse_vid("4095").unwrap_err().contains("reserved"));
        assert!(parse_vid("5000").unwrap_err().contains("1 to 4094"));
        assert!("10,x".parse::<VlanSet>().is_err());
        assert!(
            "20-10"
                .parse::<VlanSet>()
                .unwrap_err()
                .contains("backwards")
        );
        assert!(VlanMembership::access(0).is_err());
    }

    #[test]
    fn access_ports_take_untagged_and_priority_tagged_frames_only() {
        let access = VlanMembership::access(10).unwrap();
        assert_eq!(access.classify(&frame(None)).map(|c| c.vid), Some(10));
        assert_eq!(
            access.classify(&frame(Some(0xa000))).map(|c| c.vid),
            Some(10)
        );
        assert_eq!(access.classify(&frame(Some(10))), None);
        assert!(access.accepts_received(&frame(None)));
        assert!(!access.accepts_received(&frame(Some(10))));
    }

    #[test]
    fn trunks_take_their_vlans_and_untagged_frames_only_with_a_native_vlan() {
        let trunk = VlanMembership::trunk("10,20".parse().unwrap(), None).unwrap();
        assert_eq!(trunk.classify(&frame(Some(20))).map(|c| c.vid), Some(20));
        assert_eq!(trunk.classify(&frame(Some(30))), None);
        assert_eq!(trunk.classify(&frame(None)), None);
        assert!(!trunk.accepts_received(&frame(None)));
        let native = VlanMembership::trunk("10,20".parse().unwrap(), Some(5)).unwrap();
        assert!(native.contains(5));
        assert_eq!(native.classify(&frame(None)).map(|c| c.vid), Some(5));
        assert!(!native.accepts_received(&frame(Some(5))));
    }

    #[test]
    fn the_default_is_a_trunk_of_everything_with_native_vlan_1() {
        let default = VlanMembership::default();
        assert_eq!(default.classify(&frame(None)).map(|c| c.vid), Some(1));
        assert_eq!(
            default.classify(&frame(Some(4094))).map(|c| c.vid),
            Some(4094)
        );
        assert!(default.members().is_all());
        assert!(!default.contains(0) && !default.contains(4095));
    }
}
