//! Which VXLAN segments the port carries, and how each meets the network's VLANs.
//!
//! A port carries either **one VNI** ([`Segments::One`]), whose inner frames cross as
//! they are — the port is an access port of `--vlan`, or a trunk of every VLAN whose tags
//! cross inside the tunnel — or a **map of VLANs to VNIs** ([`Segments::Map`], `--vni-map
//! 10=1010,20=1020`): one uplink carrying several segments, as a switch's VXLAN gateway
//! does. With a map the port joins the network as a trunk of exactly the mapped VLANs, with
//! no native VLAN, so every frame the network hands it is tagged:
//!
//! * **network → underlay**: a frame tagged VID leaves with its tag removed, in VNI
//!   map\[VID\] ([`Segments::outbound`]); one that is untagged or tagged for a VLAN the map
//!   does not name cannot come from the network (the port is in no other VLAN), and is
//!   dropped and counted all the same (`tx_unmapped_vlan`);
//! * **underlay → network**: a frame in VNI v gets the tag of the VLAN that maps to v
//!   ([`Segments::inbound`]); a VNI the map does not name is another segment's
//!   (`rx_foreign_vni`), and an inner frame that already carries a tag is refused
//!   (`rx_tagged_inner`): a segment is one VLAN, and a tag inside it would have to be
//!   trusted or stacked.
//!
//! Every segment has an index, its place in [`Segments::list`], by which the port keeps
//! its per-VNI counters. One remote list (or one multicast group) serves every segment:
//! a flooded frame of any VNI goes to all of them, and each remote sorts by VNI.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::network::vlan::{VlanMembership, VlanSet, check_vid, parse_vid};
use crate::wire::vlan::{self, VlanTci};
use crate::wire::vxlan::MAX_VNI;

/// One segment: a VNI, and the VLAN its frames are tagged with in the network (on a port
/// with a map; `None` on a port of one VNI, whose frames cross as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The VLAN it stands for in the network, on a port with a map.
    pub vlan: Option<u16>,
}

/// A map of 802.1Q VLANs to VNIs: each VLAN once, each VNI once, at least one pair.
///
/// Written `VID=VNI,VID=VNI…` (`10=1010,20=1020`); kept sorted by VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Read back through string keys: JSON object keys are strings, and an untagged enum
// (`Segments`) hands its variants the keys as it found them.
#[serde(into = "BTreeMap<u16, u32>", try_from = "BTreeMap<String, u32>")]
pub struct VniMap {
    /// `(vid, vni)`, sorted by VID.
    by_vlan: Vec<(u16, u32)>,
    /// `(vni, index into by_vlan)`, sorted by VNI.
    by_vni: Vec<(u32, usize)>,
}

impl VniMap {
    /// The map of `pairs` (`(vid, vni)`), checked: VIDs 1..=4094, VNIs of 24 bits, no VID
    /// or VNI twice, not empty.
    pub fn new(pairs: impl IntoIterator<Item = (u16, u32)>) -> Result<VniMap, String> {
        let mut by_vlan: Vec<(u16, u32)> = Vec::new();
        for (vid, vni) in pairs {
            check_vid(vid)?;
            check_vni(vni)?;
            by_vlan.push((vid, vni));
        }
        if by_vlan.is_empty() {
            return Err("a VNI map needs at least one VID=VNI pair".into());
        }
        by_vlan.sort_unstable();
        if let Some(pair) = by_vlan.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(format!(
                "VLAN {} is mapped twice: a VLAN is one segment, give it one VNI",
                pair[0].0
            ));
        }
        let mut by_vni: Vec<(u32, usize)> = by_vlan
            .iter()
            .enumerate()
            .map(|(index, &(_, vni))| (vni, index))
            .collect();
        by_vni.sort_unstable();
        if let Some(pair) = by_vni.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            let vlans = (by_vlan[pair[0].1].0, by_vlan[pair[1].1].0);
            return Err(format!(
                "VNI {} is given to VLANs {} and {}: each VLAN needs a VNI of its own, or \
                 the two would become one segment on the other hosts",
                pair[0].0, vlans.0, vlans.1
            ));
        }
        Ok(VniMap { by_vlan, by_vni })
    }

    /// The pairs `(vid, vni)`, sorted by VLAN.
    pub fn pairs(&self) -> &[(u16, u32)] {
        &self.by_vlan
    }

    /// The mapped VLANs.
    pub fn vlans(&self) -> VlanSet {
        let mut set = VlanSet::empty();
        for &(vid, _) in &self.by_vlan {
            set.insert(vid);
        }
        set
    }
}

impl From<VniMap> for BTreeMap<u16, u32> {
    fn from(map: VniMap) -> Self {
        map.by_vlan.into_iter().collect()
    }
}

impl TryFrom<BTreeMap<String, u32>> for VniMap {
    type Error = String;

    fn try_from(map: BTreeMap<String, u32>) -> Result<Self, Self::Error> {
        let mut pairs = Vec::with_capacity(map.len());
        for (vid, vni) in map {
            pairs.push((parse_vid(&vid)?, vni));
        }
        VniMap::new(pairs)
    }
}

/// Parses `VID=VNI,VID=VNI…`, saying what is wrong with the first bad pair.
impl FromStr for VniMap {
    type Err = String;

    fn from_str(text: &str) -> Result<VniMap, String> {
        let mut pairs = Vec::new();
        for item in text.split(',') {
            let Some((vid, vni)) = item.split_once('=') else {
                return Err(format!(
                    "{:?} is not a VID=VNI pair (for example 10=1010)",
                    item.trim()
                ));
            };
            let vid = parse_vid(vid)?;
            let vni = vni.trim();
            let vni: u32 = vni.parse().map_err(|_| {
                format!("{vni:?} is not a VNI (a number from 0 to {MAX_VNI}) in {item:?}")
            })?;
            pairs.push((vid, vni));
        }
        VniMap::new(pairs)
    }
}

/// `VID=VNI,…`, as parsed.
impl fmt::Display for VniMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (vid, vni)) in self.by_vlan.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{vid}={vni}")?;
        }
        Ok(())
    }
}

/// Checks that `vni` fits VXLAN's 24 bits, saying why not.
pub fn check_vni(vni: u32) -> Result<u32, String> {
    if vni > MAX_VNI {
        return Err(format!(
            "VNI {vni} does not fit in 24 bits: use 0 to {MAX_VNI}"
        ));
    }
    Ok(vni)
}

/// The segments a port carries: one VNI, or a map of VLANs to VNIs.
///
/// In `status` it is the port's `vni`: a number, or the map as an object
/// (`{"10": 1010, "20": 1020}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segments {
    /// One VNI; frames cross as they are.
    One(u32),
    /// Each mapped VLAN in its own VNI, tagged in the network and untagged in the tunnel.
    Map(VniMap),
}

/// What a frame from the network becomes on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// The segment's index.
    pub segment: usize,
    /// Its VNI.
    pub vni: u32,
    /// Whether the frame's tag comes off (on a port with a map).
    pub untag: bool,
}

impl Segments {
    /// The segments in index order: the one VNI, or the map's in VLAN order.
    pub fn list(&self) -> Vec<Segment> {
        match self {
            Segments::One(vni) => vec![Segment {
                vni: *vni,
                vlan: None,
            }],
            Segments::Map(map) => map
                .by_vlan
                .iter()
                .map(|&(vid, vni)| Segment {
                    vni,
                    vlan: Some(vid),
                })
                .collect(),
        }
    }

    /// Whether the port maps VLANs to VNIs.
    pub fn is_map(&self) -> bool {
        matches!(self, Segments::Map(_))
    }

    /// The port's VLAN membership in the network: with a map, a trunk of exactly the
    /// mapped VLANs without a native one; with one VNI, an access port of `vlan` or, by
    /// default, a trunk of every VLAN with native VLAN 1. A map and `vlan` exclude each
    /// other.
    pub fn membership(&self, vlan: Option<u16>) -> Result<VlanMembership, String> {
        match (self, vlan) {
            (Segments::Map(_), Some(_)) => Err(
                "--vlan and --vni-map exclude each other: the map names the port's VLANs".into(),
            ),
            (Segments::Map(map), None) => VlanMembership::trunk(map.vlans(), None),
            (Segments::One(_), Some(vid)) => VlanMembership::access(vid),
            (Segments::One(_), None) => Ok(VlanMembership::default()),
        }
    }

    /// Checks what a value built by hand could get wrong (a map is checked when built).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Segments::One(vni) => check_vni(*vni).map(drop),
            Segments::Map(_) => Ok(()),
        }
    }

    /// The segment of an arriving datagram's VNI, and the VLAN to tag its frame with;
    /// `None` for a VNI the port does not carry.
    #[inline]
    pub fn inbound(&self, vni: u32) -> Option<(usize, Option<u16>)> {
        match self {
            Segments::One(own) => (*own == vni).then_some((0, None)),
            Segments::Map(map) => {
                let found = map.by_vni.binary_search_by_key(&vni, |&(v, _)| v).ok()?;
                let index = map.by_vni.get(found)?.1;
                let &(vid, _) = map.by_vlan.get(index)?;
                Some((index, Some(vid)))
            }
        }
    }

    /// The segment a frame from the network leaves in, and whether its tag comes off;
    /// `None` (with a map) for an untagged frame or one of an unmapped VLAN.
    #[inline]
    pub fn outbound(&self, frame: &[u8]) -> Option<Outbound> {
        match self {
            Segments::One(vni) => Some(Outbound {
                segment: 0,
                vni: *vni,
                untag: false,
            }),
            Segments::Map(map) => {
                let vid = vlan::tci_of(frame)?.vid;
                let segment = map.by_vlan.binary_search_by_key(&vid, |&(v, _)| v).ok()?;
                let &(_, vni) = map.by_vlan.get(segment)?;
                Some(Outbound {
                    segment,
                    vni,
                    untag: true,
                })
            }
        }
    }
}

/// The tag a frame of VLAN `vid` gets on its way from the tunnel into the network: no
/// priority (VXLAN carries none).
pub fn tag_of(vid: u16) -> VlanTci {
    VlanTci {
        pcp: 0,
        dei: false,
        vid,
    }
}

/// The VNI, or the map as written.
impl fmt::Display for Segments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segments::One(vni) => write!(f, "{vni}"),
            Segments::Map(map) => write!(f, "{map}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::vlan::VlanMode;

    fn map(text: &str) -> VniMap {
        text.parse().unwrap()
    }

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        if let Some(vid) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn a_map_parses_sorted_by_vlan_and_prints_as_written() {
        let parsed = map(" 20=1020, 10=1010");
        assert_eq!(parsed.pairs(), &[(10, 1010), (20, 1020)]);
        assert_eq!(parsed.to_string(), "10=1010,20=1020");
        assert_eq!(map("4094=16777215").pairs(), &[(4094, MAX_VNI)]);
        assert_eq!(map("1=0").pairs(), &[(1, 0)]);
        assert_eq!(parsed.vlans().to_string(), "10,20");
    }

    #[test]
    fn a_bad_map_is_refused_with_the_reason() {
        let error = |text: &str| text.parse::<VniMap>().unwrap_err();
        assert!(error("10").contains("VID=VNI"), "{}", error("10"));
        assert!(error("").contains("VID=VNI"));
        assert!(error("10=1010,").contains("VID=VNI"));
        assert!(error("0=1010").contains("priority"));
        assert!(error("4095=1010").contains("reserved"));
        assert!(error("x=1010").contains("VLAN ID"));
        assert!(error("10=16777216").contains("24 bits"));
        assert!(error("10=-1").contains("not a VNI"));
        assert!(error("10=abc").contains("not a VNI"));
        let twice = error("10=1010,10=1020");
        assert!(twice.contains("VLAN 10 is mapped twice"), "{twice}");
        let shared = error("10=1010,20=1010");
        assert!(
            shared.contains("VNI 1010 is given to VLANs 10 and 20"),
            "{shared}"
        );
        assert!(VniMap::new([]).is_err());
    }

    #[test]
    fn in_status_one_vni_is_a_number_and_a_map_an_object() {
        let one = serde_json::to_value(Segments::One(42)).unwrap();
        assert_eq!(one, serde_json::json!(42));
        let mapped = Segments::Map(map("10=1010,20=1020"));
        let json = serde_json::to_value(&mapped).unwrap();
        assert_eq!(json, serde_json::json!({"10": 1010, "20": 1020}));
        assert_eq!(serde_json::from_value::<Segments>(json).unwrap(), mapped);
        assert_eq!(
            serde_json::from_value::<Segments>(one).unwrap(),
            Segments::One(42)
        );
        // A map read back is checked as a typed one is.
        let shared = serde_json::json!({"10": 7, "20": 7});
        assert!(serde_json::from_value::<Segments>(shared).is_err());
        assert_eq!(mapped.to_string(), "10=1010,20=1020");
    }

    #[test]
    fn a_map_makes_a_trunk_of_exactly_its_vlans_without_a_native_one() {
        let mapped = Segments::Map(map("10=1010,20=1020"));
        let membership = mapped.membership(None).unwrap();
        assert_eq!(membership.mode(), VlanMode::Trunk);
        assert_eq!(membership.members().to_string(), "10,20");
        assert_eq!(membership.native(), None);
        assert!(mapped.membership(Some(10)).is_err());
        let one = Segments::One(42);
        assert!(one.membership(None).unwrap().is_default());
        assert_eq!(one.membership(Some(10)).unwrap().native(), Some(10));
        assert!(Segments::One(MAX_VNI + 1).check().is_err());
    }

    #[test]
    fn each_vlan_leaves_in_its_own_vni_and_each_vni_arrives_in_its_vlan() {
        let mapped = Segments::Map(map("20=1020,10=1010"));
        let out = |tag| mapped.outbound(&frame(tag));
        assert_eq!(
            out(Some(20)),
            Some(Outbound {
                segment: 1,
                vni: 1020,
                untag: true
            })
        );
        assert_eq!(out(Some(10)).map(|o| o.vni), Some(1010));
        // Neither can come from a trunk of exactly the mapped VLANs; both are refused.
        assert_eq!(out(Some(30)), None);
        assert_eq!(out(None), None);
        assert_eq!(mapped.inbound(1010), Some((0, Some(10))));
        assert_eq!(mapped.inbound(1020), Some((1, Some(20))));
        assert_eq!(mapped.inbound(42), None);
        assert_eq!(
            mapped.list(),
            vec![
                Segment {
                    vni: 1010,
                    vlan: Some(10)
                },
                Segment {
                    vni: 1020,
                    vlan: Some(20)
                }
            ]
        );
        // One VNI: every frame as it is, tagged or not.
        let one = Segments::One(42);
        assert_eq!(one.outbound(&frame(Some(30))).map(|o| o.untag), Some(false));
        assert_eq!(one.inbound(42), Some((0, None)));
        assert_eq!(one.inbound(43), None);
    }
}
